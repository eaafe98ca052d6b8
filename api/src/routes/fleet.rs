//! The fleet: every live process (API, workers, trainer) and what it runs.

use axum::{Json, extract::State};
use orchestrator_core::fleet::Process;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ApiResult, state::AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct FleetList {
    /// Oldest first. A process that stops beating leaves within three
    /// beats of 2 s.
    pub processes: Vec<Process>,
}

/// Every live process of the fleet.
#[utoipa::path(
    get, path = "/api/v1/fleet", tag = "fleet",
    responses((status = 200, description = "Live processes", body = FleetList)),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<FleetList>> {
    Ok(Json(FleetList {
        processes: state.fleet.list().await?,
    }))
}
