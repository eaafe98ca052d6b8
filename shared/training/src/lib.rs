//! Learning from feedback: feedback becomes training examples, a trainer
//! fine-tunes LoRA adapters on a local base model, and the adapters it
//! publishes are served as models of their own.
//!
//! [`backend`] holds the training loop every backend shares,
//! [`candle_backend`] the default backend's tensor work and `mlx_backend`
//! (feature `mlx`) the same on Apple's MLX; [`data`] turns
//! examples into token sequences with the model's own chat template.
//! [`trainer`] is the worker loop: it leases runs, trains them and publishes
//! their adapters to the model registry's adapter table
//! ([`orchestrator_models::adapters`]); [`feedback`] is the buffer it
//! drains and [`runs`] the run records the API shows.
//!
//! It stands on the store, the LLM providers and the model registry, and
//! must not know queues, workflows or campaigns.

pub mod backend;
pub mod candle_backend;
pub mod config;
pub mod data;
pub mod feedback;
#[cfg(feature = "mlx")]
pub mod mlx_backend;
mod ops;
pub mod runs;
mod settings;
pub mod trainer;

use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

use backend::TrainBackend;
pub use config::TrainingConfig;
use data::{Encoder, Example, Sequence};
pub use settings::TrainerConfig;

use orchestrator_llm::{chat_template::ChatTemplate, gguf_tokenizer};

/// Makes candle run element-wise kernels on the calling thread, for a
/// process that trains. Matrix products still use every core (through
/// rayon); candle's element-wise pool spin-waits for its workers, which on
/// a busy machine costs a training step about half its time (measured: 57
/// → 117 tokens/s with another build running). Call first thing in `main`,
/// before any thread starts; `CANDLE_NUM_THREADS` set by the user wins.
pub fn prefer_inline_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called before the process starts any other thread.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// The tokenizer, chat template and end-of-turn token of a GGUF model.
pub struct TextFormat {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    end_of_turn: u32,
}

impl TextFormat {
    /// Reads the GGUF's metadata (not its weights).
    pub fn from_gguf(path: &Path) -> anyhow::Result<Self> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file)
            .with_context(|| format!("{} is not a GGUF file", path.display()))?;
        let tokenizer = gguf_tokenizer::from_gguf(&content)?;
        let end_of_turn = *gguf_tokenizer::end_of_turn_ids(&content, &tokenizer)
            .first()
            .context("the model names no end-of-turn token")?;
        let template = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        Ok(Self {
            template: ChatTemplate::new(template)?,
            tokenizer,
            end_of_turn,
        })
    }

    /// Encodes examples, dropping those whose prompt leaves no room for an
    /// answer within `max_len` tokens.
    pub fn encode(&self, examples: &[Example], max_len: usize) -> anyhow::Result<Vec<Sequence>> {
        let encoder = Encoder {
            tokenizer: &self.tokenizer,
            template: &self.template,
            end_of_turn: self.end_of_turn,
            max_len,
        };
        let mut sequences = Vec::with_capacity(examples.len());
        for example in examples {
            if let Some(sequence) = encoder.encode(example)? {
                sequences.push(sequence);
            }
        }
        Ok(sequences)
    }
}

/// Which backend does the tensor work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// candle on the CPU (every build).
    Candle,
    /// Apple's MLX (builds with the `mlx` feature; Metal on Apple silicon).
    Mlx,
}

impl BackendKind {
    /// Refuses a backend this build does not have.
    pub fn check_available(self) -> anyhow::Result<()> {
        if self == BackendKind::Mlx && !cfg!(feature = "mlx") {
            anyhow::bail!(
                "ORCH_TRAIN_BACKEND: this build has no MLX backend (build with --features mlx)"
            );
        }
        Ok(())
    }
}

/// A backend of `kind` set up for a run, continuing from the adapter in
/// `start_from` when given.
pub fn open_backend(
    kind: BackendKind,
    gguf: &Path,
    base_model: &str,
    config: &TrainingConfig,
    start_from: Option<&Path>,
) -> anyhow::Result<Box<dyn TrainBackend>> {
    kind.check_available()?;
    let mut backend: Box<dyn TrainBackend> = match kind {
        BackendKind::Candle => Box::new(candle_backend::CandleBackend::new(
            gguf, base_model, config,
        )?),
        #[cfg(feature = "mlx")]
        BackendKind::Mlx => Box::new(mlx_backend::MlxBackend::new(gguf, base_model, config)?),
        #[cfg(not(feature = "mlx"))]
        BackendKind::Mlx => unreachable!("refused by check_available"),
    };
    if let Some(dir) = start_from {
        backend::load_adapter(backend.as_mut(), dir)?;
    }
    Ok(backend)
}
