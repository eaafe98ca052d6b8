//! Workers in any language: a queue whose handler is `external` hands its
//! jobs out over HTTP. A worker leases jobs (long-polling while there are
//! none), renews the lease while it works, reports progress, and ends each
//! attempt with an ack or a failure. Leases, retries, dead-lettering and
//! at-least-once delivery are the engine's, exactly as for built-in
//! handlers.
//!
//! Each leased job carries a lease token: the leasing call's own worker
//! name plus the attempt it leased. Only the holder of the current attempt
//! can renew or end it; a token whose lease expired, was taken over or was
//! cancelled gets 409.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchestrator_core::{metrics as m, now_ms};
use orchestrator_queue::{
    Ack, Failure, JobInfo, JobStatus, MAX_BACKOFF_MS, MAX_LOG_LINES, Report, Retry,
    callback::{JobEnded, callback_job},
    cut,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::jobs::parse_job_id;
use crate::{
    error::{ApiError, ApiResult, ErrorBody, in_range, shown},
    extract::ApiJson,
    state::AppState,
};

/// Most jobs one lease call hands out.
const MAX_LEASE_BATCH: u32 = 1_000;
/// Longest a lease call waits for jobs.
const MAX_WAIT_MS: u64 = 30_000;
/// Lease lengths a worker may ask for.
const MIN_LEASE_MS: u64 = 1_000;
const MAX_LEASE_MS: u64 = 3_600_000;
const DEFAULT_LEASE_MS: u64 = 30_000;
/// Longest worker name.
const MAX_WORKER_NAME: usize = 64;
/// Longest error message kept from a failed attempt.
const MAX_ERROR_BYTES: usize = 4 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Most jobs to lease, 1 to 1,000; default 1.
    pub max: Option<u32>,
    /// Wait up to this long (ms, at most 30,000) for jobs when none is
    /// ready; default 0 (answer at once).
    pub wait_ms: Option<u64>,
    /// Lease length in ms, 1,000 to 3,600,000; default 30,000. Renew it with
    /// heartbeats for longer work.
    pub lease_ms: Option<u64>,
    /// This worker's name (letters, digits, `.`, `_`, `-`; up to 64), shown
    /// in the queue's worker count.
    pub worker: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeasedView {
    pub id: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Send it with every heartbeat, progress, ack or fail of this job.
    pub lease_token: String,
    pub lease_expires_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Leased {
    pub jobs: Vec<LeasedView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub lease_token: String,
    /// New lease length from now, in ms; default 30,000.
    pub lease_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseRenewed {
    pub lease_expires_at_ms: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub lease_token: String,
    /// The job's result (any JSON); shown by `GET /api/v1/jobs/{id}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub result: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub lease_token: String,
    /// What went wrong (kept on the job, up to 4 KiB).
    pub error: String,
    /// False: no retry can help, the job is dead at once. Default true.
    pub retryable: Option<bool>,
    /// Retry after this many ms instead of the queue's backoff (at most one
    /// hour).
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    pub lease_token: String,
    /// How far the job is, 0 to 1.
    pub progress: Option<f64>,
    #[serde(default)]
    pub message: String,
    /// Lines to append to the job's log (at most 100 per call; the job keeps
    /// its last 100 lines and 64 KiB).
    #[serde(default)]
    pub logs: Vec<String>,
}

/// Where an attempt ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ended {
    /// `done`, `failed` (a retry is scheduled) or `dead`.
    pub status: JobStatus,
}

/// Lease jobs of an external queue.
#[utoipa::path(post, path = "/api/v1/queues/{name}/lease", params(("name" = String, Path)),
    request_body = LeaseRequest, responses(
    (status = 200, body = Leased), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn lease(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<LeaseRequest>,
) -> ApiResult<Json<Leased>> {
    let settings = state
        .store
        .queue(&name)
        .await?
        .ok_or_else(|| ApiError::queue_not_found(&name))?;
    if settings.handler != "external" {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_external_queue",
            format!(
                "queue {:?} is run by {} handlers, not external workers; create one with \
                 POST /api/v1/queues {{\"name\", \"handler\": \"external\"}}",
                shown(&name),
                settings.handler
            ),
        ));
    }
    in_range("max", request.max, 1..=MAX_LEASE_BATCH)?;
    in_range("wait_ms", request.wait_ms, 0..=MAX_WAIT_MS)?;
    in_range("lease_ms", request.lease_ms, MIN_LEASE_MS..=MAX_LEASE_MS)?;
    let name_part = worker_name(request.worker.as_deref())?;
    // A fresh holder per call: tokens cannot be guessed from a name (the
    // last 12 hex digits of a v7 UUID are random).
    let random = uuid::Uuid::now_v7().simple().to_string();
    let holder = format!("ext.{name_part}.{}", &random[20..]);
    let lease = Duration::from_millis(request.lease_ms.unwrap_or(DEFAULT_LEASE_MS));
    let max = request.max.unwrap_or(1) as usize;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.unwrap_or(0));
    state
        .queue
        .register_worker(&name, &format!("ext.{name_part}"))
        .await?;
    loop {
        let fetched = state.queue.fetch(&name, &holder, max, lease).await?;
        if !fetched.callbacks.is_empty() {
            state.queue.push(fetched.callbacks.clone()).await?;
        }
        let now = tokio::time::Instant::now();
        if !fetched.jobs.is_empty() || now >= deadline {
            let expires = now_ms() + lease.as_millis() as u64;
            let jobs = fetched
                .jobs
                .into_iter()
                .map(|job| LeasedView {
                    lease_token: format!("{holder}:{}", job.attempt),
                    id: job.id,
                    payload: job.payload,
                    attempt: job.attempt,
                    max_attempts: job.max_attempts,
                    lease_expires_at_ms: expires,
                    concurrency_key: job.concurrency_key,
                })
                .collect();
            return Ok(Json(Leased { jobs }));
        }
        let mut wait = deadline - now;
        if let Some(due) = fetched.next_due_ms {
            wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms()).max(1)));
        }
        state.queue.wait_for_jobs(&name, wait).await;
    }
}

