//! The composition root: start-up steps every serving process shares. It
//! opens the store (migrating it) and the queue backend, wires the
//! subsystems together, registers the built-in queues' handlers and turns
//! registry settings into worker plans.
//!
//! This is the only library crate that knows every other one; the binaries
//! (`orchestrator-api`, `orchestrator-worker`, `orchestrator-trainer`) call
//! it and hold no wiring of their own beyond their flags and handlers.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
};

use anyhow::Context;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use orchestrator_campaign::{Campaigns, fetch::Allow, slots, store::CampaignStore};
use orchestrator_core::{
    config::{CommonConfig, DatabaseKind, Mode},
    connect,
    events::{Event, Events},
    fleet,
    store::{QueueSettings, Store},
    system,
};
use orchestrator_datagen::runs::{DATAGEN_QUEUE, Datasets, ShardJob};
use orchestrator_delivery::{Callbacks, HttpTarget};
use orchestrator_memory::{Embed, Memory, packs::EMBED_QUEUE, packs::PackStore};
use orchestrator_models::{Models, Registry};
use orchestrator_queue::{
    JobHandler, Noop, QueueBackend, callback::CALLBACKS_QUEUE, fleet::Assignment,
};
use orchestrator_training::feedback::Feedback;
use orchestrator_workflow::{INFERENCE_QUEUE, Inference, Workflows, decomposer::Patterns};

/// Names of the built-in queues, for validating flags before anything opens.
pub const QUEUES: [&str; 5] = [
    "noop",
    EMBED_QUEUE,
    INFERENCE_QUEUE,
    DATAGEN_QUEUE,
    CALLBACKS_QUEUE,
];

/// Every built-in queue's handler. The inference handler finds the workflow
/// service through `workflows` once it exists (the service needs the queue,
/// which needs the handlers registered first).
pub fn builtin(
    config: &CommonConfig,
    store: &Store,
    memory: &Arc<Memory>,
    models: &Arc<Models>,
    workflows: &Arc<OnceLock<Arc<Workflows>>>,
    deliveries: &orchestrator_delivery::Client,
) -> Vec<Arc<dyn JobHandler>> {
    vec![
        Arc::new(Noop {
            faults: config.noop_faults,
        }),
        Arc::new(Embed::new(memory.clone())),
        Arc::new(Inference::new(workflows.clone())),
        Arc::new(ShardJob::new(store.connection().clone(), models.clone())),
        Arc::new(Callbacks::new(deliveries.clone())),
    ]
}

/// The client every HTTP target and callback delivery of this process
/// uses: guarded by `ORCH_CAMPAIGN_ALLOW`, signing with `ORCH_SIGNING_SECRET`.
pub fn delivery_client(config: &CommonConfig) -> anyhow::Result<orchestrator_delivery::Client> {
    orchestrator_delivery::Client::new(campaign_allow(config)?, signing_secret(config))
}

/// `ORCH_SIGNING_SECRET`, if set to something.
pub fn signing_secret(config: &CommonConfig) -> Option<String> {
    config.signing_secret.clone().filter(|s| !s.is_empty())
}

/// The handler of registry queue `settings`, which must be an `http` queue
/// (the other kinds are served by workers of their own); the error says
/// who serves it.
pub fn registry_handler(
    settings: &QueueSettings,
    deliveries: &orchestrator_delivery::Client,
) -> anyhow::Result<Arc<dyn JobHandler>> {
    let name = &settings.name;
    match settings.handler.as_str() {
        "http" => Ok(Arc::new(HttpTarget::new(settings, deliveries.clone())?)),
        "external" => anyhow::bail!(
            "queue {name:?} is served by external workers, which lease its jobs over HTTP \
             (POST /api/v1/queues/{name}/lease)"
        ),
        "custom" => anyhow::bail!(
            "queue {name:?} is run by a worker process of your own built on the \
             orchestrator-queue crate"
        ),
        other => anyhow::bail!("queue {name:?} has handler {other:?}, not an http target"),
    }
}

