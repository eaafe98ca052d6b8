//! Live events for operators (`GET /ws/events`, `GET /api/v1/events`):
//! `status` every 2 s, `warning` and `error` when something needs a look.
//!
//! Every event is derived from the status snapshots, which are fleet-wide
//! (the registry, the queues and the store are shared), so each API process
//! reports the same events about the whole fleet without a channel of its
//! own. The [`Watchdog`] compares each snapshot with the ones before it.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use orchestrator_core::{fleet, now_ms};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::status::SystemStatus;

/// Events a slow subscriber may fall behind by before it misses some.
const BUFFER: usize = 256;
/// How long a queue must grow, or throughput lag with a backlog, to warn.
const SUSTAINED: Duration = Duration::from_secs(60);
/// The same warning about the same thing is repeated at most this often.
const REPEAT_AFTER: Duration = Duration::from_secs(60);
/// A campaign failing more than this share of its operations is warned of.
const CAMPAIGN_ERROR_RATE: f64 = 0.2;
/// Operations a campaign must have done before its error rate means much.
const CAMPAIGN_MIN_OPS: i64 = 20;

/// One event, as subscribers receive it (one JSON object per message).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveEvent {
    /// `status`, `warning` or `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened, stable for machines: `process_lost`, `queue_growing`,
    /// `dead_jobs_rising`, `campaign_errors`, `throughput_under_target`,
    /// `subsystem_down`, `workflow_failed`, `training_run_failed`; `status`
    /// for the periodic snapshot.
    pub code: String,
    /// For people.
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// The snapshot (`status`) or the facts behind a warning or error.
    pub data: Value,
}

/// The channel every subscriber listens on, and the signal that ends every
/// subscription at shutdown (an open stream would hold the graceful
/// shutdown forever).
#[derive(Clone)]
pub struct Live {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    shutdown: CancellationToken,
}

impl Live {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
            shutdown,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.sender.subscribe()
    }

    /// Resolves when the process shuts down.
    pub fn closing(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn send(&self, kind: &str, code: &str, message: String, data: Value) {
        if kind != "status" {
            tracing::warn!(event = kind, code, "{message}");
        }
        let _ = self.sender.send(Arc::new(LiveEvent {
            kind: kind.into(),
            code: code.into(),
            message,
            at: now_ms(),
            data,
        }));
    }
}

/// What the watchdog remembers between snapshots.
#[derive(Default)]
pub struct Watchdog {
    processes: HashMap<String, fleet::Process>,
    pending: HashMap<String, VecDeque<(Instant, u64)>>,
    dead: HashMap<String, u64>,
    down: BTreeMap<String, bool>,
    failed_workflows: Option<u64>,
    failed_runs: Option<u64>,
    lagging_since: Option<Instant>,
    warned: HashMap<String, Instant>,
}

impl Watchdog {
    /// Compares `status` (and the processes it counted) with what came
    /// before and sends what changed for the worse.
    pub async fn observe(
        &mut self,
        status: &SystemStatus,
        processes: Option<&[fleet::Process]>,
        registry: &fleet::Registry,
        live: &Live,
    ) {
        // A failed listing says nothing about who is alive.
        if let Some(processes) = processes {
            self.processes_lost(processes, registry, live).await;
        }
        self.subsystems(status, live);
        self.queues(status, live);
        self.failures(status, live);
        self.throughput(status, live);
    }

    /// True when `key` was not warned of in the last [`REPEAT_AFTER`].
    fn fresh(&mut self, key: String) -> bool {
        let now = Instant::now();
        match self.warned.get(&key) {
            Some(at) if now.duration_since(*at) < REPEAT_AFTER => false,
            _ => {
                self.warned.insert(key, now);
                true
            }
        }
    }

    async fn processes_lost(
        &mut self,
        processes: &[fleet::Process],
        registry: &fleet::Registry,
        live: &Live,
    ) {
        let now: HashMap<String, fleet::Process> = processes
            .iter()
            .map(|p| (p.id.clone(), p.clone()))
            .collect();
        for (id, process) in &self.processes {
            if now.contains_key(id) || registry.left(id).await.unwrap_or(false) {
                continue;
            }
            let silent_ms = now_ms().saturating_sub(process.last_beat);
            live.send(
                "warning",
                "process_lost",
                format!(
                    "{} {} (pid {} on {}) stopped beating {:.1} s ago without leaving; \
                     its leased jobs run again when their leases expire",
                    process.kind.as_str(),
                    process.id,
                    process.pid,
                    process.host,
                    silent_ms as f64 / 1000.0
                ),
                json!({"process": process}),
            );
        }
        self.processes = now;
    }

