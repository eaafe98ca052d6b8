//! Recurring schedules: `/api/v1/schedules`. Each pushes an ordinary job
//! to its queue on a cron expression or every `every_ms`; the scheduler
//! loop is in `crate::schedules`.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchestrator_core::{now_ms, store::schedule_entity::Model as Schedule};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::{
    error::{ApiError, ApiResult, ErrorBody, in_range, shown},
    extract::{ApiJson, ApiQuery},
    routes::jobs::resolve,
    schedules::{
        self as store, Cadence, MAX_EVERY_MS, MAX_SCHEDULES, MIN_EVERY_MS, Missed, Timing,
        interval_anchor, parse_cron, parse_rfc3339, parse_timezone, rfc3339,
    },
    state::AppState,
};

/// Due times each view lists.
const NEXT_RUNS: usize = 5;
/// Largest payload a schedule keeps (it is stored with the schedule and
/// copied into every job).
pub const MAX_PAYLOAD_BYTES: usize = 32 * 1024;
/// Longest cron expression and name.
const MAX_CRON_LEN: usize = 256;
const MAX_NAME_CHARS: usize = 128;
/// Most schedules one listing returns.
const MAX_LIST: u64 = 1_000;

/// A recurring job: exactly one of `cron` and `every_ms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// A registered queue (see `GET /api/v1/queues`).
    pub queue: String,
    /// The payload of every job pushed (at most 32 KiB as JSON).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// A cron expression: 6 fields with seconds first (`*/5 * * * * *`), or
    /// the classic 5 (minutes first).
    pub cron: Option<String>,
    /// With `cron`: the IANA time zone it is read in; default `UTC`.
    pub timezone: Option<String>,
    /// Instead of `cron`: push every this many milliseconds (100 ms to 366
    /// days), from `start_at`, or one interval after creation.
    #[schema(minimum = 100, maximum = 31622400000.0)]
    pub every_ms: Option<u64>,
    /// RFC 3339: no run before it.
    pub start_at: Option<String>,
    /// RFC 3339: no run after it; the schedule is then finished (and kept).
    pub end_at: Option<String>,
    /// Created paused: nothing is pushed until it is resumed.
    #[serde(default)]
    pub paused: bool,
    /// A due time found more than 1 s late (the fleet was down or stopped):
    /// `skip` (default) pushes nothing for it, `run_once` pushes once for
    /// the latest one.
    pub missed: Option<Missed>,
    /// Of each job, as in `POST /api/v1/jobs`: -1000 to 1000, default 0.
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    /// Of each job: 1 to 100, default from the queue.
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// A label for people (up to 128 characters).
    pub name: Option<String>,
}

/// A schedule and when it runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub id: String,
    pub name: Option<String>,
    pub queue: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub cron: Option<String>,
    /// The time zone of `cron`; null with `every_ms`.
    pub timezone: Option<String>,
    pub every_ms: Option<u64>,
    pub start_at: Option<String>,
    pub end_at: Option<String>,
    pub paused: bool,
    pub missed: Missed,
    pub priority: Option<i32>,
    pub max_attempts: Option<i32>,
    /// `active`, `paused`, or `finished` (past `end_at`).
    pub state: String,
    /// The next due time (RFC 3339); null when paused or finished.
    pub next_run_at: Option<String>,
    /// The next 5 due times, the first being `next_run_at`.
    pub next_runs: Vec<String>,
    /// The due time of the latest push.
    pub last_run_at: Option<String>,
    /// Jobs pushed so far.
    pub runs: u64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
    /// Schedules in all.
    pub total: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// How many, oldest first: 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// How many to pass over first: 0 to 10,000 (default 0).
    #[param(minimum = 0, maximum = 10000)]
    pub offset: Option<u64>,
}

/// Create a schedule.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", request_body = ScheduleRequest,
    responses(
        (status = 201, description = "The schedule", body = ScheduleView),
        (status = 422, description = "An unknown queue, a cron expression or time zone that does not parse, \
            both or neither of cron and every_ms, a field out of range, too many schedules", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ScheduleRequest>,
) -> ApiResult<(StatusCode, Json<ScheduleView>)> {
    let row = new_schedule(&state, request).await?;
    let db = state.store.connection();
    if store::count(db).await? >= MAX_SCHEDULES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_schedules",
            format!("at most {MAX_SCHEDULES} schedules may exist; delete some first"),
        ));
    }
    store::insert(db, row.clone()).await?;
    Ok((StatusCode::CREATED, Json(view(&row))))
}

