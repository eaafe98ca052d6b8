//! Recurring schedules: when each one falls due, the store access, and the
//! scheduler loop every API process runs to push what is due.
//!
//! Exactly one push per due time, across any number of API processes: a
//! process claims a due time with a compare-and-set on `next_run_at_ms`
//! inside a write transaction and pushes while it holds the row, so a
//! racing process finds the row moved on and pushes nothing. The push
//! carries the idempotency key `schedule:{id}:{due_ms}`, so when a process
//! dies between its push and its commit, the process that claims the same
//! due time again gets the first job back instead of a second one.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use orchestrator_core::{
    metrics as m, now_ms,
    store::{
        begin_write,
        schedule_entity::{self as schedules, Model as Schedule},
    },
    system,
};
use orchestrator_queue::NewJob;
use rand::{Rng, seq::SliceRandom};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult},
    routes::jobs::{JobRequest, resolve},
    state::AppState,
};

/// Most schedules the store keeps.
pub const MAX_SCHEDULES: u64 = 10_000;
/// Shortest and longest `every_ms`: 100 ms to 366 days.
pub const MIN_EVERY_MS: u64 = 100;
pub const MAX_EVERY_MS: u64 = 366 * 24 * 3_600_000;
/// A due time found later than this was missed (the fleet was down or
/// stopped), and the schedule's `missed` policy decides what happens.
pub const GRACE_MS: i64 = 1_000;
/// How often each process looks for due schedules, plus up to
/// [`POLL_JITTER_MS`] so processes do not all look at once.
const POLL: Duration = Duration::from_millis(100);
const POLL_JITTER_MS: u64 = 100;
/// Due schedules taken per look.
const DUE_BATCH: u64 = 200;
/// Due times one schedule may go through in one look (an interval shorter
/// than the poll catches up within the grace instead of falling behind).
const MAX_STEPS: usize = 100;

/// What a due time found late (more than [`GRACE_MS`]) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Push nothing for the missed due times; carry on from the next one.
    #[default]
    Skip,
    /// Push once, for the latest missed due time, then carry on.
    RunOnce,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run_once",
        }
    }

    /// The stored policy (`skip` for anything unknown).
    pub fn parse(raw: &str) -> Self {
        match raw {
            "run_once" => Missed::RunOnce,
            _ => Missed::Skip,
        }
    }
}

/// The due times of a schedule, without its window.
pub enum Cadence {
    /// Whole seconds matching a cron expression in a time zone.
    Cron { cron: Box<Cron>, tz: Tz },
    /// `anchor_ms + k * every_ms` for every k ≥ 0.
    Every { anchor_ms: i64, every_ms: i64 },
}

/// Reads a cron expression (5 fields, 6 with seconds first, 7 with a year
/// last).
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    expression
        .parse::<Cron>()
        .map_err(|e| format!("cron {expression:?} does not parse: {e}"))
}

/// Reads an IANA time zone name such as `Europe/Paris`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("timezone {name:?} is not an IANA time zone name (e.g. Europe/Paris)"))
}

impl Cadence {
    /// The first due time strictly after `t`.
    fn after(&self, t: i64) -> Option<i64> {
        match self {
            Cadence::Every {
                anchor_ms,
                every_ms,
            } => {
                if t < *anchor_ms {
                    return Some(*anchor_ms);
                }
                let steps = (t - anchor_ms) / every_ms + 1;
                anchor_ms.checked_add(steps.checked_mul(*every_ms)?)
            }
            // Cron times are whole seconds: the first one after the second
            // `t` falls in is the first one after `t`.
            Cadence::Cron { cron, tz } => {
                let from = tz
                    .timestamp_millis_opt(t.div_euclid(1000) * 1000)
                    .single()?;
                let next = cron.find_next_occurrence(&from, false).ok()?;
                Some(next.timestamp_millis())
            }
        }
    }

    /// The latest due time at or before `t`.
    fn at_or_before(&self, t: i64) -> Option<i64> {
        match self {
            Cadence::Every {
                anchor_ms,
                every_ms,
            } => (t >= *anchor_ms).then(|| anchor_ms + (t - anchor_ms) / every_ms * every_ms),
            Cadence::Cron { cron, tz } => {
                let from = tz
                    .timestamp_millis_opt(t.div_euclid(1000) * 1000)
                    .single()?;
                let previous = cron.find_previous_occurrence(&from, true).ok()?;
                Some(previous.timestamp_millis())
            }
        }
    }
}

