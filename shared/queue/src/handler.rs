//! The handler trait the worker runtime runs jobs with. The engine knows no
//! queue's meaning: every queue's work, built in or the user's, comes from
//! an implementation of [`JobHandler`] registered by whoever composes the
//! process.

use async_trait::async_trait;
pub use orchestrator_core::store::QueueDefaults;
use serde_json::Value;

use crate::LeasedJob;

/// Why one attempt failed; the message is stored on the job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub String);

/// Runs the jobs of one queue.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// The queue this handler serves.
    fn queue(&self) -> &'static str;

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
    async fn run(&self, job: &LeasedJob) -> Result<Value, JobError>;
}
