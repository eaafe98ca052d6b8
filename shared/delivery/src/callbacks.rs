//! The handler of the internal `callbacks` queue: each job tells a
//! `callback_url` that a job ended, POSTing
//! `{"id", "queue", "status", "result"?, "error"?, "attempts"}` (or a
//! workflow: `{"id", "kind": "workflow", "status", "result", "error"}`),
//! signed and retried like a target delivery.

use std::time::Duration;

use async_trait::async_trait;
use orchestrator_queue::{
    JobContext, JobError, JobHandler, LeasedJob, QueueDefaults,
    callback::{CALLBACK_ATTEMPTS, CALLBACKS_QUEUE},
};
use serde::Deserialize;
use serde_json::Value;

use crate::send::{Client, Delivery, deliver};

/// How long a callback receiver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Callbacks {
    client: Client,
}

impl Callbacks {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// A callback job's payload, as `orchestrator_queue::callback::callback_job` makes it.
#[derive(Deserialize)]
struct Notice {
    url: String,
    /// What ended: a job (`orchestrator_queue::callback::JobEnded`) or a
    /// workflow; either has an `id`.
    job: Ended,
}

#[derive(Deserialize, serde::Serialize)]
struct Ended {
    id: String,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

#[async_trait]
impl JobHandler for Callbacks {
    fn queue(&self) -> &str {
        CALLBACKS_QUEUE
    }

    fn defaults(&self) -> QueueDefaults {
        QueueDefaults {
            max_attempts: CALLBACK_ATTEMPTS,
            backoff_ms: 1_000,
            concurrency: 64,
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        Notice::deserialize(payload)
            .map(|_| ())
            .map_err(|e| format!("callback payload: {e}"))
    }

    /// Only the orchestrator makes callbacks, when a job ends.
    fn internal(&self) -> bool {
        true
    }

    async fn run(&self, job: &LeasedJob, _ctx: &JobContext) -> Result<Value, JobError> {
        let notice = Notice::deserialize(&job.payload)
            .map_err(|e| JobError::permanent(format!("callback payload: {e}")))?;
        let delivery = Delivery {
            queue: CALLBACKS_QUEUE,
            job_id: &notice.job.id,
            attempt: job.attempt,
            body: serde_json::to_vec(&notice.job).expect("JSON values serialize"),
        };
        let status = deliver(&self.client, &notice.url, &delivery, TIMEOUT).await?;
        Ok(serde_json::json!({"status": status}))
    }
}
