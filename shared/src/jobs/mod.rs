//! Job handlers: one module per built-in queue, each implementing
//! [`JobHandler`]. Registering a queue is one line in [`builtin`].

mod embed;
mod inference;
mod noop;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde_json::Value;

pub use embed::{EMBED_QUEUE, Embed};
pub use inference::Inference;
pub use noop::Noop;

use crate::{
    memory::Memory,
    queue::LeasedJob,
    workflow::{INFERENCE_QUEUE, Workflows},
};

/// Why one attempt failed; the message is stored on the job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub String);

/// Defaults a queue is created with in the registry.
#[derive(Debug, Clone, Copy)]
pub struct QueueDefaults {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub concurrency: u32,
}

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

    /// Runs one attempt. Handlers must be idempotent: at-least-once delivery
    /// means a job can run again after a crash.
    async fn run(&self, job: &LeasedJob) -> Result<Value, JobError>;
}

/// Names of the built-in queues, for validating flags before anything opens.
pub const QUEUES: [&str; 3] = ["noop", EMBED_QUEUE, INFERENCE_QUEUE];

/// Every built-in queue's handler.
pub fn builtin(
    memory: &Arc<Memory>,
    workflows: &Arc<OnceLock<Arc<Workflows>>>,
) -> Vec<Arc<dyn JobHandler>> {
    vec![
        Arc::new(Noop),
        Arc::new(Embed::new(memory.clone())),
        Arc::new(Inference::new(workflows.clone())),
    ]
}