/// Renew a lease: the job is still being worked on.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/heartbeat", params(("id" = uuid::Uuid, Path)),
    request_body = HeartbeatRequest, responses(
    (status = 200, body = LeaseRenewed), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<LeaseRenewed>> {
    in_range("lease_ms", request.lease_ms, MIN_LEASE_MS..=MAX_LEASE_MS)?;
    let lease = Duration::from_millis(request.lease_ms.unwrap_or(DEFAULT_LEASE_MS));
    held_job(&state, &id, &request.lease_token, Some(lease)).await?;
    Ok(Json(LeaseRenewed {
        lease_expires_at_ms: now_ms() + lease.as_millis() as u64,
    }))
}

/// End an attempt successfully.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/ack", params(("id" = uuid::Uuid, Path)),
    request_body = AckRequest, responses(
    (status = 200, body = Ended), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn ack(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<AckRequest>,
) -> ApiResult<Json<Ended>> {
    let (job, holder) = held_job(&state, &id, &request.lease_token, None).await?;
    end(&state, &job, &holder, Ok(request.result)).await
}

/// End an attempt with a failure: retried after the backoff (or
/// `retry_after_ms`) while attempts remain, else dead.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/fail", params(("id" = uuid::Uuid, Path)),
    request_body = FailRequest, responses(
    (status = 200, body = Ended), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn fail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<FailRequest>,
) -> ApiResult<Json<Ended>> {
    in_range("retry_after_ms", request.retry_after_ms, 0..=MAX_BACKOFF_MS)?;
    if request.error.len() > MAX_ERROR_BYTES {
        return Err(ApiError::invalid(format!(
            "error must be at most {MAX_ERROR_BYTES} bytes"
        )));
    }
    let retry = match (request.retryable.unwrap_or(true), request.retry_after_ms) {
        (false, _) => Retry::Never,
        (true, Some(ms)) => Retry::After(ms),
        (true, None) => Retry::Backoff,
    };
    let (job, holder) = held_job(&state, &id, &request.lease_token, None).await?;
    let failure = Failure {
        message: request.error,
        retry,
    };
    end(&state, &job, &holder, Err(failure)).await
}

/// Report progress and append log lines.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/progress", params(("id" = uuid::Uuid, Path)),
    request_body = ProgressRequest, responses(
    (status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
), security(("bearer" = [])))]
pub async fn progress(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ProgressRequest>,
) -> ApiResult<StatusCode> {
    if let Some(p) = request.progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::invalid("progress must be between 0 and 1"));
    }
    if request.logs.len() > MAX_LOG_LINES {
        return Err(ApiError::invalid(format!(
            "logs may hold at most {MAX_LOG_LINES} lines per call"
        )));
    }
    held_job(&state, &id, &request.lease_token, None).await?;
    let report = Report {
        progress: request.progress.map(|p| (p, cut(&request.message))),
        lines: request.logs.iter().map(|line| cut(line)).collect(),
    };
    state.queue.report(&id, report).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Records the attempt's outcome; 409 when the lease was lost meanwhile.
