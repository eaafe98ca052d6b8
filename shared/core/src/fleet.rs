//! The fleet registry: every process (API, worker, trainer) says who it is
//! and what it serves, and beats every [`BEAT`]. With Redis each process is
//! a hash `{prefix}:fleet:{id}` that expires after [`MISSED_BEATS`] beats,
//! so a process that dies leaves the list by itself; embedded, the one
//! process keeps its own entry in memory.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// How often a process beats.
pub const BEAT: Duration = Duration::from_secs(2);
/// Beats a process may miss before it leaves the list.
pub const MISSED_BEATS: u32 = 3;
/// How often a draining process beats, so a stop sees it go idle at once.
const DRAINING_BEAT: Duration = Duration::from_millis(200);
/// How long a process that left on purpose is remembered as such.
pub const LEFT_NOTE: Duration = Duration::from_secs(60);

/// What a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Api,
    Worker,
    Trainer,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Api, Kind::Worker, Kind::Trainer];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Api => "api",
            Kind::Worker => "worker",
            Kind::Trainer => "trainer",
        }
    }
}

/// One live process, as `GET /api/v1/fleet` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Process {
    pub id: String,
    pub kind: Kind,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// Queues, campaigns (`campaign:{id}` or `campaigns:all`) or `trainer`.
    pub serves: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    pub last_beat: u64,
    pub jobs_in_flight: u64,
    pub jobs_done: u64,
    pub rss_bytes: u64,
    /// `running`; while the system stops, `draining` until every job it
    /// holds is acknowledged, then `stopped` (its acknowledgement).
    #[serde(default = "running")]
    pub state: String,
}

fn running() -> String {
    "running".into()
}

/// Jobs this process runs now and has finished, counted by the queue
/// workers and read at every beat.
#[derive(Debug, Default)]
pub struct JobCounts {
    in_flight: AtomicU64,
    done: AtomicU64,
    /// Leased and not yet acknowledged or released (started or not).
    held: AtomicU64,
}

impl JobCounts {
    pub fn leased(&self, jobs: usize) {
        self.held.fetch_add(jobs as u64, Ordering::Relaxed);
    }

    pub fn let_go(&self, jobs: usize) {
        self.held.fetch_sub(jobs as u64, Ordering::Relaxed);
    }

    /// Whether this process holds no job at all.
    pub fn is_idle(&self) -> bool {
        self.held.load(Ordering::Relaxed) == 0 && self.in_flight.load(Ordering::Relaxed) == 0
    }

    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// This process's counts (one per process: every worker in it shares them).
pub fn job_counts() -> &'static JobCounts {
    static COUNTS: JobCounts = JobCounts {
        in_flight: AtomicU64::new(0),
        done: AtomicU64::new(0),
        held: AtomicU64::new(0),
    };
    &COUNTS
}

/// Where processes register.
#[derive(Clone)]
pub enum Registry {
    InProcess(Arc<Mutex<HashMap<String, Process>>>),
    Redis { client: Client, prefix: String },
}

impl Registry {
    pub fn in_process() -> Self {
        Self::InProcess(Arc::default())
    }

    pub async fn redis(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let config = Config::from_url(url).context("ORCH_REDIS_URL: invalid Redis URL")?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client
            .init()
            .await
            .context("cannot connect to Redis for the fleet registry")?;
        Ok(Self::Redis {
            client,
            prefix: prefix.to_string(),
        })
    }

    /// Records `process` (a beat); with Redis it lives [`MISSED_BEATS`]
    /// beats unless renewed.
    pub async fn beat(&self, process: &Process) -> anyhow::Result<()> {
        match self {
            Self::InProcess(table) => {
                table
                    .lock()
                    .expect("fleet table")
                    .insert(process.id.clone(), process.clone());
            }
            Self::Redis { client, prefix } => {
                let key = format!("{prefix}:fleet:{}", process.id);
                let ttl = (BEAT * MISSED_BEATS).as_millis() as i64;
                let pipeline = client.pipeline();
                let _: () = pipeline
                    .set(&key, serde_json::to_string(process)?, None, None, false)
                    .await?;
                let _: () = pipeline.pexpire(&key, ttl, None).await?;
                let _: Vec<Value> = pipeline.all().await?;
            }
        }
        Ok(())
    }

