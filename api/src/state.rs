//! What every handler shares.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use orchestrator_shared::{
    jobs::JobHandler, memory::Memory, queue::QueueBackend, store::Store, workflow::Workflows,
};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub queue: Arc<dyn QueueBackend>,
    /// Handlers of the queues jobs may be pushed to, by queue name.
    pub handlers: Arc<HashMap<&'static str, Arc<dyn JobHandler>>>,
    pub memory: Arc<Memory>,
    pub workflows: Arc<Workflows>,
    /// Directories context packs may be read from (ORCH_INDEX_ROOTS).
    pub index_roots: Arc<Vec<PathBuf>>,
}

impl AppState {
    pub fn new(
        store: Store,
        queue: Arc<dyn QueueBackend>,
        handlers: Vec<Arc<dyn JobHandler>>,
        memory: Arc<Memory>,
        workflows: Arc<Workflows>,
        index_roots: Vec<PathBuf>,
    ) -> Self {
        Self {
            store,
            queue,
            handlers: Arc::new(handlers.into_iter().map(|h| (h.queue(), h)).collect()),
            memory,
            workflows,
            index_roots: Arc::new(index_roots),
        }
    }
}
