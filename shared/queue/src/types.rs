//! The job envelope and the records backends exchange with their callers.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Highest and lowest priority a job may have; higher runs first.
pub const MAX_PRIORITY: i32 = 1_000;
pub const MIN_PRIORITY: i32 = -1_000;
/// Most attempts a job may be given before it is dead.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest delay a push may ask for: 30 days.
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3_600_000;
/// Longest retry backoff between two attempts: one hour.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// A job to enqueue, with every default already resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub queue: String,
    pub payload: Value,
    pub priority: i32,
    pub max_attempts: u32,
    /// First retry delay; each further retry doubles it (capped at
    /// [`MAX_BACKOFF_MS`]).
    pub backoff_ms: u64,
    pub idempotency_key: Option<String>,
    pub delay_ms: u64,
    /// Jobs sharing a key (a tenant, a user) take turns: at most the queue's
    /// `max_per_key` of them run at once, so one key's flood cannot starve
    /// the others.
    pub concurrency_key: Option<String>,
    /// Told (signed POST) when the job ends: done, dead or cancelled.
    pub callback_url: Option<String>,
}

impl NewJob {
    /// A job with the engine's defaults: priority 0, 3 attempts, 1 s backoff.
    pub fn new(queue: impl Into<String>, payload: Value) -> Self {
        Self {
            queue: queue.into(),
            payload,
            priority: 0,
            max_attempts: 3,
            backoff_ms: 1_000,
            idempotency_key: None,
            delay_ms: 0,
            concurrency_key: None,
            callback_url: None,
        }
    }
}

/// The answer to one pushed job: its id, and whether an earlier push with the
/// same idempotency key already created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub id: String,
    pub duplicate: bool,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting to run (due now, or delayed until `run_at`).
    Pending,
    /// Leased to a worker.
    Running,
    /// Finished successfully.
    Done,
    /// The last attempt failed; a retry is scheduled.
    Failed,
    /// Every attempt failed; kept for inspection and re-queueing.
    Dead,
    /// Cancelled before it finished; never runs again.
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            "dead" => JobStatus::Dead,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }
}

/// Everything known about one job.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub queue: String,
    pub status: JobStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    pub priority: i32,
    #[schema(value_type = Object)]
    pub payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last progress the handler reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The handler's last log lines, oldest first (at most
    /// [`MAX_LOG_LINES`] lines and [`MAX_LOG_BYTES`] bytes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// When a running job's lease ends unless its worker renews it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl JobStatus {
    /// Whether the job has ended for good (done, dead or cancelled).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Dead | JobStatus::Cancelled
        )
    }
}

/// How far a running job is, as its handler last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// From 0 to 1.
    pub fraction: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub at_ms: u64,
}

/// Log lines kept per job.
pub const MAX_LOG_LINES: usize = 100;
/// Log bytes kept per job (the oldest lines go first).
pub const MAX_LOG_BYTES: usize = 64 * 1024;
/// Longest log line or progress message; longer ones are cut.
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;
/// Longest concurrency key.
pub const MAX_CONCURRENCY_KEY_LEN: usize = 128;

/// Per-queue engine settings (from the queue registry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// Most jobs of one concurrency key running at once; `None`: no limit
    /// (keys still take turns).
    pub max_per_key: Option<u32>,
    /// How long done jobs stay readable (default 24 h).
    pub keep_done_ms: Option<u64>,
    /// How long dead and cancelled jobs stay (default: until requeued or
    /// purged).
    pub keep_dead_ms: Option<u64>,
    /// Forget a job as soon as it is done (its status then reads as unknown).
    pub remove_on_complete: bool,
}

impl From<&orchestrator_core::store::QueueSettings> for QueueOptions {
    fn from(settings: &orchestrator_core::store::QueueSettings) -> Self {
        Self {
            max_per_key: settings.max_per_key.map(|m| m.max(1) as u32),
            keep_done_ms: settings.keep_done_ms.map(|ms| ms.max(0) as u64),
            keep_dead_ms: settings.keep_dead_ms.map(|ms| ms.max(0) as u64),
            remove_on_complete: settings.remove_on_complete,
        }
    }
}

/// What a handler reports about its running job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub progress: Option<(f64, String)>,
    pub lines: Vec<String>,
}

/// What cancelling a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting, delayed or running (the status it had); it is now
    /// `cancelled` and never starts again.
    Now(JobStatus),
    /// It had already ended with this status; nothing changed.
    AlreadyFinal(JobStatus),
    NotFound,
}

/// A job handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedJob {
    pub id: String,
    pub queue: String,
    pub payload: Value,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// What a fetch returned: the leased jobs, and when the next delayed job is
/// due if nothing was ready (so an idle worker sleeps exactly that long).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub jobs: Vec<LeasedJob>,
    pub next_due_ms: Option<u64>,
    pub paused: bool,
    /// Callback jobs of jobs found dead because their last lease expired
    /// (no worker acknowledged them): the fetcher pushes them.
    pub callbacks: Vec<NewJob>,
}

/// The outcome of one attempt, reported by the worker that ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub id: String,
    /// The attempt this outcome ends (from [`LeasedJob::attempt`]).
    pub attempt: u32,
    pub outcome: Result<Value, Failure>,
}

/// A failed attempt: what went wrong and when (if ever) to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    pub retry: Retry,
}

impl Failure {
    /// A failure retried after the queue's backoff.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: Retry::Backoff,
        }
    }
}

/// When a failed job runs again (while it has attempts left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// After the queue's exponential backoff.
    Backoff,
    /// After this many milliseconds (a `Retry-After` the target asked for),
    /// capped at [`MAX_BACKOFF_MS`].
    After(u64),
    /// Never: the job is dead at once (the input can never succeed).
    Never,
}

/// Live counts for one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueueCounts {
    /// Jobs waiting, due or delayed (including retries not yet due).
    pub pending: u64,
    /// Jobs leased to workers.
    pub running: u64,
    /// Jobs finished successfully (running total).
    pub done: u64,
    /// Attempts that failed (running total, retried or not).
    pub failed: u64,
    /// Jobs that used up their attempts.
    pub dead: u64,
    /// Jobs cancelled (kept until purged or past retention).
    pub cancelled: u64,
    /// Worker processes that served this queue in the last 15 seconds.
    pub workers: u64,
}

/// How long a worker registration counts as live without a heartbeat.
pub const WORKER_LIVENESS_MS: u64 = 15_000;

/// Backoff before retry number `attempt` (1-based): `base * 2^(attempt-1)`,
/// capped at [`MAX_BACKOFF_MS`].
pub fn retry_delay_ms(base_ms: u64, attempt: u32) -> u64 {
    let factor = 1u64 << attempt.saturating_sub(1).min(30);
    base_ms.saturating_mul(factor).min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_delay_ms(100, 1), 100);
        assert_eq!(retry_delay_ms(100, 2), 200);
        assert_eq!(retry_delay_ms(100, 5), 1_600);
        assert_eq!(retry_delay_ms(1_000, 40), MAX_BACKOFF_MS);
    }

    #[test]
    fn status_round_trips() {
        for status in [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Done,
            JobStatus::Failed,
            JobStatus::Dead,
            JobStatus::Cancelled,
        ] {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("lost"), None);
    }
}
