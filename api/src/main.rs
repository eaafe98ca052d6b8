//! `orchestrator-api`: the HTTP API. Without Redis it is the whole system:
//! embedded SQLite queues with workers for every built-in queue in-process.

mod app;
mod auth;
mod console;
mod error;
mod extract;
mod guard;
mod lifecycle;
mod limits;
mod live;
mod queue_cache;
mod routes;
mod schedules;
mod state;
mod status;
mod targets;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use orchestrator_core::{
    config::{CommonConfig, Mode, parse_socket_addr},
    shutdown, telemetry,
};
use orchestrator_queue::fleet;
use orchestrator_training::{TrainerConfig, trainer::Trainer};
use tokio_util::sync::CancellationToken;

use crate::{
    app::Guards,
    auth::ApiKeys,
    guard::AllowedHosts,
    lifecycle::{Lifecycle, StartPlan},
    limits::Limits,
    live::Live,
    state::{AppState, Domains, Shared, Training},
};

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator-api",
    version,
    about = "Master Orchestrator HTTP API"
)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    /// Address to listen on.
    #[arg(long, env = "ORCH_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,

    /// Comma-separated bearer tokens; when set every /api/* route needs one.
    #[arg(long, env = "ORCH_API_KEYS", hide_env_values = true)]
    api_keys: Option<String>,

    /// Host names the API answers to besides IP literals and localhost
    /// (comma-separated; `*` for any, when a proxy in front checks them).
    #[arg(long, env = "ORCH_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,

    /// Most requests answered at once; past it, 503 with Retry-After.
    #[arg(long, env = "ORCH_MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_concurrent_requests: u64,

    /// Longest a request may take to produce its answer's head, in ms
    /// (streams then run on for as long as they stream).
    #[arg(long, env = "ORCH_REQUEST_TIMEOUT_MS", default_value_t = 120_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    request_timeout_ms: u64,

    /// Completed jobs per second the fleet is measured against (status,
    /// `orchestrator_throughput_target`).
    #[arg(long, env = "ORCH_THROUGHPUT_TARGET", default_value_t = 100_000,
          value_parser = parse_throughput_target)]
    throughput_target: u64,

    /// Most websockets open at once.
    #[arg(long, env = "ORCH_MAX_WEBSOCKETS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_websockets: u64,

    /// Allow listening on a non-loopback address without API keys.
    #[arg(long)]
    insecure_no_auth: bool,

    /// Directories the server may index from its own disk, comma-separated
    /// (none by default: packs are then built from uploaded documents only).
    #[arg(long, env = "ORCH_INDEX_ROOTS", value_delimiter = ',')]
    index_roots: Vec<std::path::PathBuf>,

    /// In embedded mode, run no in-process workers (jobs wait for
    /// orchestrator-worker processes).
    #[arg(long)]
    no_workers: bool,

    /// In embedded mode, run no in-process trainer (training runs wait for
    /// an orchestrator-trainer process).
    #[arg(long, env = "ORCH_NO_TRAINER")]
    no_trainer: bool,

    /// Index every ORCH_INDEX_ROOTS directory at start (and at every
    /// system start).
    #[arg(long, env = "ORCH_AUTO_INDEX")]
    auto_index: bool,

    /// A TOML file of `[[campaign]]` tables (the body of POST
    /// /api/v1/campaigns) started at system start unless one of the same
    /// name is unfinished.
    #[arg(long, env = "ORCH_AUTO_CAMPAIGNS")]
    auto_campaigns: Option<std::path::PathBuf>,

    /// Load every local model with weights present at system start
    /// (default: true in production mode, else false).
    #[arg(long, env = "ORCH_WARM_MODELS")]
    warm_models: Option<bool>,

    #[command(flatten)]
    trainer: TrainerConfig,
}

