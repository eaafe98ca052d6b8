//! The queue registry with live counts; creating the user's own queues
//! (external workers, HTTP targets), pausing, resuming, tuning and purging
//! queues.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchestrator_core::{
    now_ms,
    store::{QueueSettings, QueueUpdate},
};
use orchestrator_queue::{
    JobStatus, MAX_ATTEMPTS_LIMIT, MAX_BACKOFF_MS, QueueCounts, QueueOptions,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody, in_range, shown},
    extract::ApiJson,
    state::AppState,
};

/// Most jobs of one queue a worker process runs at once.
const MAX_CONCURRENCY: u32 = 10_000;
/// Highest per-worker rate limit, in jobs per second.
const MAX_RATE_LIMIT: u32 = 1_000_000;
/// Longest a queue keeps finished jobs: one year.
const MAX_KEEP_MS: u64 = 366 * 24 * 3_600_000;
/// Longest an HTTP target may take to answer.
const MAX_TARGET_TIMEOUT_MS: u64 = 600_000;
/// Most queues the user may define.
const MAX_USER_QUEUES: usize = 1_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    pub paused: bool,
    pub max_attempts: i32,
    pub backoff_ms: i64,
    pub concurrency: i32,
    pub rate_limit_per_s: Option<i32>,
    /// `builtin`, `external` or `http`.
    pub handler: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_timeout_ms: Option<i64>,
    pub max_per_key: Option<i32>,
    pub keep_done_ms: Option<i64>,
    pub keep_dead_ms: Option<i64>,
    pub remove_on_complete: bool,
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
    /// Most jobs of one concurrency key running at once, 1 to 10,000; 0
    /// removes the limit.
    pub max_per_key: Option<u32>,
    /// How long done jobs stay readable, in ms (default 24 h); 0 restores
    /// the default.
    pub keep_done_ms: Option<u64>,
    /// How long dead and cancelled jobs stay, in ms; 0: until purged.
    pub keep_dead_ms: Option<u64>,
    /// Forget each job as soon as it is done.
    pub remove_on_complete: Option<bool>,
}

/// A queue of the user's own jobs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueCreate {
    /// 1 to 64 of `a-z`, `0-9`, `_`, `-`, `.`, starting with a letter or digit.
    pub name: String,
    /// `external` (workers anywhere lease jobs over HTTP), `http` (the
    /// fleet POSTs each job to `target_url`) or `custom` (a worker process
    /// of your own built on the orchestrator-queue crate).
    pub handler: String,
    /// For `http`: where each job is POSTed.
    pub target_url: Option<String>,
    /// For `http`: how long the target may take, 100 to 600,000 ms; default 30,000.
    pub target_timeout_ms: Option<u64>,
    /// Attempts before a job is dead, 1 to 100; default 3.
    pub max_attempts: Option<u32>,
    /// First retry delay in ms (doubles per retry); default 1,000.
    pub backoff_ms: Option<u64>,
    /// For `http`: deliveries one worker process makes at once; default 16.
    pub concurrency: Option<u32>,
    pub rate_limit_per_s: Option<u32>,
    /// Most jobs of one concurrency key running at once.
    pub max_per_key: Option<u32>,
    pub keep_done_ms: Option<u64>,
    pub keep_dead_ms: Option<u64>,
    pub remove_on_complete: Option<bool>,
}

impl QueueCreate {
    fn settings(&self) -> QueuePatch {
        QueuePatch {
            max_attempts: self.max_attempts,
            backoff_ms: self.backoff_ms,
            concurrency: self.concurrency,
            rate_limit_per_s: self.rate_limit_per_s,
            max_per_key: self.max_per_key,
            keep_done_ms: self.keep_done_ms,
            keep_dead_ms: self.keep_dead_ms,
            remove_on_complete: self.remove_on_complete,
        }
    }
}

/// Which finished jobs to forget.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Any of `done`, `dead`, `cancelled`.
    pub statuses: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
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

/// Create a queue for your own jobs: served to external workers, or POSTed
/// to an HTTP target.
#[utoipa::path(post, path = "/api/v1/queues", request_body = QueueCreate, responses(
    (status = 201, body = QueueView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<QueueCreate>,
) -> ApiResult<(StatusCode, Json<QueueView>)> {
    check_name(&request.name)?;
    let patch = request.settings();
    check_patch(&patch)?;
    let (target_url, target_timeout_ms) = check_handler(&state, &request)?;
    let user_queues = state
        .store
        .queues()
        .await?
        .iter()
        .filter(|q| q.handler != "builtin")
        .count();
    if user_queues >= MAX_USER_QUEUES {
        return Err(ApiError::invalid(format!(
            "at most {MAX_USER_QUEUES} queues may be created"
        )));
    }
    let now = now_ms() as i64;
    let settings = QueueSettings {
        name: request.name.clone(),
        paused: false,
        max_attempts: patch.max_attempts.unwrap_or(3) as i32,
        backoff_ms: patch.backoff_ms.unwrap_or(1_000) as i64,
        concurrency: patch.concurrency.unwrap_or(16) as i32,
        rate_limit_per_s: patch.rate_limit_per_s.filter(|r| *r > 0).map(|r| r as i32),
        handler: request.handler.clone(),
        target_url,
        target_timeout_ms,
        max_per_key: patch.max_per_key.filter(|m| *m > 0).map(|m| m as i32),
        keep_done_ms: patch.keep_done_ms.filter(|ms| *ms > 0).map(|ms| ms as i64),
        keep_dead_ms: patch.keep_dead_ms.filter(|ms| *ms > 0).map(|ms| ms as i64),
        remove_on_complete: patch.remove_on_complete.unwrap_or(false),
        created_at_ms: now,
        updated_at_ms: now,
    };
    if state.store.queue(&settings.name).await?.is_some() {
        return Err(queue_exists(&settings.name));
    }
    // The engine's half first: a registered queue always has its options.
    state
        .queue
        .configure(&settings.name, &QueueOptions::from(&settings))
        .await?;
    if !state.store.create_queue(settings.clone()).await? {
        return Err(queue_exists(&settings.name));
    }
    state.targets.start(&settings);
    Ok((StatusCode::CREATED, Json(view(&state, settings).await?)))
}

