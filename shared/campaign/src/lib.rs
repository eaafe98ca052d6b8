//! Data-mining campaigns: long crawls with their own queue each, served by
//! as many workers as their `max_workers` allows across the fleet.
//!
//! - [`model`]: the request, checked settings, status and API view;
//! - [`kinds`]: the campaign types (`seo_mining`, `storybook_discovery`);
//! - [`store`]: campaign rows, frontiers and deduplicated results;
//! - [`fetch`]: the polite, SSRF-guarded HTTP fetcher;
//! - [`extract`] and [`sitemap`]: schema.org extraction and sitemap parsing;
//! - [`slots`]: fleet-wide worker leases;
//! - [`runner`]: what a worker does (operations, serving loops);
//! - [`supervisor`]: lifecycle decisions and in-process workers.
//!
//! A campaign's frontier is its `campaign_urls` rows: a URL is admitted
//! once (deduplicated by key), queued as a job on `campaign-{id}`, and
//! marked done in the same transaction that stores what its page held. So
//! pause and resume lose nothing, and a killed worker's operation runs
//! again with its results deduplicated.

pub mod corpus;
pub mod extract;
pub mod fetch;
pub mod kinds;
pub mod model;
pub mod runner;
pub mod sitemap;
pub mod slots;
pub mod store;
pub mod supervisor;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use self::{
    fetch::{Allow, FetchOptions, Fetcher},
    kinds::{CampaignType, Op},
    model::{CampaignRequest, CampaignView, Goals, Settings, Status},
    slots::Slots,
    store::{CampaignRow, CampaignStore, NewCampaign},
};
use orchestrator_queue::{NewJob, QueueBackend};

/// Attempts an operation gets when its fetch fails in a retryable way.
const OP_ATTEMPTS: u32 = 3;
/// First retry delay of a failed operation.
const OP_BACKOFF_MS: u64 = 2_000;
/// Largest page body a fetch keeps, unless `max_memory_mb` lowers it.
const DEFAULT_BODY_CAP: usize = 5 * 1024 * 1024;

/// The queue of campaign `id`.
pub fn queue_name(id: &str) -> String {
    format!("campaign-{id}")
}

/// Why a campaign request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("{0}")]
    Invalid(String),
    #[error("no campaign {0}")]
    NotFound(String),
    #[error("campaign is {status}; {action} needs it {needs}")]
    Conflict {
        status: &'static str,
        action: &'static str,
        needs: &'static str,
    },
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
}

/// A campaign ready to run operations: its type, settings and fetcher.
pub struct Prepared {
    pub kind: Arc<dyn CampaignType>,
    pub settings: Settings,
    pub goals: Goals,
    pub fetcher: Fetcher,
}

/// Everything campaigns need in one process: the store, the queues, the
/// slot table, and the prepared campaigns this process works on.
pub struct Campaigns {
    store: CampaignStore,
    queue: Arc<dyn QueueBackend>,
    slots: Arc<dyn Slots>,
    lease: Duration,
    /// `ORCH_CAMPAIGN_ALLOW`: the private addresses any campaign may reach.
    operator_allow: Allow,
    prepared: Mutex<HashMap<String, Arc<Prepared>>>,
}

impl Campaigns {
    pub fn new(
        store: CampaignStore,
        queue: Arc<dyn QueueBackend>,
        slots: Arc<dyn Slots>,
        lease: Duration,
        operator_allow: Allow,
    ) -> Self {
        Self {
            store,
            queue,
            slots,
            lease,
            operator_allow,
            prepared: Mutex::default(),
        }
    }

    pub fn store(&self) -> &CampaignStore {
        &self.store
    }

    /// `ORCH_CAMPAIGN_ALLOW`, which also guards HTTP targets and callbacks.
    pub fn operator_allow(&self) -> &Allow {
        &self.operator_allow
    }

    /// Checks a request, stores the campaign with its seeds and queues them.
    pub async fn create(&self, request: CampaignRequest) -> Result<CampaignRow, CampaignError> {
        request.check_common().map_err(CampaignError::Invalid)?;
        let kind = kinds::by_name(&request.kind).ok_or_else(|| {
            CampaignError::Invalid(format!(
                "type: unknown campaign type {:?} (one of: {})",
                request.kind.chars().take(64).collect::<String>(),
                kinds::TYPES.join(", ")
            ))
        })?;
        let settings = request
            .config
            .settings(&self.operator_allow)
            .map_err(CampaignError::Invalid)?;
        kind.check(&settings, &request.goals)
            .map_err(CampaignError::Invalid)?;
        let seeds = kind.seeds(&settings);
        let id = uuid::Uuid::now_v7().to_string();
        let row = self
            .store
            .create(
                NewCampaign {
                    id: id.clone(),
                    name: request.name.trim().to_string(),
                    kind: kind.name().to_string(),
                    priority: request.priority,
                    config: serde_json::to_string(&request.config).map_err(anyhow::Error::from)?,
                    goals: serde_json::to_string(&request.goals).map_err(anyhow::Error::from)?,
                    max_workers: request.resources.max_workers,
                    max_memory_mb: request.resources.max_memory_mb,
                },
                &seeds,
            )
            .await?;
        // A push lost here is found by the supervisor (frontier not empty,
        // queue empty) and done again.
        self.push(&id, &seeds).await?;
        Ok(row)
    }

