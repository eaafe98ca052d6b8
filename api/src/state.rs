//! What every handler shares.

use std::{collections::HashMap, sync::Arc};

use orchestrator_shared::{jobs::JobHandler, queue::QueueBackend, store::Store};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub queue: Arc<dyn QueueBackend>,
    /// Handlers of the queues jobs may be pushed to, by queue name.
    pub handlers: Arc<HashMap<&'static str, Arc<dyn JobHandler>>>,
}

impl AppState {
    pub fn new(
        store: Store,
        queue: Arc<dyn QueueBackend>,
        handlers: Vec<Arc<dyn JobHandler>>,
    ) -> Self {
        Self {
            store,
            queue,
            handlers: Arc::new(handlers.into_iter().map(|h| (h.queue(), h)).collect()),
        }
    }
}