    /// Removes a process that stops on purpose, leaving a note for
    /// [`LEFT_NOTE`] so it is not reported lost.
    pub async fn leave(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Self::InProcess(table) => {
                table.lock().expect("fleet table").remove(id);
            }
            Self::Redis { client, prefix } => {
                let pipeline = client.pipeline();
                let _: () = pipeline.del(format!("{prefix}:fleet:{id}")).await?;
                let _: () = pipeline
                    .set(
                        format!("{prefix}:fleet-left:{id}"),
                        "1",
                        Some(Expiration::PX(LEFT_NOTE.as_millis() as i64)),
                        None,
                        false,
                    )
                    .await?;
                let _: Vec<Value> = pipeline.all().await?;
            }
        }
        Ok(())
    }

    /// Whether process `id` left on purpose (rather than died) in the last
    /// [`LEFT_NOTE`].
    pub async fn left(&self, id: &str) -> anyhow::Result<bool> {
        match self {
            // The one process of embedded mode only leaves on purpose.
            Self::InProcess(_) => Ok(true),
            Self::Redis { client, prefix } => {
                let found: i64 = client.exists(format!("{prefix}:fleet-left:{id}")).await?;
                Ok(found > 0)
            }
        }
    }

    /// Every live process, oldest first.
    pub async fn list(&self) -> anyhow::Result<Vec<Process>> {
        let mut processes: Vec<Process> = match self {
            Self::InProcess(table) => table
                .lock()
                .expect("fleet table")
                .values()
                .cloned()
                .collect(),
            Self::Redis { client, prefix } => {
                let keys = scan_keys(client, &format!("{prefix}:fleet:*")).await?;
                if keys.is_empty() {
                    Vec::new()
                } else {
                    let values: Vec<Option<String>> = client.mget(keys).await?;
                    // A hash that expired between SCAN and MGET is gone: skip it.
                    values
                        .into_iter()
                        .flatten()
                        .filter_map(|text| serde_json::from_str(&text).ok())
                        .collect()
                }
            }
        };
        processes.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(processes)
    }
}

async fn scan_keys(client: &Client, pattern: &str) -> anyhow::Result<Vec<String>> {
    use futures::TryStreamExt;
    let mut keys = Vec::new();
    let mut pages = client.scan_buffered(pattern, Some(100), None);
    while let Some(key) = pages.try_next().await? {
        if let Some(key) = key.as_str() {
            keys.push(key.to_string());
        }
    }
    Ok(keys)
}

/// This machine's name, as processes and workers are named after it.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// Who this process is; `serves` says what it runs.
pub fn this_process(kind: Kind, serves: Vec<String>) -> Process {
    let host = host_name();
    let pid = std::process::id();
    let started_at = crate::now_ms();
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    Process {
        id: format!("{}-{host}-{pid}-{}", kind.as_str(), &nonce[24..]),
        kind,
        host,
        pid,
        version: env!("CARGO_PKG_VERSION").to_string(),
        serves,
        started_at,
        last_beat: started_at,
        jobs_in_flight: 0,
        jobs_done: 0,
        rss_bytes: 0,
        state: running(),
    }
}

/// Beats for `process` every [`BEAT`] until `shutdown`, then leaves. A
/// change of the system state beats at once, and a draining process beats
/// every [`DRAINING_BEAT`], so a stop learns promptly when it is idle. A
/// failed beat is logged and tried again at the next one.
pub fn spawn_heartbeat(
    registry: Registry,
    mut process: Process,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut system = crate::system::watch();
        let mut next = BEAT;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = system.changed() => {}
                _ = shutdown.cancelled() => break,
            }
            refresh(&mut process);
            next = match process.state.as_str() {
                "draining" => DRAINING_BEAT,
                _ => BEAT,
            };
            if let Err(err) = registry.beat(&process).await {
                tracing::warn!(error = %format!("{err:#}"), "fleet heartbeat failed");
            }
        }
        if let Err(err) = registry.leave(&process.id).await {
            tracing::warn!(error = %format!("{err:#}"), "leaving the fleet registry failed");
        }
    })
}

/// Updates what a beat reports: counts, memory, and the process's own
/// state in the system's lifecycle.
fn refresh(process: &mut Process) {
    let counts = job_counts();
    process.last_beat = crate::now_ms();
    process.jobs_in_flight = counts.in_flight.load(Ordering::Relaxed);
    process.jobs_done = counts.done.load(Ordering::Relaxed);
    process.rss_bytes = resident_bytes();
    process.state = match (crate::system::current().runs_work(), counts.is_idle()) {
        (true, _) => "running",
        (false, false) => "draining",
        (false, true) => "stopped",
    }
    .to_string();
}

/// This process's resident set, from /proc (0 where there is none).
fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
