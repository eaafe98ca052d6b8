//! Stopping and starting the whole fleet (`POST /api/v1/system/stop|start`)
//! and the start-up phases run at boot and at every start.
//!
//! A stop turns the system switch to `stopping`: intake answers 503
//! `system_stopped`, no worker anywhere leases another job, and what is
//! running finishes and is acknowledged. The fleet is idle when every live
//! process says `stopped` at its beat and no queue has a running job; the
//! switch then reads `stopped`. A start turns it to `starting` (work resumes
//! at once), runs the phases (index roots, campaigns, warm models) and
//! turns it to `running`.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    extract::Request,
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use orchestrator_campaign::model::CampaignRequest;
use orchestrator_core::system::{self, State, Switch};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult},
    state::AppState,
};

/// How often a stop looks whether the fleet is idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What a start does besides opening intake.
#[derive(Default)]
pub struct StartPlan {
    /// `ORCH_AUTO_INDEX`: index every `ORCH_INDEX_ROOTS` directory.
    pub auto_index: bool,
    /// `ORCH_AUTO_CAMPAIGNS`: campaigns started unless one of the same name
    /// is unfinished.
    pub campaigns: Vec<CampaignRequest>,
    /// `ORCH_WARM_MODELS`: load every local model whose weights are present.
    pub warm_models: bool,
}

/// The campaigns file: `[[campaign]]` tables shaped like the body of
/// `POST /api/v1/campaigns`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignsFile {
    #[serde(default)]
    campaign: Vec<CampaignRequest>,
}

impl StartPlan {
    /// Reads `ORCH_AUTO_CAMPAIGNS`, refusing a file that does not parse or
    /// holds a campaign that could never start.
    pub fn campaigns_from(path: Option<&PathBuf>) -> anyhow::Result<Vec<CampaignRequest>> {
        let Some(path) = path else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("ORCH_AUTO_CAMPAIGNS: cannot read {}", path.display()))?;
        let file: CampaignsFile = toml::from_str(&text)
            .with_context(|| format!("ORCH_AUTO_CAMPAIGNS: {} is not valid", path.display()))?;
        for (index, campaign) in file.campaign.iter().enumerate() {
            campaign.check_common().map_err(|e| {
                anyhow::anyhow!(
                    "ORCH_AUTO_CAMPAIGNS: {} campaign {} ({:?}): {e}",
                    path.display(),
                    index + 1,
                    campaign.name
                )
            })?;
        }
        Ok(file.campaign)
    }
}

/// One step of a start, as status shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Phase {
    /// `core`, `index`, `campaigns`, `models`.
    pub name: String,
    /// `pending`, `running`, `done`, `skipped` or `failed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

const PHASES: [&str; 4] = ["core", "index", "campaigns", "models"];

pub struct Lifecycle {
    switch: Switch,
    plan: StartPlan,
    /// This process's latest start, phase by phase.
    phases: Mutex<Vec<Phase>>,
}

/// The answer of `POST /api/v1/system/stop`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StopReport {
    /// `stopped` when the fleet went idle in time, else `stopping`.
    pub state: State,
    pub idle: bool,
    pub waited_ms: u64,
    /// Jobs still running (0 once idle).
    pub running_jobs: u64,
    /// Processes that have not yet acknowledged (ids).
    pub waiting_for: Vec<String>,
    /// Processes that acknowledged.
    pub acknowledged: usize,
}

/// The answer of `POST /api/v1/system/start`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartReport {
    pub state: State,
    pub phases: Vec<Phase>,
    pub took_ms: u64,
}

/// Whether the fleet has stopped working.
struct Idleness {
    running_jobs: u64,
    waiting_for: Vec<String>,
    acknowledged: usize,
}

impl Idleness {
    fn is_idle(&self) -> bool {
        self.running_jobs == 0 && self.waiting_for.is_empty()
    }
}

