//! The handler of an `http` queue: each job is POSTed to the queue's
//! target as `{"id", "queue", "attempt", "payload"}`, and the target's
//! answer decides the job (see [`crate::send`]).

use std::time::Duration;

use async_trait::async_trait;
use orchestrator_core::store::QueueSettings;
use orchestrator_queue::{JobContext, JobError, JobHandler, LeasedJob, QueueDefaults};
use serde_json::{Value, json};

use crate::send::{Client, Delivery, deliver};

/// How long a target may take when its queue names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpTarget {
    queue: String,
    url: String,
    timeout: Duration,
    defaults: QueueDefaults,
    client: Client,
}

impl HttpTarget {
    /// The handler of registry queue `settings` (its handler is `http`).
    pub fn new(settings: &QueueSettings, client: Client) -> anyhow::Result<Self> {
        let Some(url) = settings.target_url.clone() else {
            anyhow::bail!(
                "queue {} is an http queue without a target_url",
                settings.name
            );
        };
        let timeout = settings.target_timeout_ms.map_or(DEFAULT_TIMEOUT, |ms| {
            Duration::from_millis(ms.max(1) as u64)
        });
        Ok(Self {
            queue: settings.name.clone(),
            url,
            timeout,
            defaults: QueueDefaults {
                max_attempts: settings.max_attempts.max(1) as u32,
                backoff_ms: settings.backoff_ms.max(0) as u64,
                concurrency: settings.concurrency.max(1) as u32,
            },
            client,
        })
    }
}

#[async_trait]
impl JobHandler for HttpTarget {
    fn queue(&self) -> &str {
        &self.queue
    }

    fn defaults(&self) -> QueueDefaults {
        self.defaults
    }

    /// Any JSON: the target judges its own input (a 4xx makes the job dead).
    fn validate(&self, _payload: &Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, job: &LeasedJob, _ctx: &JobContext) -> Result<Value, JobError> {
        let body = json!({
            "id": job.id,
            "queue": job.queue,
            "attempt": job.attempt,
            "payload": job.payload,
        });
        let delivery = Delivery {
            queue: &self.queue,
            job_id: &job.id,
            attempt: job.attempt,
            body: serde_json::to_vec(&body).expect("JSON values serialize"),
        };
        let status = deliver(&self.client, &self.url, &delivery, self.timeout).await?;
        Ok(json!({"status": status}))
    }
}
