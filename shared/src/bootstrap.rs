//! Start-up steps every serving process shares: open the store (migrating
//! it) and the queue backend, and turn registry settings into worker plans.

use std::sync::Arc;

use anyhow::Context;

use crate::{
    config::CommonConfig,
    jobs::{self, JobHandler},
    memory::{Memory, packs::PackStore},
    queue::{self, QueueBackend, fleet::Assignment},
    store::Store,
};

/// What a serving process works with.
pub struct Services {
    pub store: Store,
    pub queue: Arc<dyn QueueBackend>,
    pub memory: Arc<Memory>,
    /// Every built-in queue's handler.
    pub handlers: Vec<Arc<dyn JobHandler>>,
}

/// Opens the store and the queue backend, registering the built-in queues.
/// Memory (model, vectors) opens lazily on first use.
pub async fn open(config: &CommonConfig) -> anyhow::Result<Services> {
    let store = Store::connect(config).await?;
    let memory = Arc::new(Memory::new(
        config,
        PackStore::new(store.connection().clone()),
    ));
    let handlers = jobs::builtin(&memory);
    store.seed_queues(&handlers).await?;
    let queue = queue::connect(config).await?;
    Ok(Services {
        store,
        queue,
        memory,
        handlers,
    })
}

/// One worker plan per handler, with the queue's registry settings;
/// `concurrency` overrides the registry's.
pub async fn assignments(
    store: &Store,
    handlers: &[Arc<dyn JobHandler>],
    concurrency: Option<u32>,
) -> anyhow::Result<Vec<Assignment>> {
    let mut plan = Vec::with_capacity(handlers.len());
    for handler in handlers {
        let settings = store
            .queue(handler.queue())
            .await?
            .with_context(|| format!("queue {} is not registered", handler.queue()))?;
        let registry_concurrency = settings.concurrency.max(1) as u32;
        plan.push(Assignment {
            handler: handler.clone(),
            concurrency: concurrency.unwrap_or(registry_concurrency) as usize,
            rate_limit_per_s: settings
                .rate_limit_per_s
                .filter(|r| *r > 0)
                .map(|r| r as u32),
        });
    }
    Ok(plan)
}

/// Waits for every worker task, returning the first failure.
pub async fn join_workers(
    mut workers: tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    while let Some(result) = workers.join_next().await {
        result.context("worker task panicked")??;
    }
    Ok(())
}
