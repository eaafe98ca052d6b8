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
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            "dead" => JobStatus::Dead,
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
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
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
}

/// What a fetch returned: the leased jobs, and when the next delayed job is
/// due if nothing was ready (so an idle worker sleeps exactly that long).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub jobs: Vec<LeasedJob>,
    pub next_due_ms: Option<u64>,
    pub paused: bool,
}

/// The outcome of one attempt, reported by the worker that ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub id: String,
    /// The attempt this outcome ends (from [`LeasedJob::attempt`]).
    pub attempt: u32,
    pub outcome: Result<Value, String>,
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
        ] {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("lost"), None);
    }
}