/// Schedules, oldest first.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(ListQuery),
    responses((status = 200, body = ScheduleList), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<ScheduleList>> {
    let limit = query.limit.unwrap_or(100);
    in_range("limit", Some(limit), 1..=MAX_LIST)?;
    let offset = query.offset.unwrap_or(0);
    in_range("offset", Some(offset), 0..=MAX_SCHEDULES)?;
    let db = state.store.connection();
    let rows = store::list(db, limit, offset).await?;
    Ok(Json(ScheduleList {
        schedules: rows.iter().map(view).collect(),
        total: store::count(db).await?,
    }))
}

/// One schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = ScheduleView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    parse_schedule_id(&id)?;
    found(&id, store::get(state.store.connection(), &id).await?)
}

/// Pause a schedule: nothing is pushed until it is resumed.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/pause", tag = "schedules",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The schedule, paused", body = ScheduleView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    parse_schedule_id(&id)?;
    found(&id, store::pause(state.store.connection(), &id).await?)
}

/// Resume a paused schedule from now on (what fell due while it was paused
/// is not pushed).
#[utoipa::path(post, path = "/api/v1/schedules/{id}/resume", tag = "schedules",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The schedule, active (or finished)", body = ScheduleView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    parse_schedule_id(&id)?;
    found(&id, store::resume(state.store.connection(), &id).await?)
}

/// Delete a schedule; jobs it pushed stay.
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    parse_schedule_id(&id)?;
    match store::delete(state.store.connection(), &id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found(&id)),
    }
}

/// Schedule ids are the UUIDs creation returns; anything else is a client
/// error.
fn parse_schedule_id(id: &str) -> ApiResult<()> {
    match uuid::Uuid::parse_str(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_schedule_id",
            format!(
                "schedule ids are UUIDs as returned by POST /api/v1/schedules, got {:?}",
                shown(id)
            ),
        )),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("schedule_not_found", format!("no schedule {}", shown(id)))
}

fn found(id: &str, row: Option<Schedule>) -> ApiResult<Json<ScheduleView>> {
    row.map(|row| Json(view(&row))).ok_or_else(|| not_found(id))
}

/// Checks a request and makes the row it creates, its first due time set.
async fn new_schedule(state: &AppState, request: ScheduleRequest) -> ApiResult<Schedule> {
    check_text(&request)?;
    let payload = serde_json::to_string(&request.payload).map_err(anyhow::Error::from)?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ApiError::invalid(format!(
            "payload is {} bytes as JSON; a schedule's payload may be at most {MAX_PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    let start_at_ms = request
        .start_at
        .as_deref()
        .map(|raw| parse_rfc3339("start_at", raw))
        .transpose()?;
    let end_at_ms = request
        .end_at
        .as_deref()
        .map(|raw| parse_rfc3339("end_at", raw))
        .transpose()?;
    if let (Some(start), Some(end)) = (start_at_ms, end_at_ms)
        && end <= start
    {
        return Err(ApiError::invalid("end_at must be after start_at"));
    }
    let now = now_ms() as i64;
    let (cadence, timezone) = cadence(&request, start_at_ms, now)?;
    let mut row = Schedule {
        id: uuid::Uuid::now_v7().to_string(),
        name: request.name,
        queue: request.queue,
        payload,
        priority: request.priority,
        max_attempts: request.max_attempts.map(|n| n.min(i32::MAX as u32) as i32),
        cron: request.cron,
        timezone,
        every_ms: request.every_ms.map(|ms| ms as i64),
        start_at_ms,
        end_at_ms,
        paused: request.paused,
        missed: request.missed.unwrap_or_default().as_str().to_string(),
        next_run_at_ms: None,
        last_run_at_ms: None,
        runs: 0,
        created_at_ms: now,
        updated_at_ms: now,
    };
    // Every job it pushes is checked as POST /api/v1/jobs checks one.
    let probe = store::job_request(&row, None).map_err(|e| ApiError::invalid(e.to_string()))?;
    resolve(state, vec![probe]).await?;
    let timing = Timing::new(cadence, start_at_ms, end_at_ms);
    row.next_run_at_ms = timing.after(now);
    if row.next_run_at_ms.is_none() {
        let why = match (&row.cron, end_at_ms) {
            (_, Some(_)) => "end_at: no due time falls between now (or start_at) and end_at",
            (Some(_), None) => "cron: the expression never matches a time from now on",
            (None, None) => "every_ms: no due time from now on",
        };
        return Err(ApiError::invalid(why));
    }
    Ok(row)
}

/// Strings that end up in the store: no control characters (PostgreSQL
/// refuses NUL), bounded lengths.
fn check_text(request: &ScheduleRequest) -> ApiResult<()> {
    if request.queue.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_queue",
            "queue names hold no control characters; GET /api/v1/queues lists them",
        ));
    }
    if let Some(name) = &request.name {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "name must be 1 to {MAX_NAME_CHARS} characters without control characters"
            )));
        }
    }
    Ok(())
}

