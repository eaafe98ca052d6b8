//! `orchestrator-bench`: queue engine figures, printed as JSON lines.
//!
//! - `backlog`: push N noop jobs, then drain them with an in-process worker
//!   (embedded SQLite and/or Redis).
//! - `e2e`: one producer (this process) pushing batches while K real
//!   `orchestrator-worker` processes run the jobs, timed from the first push
//!   until every job is done.
//! - `latency`: an idle worker; single pushes; push-to-start delay.
//! - `footprint`: Redis bytes per pending job with N jobs waiting.
//!
//! `deploy/scripts/bench.sh` runs them next to the BullMQ bench.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use orchestrator_queue::{
    JobStatus, NewJob, Noop, QueueBackend, redis::RedisBackend, sqlite::SqliteBackend, worker,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

// The allocator the API and worker binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "orchestrator-bench", about = "Queue engine benchmarks")]
struct Cli {
    /// Redis to measure against.
    #[arg(
        long,
        env = "ORCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    redis_url: String,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Push N jobs with no worker, then drain them in-process.
    Backlog {
        #[arg(long, value_enum, default_value = "both")]
        backend: Which,
        #[arg(long, default_value_t = 100_000, value_parser = jobs_range())]
        jobs: u64,
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        concurrency: u64,
    },
    /// One producer and K worker processes, concurrently, through Redis.
    E2e {
        #[arg(long, default_value_t = 200_000, value_parser = jobs_range())]
        jobs: u64,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        workers: u64,
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        concurrency: u64,
        /// Redis key prefix (default: a fresh one), so an API on the same
        /// prefix sees the load.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Push-to-start delay of single jobs to an idle worker.
    Latency {
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=100_000))]
        samples: u64,
    },
    /// Redis memory per pending job.
    Footprint {
        #[arg(long, default_value_t = 1_000_000, value_parser = jobs_range())]
        jobs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Embedded,
    Redis,
    Both,
}

fn jobs_range() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=10_000_000)
}

const BATCH: u64 = 1_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Bench::Backlog {
            backend,
            jobs,
            concurrency,
        } => {
            if matches!(backend, Which::Embedded | Which::Both) {
                let dir = std::env::temp_dir()
                    .join(format!("orch-bench-{}", uuid::Uuid::now_v7().simple()));
                let queue = Arc::new(SqliteBackend::open(&dir.join("queue.db")).await?);
                backlog("embedded", queue, jobs, concurrency).await?;
                let _ = std::fs::remove_dir_all(dir);
            }
            if matches!(backend, Which::Redis | Which::Both) {
                let queue =
                    Arc::new(RedisBackend::connect(&cli.redis_url, &unique_prefix()).await?);
                backlog("redis", queue.clone(), jobs, concurrency).await?;
                queue.purge().await?;
            }
        }
        Bench::E2e {
            jobs,
            workers,
            concurrency,
            prefix,
        } => {
            let prefix = prefix.unwrap_or_else(unique_prefix);
            e2e(&cli.redis_url, &prefix, jobs, workers, concurrency).await?
        }
        Bench::Latency { samples } => latency(&cli.redis_url, samples).await?,
        Bench::Footprint { jobs } => footprint(&cli.redis_url, jobs).await?,
    }
    Ok(())
}

fn unique_prefix() -> String {
    format!("bench-{}", uuid::Uuid::now_v7().simple())
}

fn noop_jobs(n: u64) -> Vec<NewJob> {
    (0..n).map(|_| NewJob::new("noop", Value::Null)).collect()
}

async fn push_all(queue: &Arc<dyn QueueBackend>, jobs: u64) -> anyhow::Result<()> {
    // A few batches in flight, as a busy producer would have.
    let mut in_flight = JoinSet::new();
    let mut sent = 0;
    while sent < jobs {
        let n = BATCH.min(jobs - sent);
        let queue = queue.clone();
        in_flight.spawn(async move { queue.push(noop_jobs(n)).await.map(|_| ()) });
        sent += n;
        if in_flight.len() >= 4 {
            in_flight.join_next().await.expect("a push in flight")??;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    Ok(())
}

async fn wait_done(
    queue: &Arc<dyn QueueBackend>,
    jobs: u64,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while queue.counts("noop").await?.done < jobs {
        ensure!(
            started.elapsed() < deadline,
            "jobs not done within {deadline:?}"
        );
        // Counting takes the embedded backend's one connection from the
        // workers being measured: look every 100 ms, not every few ms
        // (the reported time is at most that much late).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn backlog(
    name: &str,
    queue: Arc<dyn QueueBackend>,
    jobs: u64,
    concurrency: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    push_all(&queue, jobs).await?;
    let pushed_per_s = jobs as f64 / started.elapsed().as_secs_f64();

    let shutdown = CancellationToken::new();
    let options = worker::WorkerOptions {
        queue: "noop".into(),
        concurrency: concurrency as usize,
        lease: Duration::from_secs(30),
        worker_id: format!("bench-{}", uuid::Uuid::now_v7().simple()),
        rate_limit_per_s: None,
    };
    let started = Instant::now();
    let run = tokio::spawn(worker::run(
        queue.clone(),
        Arc::new(Noop::default()),
        options,
        shutdown.clone(),
    ));
    wait_done(&queue, jobs, Duration::from_secs(600)).await?;
    let processed_per_s = jobs as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    run.await??;
    println!(
        "{}",
        json!({"bench": "backlog", "backend": name, "jobs": jobs, "concurrency": concurrency,
               "pushed_per_s": pushed_per_s.round(), "processed_per_s": processed_per_s.round()})
    );
    Ok(())
}

/// Worker processes of the bench, stopped (SIGTERM, then waited for) on drop.
struct Workers(Vec<Child>);

impl Workers {
    fn start(redis_url: &str, prefix: &str, count: u64, concurrency: u64) -> anyhow::Result<Self> {
        let binary = sibling_binary("orchestrator-worker")?;
        let data_dir = std::env::temp_dir().join(format!("orch-bench-{prefix}"));
        let mut children = Vec::new();
        for _ in 0..count {
            children.push(
                Command::new(&binary)
                    .args([
                        "--queues",
                        "noop",
                        "--concurrency",
                        &concurrency.to_string(),
                    ])
                    .env("ORCH_REDIS_URL", redis_url)
                    .env("ORCH_REDIS_PREFIX", prefix)
                    .env("ORCH_DATA_DIR", &data_dir)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("start {}", binary.display()))?,
            );
        }
        Ok(Self(children))
    }
}

impl Workers {
    /// CPU seconds the worker processes have used so far (Linux /proc).
    fn cpu_seconds(&self) -> f64 {
        self.0
            .iter()
            .map(|child| process_cpu_seconds(child.id()))
            .sum()
    }
}

/// utime + stime of a process, from /proc/PID/stat (0 where unavailable).
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second.max(1.0)
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &self.0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// A binary built next to this one (cargo build --release puts them together).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    ensure!(
        path.exists(),
        "{} is missing: build it with the same profile as the bench",
        path.display()
    );
    Ok(path)
}

