//! What every handler shares.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use orchestrator_campaign::Campaigns;
use orchestrator_core::{events::Events, fleet, store::Store};
use orchestrator_datagen::runs::Datasets;
use orchestrator_memory::Memory;
use orchestrator_queue::{JobHandler, PushCoalescer, QueueBackend};
use orchestrator_training::{TrainingConfig, feedback::Feedback};
use orchestrator_workflow::Workflows;

use crate::{
    lifecycle::Lifecycle, limits::Limits, live::Live, queue_cache::QueueCache, status::StatusCache,
    targets::Targets,
};

/// What every route reads, behind one `Arc`: axum clones the state for
/// each request and each middleware, and one reference count is all that
/// clone then costs.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

pub struct Shared {
    pub store: Store,
    pub queue: Arc<dyn QueueBackend>,
    /// Single-job pushes, batched together while they arrive at once.
    pub pushes: PushCoalescer,
    /// Queue settings as pushes read them (fresh within a second).
    pub queue_settings: QueueCache,
    /// Handlers of the queues jobs may be pushed to, by queue name.
    pub handlers: Arc<HashMap<String, Arc<dyn JobHandler>>>,
    pub memory: Arc<Memory>,
    pub workflows: Arc<Workflows>,
    /// Directories context packs may be read from (ORCH_INDEX_ROOTS).
    pub index_roots: Arc<Vec<PathBuf>>,
    pub feedback: Arc<Feedback>,
    /// Adapter changes, announced to every serving process.
    pub adapter_notices: Arc<Events>,
    /// Settings of runs started without any.
    pub training_defaults: Arc<TrainingConfig>,
    pub campaigns: Arc<Campaigns>,
    /// Training-data generation runs.
    pub datasets: Arc<Datasets>,
    pub limits: Limits,
    /// Every live process of the fleet.
    pub fleet: fleet::Registry,
    /// The latest system snapshot.
    pub status: StatusCache,
    /// Stopping and starting the fleet.
    pub lifecycle: Arc<Lifecycle>,
    /// Status, warning and error events for operators.
    pub live: Live,
    /// Whether API keys are required (told by `GET /health`).
    pub auth_required: bool,
    /// Signing and in-process workers of HTTP targets.
    pub targets: Arc<Targets>,
}

/// The services behind the memory, workflow, campaign and fleet routes.
pub struct Domains {
    pub memory: Arc<Memory>,
    pub datasets: Arc<Datasets>,
    pub workflows: Arc<Workflows>,
    pub campaigns: Arc<Campaigns>,
    pub fleet: fleet::Registry,
    pub status: StatusCache,
    pub lifecycle: Arc<Lifecycle>,
    pub live: Live,
}

/// The learning half of the state.
pub struct Training {
    pub feedback: Arc<Feedback>,
    pub adapter_notices: Arc<Events>,
    pub defaults: TrainingConfig,
}

impl Shared {
    pub fn new(
        store: Store,
        queue: Arc<dyn QueueBackend>,
        handlers: Vec<Arc<dyn JobHandler>>,
        domains: Domains,
        index_roots: Vec<PathBuf>,
        training: Training,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            pushes: PushCoalescer::new(queue.clone()),
            queue,
            queue_settings: QueueCache::default(),
            handlers: Arc::new(
                handlers
                    .into_iter()
                    .map(|h| (h.queue().to_string(), h))
                    .collect(),
            ),
            memory: domains.memory,
            workflows: domains.workflows,
            index_roots: Arc::new(index_roots),
            feedback: training.feedback,
            adapter_notices: training.adapter_notices,
            training_defaults: Arc::new(training.defaults),
            campaigns: domains.campaigns,
            datasets: domains.datasets,
            limits,
            fleet: domains.fleet,
            status: domains.status,
            lifecycle: domains.lifecycle,
            live: domains.live,
            auth_required: false,
            targets: Arc::default(),
        }
    }
}
