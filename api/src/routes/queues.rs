//! The queue registry with live counts; pausing, resuming and tuning queues.

use axum::{
    Json,
    extract::{Path, State},
};
use orchestrator_core::store::{QueueSettings, QueueUpdate};
use orchestrator_queue::{MAX_ATTEMPTS_LIMIT, MAX_BACKOFF_MS, QueueCounts};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody, in_range},
    extract::ApiJson,
    state::AppState,
};

/// Most jobs of one queue a worker process runs at once.
const MAX_CONCURRENCY: u32 = 10_000;
/// Highest per-worker rate limit, in jobs per second.
const MAX_RATE_LIMIT: u32 = 1_000_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    pub paused: bool,
    pub max_attempts: i32,
    pub backoff_ms: i64,
    pub concurrency: i32,
    pub rate_limit_per_s: Option<i32>,
    #[serde(flatten)]
    pub counts: QueueCounts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// Settings to change; omitted fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuePatch {
    /// Default attempts for new jobs, 1 to 100.
    pub max_attempts: Option<u32>,
    /// First retry delay in ms (doubles per retry), 0 to 3,600,000.
    pub backoff_ms: Option<u64>,
    /// Jobs one worker process runs at once, 1 to 10,000 (read by workers
    /// when they start).
    pub concurrency: Option<u32>,
    /// Jobs one worker process starts per second, 1 to 1,000,000; 0 removes
    /// the limit (read by workers when they start).
    pub rate_limit_per_s: Option<u32>,
}

/// Every queue with its settings and live counts.
#[utoipa::path(get, path = "/api/v1/queues", responses((status = 200, body = QueueList)), security(("bearer" = [])))]
pub async fn list_queues(State(state): State<AppState>) -> ApiResult<Json<QueueList>> {
    let mut queues = Vec::new();
    for settings in state.store.queues().await? {
        queues.push(view(&state, settings).await?);
    }
    Ok(Json(QueueList { queues }))
}

/// Stop handing out this queue's jobs; pushes still land.
#[utoipa::path(post, path = "/api/v1/queues/{name}/pause", params(("name" = String, Path)), responses(
    (status = 200, body = QueueView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueView>> {
    set_paused(state, name, true).await
}

/// Hand out this queue's jobs again.
#[utoipa::path(post, path = "/api/v1/queues/{name}/resume", params(("name" = String, Path)), responses(
    (status = 200, body = QueueView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueView>> {
    set_paused(state, name, false).await
}

/// Change a queue's defaults.
#[utoipa::path(patch, path = "/api/v1/queues/{name}", params(("name" = String, Path)), request_body = QueuePatch,
    responses((status = 200, body = QueueView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<QueuePatch>,
) -> ApiResult<Json<QueueView>> {
    in_range("max_attempts", patch.max_attempts, 1..=MAX_ATTEMPTS_LIMIT)?;
    in_range("backoff_ms", patch.backoff_ms, 0..=MAX_BACKOFF_MS)?;
    in_range("concurrency", patch.concurrency, 1..=MAX_CONCURRENCY)?;
    // 0 removes the limit.
    in_range(
        "rate_limit_per_s",
        patch.rate_limit_per_s,
        0..=MAX_RATE_LIMIT,
    )?;
    let update = QueueUpdate {
        max_attempts: patch.max_attempts,
        backoff_ms: patch.backoff_ms,
        concurrency: patch.concurrency,
        rate_limit_per_s: patch.rate_limit_per_s.map(|n| (n > 0).then_some(n)),
        ..QueueUpdate::default()
    };
    let settings = state
        .store
        .update_queue(&name, update)
        .await?
        .ok_or_else(|| ApiError::queue_not_found(&name))?;
    Ok(Json(view(&state, settings).await?))
}

async fn set_paused(state: AppState, name: String, paused: bool) -> ApiResult<Json<QueueView>> {
    if state.store.queue(&name).await?.is_none() {
        return Err(ApiError::queue_not_found(&name));
    }
    // The queue backend's flag is what workers obey: set it first, so the
    // registry never claims a state the workers do not have.
    state.queue.set_paused(&name, paused).await?;
    let update = QueueUpdate {
        paused: Some(paused),
        ..QueueUpdate::default()
    };
    let settings = state
        .store
        .update_queue(&name, update)
        .await?
        .ok_or_else(|| ApiError::queue_not_found(&name))?;
    Ok(Json(view(&state, settings).await?))
}

async fn view(state: &AppState, settings: QueueSettings) -> ApiResult<QueueView> {
    let counts = state.queue.counts(&settings.name).await?;
    Ok(QueueView {
        name: settings.name,
        paused: settings.paused,
        max_attempts: settings.max_attempts,
        backoff_ms: settings.backoff_ms,
        concurrency: settings.concurrency,
        rate_limit_per_s: settings.rate_limit_per_s,
        counts,
    })
}
