//! The system at a glance: a snapshot taken every second by one sampler
//! (a handful of store and queue round trips; the slower checks of the
//! vector store and remote models every [`SLOW_EVERY`]), so
//! `GET /api/v1/status` costs nothing however often it is asked. The
//! sampler also keeps `orchestrator_fleet_processes{kind}` at the fleet it
//! lists, and feeds the live events (a `status` event every other
//! snapshot, warnings and errors from the [`Watchdog`]).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use orchestrator_campaign::Campaigns;
use orchestrator_core::{
    fleet, metrics as m, now_ms,
    store::{Activity, Store},
    supervise::{self, Restarts},
    system,
};
use orchestrator_datagen::runs::Datasets;
use orchestrator_memory::Memory;
use orchestrator_models::{Models, ProviderKind};
use orchestrator_queue::QueueBackend;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::{
    lifecycle::{Lifecycle, Phase},
    live::{Live, Watchdog},
};

/// How often the snapshot is taken.
const EVERY: Duration = Duration::from_secs(1);
/// The longest window rates are computed over.
const WINDOW: Duration = Duration::from_secs(60);
/// How often the checks that reach other services run.
const SLOW_EVERY: Duration = Duration::from_secs(10);
/// Longest a remote model's address may take to accept a connection.
const REACH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one check may take: a backend that does not answer is down, and
/// the snapshot goes on without it (clients buffer commands while they
/// reconnect, which would otherwise hold the snapshot until Redis is back).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `check`, or an error once it has taken [`CHECK_TIMEOUT`].
async fn bounded<T>(check: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {CHECK_TIMEOUT:?}")))
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemStatus {
    pub version: String,
    /// `ORCH_MODE`: `development`, `production` or `testing`.
    pub mode: String,
    /// `embedded` (SQLite queues, in-process workers) or `redis`.
    pub backend: String,
    pub uptime_s: u64,
    /// When this snapshot was taken (ms since the Unix epoch).
    pub taken_at: u64,
    /// Where the fleet is in its lifecycle, and this process's latest start.
    pub system: SystemLifecycle,
    /// `store`, `queue`, `fleet`, `vectors`, `trainer`, and `model:{id}`
    /// for each registered model.
    pub subsystems: Vec<Subsystem>,
    /// In-process loops restarted after a panic, by subsystem.
    pub restarts: BTreeMap<String, Restarts>,
    /// Live processes by kind (`api`, `worker`, `trainer`).
    pub fleet: BTreeMap<String, usize>,
    pub queues: Vec<QueueStatus>,
    /// Workflows, training runs and campaigns by status; feedback buffered.
    pub activity: Activity,
    /// Running campaigns with their share of failed operations.
    pub campaign_errors: Vec<CampaignErrors>,
    /// Dataset generation runs under way, with their progress.
    pub datasets: Vec<DatasetProgress>,
    pub throughput: Throughput,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemLifecycle {
    /// `running`, `stopping`, `stopped` or `starting`.
    pub state: system::State,
    /// When it last changed (ms since the Unix epoch; 0: never).
    pub changed_at: u64,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Subsystem {
    pub name: String,
    /// `ok` or `down` (`absent` for a trainer nobody runs); models: `loaded`, `idle` (loads on first use),
    /// `missing` (no weights), `reachable` or `unreachable` (remote).
    pub state: String,
    /// How long its check took.
    pub latency_ms: f64,
    /// Why it is down, or what it is.
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

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CampaignErrors {
    pub id: String,
    pub name: String,
    pub ops_done: i64,
    pub errors: i64,
    /// `errors / ops_done`.
    pub error_rate: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatasetProgress {
    pub id: String,
    pub name: String,
    pub shards_done: u64,
    pub shards_total: u64,
    pub kept: u64,
    pub examples_per_s: f64,
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
pub struct StatusCache(Arc<RwLock<Option<Snapshot>>>);

/// A snapshot and its JSON, serialized once for every reader.
#[derive(Clone)]
struct Snapshot {
    status: Arc<SystemStatus>,
    json: bytes::Bytes,
}

impl StatusCache {
    pub fn latest(&self) -> Option<Arc<SystemStatus>> {
        let snapshot = self.0.read().expect("status cache");
        snapshot.as_ref().map(|s| s.status.clone())
    }

    /// The latest snapshot as JSON (`GET /api/v1/status` sends it as is).
    pub fn latest_json(&self) -> Option<bytes::Bytes> {
        let snapshot = self.0.read().expect("status cache");
        snapshot.as_ref().map(|s| s.json.clone())
    }

    fn store(&self, status: SystemStatus) {
        let json = serde_json::to_vec(&status).unwrap_or_default().into();
        *self.0.write().expect("status cache") = Some(Snapshot {
            status: Arc::new(status),
            json,
        });
    }
}

/// What the sampler reads.
pub struct Sources {
    pub store: Store,
    pub queue: Arc<dyn QueueBackend>,
    pub fleet: fleet::Registry,
    pub lifecycle: Arc<Lifecycle>,
    pub memory: Arc<Memory>,
    pub models: Arc<Models>,
    pub campaigns: Arc<Campaigns>,
    pub datasets: Arc<Datasets>,
    /// Whether this process runs the trainer itself.
    pub trainer_in_process: bool,
    pub embedded: bool,
    pub mode: &'static str,
    pub target: u64,
    pub live: Live,
}

/// Takes a snapshot every [`EVERY`] until `shutdown` (restarted if it
/// panics).
pub fn spawn(sources: Sources, shutdown: CancellationToken) -> StatusCache {
    let cache = StatusCache(Arc::default());
    metrics::gauge!(m::THROUGHPUT_TARGET).set(sources.target as f64);
    let (sources, shared, stop) = (Arc::new(sources), cache.clone(), shutdown.clone());
    let started = Instant::now();
    supervise::spawn("status sampler", shutdown, move || {
        sample(sources.clone(), shared.clone(), started, stop.clone())
    });
    cache
}

async fn sample(
    sources: Arc<Sources>,
    cache: StatusCache,
    started: Instant,
    shutdown: CancellationToken,
) {
    let mut history = History::default();
    let mut slow = SlowChecks::default();
    let mut watchdog = Watchdog::default();
    let mut ticks = tokio::time::interval(EVERY);
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let (status, processes) = snapshot(&sources, started, &mut history, &mut slow).await;
        watchdog
            .observe(&status, processes.as_deref(), &sources.fleet, &sources.live)
            .await;
        if tick.is_multiple_of(2) {
            let data = serde_json::to_value(&status).unwrap_or_default();
            sources
                .live
                .send("status", "status", "the system at a glance".into(), data);
        }
        tick += 1;
        cache.store(status);
    }
}

/// Results of the checks that reach other services, refreshed every
/// [`SLOW_EVERY`].
#[derive(Default)]
struct SlowChecks {
    at: Option<Instant>,
    vectors: Option<Subsystem>,
    remote: BTreeMap<String, Subsystem>,
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

async fn snapshot(
    sources: &Sources,
    started: Instant,
    history: &mut History,
    slow: &mut SlowChecks,
) -> (SystemStatus, Option<Vec<fleet::Process>>) {
    let mut subsystems = Vec::new();
    let timed = Instant::now();
    let store_check = bounded(sources.store.ping()).await;
    subsystems.push(subsystem("store", timed, store_check.err()));

    let timed = Instant::now();
    let (queues, queue_error) = queue_counts(sources, history).await;
    subsystems.push(subsystem("queue", timed, queue_error));

    let timed = Instant::now();
    let mut fleet = BTreeMap::new();
    let listed = bounded(sources.fleet.list()).await;
    if let Ok(processes) = &listed {
        for kind in fleet::Kind::ALL {
            let count = processes.iter().filter(|p| p.kind == kind).count();
            // The gauge follows the same count the status shows.
            metrics::gauge!(m::FLEET_PROCESSES, "kind" => kind.as_str()).set(count as f64);
            fleet.insert(kind.as_str().to_string(), count);
        }
    }
    let (processes, fleet_error) = match listed {
        Ok(processes) => (Some(processes), None),
        Err(err) => (None, Some(err)),
    };
    subsystems.push(subsystem("fleet", timed, fleet_error));
    subsystems.push(trainer(sources, &fleet));

    if slow.at.is_none_or(|at| at.elapsed() >= SLOW_EVERY) {
        slow.at = Some(Instant::now());
        slow.vectors = Some(vectors(&sources.memory).await);
        slow.remote = remote_models(&sources.models).await;
    }
    subsystems.extend(slow.vectors.clone());
    subsystems.extend(models(&sources.models, &slow.remote));

    let (activity, campaign_errors) = activity(sources).await;
    let datasets = datasets_under_way(sources, &activity).await;
    // Without an answer, this process's own view of the state.
    let record = bounded(sources.lifecycle.switch().read())
        .await
        .unwrap_or_else(|_| system::Record {
            state: system::current(),
            changed_at: 0,
        });
    let per_minute = history.rate(None, WINDOW);
    let status = SystemStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        mode: sources.mode.to_string(),
        backend: if sources.embedded {
            "embedded"
        } else {
            "redis"
        }
        .to_string(),
        uptime_s: started.elapsed().as_secs(),
        taken_at: now_ms(),
        system: SystemLifecycle {
            state: record.state,
            changed_at: record.changed_at,
            phases: sources.lifecycle.phases(),
        },
        subsystems,
        restarts: supervise::restarts(),
        fleet,
        queues,
        activity,
        campaign_errors,
        datasets,
        throughput: Throughput {
            target: sources.target,
            jobs_per_s_10s: history.rate(None, Duration::from_secs(10)),
            jobs_per_s_1m: per_minute,
            ratio: per_minute / sources.target as f64,
        },
    };
    (status, processes)
}

/// Every registered queue's counts, with jobs/s from the history.
async fn queue_counts(
    sources: &Sources,
    history: &mut History,
) -> (Vec<QueueStatus>, Option<anyhow::Error>) {
    let mut queues = Vec::new();
    let mut error = None;
    let mut done = BTreeMap::new();
    match bounded(sources.store.queues()).await {
        Ok(settings) => {
            for queue in settings {
                match bounded(sources.queue.counts(&queue.name)).await {
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
                    Err(err) => {
                        // One queue not answering means the backend is not.
                        error = Some(err);
                        break;
                    }
                }
            }
        }
        Err(err) => error = Some(err),
    }
    if error.is_none() {
        history.record(Instant::now(), done);
    }
    for queue in &mut queues {
        queue.jobs_per_s = history.rate(Some(&queue.name), WINDOW);
    }
    (queues, error)
}

/// The store's counts, and the error share of every running campaign.
async fn activity(sources: &Sources) -> (Activity, Vec<CampaignErrors>) {
    let activity = match bounded(sources.store.activity()).await {
        Ok(activity) => activity,
        Err(err) => {
            tracing::debug!("status: counting activity: {err:#}");
            Activity::default()
        }
    };
    let running = match activity.campaigns.get("running") {
        Some(n) if *n > 0 => bounded(sources.campaigns.store().active())
            .await
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let campaign_errors = running
        .into_iter()
        .map(|row| CampaignErrors {
            error_rate: row.errors as f64 / row.ops_done.max(1) as f64,
            id: row.id,
            name: row.name,
            ops_done: row.ops_done,
            errors: row.errors,
        })
        .collect();
    (activity, campaign_errors)
}

/// Progress of the dataset runs the store counts as running.
async fn datasets_under_way(sources: &Sources, activity: &Activity) -> Vec<DatasetProgress> {
    if activity.datasets.get("running").copied().unwrap_or(0) == 0 {
        return Vec::new();
    }
    let running = bounded(async { Ok(sources.datasets.running().await?) }).await;
    running
        .unwrap_or_default()
        .into_iter()
        .map(|run| DatasetProgress {
            id: run.id,
            name: run.name,
            shards_done: run.shards_done,
            shards_total: run.shards_total,
            kept: run.kept,
            examples_per_s: run.examples_per_s,
        })
        .collect()
}

/// The trainer is up when this process runs one or one is in the fleet.
fn trainer(sources: &Sources, fleet: &BTreeMap<String, usize>) -> Subsystem {
    let processes = fleet.get("trainer").copied().unwrap_or(0);
    let (state, what) = match (sources.trainer_in_process, processes) {
        (true, _) => ("ok", "in this process".to_string()),
        (false, 0) => (
            "absent",
            "no trainer: training runs wait for an orchestrator-trainer process".to_string(),
        ),
        (false, n) => ("ok", format!("{n} trainer process(es)")),
    };
    Subsystem {
        name: "trainer".into(),
        state: state.into(),
        latency_ms: 0.0,
        error: Some(what),
    }
}

/// The vector store: Qdrant is asked for a count; the embedded store is
/// checked only once something opened it.
async fn vectors(memory: &Memory) -> Subsystem {
    let timed = Instant::now();
    let store = match memory.vectors_if_open() {
        Some(store) => Ok(store),
        None if memory.is_remote() => bounded(memory.vectors()).await,
        None => {
            return Subsystem {
                name: "vectors".into(),
                state: "ok".into(),
                latency_ms: 0.0,
                error: Some("embedded; opens on first use".into()),
            };
        }
    };
    let checked = match store {
        Ok(store) => bounded(store.count(&orchestrator_memory::vector::Filter::default()))
            .await
            .map(|_| ()),
        Err(err) => Err(err),
    };
    subsystem("vectors", timed, checked.err())
}

/// Whether each remote model's address accepts a connection (no request is
/// made: a paid API is not billed for being watched).
async fn remote_models(models: &Models) -> BTreeMap<String, Subsystem> {
    let mut found = BTreeMap::new();
    for spec in models.specs() {
        if spec.provider != ProviderKind::Openai || spec.id.contains('@') {
            continue;
        }
        let timed = Instant::now();
        let reached = reach(spec.base_url.as_deref().unwrap_or_default()).await;
        let (state, error) = match reached {
            Ok(()) => ("reachable", None),
            Err(err) => ("unreachable", Some(err)),
        };
        let name = format!("model:{}", spec.id);
        found.insert(
            spec.id.clone(),
            Subsystem {
                name,
                state: state.into(),
                latency_ms: timed.elapsed().as_secs_f64() * 1000.0,
                error,
            },
        );
    }
    found
}

async fn reach(base_url: &str) -> Result<(), String> {
    let url = url::Url::parse(base_url).map_err(|e| format!("base_url {base_url:?}: {e}"))?;
    let host = url.host_str().ok_or("base_url has no host")?.to_string();
    let port = url.port_or_known_default().ok_or("base_url has no port")?;
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(REACH_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("{host}:{port}: {err}")),
        Err(_) => Err(format!("{host}:{port}: no answer in {REACH_TIMEOUT:?}")),
    }
}

/// Every registered base model: local ones loaded or not, remote ones as
/// last reached.
fn models(models: &Models, remote: &BTreeMap<String, Subsystem>) -> Vec<Subsystem> {
    let mut found = Vec::new();
    for spec in models.specs() {
        if spec.id.contains('@') {
            continue;
        }
        if let Some(checked) = remote.get(&spec.id) {
            found.push(checked.clone());
            continue;
        }
        if spec.provider != ProviderKind::Local {
            continue;
        }
        let state = if models.is_loaded(&spec.id) {
            "loaded"
        } else if models.weights_path(&spec).is_file() {
            "idle"
        } else {
            "missing"
        };
        found.push(Subsystem {
            name: format!("model:{}", spec.id),
            state: state.into(),
            latency_ms: 0.0,
            error: None,
        });
    }
    found
}

fn subsystem(name: &str, started: Instant, error: Option<anyhow::Error>) -> Subsystem {
    Subsystem {
        name: name.to_string(),
        state: if error.is_none() { "ok" } else { "down" }.to_string(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        error: error.map(|e| format!("{e:#}")),
    }
}