    fn subsystems(&mut self, status: &SystemStatus, live: &Live) {
        for subsystem in &status.subsystems {
            let down = subsystem.state == "down";
            let was_down = self.down.insert(subsystem.name.clone(), down);
            if down && was_down != Some(true) {
                live.send(
                    "error",
                    "subsystem_down",
                    format!(
                        "{} is down: {}",
                        subsystem.name,
                        subsystem.error.as_deref().unwrap_or("no answer")
                    ),
                    json!({"subsystem": subsystem}),
                );
            }
        }
    }

    fn queues(&mut self, status: &SystemStatus, live: &Live) {
        let now = Instant::now();
        for queue in &status.queues {
            let history = self.pending.entry(queue.name.clone()).or_default();
            history.push_back((now, queue.pending));
            while history
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > SUSTAINED)
            {
                history.pop_front();
            }
            let spans_window = history.front().is_some_and(|(at, _)| {
                now.duration_since(*at) >= SUSTAINED - Duration::from_secs(2)
            });
            let growing = history.len() > 2
                && history
                    .iter()
                    .zip(history.iter().skip(1))
                    .all(|(a, b)| b.1 >= a.1)
                && history.back().map(|b| b.1) > history.front().map(|f| f.1);
            let first = history.front().map_or(0, |f| f.1);
            if spans_window && growing && self.fresh(format!("growing:{}", queue.name)) {
                live.send(
                    "warning",
                    "queue_growing",
                    format!(
                        "queue {} has grown for a minute ({first} → {} waiting); add workers or raise concurrency",
                        queue.name, queue.pending
                    ),
                    json!({"queue": queue.name, "from": first, "to": queue.pending}),
                );
            }
            let before = self.dead.insert(queue.name.clone(), queue.dead);
            if let Some(before) = before
                && queue.dead > before
                && self.fresh(format!("dead:{}", queue.name))
            {
                live.send(
                    "warning",
                    "dead_jobs_rising",
                    format!(
                        "queue {}: {} job(s) went dead ({} in all); see GET /api/v1/queues/{}/dead",
                        queue.name,
                        queue.dead - before,
                        queue.dead,
                        queue.name
                    ),
                    json!({"queue": queue.name, "dead": queue.dead, "new": queue.dead - before}),
                );
            }
        }
        for campaign in &status.campaign_errors {
            if campaign.ops_done >= CAMPAIGN_MIN_OPS
                && campaign.error_rate > CAMPAIGN_ERROR_RATE
                && self.fresh(format!("campaign:{}", campaign.id))
            {
                live.send(
                    "warning",
                    "campaign_errors",
                    format!(
                        "campaign {} ({}) fails {:.0} % of its operations",
                        campaign.name,
                        campaign.id,
                        campaign.error_rate * 100.0
                    ),
                    json!({"campaign": campaign}),
                );
            }
        }
    }

    fn failures(&mut self, status: &SystemStatus, live: &Live) {
        let failed = |table: &BTreeMap<String, u64>| table.get("failed").copied().unwrap_or(0);
        let workflows = failed(&status.activity.workflows);
        if let Some(before) = self.failed_workflows.replace(workflows)
            && workflows > before
        {
            live.send(
                "error",
                "workflow_failed",
                format!(
                    "{} workflow(s) failed ({workflows} in all)",
                    workflows - before
                ),
                json!({"failed": workflows, "new": workflows - before}),
            );
        }
        let runs = failed(&status.activity.training_runs);
        if let Some(before) = self.failed_runs.replace(runs)
            && runs > before
        {
            live.send(
                "error",
                "training_run_failed",
                format!(
                    "{} training run(s) failed ({runs} in all); see GET /api/v1/training/runs",
                    runs - before
                ),
                json!({"failed": runs, "new": runs - before}),
            );
        }
    }

    fn throughput(&mut self, status: &SystemStatus, live: &Live) {
        let backlog: u64 = status.queues.iter().map(|q| q.pending).sum();
        let lagging = backlog > 0
            && status.system.state.runs_work()
            && status.throughput.jobs_per_s_10s < status.throughput.target as f64;
        if !lagging {
            self.lagging_since = None;
            return;
        }
        let since = *self.lagging_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= SUSTAINED && self.fresh("throughput".into()) {
            live.send(
                "warning",
                "throughput_under_target",
                format!(
                    "{:.0} jobs/s against a target of {} for a minute while {backlog} job(s) wait",
                    status.throughput.jobs_per_s_10s, status.throughput.target
                ),
                json!({"throughput": status.throughput, "backlog": backlog}),
            );
        }
    }
}
