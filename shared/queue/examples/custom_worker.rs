//! A worker of your own, in Rust: implement [`JobHandler`] for your queue
//! and run it with the engine's worker runtime. It gets everything the
//! built-in handlers get: leases renewed while it works, retries with
//! backoff, dead-lettering, at-least-once delivery, cancellation, progress
//! and log lines, and a clean drain on Ctrl-C or SIGTERM.
//!
//! Register the queue once (`POST /api/v1/queues {"name": "word-count",
//! "handler": "custom"}`), push jobs to it through the API, and run:
//!
//! ```text
//! ORCH_REDIS_URL=redis://127.0.0.1:6379 cargo run --example custom_worker
//! ```
//!
//! It reads the same settings as `orchestrator-worker` (`ORCH_REDIS_URL`,
//! `ORCH_REDIS_PREFIX`, `ORCH_DATA_DIR` for the embedded queue file, ...).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use clap::Parser;
use orchestrator_core::config::CommonConfig;
use orchestrator_queue::{
    JobContext, JobError, JobHandler, LeasedJob, QueueDefaults,
    worker::{self, WorkerOptions},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Counts the words of `payload.text`.
struct WordCount;

#[async_trait]
impl JobHandler for WordCount {
    fn queue(&self) -> &str {
        "word-count"
    }

    fn defaults(&self) -> QueueDefaults {
        QueueDefaults {
            max_attempts: 3,
            backoff_ms: 1_000,
            concurrency: 8,
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        match payload.get("text") {
            Some(Value::String(_)) => Ok(()),
            _ => Err("payload.text must be a string".into()),
        }
    }

    async fn run(&self, job: &LeasedJob, ctx: &JobContext) -> Result<Value, JobError> {
        // A payload no retry can fix: dead at once, not retried.
        let text = job.payload["text"]
            .as_str()
            .ok_or_else(|| JobError::permanent("payload.text must be a string"))?;
        ctx.log(&format!("attempt {}: {} bytes", job.attempt, text.len()))
            .await;
        let words = text.split_whitespace().count();
        ctx.progress(1.0, "counted").await;
        Ok(json!({ "words": words }))
    }
}

#[derive(Parser)]
#[command(about = "A word-count worker built on the orchestrator-queue crate")]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,
    /// Jobs run at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let backend = orchestrator_queue::connect(&cli.common).await?;
    let shutdown = CancellationToken::new();
    orchestrator_core::shutdown::cancel_on_signal(shutdown.clone());
    let options = WorkerOptions {
        queue: WordCount.queue().to_string(),
        concurrency: cli.concurrency,
        lease: Duration::from_secs(30),
        worker_id: format!("word-count-{}", std::process::id()),
        rate_limit_per_s: None,
    };
    println!("serving queue {} (Ctrl-C to stop)", options.queue);
    worker::run(backend, Arc::new(WordCount), options, shutdown).await
}