/// A schedule's due times inside its window (`start_at` to `end_at`).
pub struct Timing {
    cadence: Cadence,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
}

impl Timing {
    pub fn new(cadence: Cadence, start_ms: Option<i64>, end_ms: Option<i64>) -> Self {
        Self {
            cadence,
            start_ms,
            end_ms,
        }
    }

    /// The timing a stored schedule was created with.
    pub fn of(row: &Schedule) -> anyhow::Result<Self> {
        let cadence = match (&row.cron, row.every_ms) {
            (Some(expression), _) => Cadence::Cron {
                cron: Box::new(parse_cron(expression).map_err(anyhow::Error::msg)?),
                tz: parse_timezone(row.timezone.as_deref().unwrap_or("UTC"))
                    .map_err(anyhow::Error::msg)?,
            },
            (None, Some(every_ms)) if every_ms > 0 => Cadence::Every {
                anchor_ms: interval_anchor(row.start_at_ms, row.created_at_ms, every_ms),
                every_ms,
            },
            _ => anyhow::bail!("schedule {} has neither cron nor every_ms", row.id),
        };
        Ok(Self::new(cadence, row.start_at_ms, row.end_at_ms))
    }

    /// The first due time strictly after `t` (and not before `start_at`);
    /// `None` past `end_at`.
    pub fn after(&self, t: i64) -> Option<i64> {
        let from = match self.start_ms {
            Some(start) => t.max(start - 1),
            None => t,
        };
        self.cadence.after(from).filter(|due| self.in_window(*due))
    }

    /// The latest due time at or before `t` inside the window.
    fn latest(&self, t: i64) -> Option<i64> {
        let until = self.end_ms.map_or(t, |end| t.min(end));
        self.cadence
            .at_or_before(until)
            .filter(|due| self.in_window(*due))
    }

    fn in_window(&self, due: i64) -> bool {
        self.start_ms.is_none_or(|start| due >= start) && self.end_ms.is_none_or(|end| due <= end)
    }

    /// Up to `count` due times from `first` (itself a due time) on.
    pub fn upcoming(&self, first: Option<i64>, count: usize) -> Vec<i64> {
        std::iter::successors(first, |due| self.after(*due))
            .take(count)
            .collect()
    }
}

/// Where an interval's due times start: at `start_at`, or one interval
/// after the schedule was created.
pub fn interval_anchor(start_ms: Option<i64>, created_ms: i64, every_ms: i64) -> i64 {
    start_ms.unwrap_or(created_ms + every_ms)
}

/// What claiming one due time does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    /// The due time pushed (its job's idempotency key), if any.
    push: Option<i64>,
    /// The due time after it; `None`: the schedule is finished.
    next: Option<i64>,
}

/// Decides what to do with due time `due` found at `now`: push it when on
/// time; when found late, push nothing (`skip`) or once for the latest
/// missed due time (`run_once`), and carry on from the first due time after
/// `now`.
fn step(timing: &Timing, missed: Missed, due: i64, now: i64) -> Step {
    if now - due <= GRACE_MS {
        return Step {
            push: Some(due),
            next: timing.after(due),
        };
    }
    let push = match missed {
        Missed::Skip => None,
        // `due` itself was missed, so the latest is never before it.
        Missed::RunOnce => Some(timing.latest(now).unwrap_or(due).max(due)),
    };
    Step {
        push,
        next: timing.after(now),
    }
}

// ---- Store access ----------------------------------------------------------

pub async fn insert(db: &DatabaseConnection, row: Schedule) -> anyhow::Result<()> {
    schedules::Entity::insert(row.into_active_model())
        .exec(db)
        .await?;
    Ok(())
}

pub async fn count(db: &DatabaseConnection) -> anyhow::Result<u64> {
    Ok(schedules::Entity::find().count(db).await?)
}

