//! `orchestrator-trainer`: turns buffered feedback into LoRA adapters.
//! Run one or several against the same store and Redis: runs are leased, so
//! no two trainers train the same run, and a run whose trainer dies is
//! picked up by another once its lease expires.

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use orchestrator_core::{
    config::{CommonConfig, parse_socket_addr},
    metrics, shutdown, telemetry,
};
use orchestrator_training::{
    TrainerConfig,
    backend::Progress,
    runs::{RunRow, status},
    trainer::{Observer, Trainer},
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator-trainer",
    version,
    about = "Master Orchestrator trainer: feedback to LoRA adapters"
)]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,

    #[command(flatten)]
    trainer: TrainerConfig,

    /// Address of this trainer's own /metrics listener.
    #[arg(long, env = "ORCH_METRICS_ADDR")]
    metrics_addr: Option<String>,

    /// Never draw a progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

fn main() {
    orchestrator_training::prefer_inline_elementwise();
    telemetry::init_logging();
    telemetry::log_panics_briefly();
    let runtime = tokio::runtime::Runtime::new().expect("start the async runtime");
    if let Err(err) = runtime.block_on(run(Cli::parse())) {
        eprintln!("orchestrator-trainer: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.common.validate()?;
    orchestrator_bootstrap::require_shared_store(&cli.common, "the trainer")?;
    let metrics_addr = cli
        .metrics_addr
        .as_deref()
        .map(|raw| parse_socket_addr("ORCH_METRICS_ADDR", raw))
        .transpose()?;
    metrics::install();
    // Every outcome is exported from the start, at zero: Prometheus'
    // increase() sees a first failure as an increase, not as a new series.
    metrics::register_at_zero(
        metrics::TRAINING_RUNS,
        "outcome",
        &[
            status::PROMOTED,
            "candidate",
            status::REJECTED,
            status::FAILED,
        ],
    );
    if cli.common.is_embedded() {
        tracing::warn!(
            "no ORCH_REDIS_URL: an API process sharing this store hears of new adapters \
             only when a request names one (its own in-process trainer needs no separate process)"
        );
    }
    let owner = format!(
        "trainer-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let settings = cli.trainer.settings(&cli.common, owner)?;
    tracing::info!("starting orchestrator-trainer\n{}", cli.common);
    let services = orchestrator_bootstrap::open(&cli.common).await?;

    let shutdown_token = CancellationToken::new();
    shutdown::cancel_on_signal(shutdown_token.clone());
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("ORCH_METRICS_ADDR: cannot listen on {addr}"))?;
        tokio::spawn(metrics::serve(listener, shutdown_token.clone()));
    }
    orchestrator_bootstrap::join_fleet(
        &cli.common,
        orchestrator_core::fleet::Kind::Trainer,
        vec!["trainer".to_string()],
        shutdown_token.clone(),
    )
    .await?;
    let mut trainer = Trainer::new(
        services.feedback,
        services.workflows.models().clone(),
        services.adapter_notices,
        settings,
    );
    if std::io::stderr().is_terminal() && !cli.no_progress {
        trainer = trainer.with_observer(progress_bar());
    }
    trainer.run(shutdown_token).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// One bar per run: steps done of all steps, with loss and tokens/s.
fn progress_bar() -> Observer {
    let current: Mutex<Option<(String, ProgressBar)>> = Mutex::new(None);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:32}] {pos}/{len} steps {msg} ({elapsed}, eta {eta})",
    )
    .expect("valid template")
    .progress_chars("=> ");
    Arc::new(move |run: &RunRow, progress: &Progress| {
        let mut current = current.lock().expect("progress bar");
        if current.as_ref().is_none_or(|(id, _)| id != &run.id) {
            if let Some((_, old)) = current.take() {
                old.finish();
            }
            let bar = ProgressBar::new(progress.total_steps as u64).with_style(style.clone());
            bar.set_prefix(format!("run {}", &run.id[..8]));
            *current = Some((run.id.clone(), bar));
        }
        let (_, bar) = current.as_ref().expect("bar set above");
        bar.set_position(progress.step as u64);
        let loss = progress
            .loss_curve
            .last()
            .map_or("-".to_string(), |l| format!("{l:.3}"));
        bar.set_message(format!("loss {loss}, {:.0} tok/s", progress.tokens_per_sec));
        if progress.step == progress.total_steps {
            bar.finish();
        }
    })
}