async fn end(
    state: &AppState,
    job: &JobInfo,
    holder: &str,
    outcome: Result<Value, Failure>,
) -> ApiResult<Json<Ended>> {
    let final_failure = match &outcome {
        Ok(_) => None,
        Err(failure) => Some(failure.retry == Retry::Never || job.attempts >= job.max_attempts),
    };
    let ack = Ack {
        id: job.id.clone(),
        attempt: job.attempts,
        outcome,
    };
    // The callback is stored before the outcome it tells of: a crash in
    // between repeats the notice, never loses it.
    let ended = JobEnded::from_ack(&job.queue, &ack, job.max_attempts);
    if let (Some(url), Some(ended)) = (&job.callback_url, &ended) {
        let key = format!("{}:{}", job.id, job.attempts);
        state
            .queue
            .push(vec![callback_job(url, ended, &key)])
            .await?;
    }
    let lost = state.queue.ack(&job.queue, holder, vec![ack]).await?;
    if !lost.is_empty() {
        return Err(lease_gone(state, &job.id).await);
    }
    let status = match final_failure {
        None => JobStatus::Done,
        Some(true) => JobStatus::Dead,
        Some(false) => JobStatus::Failed,
    };
    let outcome = match status {
        JobStatus::Done => "done",
        JobStatus::Dead => "dead",
        _ => "failed",
    };
    metrics::counter!(m::JOBS_COMPLETED, "queue" => job.queue.clone(), "outcome" => outcome)
        .increment(1);
    Ok(Json(Ended { status }))
}

/// The job a lease token names, if that token still holds it; else 409
/// (or 404 for an unknown job).
/// With `renew`, the lease is also extended to that long from now (one
/// call both checks and renews).
async fn held_job(
    state: &AppState,
    id: &str,
    token: &str,
    renew: Option<Duration>,
) -> ApiResult<(JobInfo, String)> {
    parse_job_id(id)?;
    let Some((holder, attempt)) = parse_token(token) else {
        return Err(ApiError::invalid(
            "lease_token is not a token a lease call returned",
        ));
    };
    let job = state
        .queue
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("no job {id}")))?;
    if job.status == JobStatus::Cancelled {
        return Err(cancelled(id));
    }
    let remaining = job
        .lease_expires_at_ms
        .and_then(|at| at.checked_sub(now_ms()))
        .filter(|ms| *ms > 0);
    let Some(remaining) = remaining else {
        return Err(lost(id));
    };
    if job.status != JobStatus::Running || job.attempts != attempt {
        return Err(lost(id));
    }
    // Whose lease it is, the engine knows: renewing it (without `renew`,
    // to the deadline it already has) says whether this token holds it.
    let lease = renew.unwrap_or(Duration::from_millis(remaining));
    let not_held = state
        .queue
        .extend_leases(&job.queue, holder, std::slice::from_ref(&job.id), lease)
        .await?;
    if !not_held.is_empty() {
        return Err(lease_gone(state, id).await);
    }
    Ok((job, holder.to_string()))
}

/// `ext.<name>.<random>:<attempt>`, as [`lease`] makes them.
fn parse_token(token: &str) -> Option<(&str, u32)> {
    let (holder, attempt) = token.rsplit_once(':')?;
    let valid = holder.starts_with("ext.")
        && holder.len() <= 4 + MAX_WORKER_NAME + 13
        && holder
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    Some((holder, attempt.parse().ok()?)).filter(|_| valid)
}

fn worker_name(name: Option<&str>) -> ApiResult<&str> {
    let Some(name) = name else {
        return Ok("worker");
    };
    let valid = !name.is_empty()
        && name.len() <= MAX_WORKER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(name)
    } else {
        Err(ApiError::invalid(format!(
            "worker must be 1 to {MAX_WORKER_NAME} letters, digits, '.', '_' or '-'"
        )))
    }
}

/// 409 for a job whose lease was lost: cancelled, or expired and taken.
async fn lease_gone(state: &AppState, id: &str) -> ApiError {
    match state.queue.job(id).await {
        Ok(Some(job)) if job.status == JobStatus::Cancelled => cancelled(id),
        _ => lost(id),
    }
}

fn cancelled(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "job_cancelled",
        format!("job {id} was cancelled; stop working on it"),
    )
}

fn lost(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "lease_lost",
        format!(
            "this lease on job {id} is no longer held (it expired, or the job was leased again \
             or has ended); drop the job"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_junk_is_refused() {
        assert_eq!(
            parse_token("ext.w-1.abcdef012345:3"),
            Some(("ext.w-1.abcdef012345", 3))
        );
        for junk in ["", "x", "ext.a:b", "worker:1", "ext.a b:1", "ext.a:-1"] {
            assert_eq!(parse_token(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn worker_names_are_checked() {
        assert_eq!(worker_name(None).unwrap(), "worker");
        assert_eq!(worker_name(Some("py-1.host")).unwrap(), "py-1.host");
        assert!(worker_name(Some("")).is_err());
        assert!(worker_name(Some("a b")).is_err());
        assert!(worker_name(Some(&"x".repeat(65))).is_err());
    }
}
