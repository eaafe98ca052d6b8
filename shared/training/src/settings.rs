//! The trainer process's settings (`orchestrator-trainer`, or the API's
//! in-process trainer in embedded mode), parsed by clap from flags and
//! `ORCH_TRAIN_*` variables.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use orchestrator_core::config::CommonConfig;

/// Settings of the trainer (the `orchestrator-trainer` process, or the API's
/// in-process trainer in embedded mode).
#[derive(Debug, Clone, Args)]
pub struct TrainerConfig {
    /// Buffered feedback examples that start a training run on their own.
    #[arg(long, env = "ORCH_TRAIN_BATCH_THRESHOLD", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    pub batch_threshold: u64,

    /// How long a run stays leased to a trainer without a heartbeat before
    /// another trainer may take it over.
    #[arg(long, env = "ORCH_TRAIN_LEASE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub train_lease_ms: u64,

    /// Pause between looks for work when there is none.
    #[arg(long, env = "ORCH_TRAIN_POLL_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub train_poll_ms: u64,

    /// Keep adapters that beat the served model as candidates instead of
    /// promoting them at once.
    #[arg(long, env = "ORCH_TRAIN_NO_AUTO_PROMOTE")]
    pub no_auto_promote: bool,

    /// Self-play when idle: up to this many synthetic examples (a buffered
    /// question reworded by the current best model, same answer) per
    /// buffered human example; 0 turns it off.
    #[arg(long, env = "ORCH_TRAIN_SELF_PLAY", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=16))]
    pub self_play: u64,

    /// Which backend trains: candle (CPU, every build) or mlx (builds with
    /// the `mlx` feature).
    #[arg(long, env = "ORCH_TRAIN_BACKEND", value_enum, default_value = "candle")]
    pub train_backend: crate::BackendKind,

    /// JSON file of training settings for runs the trainer starts itself
    /// (rank, alpha, dropout, target_modules, learning_rate, epochs,
    /// batch_size, max_seq_len, eval_fraction, seed; missing ones default).
    #[arg(long, env = "ORCH_TRAIN_CONFIG")]
    pub train_config: Option<PathBuf>,
}

impl TrainerConfig {
    /// The training settings: the file's, else the defaults.
    pub fn training(&self) -> anyhow::Result<crate::TrainingConfig> {
        let Some(path) = &self.train_config else {
            return Ok(Default::default());
        };
        let size = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("ORCH_TRAIN_CONFIG: cannot read {}: {e}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= 64 * 1024,
            "ORCH_TRAIN_CONFIG: {} is over 64 KiB",
            path.display()
        );
        let text = std::fs::read_to_string(path)?;
        let config: crate::TrainingConfig = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("ORCH_TRAIN_CONFIG: {}: {e}", path.display()))?;
        config
            .check()
            .map_err(|e| anyhow::anyhow!("ORCH_TRAIN_CONFIG: {}: {e}", path.display()))?;
        Ok(config)
    }

    /// The trainer's settings, with `owner` naming it in leases.
    pub fn settings(
        &self,
        common: &CommonConfig,
        owner: String,
    ) -> anyhow::Result<crate::trainer::Settings> {
        self.train_backend.check_available()?;
        Ok(crate::trainer::Settings {
            owner,
            lease: Duration::from_millis(self.train_lease_ms),
            poll: Duration::from_millis(self.train_poll_ms),
            batch_threshold: self.batch_threshold,
            auto_promote: !self.no_auto_promote,
            config: self.training()?,
            self_play: self.self_play,
            backend: self.train_backend,
            adapters_dir: common.data_dir.join("adapters"),
        })
    }
}
