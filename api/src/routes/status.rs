//! `GET /api/v1/status`: the latest snapshot of the whole system.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    error::{ApiError, ApiResult},
    state::AppState,
    status::SystemStatus,
};

/// The system at a glance: subsystems with their latency, the fleet by
/// kind, every queue with its counts and jobs/s, and throughput against
/// `ORCH_THROUGHPUT_TARGET`; a snapshot at most a second old.
#[utoipa::path(
    get, path = "/api/v1/status", tag = "system",
    responses((status = 200, description = "The latest snapshot", body = SystemStatus)),
    security(("bearer" = []))
)]
pub async fn get_status(State(state): State<AppState>) -> ApiResult<Response> {
    let json = |body| ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    state.status.latest_json().map(json).ok_or_else(not_ready)
}

/// The latest snapshot, for routes that reshape it.
pub fn latest(state: &AppState) -> ApiResult<Arc<SystemStatus>> {
    state.status.latest().ok_or_else(not_ready)
}

fn not_ready() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "status_not_ready",
        "the first status snapshot is being taken; try again in a second",
    )
}
