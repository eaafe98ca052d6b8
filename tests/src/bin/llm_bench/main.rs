//! `orchestrator-llm-bench`: local inference figures, printed as JSON lines.
//!
//! - `generate`: prompt (prefill) and decode tokens/s of the local
//!   provider on a GGUF, greedy, for a fixed number of new tokens.
//! - `loops`: the share of looping answers on 20 fixed prompts, with and
//!   without repetition penalties (how models.toml's defaults were chosen);
//! - `fidelity`: mean KL divergence and top-1 agreement of each `kernels`
//!   setting's next-token distributions against unquantized weights and
//!   activations;
//! - `api-memory`: resident memory of an API process serving the local
//!   model, before and after one chat;
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
        #[arg(long, value_enum, default_value_t = KernelsArg::Native)]
        kernels: KernelsArg,
    },
    /// Next-token distributions of every `kernels` setting against the
    /// unquantized model, on a fixed text.
    Fidelity {
        #[arg(long)]
        model: PathBuf,
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
    /// Resident memory of an API process (embedded mode, the default
    /// registry) when ready and after answering one chat with smollm2.
    ApiMemory {
        /// The orchestrator-api binary to run.
        #[arg(long)]
        api: PathBuf,
        /// Where the model files are (ORCH_MODELS_DIR).
        #[arg(long)]
        models: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
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

mod api_memory;
mod loops;
mod workflows;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KernelsArg {
    Native,
    Fast,
    Precise,
    Reference,
}

impl From<KernelsArg> for Kernels {
    fn from(arg: KernelsArg) -> Self {
        match arg {
            KernelsArg::Native => Kernels::Native,
            KernelsArg::Fast => Kernels::Fast,
            KernelsArg::Precise => Kernels::Precise,
            KernelsArg::Reference => Kernels::Reference,
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
        Bench::Fidelity { model } => fidelity(&model),
        Bench::ApiMemory {
            api,
            models,
            prompt,
            tokens,
        } => tokio::runtime::Runtime::new()?
            .block_on(api_memory::run(&api, &models, &prompt, tokens)),
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
    // One untimed generation first, as the peer's script does: page the
    // weights in and fill the caches.
    model.generate(&ids, &params, None)?;
    for round in 1..=rounds {
        let (completion, timings) = model.generate(&ids, &params, None)?;
        println!(
            "{}",
            json!({
                "engine": "orchestrator",
                "kernels": model.kernels(),
                "round": round,
                "load_s": load_s,
                "prompt_tokens": timings.prompt_tokens,
                "prompt_tok_s": timings.prompt_tokens as f64 / timings.prompt_seconds,
                "generated_tokens": timings.generated_tokens,
                "decode_tok_s": timings.generated_tokens.saturating_sub(1) as f64 / timings.decode_seconds,
                "text": completion.text.chars().take(120).collect::<String>(),
                "peak_rss_mb": peak_rss_mb(),
            })
        );
    }
    Ok(())
}

/// This process's peak resident set so far, in MiB.
fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss as f64 / 1024.0
}

fn fidelity(path: &Path) -> anyhow::Result<()> {
    use orchestrator_llm::llama::{self, FIDELITY_TEXT, Weights};
    let (map, content) = llama::map_gguf(path)?;
    let model = LocalModel::load(path, 1, Kernels::Native)?;
    let tokens = model
        .tokenizer()
        .encode(FIDELITY_TEXT, false)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_ids()
        .to_vec();
    let load = |kernels| Weights::from_gguf(&content, &map, tokens.len(), kernels).map(Arc::new);
    let reference = load(Kernels::Reference)?;
    for kernels in [Kernels::Native, Kernels::Fast, Kernels::Precise] {
        let weights = load(kernels)?;
        let used = weights.kernels();
        let f = llama::fidelity(weights, reference.clone(), &tokens)?;
        println!(
            "{}",
            json!({"kernels": used, "mean_kl": f.mean_kl, "same_top_token": f.same_top_token,
                   "positions": f.positions})
        );
    }
    Ok(())
}