/// The cadence a request asks for and the time zone stored with it.
fn cadence(
    request: &ScheduleRequest,
    start_at_ms: Option<i64>,
    now: i64,
) -> ApiResult<(Cadence, Option<String>)> {
    match (&request.cron, request.every_ms) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give either cron or every_ms, not both")),
        (None, None) => Err(ApiError::invalid(
            "give cron (e.g. \"*/5 * * * * *\") or every_ms",
        )),
        (None, Some(_)) if request.timezone.is_some() => Err(ApiError::invalid(
            "timezone applies to cron only; every_ms counts real time",
        )),
        (None, Some(every_ms)) => {
            in_range("every_ms", Some(every_ms), MIN_EVERY_MS..=MAX_EVERY_MS)?;
            let every_ms = every_ms as i64;
            let anchor_ms = interval_anchor(start_at_ms, now, every_ms);
            Ok((
                Cadence::Every {
                    anchor_ms,
                    every_ms,
                },
                None,
            ))
        }
        (Some(expression), None) => {
            if expression.len() > MAX_CRON_LEN {
                return Err(ApiError::invalid(format!(
                    "cron must be at most {MAX_CRON_LEN} bytes"
                )));
            }
            let cron = parse_cron(expression).map_err(ApiError::invalid)?;
            let zone = request.timezone.as_deref().unwrap_or("UTC");
            let tz = parse_timezone(zone).map_err(ApiError::invalid)?;
            let cron = Box::new(cron);
            Ok((Cadence::Cron { cron, tz }, Some(tz.name().to_string())))
        }
    }
}

/// The view of a stored schedule.
fn view(row: &Schedule) -> ScheduleView {
    let finished = row.next_run_at_ms.is_none();
    let state = match (row.paused, finished) {
        (_, true) => "finished",
        (true, false) => "paused",
        (false, false) => "active",
    };
    let next_runs = match (state, Timing::of(row)) {
        ("active", Ok(timing)) => timing.upcoming(row.next_run_at_ms, NEXT_RUNS),
        _ => Vec::new(),
    };
    ScheduleView {
        id: row.id.clone(),
        name: row.name.clone(),
        queue: row.queue.clone(),
        payload: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
        cron: row.cron.clone(),
        timezone: row.timezone.clone(),
        every_ms: row.every_ms.map(|ms| ms as u64),
        start_at: row.start_at_ms.map(rfc3339),
        end_at: row.end_at_ms.map(rfc3339),
        paused: row.paused,
        missed: Missed::parse(&row.missed),
        priority: row.priority,
        max_attempts: row.max_attempts,
        state: state.to_string(),
        next_run_at: row.next_run_at_ms.filter(|_| !row.paused).map(rfc3339),
        next_runs: next_runs.into_iter().map(rfc3339).collect(),
        last_run_at: row.last_run_at_ms.map(rfc3339),
        runs: row.runs.max(0) as u64,
        created_at: rfc3339(row.created_at_ms),
        updated_at: rfc3339(row.updated_at_ms),
    }
}