/// The handlers of every `http` queue in the registry. In production mode
/// their deliveries must be signed, so a missing `ORCH_SIGNING_SECRET` is
/// refused here, at start, rather than job by job.
pub async fn http_handlers(
    config: &CommonConfig,
    store: &Store,
    deliveries: &orchestrator_delivery::Client,
) -> anyhow::Result<Vec<Arc<dyn JobHandler>>> {
    let queues: Vec<_> = store
        .queues()
        .await?
        .into_iter()
        .filter(|q| q.handler == "http")
        .collect();
    if let Some(queue) = queues.first()
        && config.mode == Mode::Production
        && signing_secret(config).is_none()
    {
        anyhow::bail!(
            "ORCH_SIGNING_SECRET is not set, but http queues (e.g. {:?}) deliver signed \
             requests; ORCH_MODE=production refuses to start without it",
            queue.name
        );
    }
    queues
        .iter()
        .map(|q| registry_handler(q, deliveries))
        .collect()
}

/// What a serving process works with.
pub struct Services {
    pub store: Store,
    pub queue: Arc<dyn QueueBackend>,
    pub memory: Arc<Memory>,
    pub workflows: Arc<Workflows>,
    pub feedback: Arc<Feedback>,
    /// Adapter publications, heard by every serving process.
    pub adapter_notices: Arc<Events>,
    /// Data-mining campaigns.
    pub campaigns: Arc<Campaigns>,
    /// Training-data generation runs.
    pub datasets: Arc<Datasets>,
    /// Every built-in queue's handler.
    pub handlers: Vec<Arc<dyn JobHandler>>,
    /// The client of HTTP target and callback deliveries.
    pub deliveries: orchestrator_delivery::Client,
}

/// Opens the store and the queue backend, registering the built-in queues,
/// and reads the model registry and workflow patterns. Models (language and
/// embedding) load lazily on first use.
pub async fn open(config: &CommonConfig) -> anyhow::Result<Services> {
    // A bad wait limit is reported before anything connects, whichever
    // backends are in use.
    connect::limit_from_env()?;
    let registry = Registry::load_or_create(&config.models_config_path())?;
    let patterns = Patterns::load(config.workflow_patterns.as_deref())?;
    let store = connect_store(config).await?;
    let memory = Arc::new(Memory::new(
        config,
        PackStore::new(store.connection().clone()),
    ));
    let models = Arc::new(
        Models::new(
            registry,
            config.models_dir.clone(),
            store.connection().clone(),
        )?
        .with_adapter_cache(config.data_dir.join("adapter-cache")),
    );
    models.refresh_adapters().await?;
    let workflows_slot = Arc::new(OnceLock::new());
    let deliveries = delivery_client(config)?;
    let handlers = builtin(
        config,
        &store,
        &memory,
        &models,
        &workflows_slot,
        &deliveries,
    );
    let defaults: Vec<_> = handlers.iter().map(|h| (h.queue(), h.defaults())).collect();
    store.seed_queues(&defaults).await?;
    let queue = with_redis(config, || orchestrator_queue::connect(config)).await?;
    // The engine keeps each queue's options where it works (a new Redis, or
    // a moved queue file, starts without them): the registry is the truth.
    for settings in store.queues().await? {
        let options = orchestrator_queue::QueueOptions::from(&settings);
        queue.configure(&settings.name, &options).await?;
    }
    let events = open_events(config, "workflows").await?;
    let adapter_notices = Arc::new(open_events(config, "adapters").await?);
    let feedback = Arc::new(match &config.redis_url {
        Some(url) => {
            with_redis(config, || {
                Feedback::redis(store.connection().clone(), url, &config.redis_prefix)
            })
            .await?
        }
        None => Feedback::embedded(store.connection().clone()),
    });
    let heard = with_redis(config, || adapter_notices.subscribe()).await?;
    follow_adapters(models.clone(), heard);
    let workflows = Arc::new(Workflows::new(
        store.connection().clone(),
        models.clone(),
        memory.clone(),
        patterns,
        queue.clone(),
        Arc::new(events),
    ));
    let _ = workflows_slot.set(workflows.clone());
    let campaigns = Arc::new(Campaigns::new(
        CampaignStore::new(store.connection().clone()),
        queue.clone(),
        with_redis(config, || {
            slots::open(config.redis_url.as_deref(), &config.redis_prefix)
        })
        .await?,
        config.lease(),
        campaign_allow(config)?,
    ));
    let datasets = Arc::new(Datasets::new(
        store.connection().clone(),
        queue.clone(),
        models,
    ));
    Ok(Services {
        campaigns,
        datasets,
        store,
        queue,
        memory,
        workflows,
        feedback,
        adapter_notices,
        handlers,
        deliveries,
    })
}

