//! `orchestrator-train-bench`: LoRA fine-tuning throughput of the candle
//! backend, printed as one JSON line, on the same data and settings the
//! PEFT script (`deploy/bench/trainer/peft_train.py`) takes, so
//! `deploy/scripts/bench-trainer.sh` can run the two side by side.
//!
//! Every example trains (no held-out split), in seeded shuffled batches;
//! tokens/s counts every token of every batch over the loop's wall time.

use std::{io::BufRead, path::PathBuf, time::Instant};

use anyhow::Context;
use clap::Parser;
use orchestrator_training::{
    TextFormat, TrainingConfig,
    backend::TrainBackend,
    candle_backend::CandleBackend,
    data::{Batch, Example, Sequence},
};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "orchestrator-train-bench", about = "LoRA training throughput")]
struct Cli {
    #[arg(long)]
    gguf: PathBuf,
    /// JSON lines of {"prompt", "response"}.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_seq_len: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the trained adapter (PEFT format) here.
    #[arg(long)]
    save_adapter: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // As the trainer runs.
    orchestrator_training::prefer_inline_elementwise();
    let cli = Cli::parse();
    let config = TrainingConfig {
        rank: cli.rank,
        alpha: cli.alpha,
        dropout: cli.dropout,
        learning_rate: cli.lr,
        epochs: cli.epochs,
        batch_size: cli.batch_size,
        max_seq_len: cli.max_seq_len,
        seed: cli.seed,
        ..TrainingConfig::default()
    };
    config.check().map_err(anyhow::Error::msg)?;
    let examples = read_examples(&cli.data)?;
    let sequences = TextFormat::from_gguf(&cli.gguf)?.encode(&examples, config.max_seq_len)?;
    let mut backend = CandleBackend::new(&cli.gguf, "bench", &config)?;
    let load_rss = rss_mib("VmRSS");
    let cpu_start = cpu_time();
    let (losses, tokens, seconds) = train_all(&mut backend, &sequences, &config)?;
    let cpu_seconds = cpu_time() - cpu_start;
    eprintln!(
        "training loop: {seconds:.1} s wall, {cpu_seconds:.1} s CPU on {} threads",
        rayon::current_num_threads()
    );
    if let Some(dir) = &cli.save_adapter {
        backend.export()?.save(dir, &backend.model_config())?;
    }
    let line = json!({
        "engine": "candle",
        // Matrix products run on rayon's pool (RAYON_NUM_THREADS, set to 2
        // by bench-trainer.sh); element-wise kernels run on the calling thread.
        "threads": rayon::current_num_threads(),
        "cpu_seconds": cpu_seconds,
        "tokens_per_sec": tokens as f64 / seconds,
        "train_tokens": tokens,
        "seconds": seconds,
        "steps": losses.len(),
        "loss_first": losses.first(),
        "loss_last": losses.last(),
        "peak_rss_mib": rss_mib("VmHWM"),
        "load_rss_mib": load_rss,
    });
    println!("{line}");
    Ok(())
}

fn read_examples(path: &PathBuf) -> anyhow::Result<Vec<Example>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut examples = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("line {}", i + 1))?;
        examples.push(Example {
            prompt: value["prompt"].as_str().context("prompt")?.to_string(),
            target: value["response"].as_str().context("response")?.to_string(),
            synthetic: false,
            held_out: false,
        });
    }
    Ok(examples)
}

/// Epochs over every sequence; returns step losses, tokens and seconds.
fn train_all(
    backend: &mut CandleBackend,
    sequences: &[Sequence],
    config: &TrainingConfig,
) -> anyhow::Result<(Vec<f32>, usize, f64)> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    let (mut losses, mut tokens) = (Vec::new(), 0);
    let started = Instant::now();
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(config.batch_size) {
            let refs: Vec<&Sequence> = chunk.iter().map(|&i| &sequences[i]).collect();
            let batch = Batch::pack(&refs);
            losses.push(backend.step(&batch, losses.len() as u64)?);
            tokens += batch.tokens.len();
        }
    }
    Ok((losses, tokens, started.elapsed().as_secs_f64()))
}

/// User + system CPU seconds of this process so far (all threads).
fn cpu_time() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A memory figure of this process from /proc (VmRSS now, VmHWM peak).
fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
