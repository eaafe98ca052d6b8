//! The handler trait the worker runtime runs jobs with. The engine knows no
//! queue's meaning: every queue's work, built in or the user's, comes from
//! an implementation of [`JobHandler`] registered by whoever composes the
//! process.

use std::sync::Arc;

use async_trait::async_trait;
pub use orchestrator_core::store::QueueDefaults;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{Failure, LeasedJob, MAX_LOG_LINE_BYTES, QueueBackend, Report, Retry};

/// Why one attempt failed; the message is stored on the job, and `retry`
/// says when the job may run again.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    pub retry: Retry,
}

impl JobError {
    /// A failure retried after the queue's backoff (while attempts remain).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: Retry::Backoff,
        }
    }

    /// A failure no retry can fix: the job is dead at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: Retry::Never,
        }
    }

    /// A failure to retry after `ms` milliseconds instead of the backoff.
    pub fn retry_after(message: impl Into<String>, ms: u64) -> Self {
        Self {
            message: message.into(),
            retry: Retry::After(ms),
        }
    }

    pub fn into_failure(self) -> Failure {
        Failure {
            message: self.message,
            retry: self.retry,
        }
    }
}

/// What a handler can see and say about the job it runs: whether the job
/// was cancelled, and its progress and log lines (shown by
/// `GET /api/v1/jobs/{id}`).
#[derive(Clone)]
pub struct JobContext {
    id: String,
    cancel: CancellationToken,
    backend: Option<Arc<dyn QueueBackend>>,
}

impl JobContext {
    pub fn new(id: String, cancel: CancellationToken, backend: Arc<dyn QueueBackend>) -> Self {
        Self {
            id,
            cancel,
            backend: Some(backend),
        }
    }

    /// A context that reports nowhere and is never cancelled (for running a
    /// handler outside a worker, e.g. in a test).
    pub fn detached(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            cancel: CancellationToken::new(),
            backend: None,
        }
    }

    pub fn job_id(&self) -> &str {
        &self.id
    }

    /// Completes when the job is cancelled (or its lease was lost to
    /// another worker). The runtime also stops a handler that does not
    /// look, at its next `.await`.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Records how far the job is (`fraction` from 0 to 1) with a message.
    /// Best effort: a report that cannot be stored is logged, not failed.
    pub async fn progress(&self, fraction: f64, message: &str) {
        let report = Report {
            progress: Some((fraction.clamp(0.0, 1.0), cut(message))),
            lines: Vec::new(),
        };
        self.send(report).await;
    }

    /// Appends a line to the job's log (the last 100 lines are kept).
    pub async fn log(&self, line: &str) {
        let report = Report {
            progress: None,
            lines: vec![cut(line)],
        };
        self.send(report).await;
    }

    async fn send(&self, report: Report) {
        let Some(backend) = &self.backend else { return };
        if let Err(err) = backend.report(&self.id, report).await {
            tracing::debug!(job = %self.id, "progress report failed: {err:#}");
        }
    }
}

/// `text` cut to [`MAX_LOG_LINE_BYTES`] on a character boundary.
pub fn cut(text: &str) -> String {
    if text.len() <= MAX_LOG_LINE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_LOG_LINE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Runs the jobs of one queue.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// The queue this handler serves.
    fn queue(&self) -> &str;

    /// Registry defaults for the queue.
    fn defaults(&self) -> QueueDefaults;

    /// Checks a payload before it is enqueued, so a job that can never run is
    /// refused at push time with a clear message.
    fn validate(&self, payload: &Value) -> Result<(), String>;

    /// Whether only the orchestrator itself feeds this queue (its jobs are
    /// made by workflows, packs, campaigns...); such queues refuse jobs
    /// pushed through the public API.
    fn internal(&self) -> bool {
        false
    }

    /// Runs one attempt. Handlers must be idempotent: at-least-once delivery
    /// means a job can run again after a crash.
    async fn run(&self, job: &LeasedJob, ctx: &JobContext) -> Result<Value, JobError>;
}
