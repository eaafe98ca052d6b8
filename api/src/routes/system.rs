//! `POST /api/v1/system/stop` and `POST /api/v1/system/start`: the whole
//! fleet at once (see [`crate::lifecycle`]).

use std::time::Duration;

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    error::{ApiError, ApiResult, ErrorBody, in_range},
    lifecycle::{self, StartReport, StopReport},
    state::AppState,
};

/// Longest a stop may be asked to wait for the fleet to go idle.
const MAX_WAIT_S: u64 = 600;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StopQuery {
    /// Seconds to wait for the fleet to go idle before answering (0..=600,
    /// default 60); the drain goes on after the answer either way.
    #[param(minimum = 0, maximum = 600)]
    pub wait_s: Option<u64>,
}

/// Drain the whole fleet: pushes are refused with 503 `system_stopped`, no
/// worker leases another job, running jobs finish and are acknowledged.
/// 200 once the fleet is idle (`state: stopped`), 202 if it is still
/// draining after `wait_s` (`state: stopping`, with what it waits for).
#[utoipa::path(
    post, path = "/api/v1/system/stop", tag = "system", params(StopQuery),
    responses(
        (status = 200, description = "The fleet is idle", body = StopReport),
        (status = 202, description = "Still draining after wait_s", body = StopReport),
        (status = 409, description = "Not running (stopping or stopped already)", body = ErrorBody),
        (status = 422, description = "Invalid wait_s", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stop(
    State(state): State<AppState>,
    raw: Result<Query<StopQuery>, QueryRejection>,
) -> ApiResult<(StatusCode, Json<StopReport>)> {
    let query = raw.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    in_range("wait_s", query.wait_s, 0..=MAX_WAIT_S)?;
    let wait = Duration::from_secs(query.wait_s.unwrap_or(60));
    let report = lifecycle::stop(&state, wait).await?;
    let status = match report.idle {
        true => StatusCode::OK,
        false => StatusCode::ACCEPTED,
    };
    Ok((status, Json(report)))
}

/// Resume a stopped fleet: intake opens and workers lease again at once,
/// then the start-up phases run (index roots when `ORCH_AUTO_INDEX`,
/// campaigns from `ORCH_AUTO_CAMPAIGNS`, local models when
/// `ORCH_WARM_MODELS`), each with its state and timing.
#[utoipa::path(
    post, path = "/api/v1/system/start", tag = "system",
    responses(
        (status = 200, description = "Running again; the phases with their timing", body = StartReport),
        (status = 409, description = "Not stopped (running, starting or still draining)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn start(State(state): State<AppState>) -> ApiResult<Json<StartReport>> {
    Ok(Json(lifecycle::start(&state).await?))
}

/// The original orchestrator's `POST /api/master/stop`: [`stop`] with the
/// default wait.
#[utoipa::path(
    post, path = "/api/master/stop", tag = "compatibility", params(StopQuery),
    responses(
        (status = 200, description = "As POST /api/v1/system/stop", body = StopReport),
        (status = 202, description = "Still draining", body = StopReport),
        (status = 409, description = "Not running", body = ErrorBody),
        (status = 422, description = "Invalid wait_s", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_stop(
    state: State<AppState>,
    raw: Result<Query<StopQuery>, QueryRejection>,
) -> ApiResult<(StatusCode, Json<StopReport>)> {
    stop(state, raw).await
}

/// The original orchestrator's `POST /api/master/start`: [`start`].
#[utoipa::path(
    post, path = "/api/master/start", tag = "compatibility",
    responses(
        (status = 200, description = "As POST /api/v1/system/start", body = StartReport),
        (status = 409, description = "Not stopped", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_start(state: State<AppState>) -> ApiResult<Json<StartReport>> {
    start(state).await
}
