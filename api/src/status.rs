//! The system at a glance: a snapshot taken every second by one sampler
//! (a handful of store and queue round trips), so `GET /api/v1/status`
//! costs nothing however often it is asked. The sampler also keeps
//! `orchestrator_fleet_processes{kind}` at the fleet it lists.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use orchestrator_core::{fleet, metrics as m, now_ms, store::Store};
use orchestrator_queue::QueueBackend;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// How often the snapshot is taken.
const EVERY: Duration = Duration::from_secs(1);
/// The longest window rates are computed over.
const WINDOW: Duration = Duration::from_secs(60);

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemStatus {
    pub version: String,
    /// `embedded` (SQLite queues, in-process workers) or `redis`.
    pub mode: String,
    pub uptime_s: u64,
    /// When this snapshot was taken (ms since the Unix epoch).
    pub taken_at: u64,
    pub subsystems: Vec<Subsystem>,
    /// Live processes by kind (`api`, `worker`, `trainer`).
    pub fleet: BTreeMap<String, usize>,
    pub queues: Vec<QueueStatus>,
    pub throughput: Throughput,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Subsystem {
    /// `store`, `queue`, `fleet`.
    pub name: String,
    /// `ok` or `down`.
    pub state: String,
    /// How long its check took.
    pub latency_ms: f64,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueStatus {
    pub name: String,
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub dead: u64,
    /// Jobs finished per second over the last minute (or since start).
    pub jobs_per_s: f64,
}

/// Completed jobs per second, fleet-wide, against the configured target.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Throughput {
    /// `ORCH_THROUGHPUT_TARGET`.
    pub target: u64,
    pub jobs_per_s_10s: f64,
    pub jobs_per_s_1m: f64,
    /// `jobs_per_s_1m / target`.
    pub ratio: f64,
}

/// The latest snapshot, shared with the route.
#[derive(Clone)]
pub struct StatusCache(Arc<RwLock<Option<Arc<SystemStatus>>>>);

impl StatusCache {
    pub fn latest(&self) -> Option<Arc<SystemStatus>> {
        self.0.read().expect("status cache").clone()
    }
}

/// What the sampler reads.
pub struct Sources {
    pub store: Store,
    pub queue: Arc<dyn QueueBackend>,
    pub fleet: fleet::Registry,
    pub embedded: bool,
    pub target: u64,
}

/// Takes a snapshot every [`EVERY`] until `shutdown`.
pub fn spawn(sources: Sources, shutdown: CancellationToken) -> StatusCache {
    let cache = StatusCache(Arc::default());
    let shared = cache.clone();
    metrics::gauge!(m::THROUGHPUT_TARGET).set(sources.target as f64);
    tokio::spawn(async move {
        let started = Instant::now();
        let mut history = History::default();
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let status = snapshot(&sources, started, &mut history).await;
            *shared.0.write().expect("status cache") = Some(Arc::new(status));
        }
    });
    cache
}

/// Done totals per queue over the last [`WINDOW`].
#[derive(Default)]
struct History(VecDeque<(Instant, BTreeMap<String, u64>)>);

impl History {
    fn record(&mut self, now: Instant, done: BTreeMap<String, u64>) {
        self.0.push_back((now, done));
        while self
            .0
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            self.0.pop_front();
        }
    }

    /// Jobs/s of `queue` (all queues when `None`) over the last `window`.
    fn rate(&self, queue: Option<&str>, window: Duration) -> f64 {
        let Some((last_at, last)) = self.0.back() else {
            return 0.0;
        };
        let Some((first_at, first)) = self
            .0
            .iter()
            .find(|(at, _)| last_at.duration_since(*at) <= window)
        else {
            return 0.0;
        };
        let seconds = last_at.duration_since(*first_at).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        let total = |totals: &BTreeMap<String, u64>| -> u64 {
            match queue {
                Some(name) => totals.get(name).copied().unwrap_or(0),
                None => totals.values().sum(),
            }
        };
        total(last).saturating_sub(total(first)) as f64 / seconds
    }
}

async fn snapshot(sources: &Sources, started: Instant, history: &mut History) -> SystemStatus {
    let mut subsystems = Vec::new();
    let timed = Instant::now();
    let store_check = sources.store.ping().await;
    subsystems.push(subsystem("store", timed, store_check.err()));

    let timed = Instant::now();
    let mut queues = Vec::new();
    let mut queue_error = None;
    let mut done = BTreeMap::new();
    match sources.store.queues().await {
        Ok(settings) => {
            for queue in settings {
                match sources.queue.counts(&queue.name).await {
                    Ok(counts) => {
                        done.insert(queue.name.clone(), counts.done);
                        queues.push(QueueStatus {
                            name: queue.name,
                            pending: counts.pending,
                            running: counts.running,
                            done: counts.done,
                            dead: counts.dead,
                            jobs_per_s: 0.0,
                        });
                    }
                    Err(err) => queue_error = Some(err),
                }
            }
        }
        Err(err) => queue_error = Some(err),
    }
    subsystems.push(subsystem("queue", timed, queue_error));
    if queues.len() == done.len() {
        history.record(Instant::now(), done);
    }
    for queue in &mut queues {
        queue.jobs_per_s = history.rate(Some(&queue.name), WINDOW);
    }

    let timed = Instant::now();
    let mut fleet = BTreeMap::new();
    let listed = sources.fleet.list().await;
    if let Ok(processes) = &listed {
        for kind in fleet::Kind::ALL {
            let count = processes.iter().filter(|p| p.kind == kind).count();
            // The gauge follows the same count the status shows.
            metrics::gauge!(m::FLEET_PROCESSES, "kind" => kind.as_str()).set(count as f64);
            fleet.insert(kind.as_str().to_string(), count);
        }
    }
    subsystems.push(subsystem("fleet", timed, listed.err()));

    let per_minute = history.rate(None, WINDOW);
    SystemStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        mode: if sources.embedded {
            "embedded"
        } else {
            "redis"
        }
        .to_string(),
        uptime_s: started.elapsed().as_secs(),
        taken_at: now_ms(),
        subsystems,
        fleet,
        queues,
        throughput: Throughput {
            target: sources.target,
            jobs_per_s_10s: history.rate(None, Duration::from_secs(10)),
            jobs_per_s_1m: per_minute,
            ratio: per_minute / sources.target as f64,
        },
    }
}

fn subsystem(name: &str, started: Instant, error: Option<anyhow::Error>) -> Subsystem {
    Subsystem {
        name: name.to_string(),
        state: if error.is_none() { "ok" } else { "down" }.to_string(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        error: error.map(|e| format!("{e:#}")),
    }
}