async fn wait_for_workers(queue: &Arc<dyn QueueBackend>, count: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while queue.counts("noop").await?.workers < count {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "workers did not register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn e2e(
    redis_url: &str,
    prefix: &str,
    jobs: u64,
    workers: u64,
    concurrency: u64,
) -> anyhow::Result<()> {
    let redis = Arc::new(RedisBackend::connect(redis_url, prefix).await?);
    let queue: Arc<dyn QueueBackend> = redis.clone();
    let fleet = Workers::start(redis_url, prefix, workers, concurrency)?;
    wait_for_workers(&queue, workers).await?;

    let redis_cpu_before = redis.cpu_seconds().await?;
    let producer_cpu_before = process_cpu_seconds(std::process::id());
    let workers_cpu_before = fleet.cpu_seconds();
    let started = Instant::now();
    push_all(&queue, jobs).await?;
    let push_seconds = started.elapsed().as_secs_f64();
    wait_done(&queue, jobs, Duration::from_secs(600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    // Where the time went: CPU seconds of each party during the run.
    let cpu = json!({
        "redis": round2(redis.cpu_seconds().await? - redis_cpu_before),
        "producer": round2(process_cpu_seconds(std::process::id()) - producer_cpu_before),
        "workers": round2(fleet.cpu_seconds() - workers_cpu_before),
        "wall": round2(seconds),
    });
    drop(fleet);
    redis.purge().await?;
    println!(
        "{}",
        json!({"bench": "e2e", "peer": "orchestrator", "jobs": jobs, "workers": workers,
               "concurrency": concurrency, "pushed_per_s": (jobs as f64 / push_seconds).round(),
               "end_to_end_per_s": (jobs as f64 / seconds).round(), "cpu_seconds": cpu})
    );
    Ok(())
}

async fn latency(redis_url: &str, samples: u64) -> anyhow::Result<()> {
    let prefix = unique_prefix();
    let redis = Arc::new(RedisBackend::connect(redis_url, &prefix).await?);
    let queue: Arc<dyn QueueBackend> = redis.clone();
    let fleet = Workers::start(redis_url, &prefix, 1, 16)?;
    wait_for_workers(&queue, 1).await?;
    // Let the worker go idle, blocked on its wake-up.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut delays_us = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        let pushed_us = now_us();
        // An object payload: the job's result then records when it started.
        let probe = NewJob::new("noop", json!({}));
        let id = queue.push(vec![probe]).await?.remove(0).id;
        let started_us = loop {
            let job = queue.job(&id).await?.context("pushed job vanished")?;
            if job.status == JobStatus::Done {
                break job
                    .result
                    .as_ref()
                    .and_then(|r| r["started_us"].as_u64())
                    .context("started_us")?;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        delays_us.push(started_us.saturating_sub(pushed_us));
        // Idle again before the next sample.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(fleet);
    redis.purge().await?;
    delays_us.sort_unstable();
    let pct = |p: f64| {
        delays_us[((delays_us.len() as f64 * p) as usize).min(delays_us.len() - 1)] as f64 / 1000.0
    };
    println!(
        "{}",
        json!({"bench": "latency", "samples": samples, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
               "max_ms": pct(1.0)})
    );
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn footprint(redis_url: &str, jobs: u64) -> anyhow::Result<()> {
    let redis = Arc::new(RedisBackend::connect(redis_url, &unique_prefix()).await?);
    let queue: Arc<dyn QueueBackend> = redis.clone();
    let before = redis.used_memory().await?;
    push_all(&queue, jobs).await?;
    let after = redis.used_memory().await?;
    ensure!(
        queue.counts("noop").await?.pending == jobs,
        "not every job is pending"
    );
    redis.purge().await?;
    println!(
        "{}",
        json!({"bench": "footprint", "peer": "orchestrator", "pending_jobs": jobs,
               "bytes_per_job": round1(after.saturating_sub(before) as f64 / jobs as f64)})
    );
    Ok(())
}