#[tokio::main]
async fn main() {
    telemetry::init_logging();
    telemetry::log_panics_briefly();
    if let Err(err) = run(Cli::parse()).await {
        eprintln!("orchestrator-api: {err:#}");
        std::process::exit(1);
    }
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    cli.common.validate()?;
    let addr: SocketAddr = parse_socket_addr("ORCH_HTTP_ADDR", &cli.http_addr)?;
    let keys = ApiKeys::parse(cli.api_keys.as_deref()).map_err(anyhow::Error::msg)?;
    let hosts = AllowedHosts::parse(&cli.allowed_hosts).map_err(anyhow::Error::msg)?;
    let mode = cli.common.mode;
    if mode == Mode::Production && !keys.is_enabled() {
        anyhow::bail!(
            "ORCH_MODE=production: refusing to start without ORCH_API_KEYS, even on loopback \
             (set keys, or use ORCH_MODE=development)"
        );
    }
    // Removed at exit; held for the life of the process.
    let throw_away = cli
        .common
        .throw_away_data_dir()
        .context("ORCH_MODE=testing: cannot create a throw-away data directory")?;
    if let Some(dir) = &throw_away {
        tracing::info!(
            "testing mode: data in {} (removed at exit)",
            dir.path().display()
        );
    }
    if !addr.ip().is_loopback() && !keys.is_enabled() && !cli.insecure_no_auth {
        anyhow::bail!(
            "ORCH_HTTP_ADDR: refusing to listen on non-loopback {addr} without ORCH_API_KEYS \
             (set keys, or pass --insecure-no-auth if something in front authenticates)"
        );
    }
    orchestrator_core::metrics::install();
    let embedded = cli.common.is_embedded();
    tracing::info!(
        "starting orchestrator-api ({} mode, {})\n{}\n  api keys:    {}",
        mode.as_str(),
        if embedded { "embedded" } else { "redis" },
        cli.common,
        if keys.is_enabled() {
            format!("{} configured", keys.len())
        } else {
            "none (auth off)".into()
        }
    );

    let start_plan = StartPlan {
        auto_index: cli.auto_index,
        campaigns: StartPlan::campaigns_from(cli.auto_campaigns.as_ref())?,
        warm_models: cli.warm_models.unwrap_or(mode == Mode::Production),
    };
    let opening = std::time::Instant::now();
    let services = orchestrator_bootstrap::open(&cli.common).await?;
    let (store, backend, handlers) = (services.store, services.queue, services.handlers);
    let http_handlers =
        orchestrator_bootstrap::http_handlers(&cli.common, &store, &services.deliveries).await?;
    // The registry is the source of truth for paused flags; a fresh Redis
    // must learn them again.
    for settings in store.queues().await? {
        backend.set_paused(&settings.name, settings.paused).await?;
    }
    // Tasks stored as ready whose push was cut short (the process died in
    // between) are queued now; pushes are idempotent per task.
    let requeued = services.workflows.queue_stranded().await?;
    if requeued > 0 {
        tracing::info!(
            workflows = requeued,
            "queued the ready tasks of unfinished workflows"
        );
    }

    let shutdown_token = CancellationToken::new();
    shutdown::cancel_on_signal(shutdown_token.clone());
    let queue_names: Vec<String> = handlers
        .iter()
        .chain(&http_handlers)
        .map(|h| h.queue().to_string())
        .collect();
    fleet::spawn_depth_sampler(backend.clone(), queue_names.clone(), shutdown_token.clone());

    let serves = match embedded && !cli.no_workers {
        true => queue_names,
        false => Vec::new(),
    };
    let membership = orchestrator_bootstrap::join_fleet(
        &cli.common,
        orchestrator_core::fleet::Kind::Api,
        serves,
        shutdown_token.clone(),
    )
    .await?;
    let fleet_registry = membership.registry.clone();
    let lifecycle = Arc::new(Lifecycle::new(membership.switch, start_plan));
    let live = Live::new(shutdown_token.clone());
    let status = status::spawn(
        status::Sources {
            store: store.clone(),
            queue: backend.clone(),
            fleet: fleet_registry.clone(),
            lifecycle: lifecycle.clone(),
            memory: services.memory.clone(),
            models: services.workflows.models().clone(),
            campaigns: services.campaigns.clone(),
            datasets: services.datasets.clone(),
            trainer_in_process: embedded && !cli.no_trainer,
            embedded,
            mode: mode.as_str(),
            target: cli.throughput_target,
            live: live.clone(),
        },
        shutdown_token.clone(),
    );

    // HTTP targets: in embedded mode their workers run here, for every
    // http queue of the registry now and for each one created later.
    let mut targets =
        targets::Targets::new(orchestrator_bootstrap::signing_secret(&cli.common).is_some());
    if embedded && !cli.no_workers {
        targets = targets.with_workers(
            backend.clone(),
            services.deliveries.clone(),
            cli.common.lease(),
            shutdown_token.clone(),
        );
    }
    targets.run(orchestrator_bootstrap::assignments(&store, &http_handlers, None).await?);
    let mut workers = tokio::task::JoinSet::new();
    if embedded && !cli.no_workers {
        let assignments = orchestrator_bootstrap::assignments(&store, &handlers, None).await?;
        workers = fleet::spawn_workers(
            backend.clone(),
            assignments,
            cli.common.lease(),
            "api",
            shutdown_token.clone(),
        );
    }

    // Campaign lifecycles are settled by every serving process; embedded
    // mode also runs the campaign workers here.
    let campaigns = services.campaigns.clone();
    campaigns.resume_queues().await?;
    campaigns.supervise(embedded && !cli.no_workers, shutdown_token.clone());

    let training_defaults = cli.trainer.training()?;
    if embedded && !cli.no_trainer {
        let owner = format!(
            "api-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        let trainer = Trainer::new(
            services.feedback.clone(),
            services.workflows.models().clone(),
            services.adapter_notices.clone(),
            cli.trainer.settings(&cli.common, owner)?,
        );
        let trainer = std::sync::Arc::new(trainer);
        let stop = shutdown_token.clone();
        orchestrator_core::supervise::spawn("trainer", shutdown_token.clone(), move || {
            let (trainer, stop) = (trainer.clone(), stop.clone());
            async move {
                if let Err(err) = trainer.run(stop).await {
                    tracing::error!("trainer stopped: {err:#}");
                }
            }
        });
    }
    let shared = Shared::new(
        store,
        backend,
        handlers,
        Domains {
            memory: services.memory,
            datasets: services.datasets,
            workflows: services.workflows,
            campaigns: services.campaigns,
            fleet: fleet_registry,
            status,
            lifecycle,
            live,
        },
        cli.index_roots,
        Training {
            feedback: services.feedback,
            adapter_notices: services.adapter_notices,
            defaults: training_defaults,
        },
        Limits::new(
            cli.max_concurrent_requests as usize,
            Duration::from_millis(cli.request_timeout_ms),
            cli.max_websockets as usize,
        ),
    );
    let state = AppState::from(Shared {
        auth_required: keys.is_enabled(),
        targets: Arc::new(targets),
        ..shared
    });
    let state_targets = state.targets.clone();
    tokio::spawn(lifecycle::boot(state.clone(), opening.elapsed()));
    schedules::spawn(state.clone(), shutdown_token.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!("listening on http://{bound} (try: curl http://{bound}/health)");
    let stop = shutdown_token.clone();
    axum::serve(listener, app::router(state, Guards { keys, hosts }))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    orchestrator_bootstrap::join_workers(workers).await?;
    state_targets.join().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `ORCH_THROUGHPUT_TARGET`, named in the error (clap names only the flag).
fn parse_throughput_target(raw: &str) -> Result<u64, String> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|target| (1..=1_000_000_000).contains(target))
        .ok_or_else(|| {
            "ORCH_THROUGHPUT_TARGET must be a whole number of jobs/s from 1 to 1,000,000,000"
                .to_string()
        })
}
