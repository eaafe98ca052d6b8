//! `orchestrator-bench`: noop jobs/s through the queue engine, pushed in
//! batches and then processed by an in-process apalis worker, on the
//! embedded SQLite backend and/or Redis.
//!
//! ```text
//! cargo run --release -p orchestrator-tests --bin orchestrator-bench -- --jobs 100000
//! ```

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use orchestrator_shared::{
    jobs::Noop,
    queue::{NewJob, QueueBackend, redis::RedisBackend, sqlite::SqliteBackend, worker},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Embedded,
    Redis,
    Both,
}

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator-bench",
    about = "Noop job throughput of the queue backends"
)]
struct Cli {
    /// Backends to measure.
    #[arg(long, value_enum, default_value = "both")]
    backend: Which,
    /// Jobs per run.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    jobs: u64,
    /// Jobs per push call.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Jobs the worker runs at once.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Redis to measure against.
    #[arg(long, env = "ORCH_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!(
        "noop jobs: {}, push batch: {}, worker concurrency: {}",
        cli.jobs, cli.batch, cli.concurrency
    );
    println!(
        "{:<10} {:>14} {:>16}",
        "backend", "pushed jobs/s", "processed jobs/s"
    );
    if matches!(cli.backend, Which::Embedded | Which::Both) {
        let dir =
            std::env::temp_dir().join(format!("orch-bench-{}", uuid::Uuid::now_v7().simple()));
        let backend = Arc::new(SqliteBackend::open(&dir.join("queue.db")).await?);
        measure("embedded", backend, &cli).await?;
        let _ = std::fs::remove_dir_all(dir);
    }
    if matches!(cli.backend, Which::Redis | Which::Both) {
        let prefix = format!("bench-{}", uuid::Uuid::now_v7().simple());
        let backend = Arc::new(RedisBackend::connect(&cli.redis_url, &prefix).await?);
        measure("redis", backend, &cli).await?;
        println!("(keys left under {prefix}:* in Redis; FLUSHDB a scratch Redis to drop them)");
    }
    Ok(())
}

async fn measure(name: &str, backend: Arc<dyn QueueBackend>, cli: &Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pushed = 0;
    while pushed < cli.jobs {
        let n = cli.batch.min(cli.jobs - pushed);
        let jobs = (0..n).map(|_| NewJob {
            queue: "noop".into(),
            payload: Value::Null,
            priority: 0,
            max_attempts: 3,
            backoff_ms: 1_000,
            idempotency_key: None,
            delay_ms: 0,
        });
        backend.push(jobs.collect()).await?;
        pushed += n;
    }
    let push_rate = cli.jobs as f64 / started.elapsed().as_secs_f64();

    let shutdown = CancellationToken::new();
    let options = worker::WorkerOptions {
        queue: "noop".into(),
        concurrency: cli.concurrency as usize,
        lease: Duration::from_secs(30),
        worker_id: format!("bench-{}", uuid::Uuid::now_v7().simple()),
        rate_limit_per_s: None,
    };
    let started = Instant::now();
    let run = tokio::spawn(worker::run(
        backend.clone(),
        Arc::new(Noop),
        options,
        shutdown.clone(),
    ));
    loop {
        let counts = backend.counts("noop").await?;
        if counts.done >= cli.jobs {
            break;
        }
        anyhow::ensure!(!run.is_finished(), "the worker stopped with {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let process_rate = cli.jobs as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    run.await??;
    println!("{name:<10} {push_rate:>14.0} {process_rate:>16.0}");
    Ok(())
}
