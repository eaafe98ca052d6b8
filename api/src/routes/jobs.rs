//! Pushing jobs and reading them back.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchestrator_core::{metrics as m, store::QueueSettings};
use orchestrator_queue::{
    Cancelled, JobInfo, JobStatus, MAX_ATTEMPTS_LIMIT, MAX_CONCURRENCY_KEY_LEN, MAX_DELAY_MS,
    MAX_IDEMPOTENCY_KEY_LEN, MAX_PRIORITY, MIN_PRIORITY, NewJob, Pushed,
    callback::{JobEnded, callback_job, push_callbacks},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody, shown},
    extract::ApiJson,
    state::AppState,
};

/// Most jobs one batch may carry.
pub const MAX_BATCH: usize = 10_000;

/// A job to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// A registered queue (see `GET /api/v1/queues`).
    pub queue: String,
    /// Handler input; its shape depends on the queue.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Higher runs first, from -1000 to 1000; default 0.
    pub priority: Option<i32>,
    /// Attempts before the job is dead, 1 to 100; default from the queue.
    pub max_attempts: Option<u32>,
    /// A push with a key already seen in this queue (within 24 h) returns
    /// the first job's id instead of enqueueing again.
    pub idempotency_key: Option<String>,
    /// Run no earlier than this many milliseconds from now (at most 30 days).
    pub delay_ms: Option<u64>,
    /// Jobs sharing a key (a tenant, a user; up to 128 bytes) take turns,
    /// at most the queue's `max_per_key` of them running at once.
    pub concurrency_key: Option<String>,
    /// An http(s) URL told (signed POST) when the job ends.
    pub callback_url: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 10,000 jobs, enqueued atomically: all or none.
    pub jobs: Vec<JobRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    /// True when an earlier push with the same idempotency key created it.
    pub duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    pub ids: Vec<String>,
    /// How many ids came from earlier pushes with the same idempotency key.
    pub duplicates: usize,
}

/// Enqueue one job.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = JobRequest, responses(
    (status = 202, body = Accepted),
    (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn push_job(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<JobRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let jobs = resolve(&state, vec![request]).await?;
    let pushed = push(&state, jobs).await?;
    let Pushed { id, duplicate } = pushed.into_iter().next().expect("one job pushed");
    Ok((StatusCode::ACCEPTED, Json(Accepted { id, duplicate })))
}

/// Enqueue up to 10,000 jobs at once.
#[utoipa::path(post, path = "/api/v1/jobs/batch", request_body = BatchRequest, responses(
    (status = 202, body = BatchAccepted),
    (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn push_batch(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<BatchRequest>,
) -> ApiResult<(StatusCode, Json<BatchAccepted>)> {
    if request.jobs.is_empty() || request.jobs.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch_size",
            format!(
                "jobs must hold 1 to {MAX_BATCH} jobs, got {}",
                request.jobs.len()
            ),
        ));
    }
    let jobs = resolve(&state, request.jobs).await?;
    let pushed = push(&state, jobs).await?;
    let duplicates = pushed.iter().filter(|p| p.duplicate).count();
    let ids = pushed.into_iter().map(|p| p.id).collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted { ids, duplicates }),
    ))
}

/// A job's state, attempts and result.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = uuid::Uuid, Path)), responses(
    (status = 200, body = JobInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobInfo>> {
    parse_job_id(&id)?;
    match state.queue.job(&id).await? {
        Some(job) => Ok(Json(job)),
        None => Err(ApiError::not_found("job_not_found", format!("no job {id}"))),
    }
}

async fn push(state: &AppState, jobs: Vec<NewJob>) -> ApiResult<Vec<Pushed>> {
    // Runs of jobs for one queue, in push order: a batch is mostly a single
    // run, so the counter is updated once per run, not once per job.
    let mut runs: Vec<(String, usize)> = Vec::new();
    for job in &jobs {
        match runs.last_mut() {
            Some((queue, n)) if *queue == job.queue => *n += 1,
            _ => runs.push((job.queue.clone(), 1)),
        }
    }
    // Pushes arriving together share one backend call (see PushCoalescer).
    let pushed = state.pushes.push(jobs).await?;
    let mut results = pushed.iter();
    for (queue, n) in runs {
        let fresh = results.by_ref().take(n).filter(|p| !p.duplicate).count();
        metrics::counter!(m::JOBS_ENQUEUED, "queue" => queue).increment(fresh as u64);
    }
    Ok(pushed)
}

/// Validates every request and fills defaults from its queue's settings.
/// One bad job rejects the whole batch, naming its index.
pub(crate) async fn resolve(state: &AppState, requests: Vec<JobRequest>) -> ApiResult<Vec<NewJob>> {
    let single = requests.len() == 1;
    let mut settings: HashMap<String, QueueSettings> = HashMap::new();
    let mut jobs = Vec::with_capacity(requests.len());
    for (index, request) in requests.into_iter().enumerate() {
        let at = |e: ApiError| {
            if single {
                e
            } else {
                ApiError {
                    message: format!("jobs[{index}]: {}", e.message),
                    ..e
                }
            }
        };
        if !settings.contains_key(&request.queue) {
            let handler = state.handlers.get(request.queue.as_str());
            if handler.is_some_and(|h| h.internal()) {
                return Err(at(internal_queue(&request.queue)));
            }
            let found = state
                .queue_settings
                .get(&state.store, &request.queue)
                .await?;
            // A built-in queue needs its handler here; the user's queues
            // (external workers, HTTP targets) take any JSON payload.
            let found = found.filter(|q| handler.is_some() || q.handler != "builtin");
            let Some(found) = found else {
                return Err(at(unknown_queue(&request.queue)));
            };
            settings.insert(request.queue.clone(), found);
        }
        let queue = &settings[&request.queue];
        jobs.push(validate(state, queue, request).map_err(at)?);
    }
    Ok(jobs)
}

fn unknown_queue(name: &str) -> ApiError {
    let shown = shown(name);
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_queue",
        format!("no queue named {shown:?}; GET /api/v1/queues lists them"),
    )
}

