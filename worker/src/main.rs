//! `orchestrator-worker`: consumes queues with apalis workers. Run as many as
//! you like against one Redis; each drains cleanly on SIGTERM or SIGINT.

use anyhow::{Context, bail};
use clap::Parser;
use orchestrator_shared::{
    bootstrap,
    config::{CommonConfig, parse_socket_addr},
    jobs, metrics,
    queue::fleet,
    shutdown, telemetry,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator-worker",
    version,
    about = "Master Orchestrator queue worker"
)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    /// Queues to serve, comma-separated (e.g. noop).
    #[arg(long, value_delimiter = ',', required = true)]
    queues: Vec<String>,

    /// Jobs run at once per queue (default: the queue's registry setting).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: Option<u32>,

    /// Address of this worker's own /metrics listener.
    #[arg(long, env = "ORCH_METRICS_ADDR")]
    metrics_addr: Option<String>,
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
    for name in &cli.queues {
        if !jobs::QUEUES.contains(&name.as_str()) {
            bail!(
                "--queues: unknown queue {name:?} (this worker serves: {})",
                jobs::QUEUES.join(", ")
            );
        }
    }
    metrics::install();
    tracing::info!(
        "starting orchestrator-worker for {}\n{}",
        cli.queues.join(","),
        cli.common
    );

    let services = bootstrap::open(&cli.common).await?;
    let (store, backend) = (services.store, services.queue);
    let assignments: Vec<_> = services
        .handlers
        .into_iter()
        .filter(|h| cli.queues.iter().any(|q| q == h.queue()))
        .collect();

    let shutdown_token = CancellationToken::new();
    shutdown::cancel_on_signal(shutdown_token.clone());
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("ORCH_METRICS_ADDR: cannot listen on {addr}"))?;
        tokio::spawn(metrics::serve(listener, shutdown_token.clone()));
    }
    fleet::spawn_depth_sampler(backend.clone(), cli.queues.clone(), shutdown_token.clone());

    let plan = bootstrap::assignments(&store, &assignments, cli.concurrency).await?;
    let workers = fleet::spawn_workers(backend, plan, cli.common.lease(), "worker", shutdown_token);
    bootstrap::join_workers(workers).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}
