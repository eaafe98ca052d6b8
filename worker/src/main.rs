//! `orchestrator-worker`: consumes queues with apalis workers. Run as many as
//! you like against one Redis; each drains cleanly on SIGTERM or SIGINT.

use anyhow::{Context, bail};
use clap::Parser;
use orchestrator_core::{
    config::{CommonConfig, parse_socket_addr},
    metrics, shutdown, telemetry,
};
use orchestrator_queue::fleet;
use tokio_util::sync::CancellationToken;

mod progress;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    group = clap::ArgGroup::new("work").required(true).multiple(false),
    name = "orchestrator-worker",
    version,
    about = "Master Orchestrator queue worker"
)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    /// Queues to serve, comma-separated: built-in ones (e.g. noop,callbacks)
    /// and `http` queues of the registry.
    #[arg(long, value_delimiter = ',', group = "work")]
    queues: Vec<String>,

    /// Serve one campaign (its id), within its max_workers across the fleet.
    #[arg(long, group = "work", value_name = "ID")]
    campaign: Option<String>,

    /// Serve whichever running campaign has the highest priority and a free
    /// worker slot (the only value is `all`).
    #[arg(long, group = "work", value_name = "all", value_parser = ["all"])]
    campaigns: Option<String>,

    /// Jobs run at once per queue (default: the queue's registry setting).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: Option<u32>,

    /// Address of this worker's own /metrics listener.
    #[arg(long, env = "ORCH_METRICS_ADDR")]
    metrics_addr: Option<String>,

    /// Do not draw progress bars of dataset generation runs (drawn only
    /// when serving `datagen` with stderr on a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[tokio::main]
async fn main() {
    telemetry::init_logging();
    telemetry::log_panics_briefly();
    if let Err(err) = run(Cli::parse()).await {
        eprintln!("orchestrator-worker: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.common.validate()?;
    let metrics_addr = cli
        .metrics_addr
        .as_deref()
        .map(|raw| parse_socket_addr("ORCH_METRICS_ADDR", raw))
        .transpose()?;
    if let Some(id) = &cli.campaign
        && uuid::Uuid::parse_str(id).is_err()
    {
        bail!(
            "--campaign: {id:?} is not a campaign id (a UUID, as POST /api/v1/campaigns returns)"
        );
    }
    let serves_campaigns = cli.campaign.is_some() || cli.campaigns.is_some();
    if serves_campaigns && cli.common.is_embedded() {
        bail!(
            "--campaign/--campaigns need ORCH_REDIS_URL: worker slots are shared through Redis \
             (in embedded mode the API runs campaign workers itself)"
        );
    }
    // Built-in queues need nothing but their name; the others are looked
    // up in the registry once the store is open.
    let needs_store = cli
        .queues
        .iter()
        .find(|q| !matches!(q.as_str(), "noop" | "callbacks"))
        .map(|q| format!("the {q} queue"))
        .or(serves_campaigns.then(|| "a campaign".to_string()));
    if let Some(work) = needs_store {
        orchestrator_bootstrap::require_shared_store(&cli.common, &work)?;
    }
    metrics::install();
    let serving = match (&cli.campaign, &cli.campaigns) {
        (Some(id), _) => format!("campaign {id}"),
        (None, Some(_)) => "every campaign by priority".to_string(),
        (None, None) => cli.queues.join(","),
    };
    tracing::info!("starting orchestrator-worker for {serving}\n{}", cli.common);

    let services = orchestrator_bootstrap::open(&cli.common).await?;
    let (store, backend) = (services.store, services.queue);
    let mut assignments: Vec<_> = services
        .handlers
        .into_iter()
        .filter(|h| cli.queues.iter().any(|q| q == h.queue()))
        .collect();
    let mut delivers = cli.queues.iter().any(|q| q == "callbacks");
    for name in &cli.queues {
        if !orchestrator_bootstrap::QUEUES.contains(&name.as_str()) {
            assignments.push(registry_queue(&store, name, &services.deliveries).await?);
            delivers = true;
        }
    }
    if delivers && orchestrator_bootstrap::signing_secret(&cli.common).is_none() {
        bail!(
            "ORCH_SIGNING_SECRET is not set: http queues and callbacks send signed requests \
             (set the secret the API has)"
        );
    }

    let shutdown_token = CancellationToken::new();
    shutdown::cancel_on_signal(shutdown_token.clone());
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("ORCH_METRICS_ADDR: cannot listen on {addr}"))?;
        tokio::spawn(metrics::serve(listener, shutdown_token.clone()));
    }
    let serves = match (&cli.campaign, &cli.campaigns) {
        (Some(id), _) => vec![format!("campaign:{id}")],
        (None, Some(_)) => vec!["campaigns:all".to_string()],
        (None, None) => cli.queues.clone(),
    };
    orchestrator_bootstrap::join_fleet(
        &cli.common,
        orchestrator_core::fleet::Kind::Worker,
        serves,
        shutdown_token.clone(),
    )
    .await?;
    if serves_campaigns {
        // Each worker settles the campaign it serves; the API settles them all.
        let campaigns = services.campaigns.clone();
        let worker = fleet::worker_id("campaign");
        tracing::info!(worker = %worker, "campaign worker started");
        match &cli.campaign {
            Some(id) => {
                campaigns.serve(id, &worker, true, &shutdown_token).await?;
            }
            None => campaigns.serve_any(&worker, &shutdown_token).await?,
        }
        tracing::info!("stopped cleanly");
        return Ok(());
    }
    fleet::spawn_depth_sampler(backend.clone(), cli.queues.clone(), shutdown_token.clone());
    if cli.queues.iter().any(|q| q == "datagen") && !cli.no_progress && progress::wanted() {
        progress::spawn(services.datasets.clone(), shutdown_token.clone());
    }

    let plan = orchestrator_bootstrap::assignments(&store, &assignments, cli.concurrency).await?;
    let workers = fleet::spawn_workers(backend, plan, cli.common.lease(), "worker", shutdown_token);
    orchestrator_bootstrap::join_workers(workers).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The handler of `--queues` entry `name` that is no built-in queue: an
/// `http` queue of the registry.
async fn registry_queue(
    store: &orchestrator_core::store::Store,
    name: &str,
    deliveries: &orchestrator_delivery::Client,
) -> anyhow::Result<std::sync::Arc<dyn orchestrator_queue::JobHandler>> {
    let Some(settings) = store.queue(name).await? else {
        bail!(
            "--queues: unknown queue {name:?} (this worker serves: {}, and http queues \
             created with POST /api/v1/queues)",
            orchestrator_bootstrap::QUEUES.join(", ")
        );
    };
    orchestrator_bootstrap::registry_handler(&settings, deliveries)
        .map_err(|e| anyhow::anyhow!("--queues: {e:#}"))
}