fn internal_queue(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "internal_queue",
        format!(
            "queue {:?} is fed by the orchestrator itself (workflows, context packs); \
             use their routes instead",
            shown(name)
        ),
    )
}

fn validate(
    state: &AppState,
    queue: &QueueSettings,
    request: JobRequest,
) -> Result<NewJob, ApiError> {
    let priority = request.priority.unwrap_or(0);
    if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&priority) {
        return Err(ApiError::invalid(format!(
            "priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}"
        )));
    }
    let max_attempts = request.max_attempts.unwrap_or(queue.max_attempts as u32);
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
        return Err(ApiError::invalid(format!(
            "max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"
        )));
    }
    let delay_ms = request.delay_ms.unwrap_or(0);
    if delay_ms > MAX_DELAY_MS {
        return Err(ApiError::invalid(format!(
            "delay_ms must be at most {MAX_DELAY_MS} (30 days)"
        )));
    }
    if let Some(key) = &request.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(ApiError::invalid(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"
        )));
    }
    if let Some(key) = &request.concurrency_key
        && !valid_concurrency_key(key)
    {
        return Err(ApiError::invalid(format!(
            "concurrency_key must be 1 to {MAX_CONCURRENCY_KEY_LEN} of letters, digits and \
             . _ : @ / = + -"
        )));
    }
    if let Some(url) = &request.callback_url {
        check_callback_url(state, url)?;
    }
    if let Some(handler) = state.handlers.get(request.queue.as_str()) {
        handler.validate(&request.payload).map_err(|message| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload", message)
        })?;
    }
    Ok(NewJob {
        queue: request.queue,
        payload: request.payload,
        priority,
        max_attempts,
        backoff_ms: queue.backoff_ms as u64,
        idempotency_key: request.idempotency_key,
        delay_ms,
        concurrency_key: request.concurrency_key,
        callback_url: request.callback_url,
    })
}

fn valid_concurrency_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_CONCURRENCY_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/=+-".contains(&b))
}

/// Longest callback or target URL.
pub const MAX_URL_LEN: usize = 2_048;

/// An http(s) URL the fleet may POST to: its host is public, or the
/// operator allowlisted it (`ORCH_CAMPAIGN_ALLOW`); a request never can.
pub fn check_callback_url(state: &AppState, raw: &str) -> Result<(), ApiError> {
    state.targets.require_signing()?;
    let invalid = |why: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_url", why);
    if raw.len() > MAX_URL_LEN {
        return Err(invalid(format!("URL longer than {MAX_URL_LEN} bytes")));
    }
    let url =
        url::Url::parse(raw).map_err(|e| invalid(format!("{:?} is not a URL: {e}", shown(raw))))?;
    orchestrator_campaign::fetch::guard::check_url(&url, state.campaigns.operator_allow())
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(url::Host::Domain(host)) = url.host()
        && (host == "localhost" || host.ends_with(".localhost"))
        && !state.campaigns.operator_allow().allows_host(host)
    {
        return Err(invalid(format!(
            "{host} is a local name; the operator must list it in ORCH_CAMPAIGN_ALLOW"
        )));
    }
    Ok(())
}

/// Cancel a job: a waiting or delayed job never starts; a running one is
/// told (its handler is stopped; an external worker gets 409 on its next
/// heartbeat) and ends `cancelled`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = uuid::Uuid, Path)), responses(
    (status = 200, body = JobInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobInfo>> {
    parse_job_id(&id)?;
    match state.queue.cancel(&id).await? {
        Cancelled::NotFound => Err(ApiError::not_found("job_not_found", format!("no job {id}"))),
        Cancelled::AlreadyFinal(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("job {id} has already ended ({})", status.as_str()),
        )),
        Cancelled::Now(_) => {
            let job = state.queue.job(&id).await?;
            if let Some(job) = &job {
                metrics::counter!(m::JOBS_COMPLETED, "queue" => job.queue.clone(), "outcome" => "cancelled")
                    .increment(1);
            }
            let job = job.filter(|j| j.status == JobStatus::Cancelled);
            if let Some(job) = &job
                && let Some(url) = &job.callback_url
            {
                let key = format!("{}:cancelled", job.id);
                let callback = callback_job(url, &JobEnded::of(job), &key);
                push_callbacks(state.queue.clone(), vec![callback]);
            }
            job.map(Json)
                .ok_or_else(|| ApiError::not_found("job_not_found", format!("no job {id}")))
        }
    }
}

/// Job ids are the UUIDs pushes return; anything else is a client error.
pub fn parse_job_id(id: &str) -> ApiResult<()> {
    match uuid::Uuid::parse_str(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_job_id",
            format!(
                "job ids are UUIDs as returned by POST /api/v1/jobs, got {:?}",
                shown(id)
            ),
        )),
    }
}
