//! The `inference` queue: one job per workflow task (see
//! [`crate::executor`]).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde_json::Value;

use orchestrator_queue::{JobContext, JobError, JobHandler, LeasedJob, QueueDefaults};

use crate::{INFERENCE_QUEUE, Workflows, executor};

pub struct Inference {
    /// Set once the workflow service exists (it needs the queue, which
    /// needs the handlers registered first).
    workflows: Arc<OnceLock<Arc<Workflows>>>,
}

impl Inference {
    pub fn new(workflows: Arc<OnceLock<Arc<Workflows>>>) -> Self {
        Self { workflows }
    }
}

#[async_trait]
impl JobHandler for Inference {
    fn queue(&self) -> &'static str {
        INFERENCE_QUEUE
    }

    fn internal(&self) -> bool {
        true
    }

    fn defaults(&self) -> QueueDefaults {
        // Model calls mostly wait (remote) or hold a session (local); local
        // sessions are bounded by the model's own max_concurrency.
        QueueDefaults {
            max_attempts: 3,
            backoff_ms: 1_000,
            concurrency: 8,
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        executor::parse_payload(payload).map(|_| ())
    }

    async fn run(&self, job: &LeasedJob, _ctx: &JobContext) -> Result<Value, JobError> {
        let workflows = self
            .workflows
            .get()
            .ok_or_else(|| JobError::new("workflows are not ready yet"))?;
        workflows.run_task(job).await
    }
}
