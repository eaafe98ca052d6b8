//! Dead jobs: listing them and putting them back to work.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchestrator_queue::{JobInfo, JobStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    error::{ApiError, ApiResult, ErrorBody, in_range},
    extract::{ApiJson, ApiQuery},
    routes::jobs::parse_job_id,
    state::AppState,
};

/// Most dead jobs one listing returns.
const MAX_LIST: usize = 1_000;
/// Most dead jobs one requeue call moves.
const MAX_REQUEUE: usize = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// How many, newest first: 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadList {
    pub jobs: Vec<JobInfo>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequeueRequest {
    /// These dead jobs (others are skipped); omitted: the oldest `max`.
    pub ids: Option<Vec<String>>,
    /// With no `ids`: how many of the oldest dead jobs, 1 to 10,000 (default 1,000).
    pub max: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    pub requeued: Vec<String>,
}

/// The queue's dead jobs, newest first.
#[utoipa::path(get, path = "/api/v1/queues/{name}/dead", params(("name" = String, Path), DeadQuery),
    responses((status = 200, body = DeadList), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<DeadQuery>,
) -> ApiResult<Json<DeadList>> {
    let limit = query.limit.unwrap_or(100);
    in_range("limit", Some(limit), 1..=MAX_LIST)?;
    require_queue(&state, &name).await?;
    let jobs = state.queue.dead_jobs(&name, limit).await?;
    Ok(Json(DeadList { jobs }))
}

/// Put dead jobs back to pending with their attempts reset.
#[utoipa::path(post, path = "/api/v1/queues/{name}/dead/requeue", params(("name" = String, Path)),
    request_body = RequeueRequest,
    responses((status = 200, body = Requeued), (status = 400, description = "An id is not a UUID", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn requeue(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<RequeueRequest>,
) -> ApiResult<Json<Requeued>> {
    let max = request.max.unwrap_or(1_000);
    in_range("max", Some(max), 1..=MAX_REQUEUE)?;
    let ids = request.ids.unwrap_or_default();
    if ids.len() > MAX_REQUEUE {
        return Err(ApiError::invalid(format!(
            "ids may list at most {MAX_REQUEUE} jobs"
        )));
    }
    for id in &ids {
        parse_job_id(id)?;
    }
    require_queue(&state, &name).await?;
    let requeued = state.queue.requeue_dead(&name, &ids, max).await?;
    Ok(Json(Requeued { requeued }))
}

/// Put one dead job back to pending with its attempts reset.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/requeue", params(("id" = uuid::Uuid, Path)), responses(
    (status = 200, body = JobInfo), (status = 400, description = "The id is not a UUID", body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn requeue_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobInfo>> {
    parse_job_id(&id)?;
    let job = state
        .queue
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("no job {id}")))?;
    if job.status != JobStatus::Dead {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_not_dead",
            format!(
                "job {id} is {}; only dead jobs can be requeued",
                job.status.as_str()
            ),
        ));
    }
    let requeued = state
        .queue
        .requeue_dead(&job.queue, std::slice::from_ref(&id), 1)
        .await?;
    if requeued.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_not_dead",
            format!("job {id} was requeued by another request"),
        ));
    }
    // Answer with the state the requeue set, not a fresh read: an idle
    // worker can fetch the job within a millisecond, and the reply would
    // then describe its next attempt instead of the requeue.
    Ok(Json(JobInfo {
        status: JobStatus::Pending,
        attempts: 0,
        error: None,
        result: None,
        updated_at_ms: orchestrator_core::now_ms(),
        ..job
    }))
}

async fn require_queue(state: &AppState, name: &str) -> ApiResult<()> {
    match state.store.queue(name).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::queue_not_found(name)),
    }
}