/// Forget a queue's finished jobs (done, dead, cancelled).
#[utoipa::path(post, path = "/api/v1/queues/{name}/purge", params(("name" = String, Path)),
    request_body = PurgeRequest, responses(
    (status = 200, body = Purged), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn purge(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<PurgeRequest>,
) -> ApiResult<Json<Purged>> {
    if state.store.queue(&name).await?.is_none() {
        return Err(ApiError::queue_not_found(&name));
    }
    if request.statuses.is_empty() || request.statuses.len() > 3 {
        return Err(ApiError::invalid(
            "statuses must list 1 to 3 of done, dead, cancelled",
        ));
    }
    let mut statuses = Vec::new();
    for raw in &request.statuses {
        match JobStatus::parse(raw).filter(|s| s.is_final()) {
            Some(status) => statuses.push(status),
            None => {
                return Err(ApiError::invalid(format!(
                    "statuses: {:?} is not one of done, dead, cancelled",
                    shown(raw)
                )));
            }
        }
    }
    let purged = state.queue.purge_jobs(&name, &statuses).await?;
    Ok(Json(Purged { purged }))
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
    check_patch(&patch)?;
    let update = QueueUpdate {
        max_attempts: patch.max_attempts,
        backoff_ms: patch.backoff_ms,
        concurrency: patch.concurrency,
        rate_limit_per_s: patch.rate_limit_per_s.map(|n| (n > 0).then_some(n)),
        max_per_key: patch.max_per_key.map(|n| (n > 0).then_some(n)),
        keep_done_ms: patch.keep_done_ms.map(|ms| (ms > 0).then_some(ms)),
        keep_dead_ms: patch.keep_dead_ms.map(|ms| (ms > 0).then_some(ms)),
        remove_on_complete: patch.remove_on_complete,
        ..QueueUpdate::default()
    };
    let settings = state
        .store
        .update_queue(&name, update)
        .await?
        .ok_or_else(|| ApiError::queue_not_found(&name))?;
    state.queue_settings.forget(&name);
    state
        .queue
        .configure(&settings.name, &QueueOptions::from(&settings))
        .await?;
    Ok(Json(view(&state, settings).await?))
}

fn queue_exists(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "queue_exists",
        format!("a queue named {name:?} exists"),
    )
}

fn check_patch(patch: &QueuePatch) -> ApiResult<()> {
    in_range("max_attempts", patch.max_attempts, 1..=MAX_ATTEMPTS_LIMIT)?;
    in_range("backoff_ms", patch.backoff_ms, 0..=MAX_BACKOFF_MS)?;
    in_range("concurrency", patch.concurrency, 1..=MAX_CONCURRENCY)?;
    // 0 removes the limit (or restores the default).
    in_range(
        "rate_limit_per_s",
        patch.rate_limit_per_s,
        0..=MAX_RATE_LIMIT,
    )?;
    in_range("max_per_key", patch.max_per_key, 0..=MAX_CONCURRENCY)?;
    in_range("keep_done_ms", patch.keep_done_ms, 0..=MAX_KEEP_MS)?;
    in_range("keep_dead_ms", patch.keep_dead_ms, 0..=MAX_KEEP_MS)?;
    Ok(())
}

fn check_name(name: &str) -> ApiResult<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "name: {:?} must be 1 to 64 of a-z, 0-9, '_', '-', '.', starting with a letter or digit",
            shown(name)
        )))
    }
}

/// The target of an `http` queue, checked; nothing for `external`.
fn check_handler(
    state: &AppState,
    request: &QueueCreate,
) -> ApiResult<(Option<String>, Option<i64>)> {
    match request.handler.as_str() {
        "external" | "custom" => {
            if request.target_url.is_some() || request.target_timeout_ms.is_some() {
                return Err(ApiError::invalid(
                    "target_url and target_timeout_ms are for handler \"http\" only",
                ));
            }
            Ok((None, None))
        }
        "http" => {
            state.targets.require_signing()?;
            let Some(url) = &request.target_url else {
                return Err(ApiError::invalid(
                    "target_url: handler \"http\" needs the URL each job is POSTed to",
                ));
            };
            super::jobs::check_callback_url(state, url)
                .map_err(|e| ApiError::invalid(format!("target_url: {}", e.message)))?;
            in_range(
                "target_timeout_ms",
                request.target_timeout_ms,
                100..=MAX_TARGET_TIMEOUT_MS,
            )?;
            Ok((
                Some(url.clone()),
                Some(request.target_timeout_ms.unwrap_or(30_000) as i64),
            ))
        }
        other => Err(ApiError::invalid(format!(
            "handler: {:?} is not a handler kind; use \"external\", \"http\" or \"custom\"",
            shown(other)
        ))),
    }
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
        handler: settings.handler,
        target_url: settings.target_url,
        target_timeout_ms: settings.target_timeout_ms,
        max_per_key: settings.max_per_key,
        keep_done_ms: settings.keep_done_ms,
        keep_dead_ms: settings.keep_dead_ms,
        remove_on_complete: settings.remove_on_complete,
        counts,
    })
}