impl Lifecycle {
    pub fn new(switch: Switch, plan: StartPlan) -> Self {
        Self {
            switch,
            plan,
            phases: Mutex::new(Vec::new()),
        }
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// This process's latest start.
    pub fn phases(&self) -> Vec<Phase> {
        self.phases.lock().expect("phases").clone()
    }

    fn set_phase(&self, phase: Phase) {
        let mut phases = self.phases.lock().expect("phases");
        match phases.iter_mut().find(|p| p.name == phase.name) {
            Some(slot) => *slot = phase,
            None => phases.push(phase),
        }
    }
}

/// Refuses work while the system is stopped or stopping (intake routes).
pub async fn refuse_when_stopped(request: Request, next: Next) -> Response {
    let state = system::current();
    if state.runs_work() {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "system_stopped",
        format!(
            "the system is {}: nothing new is taken in until POST /api/v1/system/start; \
             nothing was queued",
            state.as_str()
        ),
    )
    .into_response()
}

fn conflict(found: State, asked: &str) -> ApiError {
    let hint = match found {
        State::Stopping => "it is draining; wait until it is stopped",
        State::Starting => "it is starting; wait until it is running",
        State::Running => "it is already running",
        State::Stopped => "it is already stopped",
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "system_state",
        format!("cannot {asked}: the system is {} ({hint})", found.as_str()),
    )
}

/// Stops the fleet, answering once it is idle or after `wait` (the drain
/// goes on and turns the state to `stopped` when idle either way).
pub async fn stop(state: &AppState, wait: Duration) -> ApiResult<StopReport> {
    let lifecycle = &state.lifecycle;
    if let Err(found) = lifecycle
        .switch
        .transition(State::Running, State::Stopping)
        .await
        .map_err(ApiError::backend)?
    {
        return Err(conflict(found, "stop"));
    }
    let started = Instant::now();
    let drain = tokio::spawn(drain(state.clone()));
    let idle = tokio::time::timeout(wait, drain).await;
    let report = match idle {
        Ok(Ok(Ok(idleness))) => report(State::Stopped, idleness, started),
        Ok(Ok(Err(err))) => return Err(ApiError::backend(err)),
        Ok(Err(join)) => return Err(ApiError::backend(join.into())),
        Err(_) => report(State::Stopping, idleness(state).await?, started),
    };
    Ok(report)
}

fn report(state: State, idleness: Idleness, started: Instant) -> StopReport {
    StopReport {
        state,
        idle: idleness.is_idle(),
        waited_ms: started.elapsed().as_millis() as u64,
        running_jobs: idleness.running_jobs,
        waiting_for: idleness.waiting_for,
        acknowledged: idleness.acknowledged,
    }
}

/// Waits until the fleet is idle, then records the system as stopped.
async fn drain(state: AppState) -> anyhow::Result<Idleness> {
    loop {
        let idleness = idleness(&state)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        if idleness.is_idle() {
            // A start may already have come in; then it is not ours to set.
            let _ = state
                .lifecycle
                .switch
                .transition(State::Stopping, State::Stopped)
                .await?;
            tracing::info!(
                processes = idleness.acknowledged,
                "system stopped: the fleet is idle"
            );
            return Ok(idleness);
        }
        if system::current().runs_work() {
            anyhow::bail!("the system was started again before it went idle");
        }
        tokio::time::sleep(IDLE_POLL).await;
    }
}

async fn idleness(state: &AppState) -> ApiResult<Idleness> {
    let mut running_jobs = 0;
    for queue in state.store.queues().await? {
        running_jobs += state.queue.counts(&queue.name).await?.running;
    }
    let processes = state.fleet.list().await.map_err(ApiError::backend)?;
    let (done, waiting): (Vec<_>, Vec<_>) =
        processes.into_iter().partition(|p| p.state == "stopped");
    Ok(Idleness {
        running_jobs,
        waiting_for: waiting.into_iter().map(|p| p.id).collect(),
        acknowledged: done.len(),
    })
}

/// Starts a stopped fleet: work resumes at once, then the phases run.
pub async fn start(state: &AppState) -> ApiResult<StartReport> {
    let started = Instant::now();
    let lifecycle = &state.lifecycle;
    lifecycle.phases.lock().expect("phases").clear();
    if let Err(found) = lifecycle
        .switch
        .transition(State::Stopped, State::Starting)
        .await
        .map_err(ApiError::backend)?
    {
        return Err(conflict(found, "start"));
    }
    lifecycle.set_phase(Phase {
        name: "core".into(),
        state: "done".into(),
        took_ms: Some(started.elapsed().as_millis() as u64),
        detail: Some("intake open; every worker leases again".into()),
    });
    run_phases(state).await;
    let _ = lifecycle
        .switch
        .transition(State::Starting, State::Running)
        .await
        .map_err(ApiError::backend)?;
    Ok(StartReport {
        state: State::Running,
        phases: lifecycle.phases(),
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// At process start: the phases run unless the system is stopped (then
/// they run at the next start).
pub async fn boot(state: AppState, opened_in: Duration) {
    let lifecycle = &state.lifecycle;
    let stopped = match lifecycle.switch.read().await {
        Ok(record) => !record.state.runs_work(),
        Err(err) => {
            tracing::warn!("reading the system state at start: {err:#}");
            false
        }
    };
    lifecycle.set_phase(Phase {
        name: "core".into(),
        state: "done".into(),
        took_ms: Some(opened_in.as_millis() as u64),
        detail: Some("store, queues and fleet registry open".into()),
    });
    if stopped {
        for name in &PHASES[1..] {
            lifecycle.set_phase(skipped(
                name,
                "the system is stopped; runs at the next start",
            ));
        }
        tracing::info!("the system is stopped: POST /api/v1/system/start resumes it");
        return;
    }
    run_phases(&state).await;
}

fn skipped(name: &str, why: &str) -> Phase {
    Phase {
        name: name.into(),
        state: "skipped".into(),
        took_ms: None,
        detail: Some(why.into()),
    }
}

async fn run_phases(state: &AppState) {
    let lifecycle = &state.lifecycle;
    for name in &PHASES[1..] {
        lifecycle.set_phase(Phase {
            name: name.to_string(),
            state: "pending".into(),
            took_ms: None,
            detail: None,
        });
    }
    phase(state, "index", index_roots(state)).await;
    phase(state, "campaigns", start_campaigns(state)).await;
    phase(state, "models", warm_models(state)).await;
}

/// What a phase did: `Ok(None)` when it had nothing to do.
type PhaseResult = anyhow::Result<Option<String>>;

async fn phase(state: &AppState, name: &str, work: impl Future<Output = PhaseResult>) {
    let lifecycle = &state.lifecycle;
    let started = Instant::now();
    lifecycle.set_phase(Phase {
        name: name.into(),
        state: "running".into(),
        took_ms: None,
        detail: None,
    });
    let (state_name, detail) = match work.await {
        Ok(Some(detail)) => ("done", detail),
        Ok(None) => ("skipped", "nothing to do".to_string()),
        Err(err) => {
            tracing::warn!(phase = name, "start-up phase failed: {err:#}");
            ("failed", format!("{err:#}"))
        }
    };
    lifecycle.set_phase(Phase {
        name: name.into(),
        state: state_name.into(),
        took_ms: Some(started.elapsed().as_millis() as u64),
        detail: Some(detail),
    });
}

async fn index_roots(state: &AppState) -> PhaseResult {
    if !state.lifecycle.plan.auto_index || state.index_roots.is_empty() {
        return Ok(None);
    }
    let mut jobs = 0;
    for root in state.index_roots.iter() {
        let started = crate::routes::packs::index_root(state, root)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", root.display(), e.message))?;
        jobs += started.jobs;
    }
    Ok(Some(format!(
        "{} root(s) indexed, {jobs} file(s) queued for embedding",
        state.index_roots.len()
    )))
}

async fn start_campaigns(state: &AppState) -> PhaseResult {
    let wanted = &state.lifecycle.plan.campaigns;
    if wanted.is_empty() {
        return Ok(None);
    }
    let unfinished: Vec<String> = state
        .campaigns
        .store()
        .unfinished()
        .await?
        .into_iter()
        .map(|row| row.name)
        .collect();
    let (mut started, mut kept) = (Vec::new(), 0);
    for request in wanted {
        if unfinished.contains(&request.name) {
            kept += 1;
            continue;
        }
        let name = request.name.clone();
        state
            .campaigns
            .create(request.clone())
            .await
            .map_err(|e| anyhow::anyhow!("campaign {name:?}: {e}"))?;
        started.push(name);
    }
    Ok(Some(format!(
        "started {} ({}); {kept} already unfinished",
        started.len(),
        started.join(", ")
    )))
}

async fn warm_models(state: &AppState) -> PhaseResult {
    if !state.lifecycle.plan.warm_models {
        return Ok(None);
    }
    let models = state.workflows.models();
    let mut loaded = Vec::new();
    for spec in models.specs() {
        let local = spec.provider == orchestrator_models::ProviderKind::Local;
        if !local || spec.id.contains('@') || !models.weights_path(&spec).is_file() {
            continue;
        }
        let started = Instant::now();
        models
            .local(&spec)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", spec.id))?;
        loaded.push(format!(
            "{} in {} ms",
            spec.id,
            started.elapsed().as_millis()
        ));
    }
    if loaded.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("loaded {}", loaded.join(", "))))
}