/// A page of schedules, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    limit: u64,
    offset: u64,
) -> anyhow::Result<Vec<Schedule>> {
    Ok(schedules::Entity::find()
        .order_by_asc(schedules::Column::CreatedAtMs)
        .order_by_asc(schedules::Column::Id)
        .limit(limit)
        .offset(offset)
        .all(db)
        .await?)
}

pub async fn get(db: &DatabaseConnection, id: &str) -> anyhow::Result<Option<Schedule>> {
    Ok(schedules::Entity::find_by_id(id.to_string())
        .one(db)
        .await?)
}

/// Removes a schedule; false when there was none.
pub async fn delete(db: &DatabaseConnection, id: &str) -> anyhow::Result<bool> {
    let deleted = schedules::Entity::delete_by_id(id.to_string())
        .exec(db)
        .await?;
    Ok(deleted.rows_affected == 1)
}

/// Pauses a schedule (its due time is kept but no process claims it).
pub async fn pause(db: &DatabaseConnection, id: &str) -> anyhow::Result<Option<Schedule>> {
    schedules::Entity::update_many()
        .col_expr(schedules::Column::Paused, Expr::value(true))
        .col_expr(schedules::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(schedules::Column::Id.eq(id))
        .filter(schedules::Column::Paused.eq(false))
        .exec(db)
        .await?;
    get(db, id).await
}

/// Resumes a paused schedule from now on: what fell due while it was
/// paused is not run.
pub async fn resume(db: &DatabaseConnection, id: &str) -> anyhow::Result<Option<Schedule>> {
    let tx = begin_write(db).await?;
    let Some(row) = schedules::Entity::find_by_id(id.to_string())
        .one(&tx)
        .await?
    else {
        return Ok(None);
    };
    if row.paused {
        let next = Timing::of(&row)?.after(now_ms() as i64);
        let mut active = row.into_active_model();
        active.paused = sea_orm::Set(false);
        active.next_run_at_ms = sea_orm::Set(next);
        active.updated_at_ms = sea_orm::Set(now_ms() as i64);
        active.update(&tx).await?;
    }
    tx.commit().await?;
    get(db, id).await
}

/// Schedules due at `now` and not paused, earliest first.
async fn due(db: &DatabaseConnection, now: i64) -> anyhow::Result<Vec<Schedule>> {
    Ok(schedules::Entity::find()
        .filter(schedules::Column::NextRunAtMs.lte(now))
        .filter(schedules::Column::Paused.eq(false))
        .order_by_asc(schedules::Column::NextRunAtMs)
        .limit(DUE_BATCH)
        .all(db)
        .await?)
}

// ---- The scheduler loop ----------------------------------------------------

/// Runs the scheduler in this process until `shutdown`.
pub fn spawn(state: AppState, shutdown: CancellationToken) {
    let stop = shutdown.clone();
    orchestrator_core::supervise::spawn("scheduler", shutdown, move || {
        run(state.clone(), stop.clone())
    });
}

async fn run(state: AppState, shutdown: CancellationToken) {
    loop {
        let jitter = rand::rng().random_range(0..POLL_JITTER_MS);
        tokio::select! {
            _ = tokio::time::sleep(POLL + Duration::from_millis(jitter)) => {}
            _ = shutdown.cancelled() => return,
        }
        // While the system is stopped nothing is pushed; what falls due
        // meanwhile meets the missed policy once it runs again.
        if !system::current().runs_work() {
            continue;
        }
        if let Err(err) = tick(&state).await {
            tracing::warn!("scheduler: {err:#}");
        }
    }
}

async fn tick(state: &AppState) -> anyhow::Result<()> {
    let mut rows = due(state.store.connection(), now_ms() as i64).await?;
    // Processes go through the due schedules in different orders, so they
    // share the work instead of queueing behind each other's row locks.
    rows.shuffle(&mut rand::rng());
    for row in rows {
        let id = row.id.clone();
        if let Err(err) = run_schedule(state, row).await {
            tracing::warn!(schedule = %id, "scheduler: {err:#}");
        }
    }
    Ok(())
}

/// Claims and pushes the due times of one schedule until its next one is
/// in the future or another process holds it.
async fn run_schedule(state: &AppState, mut row: Schedule) -> anyhow::Result<()> {
    let timing = match Timing::of(&row) {
        Ok(timing) => timing,
        Err(err) => {
            tracing::error!(schedule = %row.id, "cannot read its timing, not run: {err:#}");
            return Ok(());
        }
    };
    let missed = Missed::parse(&row.missed);
    for _ in 0..MAX_STEPS {
        let now = now_ms() as i64;
        let Some(due) = row.next_run_at_ms.filter(|due| *due <= now) else {
            return Ok(());
        };
        if !system::current().runs_work() {
            return Ok(());
        }
        let mut step = step(&timing, missed, due, now);
        let job = match step.push {
            Some(at) => job_for(state, &row, at).await?,
            None => None,
        };
        if job.is_none() {
            step.push = None;
        }
        if !claim(state, &row, due, step, job).await? {
            return Ok(());
        }
        row.next_run_at_ms = step.next;
    }
    Ok(())
}

/// The job pushed for due time `at`, with the defaults and checks of
/// `POST /api/v1/jobs`; `None` when they refuse it now (its queue was
/// removed, say), so the due time passes without a push.
async fn job_for(state: &AppState, row: &Schedule, at: i64) -> anyhow::Result<Option<NewJob>> {
    let request = job_request(row, Some(at))?;
    match resolve(state, vec![request]).await {
        Ok(mut jobs) => Ok(jobs.pop()),
        Err(err) if err.status.is_client_error() => {
            tracing::warn!(schedule = %row.id, "due time passes without a push: {}", err.message);
            Ok(None)
        }
        Err(err) => anyhow::bail!("{}", err.message),
    }
}

/// The `POST /api/v1/jobs` body a schedule pushes for due time `at` (or a
/// stand-in key when only checking it).
pub fn job_request(row: &Schedule, at: Option<i64>) -> anyhow::Result<JobRequest> {
    let payload: serde_json::Value = serde_json::from_str(&row.payload)?;
    let key = match at {
        Some(at) => format!("schedule:{}:{at}", row.id),
        None => format!("schedule:{}:check", row.id),
    };
    let mut body = json!({"queue": row.queue, "payload": payload, "idempotency_key": key});
    if let Some(priority) = row.priority {
        body["priority"] = json!(priority);
    }
    if let Some(max_attempts) = row.max_attempts {
        body["max_attempts"] = json!(max_attempts);
    }
    Ok(serde_json::from_value(body)?)
}

/// Claims `due` (moves `next_run_at_ms` from it to `step.next`) and pushes
/// `job` while holding the row. False when another process claimed it
/// first, or the schedule was paused or removed meanwhile.
async fn claim(
    state: &AppState,
    row: &Schedule,
    due: i64,
    step: Step,
    job: Option<NewJob>,
) -> anyhow::Result<bool> {
    // Here only: its `max`/`min` would shadow the integers' elsewhere.
    use sea_orm::sea_query::ExprTrait;
    let db = state.store.connection();
    let tx = begin_write(db).await?;
    let mut update = schedules::Entity::update_many()
        .col_expr(schedules::Column::NextRunAtMs, Expr::value(step.next))
        .col_expr(schedules::Column::UpdatedAtMs, Expr::value(now_ms() as i64));
    if let Some(at) = step.push {
        update = update
            .col_expr(schedules::Column::LastRunAtMs, Expr::value(at))
            .col_expr(
                schedules::Column::Runs,
                Expr::col(schedules::Column::Runs).add(1),
            );
    }
    let claimed = update
        .filter(schedules::Column::Id.eq(row.id.as_str()))
        .filter(schedules::Column::NextRunAtMs.eq(due))
        .filter(schedules::Column::Paused.eq(false))
        .exec(&tx)
        .await?;
    if claimed.rows_affected != 1 {
        return Ok(false);
    }
    // A failed push drops the transaction: the due time stays unclaimed
    // and is tried again at the next look.
    if let Some(job) = job {
        push(state, job).await?;
    }
    tx.commit().await?;
    if step.push.is_some() {
        metrics::counter!(m::SCHEDULE_RUNS, "queue" => row.queue.clone()).increment(1);
    }
    Ok(true)
}

async fn push(state: &AppState, job: NewJob) -> anyhow::Result<()> {
    let queue = job.queue.clone();
    let pushed = state.queue.push(vec![job]).await?;
    if pushed.iter().any(|p| !p.duplicate) {
        metrics::counter!(m::JOBS_ENQUEUED, "queue" => queue).increment(1);
    }
    Ok(())
}

// ---- Times as the API shows them -------------------------------------------

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An RFC 3339 timestamp as milliseconds since the epoch, naming `field`
/// when it does not parse or is before 1970.
pub fn parse_rfc3339(field: &str, raw: &str) -> ApiResult<i64> {
    let parsed = DateTime::parse_from_rfc3339(raw).map_err(|e| {
        ApiError::invalid(format!(
            "{field} must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z ({e})"
        ))
    })?;
    let ms = parsed.timestamp_millis();
    if ms < 0 {
        return Err(ApiError::invalid(format!("{field} must be after 1970")));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(anchor_ms: i64, every_ms: i64) -> Timing {
        Timing::new(
            Cadence::Every {
                anchor_ms,
                every_ms,
            },
            None,
            None,
        )
    }

    fn cron(expression: &str, tz: &str) -> Timing {
        Timing::new(
            Cadence::Cron {
                cron: Box::new(parse_cron(expression).unwrap()),
                tz: parse_timezone(tz).unwrap(),
            },
            None,
            None,
        )
    }

    #[test]
    fn intervals_count_from_their_anchor() {
        let timing = every(10_000, 1_000);
        assert_eq!(timing.after(0), Some(10_000));
        assert_eq!(timing.after(10_000), Some(11_000));
        assert_eq!(timing.after(10_999), Some(11_000));
        assert_eq!(timing.latest(10_999), Some(10_000));
        assert_eq!(timing.latest(9_999), None);
        assert_eq!(
            timing.upcoming(Some(10_000), 3),
            vec![10_000, 11_000, 12_000]
        );
    }

    #[test]
    fn cron_times_are_whole_seconds_in_their_time_zone() {
        let timing = cron("*/5 * * * * *", "UTC");
        assert_eq!(timing.after(1_000), Some(5_000));
        assert_eq!(timing.after(5_000), Some(10_000));
        assert_eq!(timing.after(4_999), Some(5_000));
        assert_eq!(timing.latest(9_999), Some(5_000));
        // 09:00 in Paris is 08:00 UTC in winter.
        let paris = cron("0 0 9 * * *", "Europe/Paris");
        let jan_1 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(paris.after(jan_1), Some(jan_1 + 8 * 3_600_000));
    }

    #[test]
    fn five_field_cron_is_read_as_minutes() {
        let timing = cron("* * * * *", "UTC");
        assert_eq!(timing.after(1_000), Some(60_000));
    }

    #[test]
    fn a_cron_that_never_fires_has_no_due_time() {
        let timing = cron("0 0 0 30 2 *", "UTC");
        assert_eq!(timing.after(0), None);
    }

    #[test]
    fn the_window_bounds_due_times() {
        let timing = Timing::new(
            Cadence::Every {
                anchor_ms: 5_000,
                every_ms: 1_000,
            },
            Some(5_000),
            Some(7_000),
        );
        assert_eq!(timing.after(0), Some(5_000));
        assert_eq!(timing.after(6_000), Some(7_000));
        assert_eq!(timing.after(7_000), None);
        assert_eq!(timing.latest(60_000), Some(7_000));
        let cron = Timing::new(
            Cadence::Cron {
                cron: Box::new(parse_cron("* * * * * *").unwrap()),
                tz: Tz::UTC,
            },
            Some(3_500),
            None,
        );
        assert_eq!(cron.after(0), Some(4_000));
    }

    #[test]
    fn on_time_due_times_are_pushed_and_late_ones_meet_the_policy() {
        let timing = every(0, 1_000);
        let on_time = step(&timing, Missed::Skip, 5_000, 5_900);
        assert_eq!(
            on_time,
            Step {
                push: Some(5_000),
                next: Some(6_000)
            }
        );
        let skipped = step(&timing, Missed::Skip, 5_000, 8_500);
        assert_eq!(
            skipped,
            Step {
                push: None,
                next: Some(9_000)
            }
        );
        let once = step(&timing, Missed::RunOnce, 5_000, 8_500);
        assert_eq!(
            once,
            Step {
                push: Some(8_000),
                next: Some(9_000)
            }
        );
    }
}
