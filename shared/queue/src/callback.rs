//! Completion callbacks: when a job that carries a `callback_url` ends
//! (done, dead or cancelled), whoever saw it end pushes a job on the
//! internal `callbacks` queue. The engine only makes that job; POSTing it
//! to the URL is the callbacks handler's (it lives with the HTTP delivery
//! code, not here).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Ack, JobInfo, JobStatus, NewJob, QueueBackend, Retry};

/// The internal queue whose jobs tell callback URLs that a job ended.
pub const CALLBACKS_QUEUE: &str = "callbacks";
/// Attempts one callback gets: with the 1 s backoff doubling, the receiver
/// may be away for about eight minutes before the notice is dead.
pub const CALLBACK_ATTEMPTS: u32 = 10;
/// Pushes of a callback before it is given up (the store was unreachable).
const PUSH_TRIES: u32 = 5;

/// How a job ended, as its callback tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnded {
    pub id: String,
    pub queue: String,
    /// `done`, `dead` or `cancelled`.
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
}

impl JobEnded {
    /// How an acknowledged attempt ended its job; `None` when a retry follows.
    pub fn from_ack(queue: &str, ack: &Ack, max_attempts: u32) -> Option<Self> {
        let (status, result, error) = match &ack.outcome {
            Ok(value) => (JobStatus::Done, Some(value.clone()), None),
            Err(f) if f.retry == Retry::Never || ack.attempt >= max_attempts => {
                (JobStatus::Dead, None, Some(f.message.clone()))
            }
            Err(_) => return None,
        };
        Some(Self {
            id: ack.id.clone(),
            queue: queue.to_string(),
            status,
            result,
            error,
            attempts: ack.attempt,
        })
    }

    /// A stored job that has ended (e.g. just cancelled).
    pub fn of(job: &JobInfo) -> Self {
        Self {
            id: job.id.clone(),
            queue: job.queue.clone(),
            status: job.status,
            result: job.result.clone(),
            error: job.error.clone(),
            attempts: job.attempts,
        }
    }
}

/// The error a job dead by an expired last lease shows.
pub const LEASE_EXPIRED: &str = "lease expired: the worker stopped during the last attempt";

/// The callback of a job found dead because its last lease expired.
pub fn expired_callback(id: &str, queue: &str, url: &str, attempts: u32) -> NewJob {
    let ended = JobEnded {
        id: id.to_string(),
        queue: queue.to_string(),
        status: JobStatus::Dead,
        result: None,
        error: Some(LEASE_EXPIRED.to_string()),
        attempts,
    };
    callback_job(url, &ended, &format!("{id}:{attempts}"))
}

/// The job that tells `url` that a job (a [`JobEnded`]) or a workflow ended.
/// `key` names the ending (e.g. the job id and attempt): pushing the same
/// ending again, after a crash or a retried push, makes no second notice.
pub fn callback_job(url: &str, ended: &impl Serialize, key: &str) -> NewJob {
    let mut job = NewJob::new(CALLBACKS_QUEUE, json!({"url": url, "job": ended}));
    job.max_attempts = CALLBACK_ATTEMPTS;
    job.idempotency_key = Some(format!("callback:{key}"));
    job
}

/// Pushes callback jobs, retrying a few times in the background: the
/// ended jobs' outcomes are already stored, so the caller never waits for
/// (or fails because of) their notices.
pub fn push_callbacks(backend: std::sync::Arc<dyn QueueBackend>, jobs: Vec<NewJob>) {
    if jobs.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        for tried in 1..=PUSH_TRIES {
            match backend.push(jobs.clone()).await {
                Ok(_) => return,
                Err(err) if tried == PUSH_TRIES => {
                    tracing::error!(count = jobs.len(), "completion callbacks lost: {err:#}");
                }
                Err(err) => {
                    tracing::warn!("pushing completion callbacks failed: {err:#}; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Failure;

    fn ack(attempt: u32, outcome: Result<Value, Failure>) -> Ack {
        Ack {
            id: "j".into(),
            attempt,
            outcome,
        }
    }

    #[test]
    fn only_final_outcomes_end_a_job() {
        let done = JobEnded::from_ack("q", &ack(1, Ok(json!(1))), 3).unwrap();
        assert_eq!(
            (done.status, done.result),
            (JobStatus::Done, Some(json!(1)))
        );
        assert!(JobEnded::from_ack("q", &ack(1, Err(Failure::new("x"))), 3).is_none());
        let last = JobEnded::from_ack("q", &ack(3, Err(Failure::new("x"))), 3).unwrap();
        assert_eq!(
            (last.status, last.error.as_deref()),
            (JobStatus::Dead, Some("x"))
        );
        let never = Failure {
            message: "bad".into(),
            retry: Retry::Never,
        };
        let dead = JobEnded::from_ack("q", &ack(1, Err(never)), 3).unwrap();
        assert_eq!(dead.status, JobStatus::Dead);
    }

    #[test]
    fn a_callback_job_carries_the_url_and_the_ending() {
        let ended = JobEnded::from_ack("q", &ack(2, Ok(json!({"a": 1}))), 3).unwrap();
        let job = callback_job("https://example.com/cb", &ended, "j:2");
        assert_eq!(job.queue, CALLBACKS_QUEUE);
        assert_eq!(job.idempotency_key.as_deref(), Some("callback:j:2"));
        assert_eq!(job.max_attempts, CALLBACK_ATTEMPTS);
        assert_eq!(
            job.payload,
            json!({"url": "https://example.com/cb", "job": {
                "id": "j", "queue": "q", "status": "done", "result": {"a": 1}, "attempts": 2}})
        );
    }
}
