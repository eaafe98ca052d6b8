//! `orchestrator-llm-bench`: local inference figures, printed as JSON lines.
//!
//! - `generate`: prompt (prefill) and decode tokens/s of the local
//!   provider on a GGUF, greedy, for a fixed number of new tokens.
//! - `loops`: the share of looping answers on 20 fixed prompts, with and
//!   without repetition penalties (how models.toml's defaults were chosen);
//! - `tokenize`: the token ids of a text under the GGUF's own tokenizer
//!   (compared with llama.cpp's by the bench script).
//!
//! `deploy/scripts/bench-llm.sh` runs them next to llama-cpp-python.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::{Parser, Subcommand};
use orchestrator_llm::{ChatMessage, GenerationParams, Kernels, LocalModel};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "orchestrator-llm-bench", about = "Local inference benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Generate --tokens new tokens after --prompt and report tokens/s.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        tokens: u32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The local model's matrix kernels (`kernels` in models.toml).
        #[arg(long, value_enum, default_value_t = KernelsArg::Fast)]
        kernels: KernelsArg,
    },
    /// Workflows/s through the API, scheduler, queue and workers with a
    /// trivially fast model (a local OpenAI-compatible server).
    Workflows {
        /// The orchestrator-api binary to run (embedded mode).
        #[arg(long)]
        api: PathBuf,
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Share of answers that loop (as the workflow executor judges them)
    /// on 20 fixed prompts, greedy, for each repetition penalty listed
    /// (1 = none, llama.cpp's default).
    Loops {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1.0,1.1,1.15,1.2")]
        repetition_penalties: Vec<f32>,
        #[arg(long, default_value_t = 256)]
        tokens: u32,
    },
    /// Print the token ids of --text.
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: String,
    },
}

mod loops;
mod workflows;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KernelsArg {
    Fast,
    Precise,
}

impl From<KernelsArg> for Kernels {
    fn from(arg: KernelsArg) -> Self {
        match arg {
            KernelsArg::Fast => Kernels::Fast,
            KernelsArg::Precise => Kernels::Precise,
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Generate {
            model,
            prompt,
            tokens,
            rounds,
            kernels,
        } => generate(&model, &prompt, tokens, rounds, kernels.into()),
        Bench::Workflows {
            api,
            count,
            concurrency,
        } => tokio::runtime::Runtime::new()?.block_on(workflows::run(&api, count, concurrency)),
        Bench::Loops {
            model,
            repetition_penalties,
            tokens,
        } => loops::run(&model, &repetition_penalties, tokens),
        Bench::Tokenize { model, text } => {
            let model = LocalModel::load(&model, 1, Kernels::default())?;
            let ids = model
                .tokenizer()
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", json!({"ids": ids.get_ids()}));
            Ok(())
        }
    }
}

fn generate(
    path: &Path,
    prompt: &str,
    tokens: u32,
    rounds: usize,
    kernels: Kernels,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let model = Arc::new(LocalModel::load(path, 1, kernels)?);
    let load_s = started.elapsed().as_secs_f64();
    let ids = model.encode_chat(&[ChatMessage::new("user", prompt)])?;
    // Every round decodes exactly `tokens`, past the end of turn, so both
    // engines do the same work.
    let params = GenerationParams {
        max_tokens: tokens,
        ignore_eos: true,
        ..GenerationParams::default()
    };
    for round in 1..=rounds {
        let (completion, timings) = model.generate(&ids, &params, None)?;
        println!(
            "{}",
            json!({
                "engine": "orchestrator",
                "kernels": kernels,
                "round": round,
                "load_s": load_s,
                "prompt_tokens": timings.prompt_tokens,
                "prompt_tok_s": timings.prompt_tokens as f64 / timings.prompt_seconds,
                "generated_tokens": timings.generated_tokens,
                "decode_tok_s": timings.generated_tokens.saturating_sub(1) as f64 / timings.decode_seconds,
                "text": completion.text.chars().take(120).collect::<String>(),
            })
        );
    }
    Ok(())
}