/// Refuses a process in Redis mode that would open a SQLite store of its own
/// while `work` reads and writes the store the API uses: its tasks would
/// fail later, one by one, on rows it cannot see.
pub fn require_shared_store(config: &CommonConfig, work: &str) -> anyhow::Result<()> {
    if config.is_embedded() || config.database_url.is_some() {
        return Ok(());
    }
    anyhow::bail!(
        "DATABASE_URL is not set, but with ORCH_REDIS_URL {work} reads and writes the store \
         every process shares; set DATABASE_URL to the API's database (postgres://..., or \
         sqlite://PATH of a file every process on this host opens)"
    )
}

/// The operator's campaign allowlist, `ORCH_CAMPAIGN_ALLOW`.
pub fn campaign_allow(config: &CommonConfig) -> anyhow::Result<Allow> {
    let entries = &config.campaign_allow;
    // An empty variable (ORCH_CAMPAIGN_ALLOW=) means no entries.
    if entries.iter().all(|e| e.trim().is_empty()) {
        return Ok(Allow::none());
    }
    Allow::parse(entries).map_err(|e| anyhow::anyhow!("ORCH_CAMPAIGN_ALLOW: {e}"))
}

/// The event topic `topic`: over Redis with Redis, in-process without.
async fn open_events(config: &CommonConfig, topic: &str) -> anyhow::Result<Events> {
    match &config.redis_url {
        Some(url) => {
            let channel = format!("{}:events:{topic}", config.redis_prefix);
            with_redis(config, || Events::redis(url, channel.clone())).await
        }
        None => Ok(Events::in_process()),
    }
}

/// Opens the store, waiting for a PostgreSQL server that is not up yet; a
/// SQLite file has no server to wait for, so its errors come at once.
async fn connect_store(config: &CommonConfig) -> anyhow::Result<Store> {
    if config.database_kind()? == DatabaseKind::Sqlite {
        return Store::connect(config).await;
    }
    let url = config.database_url();
    let limit = connect::limit_from_env()?;
    connect::until_connected("the store", &url, limit, || Store::connect(config)).await
}

/// Runs a start-up step that connects to Redis, waiting while Redis cannot
/// be reached (see [`connect::until_connected`]): a process started before
/// Redis is up, or during its restart, comes up with it. Without Redis the
/// step runs once.
async fn with_redis<T, F, Fut>(config: &CommonConfig, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    match &config.redis_url {
        Some(url) => {
            let limit = connect::limit_from_env()?;
            connect::until_connected("Redis", url, limit, attempt).await
        }
        None => attempt().await,
    }
}

/// Reloads the adapter table (and the new active adapters) whenever a
/// trainer publishes, promotes or rolls back an adapter.
fn follow_adapters(models: Arc<Models>, mut heard: broadcast::Receiver<Event>) {
    tokio::spawn(async move {
        loop {
            match heard.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            if let Err(err) = models.adapters_changed().await {
                tracing::warn!(error = %format!("{err:#}"), "reloading adapters failed");
            }
        }
    });
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

/// This process's place in the fleet: the registry it beats into and the
/// system switch it follows.
pub struct Membership {
    pub registry: fleet::Registry,
    pub switch: system::Switch,
}

/// Registers this process in the fleet (Redis when configured, else the
/// process's own table), beats until `shutdown`, and follows the system
/// switch (a stopped system leases no jobs).
pub async fn join_fleet(
    config: &CommonConfig,
    kind: fleet::Kind,
    serves: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<Membership> {
    let registry = match &config.redis_url {
        Some(url) => {
            with_redis(config, || fleet::Registry::redis(url, &config.redis_prefix)).await?
        }
        None => fleet::Registry::in_process(),
    };
    let switch = system::Switch::new(&registry, open_events(config, "system").await?);
    // The state is known before the first job is leased.
    switch.follow(shutdown.clone()).await?;
    let process = fleet::this_process(kind, serves);
    // Listed from the start, not only after the first beat.
    registry.beat(&process).await?;
    fleet::spawn_heartbeat(registry.clone(), process, shutdown);
    Ok(Membership { registry, switch })
}