    /// Queues operations; a key already queued is not queued twice.
    pub async fn push(&self, id: &str, ops: &[Op]) -> anyhow::Result<()> {
        let queue = queue_name(id);
        for chunk in ops.chunks(1_000) {
            let jobs = chunk
                .iter()
                .map(|op| -> anyhow::Result<NewJob> {
                    Ok(NewJob {
                        queue: queue.clone(),
                        payload: serde_json::to_value(runner::OpPayload {
                            campaign: id.to_string(),
                            op: op.clone(),
                        })?,
                        priority: 0,
                        max_attempts: OP_ATTEMPTS,
                        backoff_ms: OP_BACKOFF_MS,
                        idempotency_key: Some(op.key()),
                        delay_ms: 0,
                        concurrency_key: None,
                        callback_url: None,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.queue.push(jobs).await?;
        }
        Ok(())
    }

    /// The campaign with its frontier size and the workers serving it.
    pub async fn view(&self, id: &str) -> Result<CampaignView, CampaignError> {
        let row = self.get(id).await?;
        self.view_of(row).await
    }

    pub async fn view_of(&self, row: CampaignRow) -> Result<CampaignView, CampaignError> {
        let frontier = self.store.frontier(&row.id).await?;
        let workers = self.slots.holders(&row.id).await?;
        Ok(CampaignView::new(row, frontier, workers))
    }

    async fn get(&self, id: &str) -> Result<CampaignRow, CampaignError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| CampaignError::NotFound(id.chars().take(64).collect()))
    }

    /// Stops handing out its operations; running ones finish.
    pub async fn pause(&self, id: &str) -> Result<CampaignView, CampaignError> {
        self.change(
            id,
            "pause",
            &[Status::Pending, Status::Running],
            Status::Paused,
            "pending or running",
        )
        .await
    }

    /// Hands out its operations again.
    pub async fn resume(&self, id: &str) -> Result<CampaignView, CampaignError> {
        self.change(id, "resume", &[Status::Paused], Status::Running, "paused")
            .await
    }

    /// Ends it for good; its frontier stays stored but is never fetched.
    pub async fn stop(&self, id: &str) -> Result<CampaignView, CampaignError> {
        let active = [Status::Pending, Status::Running, Status::Paused];
        self.change(
            id,
            "stop",
            &active,
            Status::Stopped,
            "pending, running or paused",
        )
        .await
    }

    async fn change(
        &self,
        id: &str,
        action: &'static str,
        from: &[Status],
        to: Status,
        needs: &'static str,
    ) -> Result<CampaignView, CampaignError> {
        let row = self.get(id).await?;
        let reason = (to == Status::Stopped).then_some("stopped by request");
        if !self.store.transition(id, from, to, reason).await? {
            let now = self.get(id).await.map(|r| r.status).unwrap_or(row.status);
            return Err(CampaignError::Conflict {
                status: Status::parse(&now).unwrap_or(Status::Failed).as_str(),
                action,
                needs,
            });
        }
        self.queue
            .set_paused(&queue_name(id), to != Status::Running)
            .await?;
        self.view(id).await
    }

    /// Changes how many workers may serve it; takes effect at the workers'
    /// next slot renewal.
    pub async fn scale(&self, id: &str, workers: u32) -> Result<CampaignView, CampaignError> {
        if !(1..=model::MAX_WORKERS).contains(&workers) {
            return Err(CampaignError::Invalid(format!(
                "workers: {workers} is outside 1..={}",
                model::MAX_WORKERS
            )));
        }
        let row = self.get(id).await?;
        if Status::parse(&row.status).is_some_and(Status::is_final) {
            return Err(CampaignError::Conflict {
                status: Status::parse(&row.status)
                    .unwrap_or(Status::Failed)
                    .as_str(),
                action: "scale",
                needs: "not ended",
            });
        }
        self.store.set_max_workers(id, workers).await?;
        self.view(id).await
    }

    /// The campaign's type, settings and fetcher, built once per process.
    pub async fn prepared(&self, id: &str) -> Result<Arc<Prepared>, CampaignError> {
        if let Some(ready) = self.prepared.lock().expect("prepared lock").get(id) {
            return Ok(ready.clone());
        }
        let row = self.get(id).await?;
        let ready = Arc::new(prepare(&row, &self.operator_allow).map_err(CampaignError::Invalid)?);
        self.prepared
            .lock()
            .expect("prepared lock")
            .insert(id.to_string(), ready.clone());
        Ok(ready)
    }

    /// Drops a finished campaign's fetcher and caches.
    fn forget(&self, id: &str) {
        self.prepared.lock().expect("prepared lock").remove(id);
    }
}

/// Rebuilds what a stored campaign runs with (checked when it was created;
/// checked again against this process's operator allowlist, which decides).
fn prepare(row: &CampaignRow, operator_allow: &Allow) -> Result<Prepared, String> {
    let kind = kinds::by_name(&row.kind).ok_or_else(|| format!("unknown type {}", row.kind))?;
    let config: model::CampaignConfig =
        serde_json::from_str(&row.config).map_err(|e| format!("stored config: {e}"))?;
    let goals: Goals =
        serde_json::from_str(&row.goals).map_err(|e| format!("stored goals: {e}"))?;
    let settings = config.settings(operator_allow)?;
    let body_cap = row.max_memory_mb.map_or(DEFAULT_BODY_CAP, |mb| {
        // The pages one worker holds at once must fit the memory budget.
        let budget = mb.max(1) as usize * 1024 * 1024;
        (budget / settings.concurrency.max(1) as usize).clamp(64 * 1024, DEFAULT_BODY_CAP)
    });
    let fetcher = Fetcher::new(FetchOptions {
        allow: settings.allow.clone(),
        max_body_bytes: body_cap,
        per_host_concurrency: settings.per_host_concurrency as usize,
        per_host_interval: Duration::from_millis(settings.per_host_interval_ms),
        ..FetchOptions::default()
    })
    .map_err(|e| format!("fetcher: {e}"))?;
    Ok(Prepared {
        kind,
        settings,
        goals,
        fetcher,
    })
}
