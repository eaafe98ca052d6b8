//! Learning from feedback: feedback becomes training examples, a trainer
//! fine-tunes LoRA adapters on a local base model, and the adapters it
//! publishes are served as models of their own.
//!
//! [`backend`] holds the training loop every backend shares,
//! [`candle_backend`] the default backend's tensor work and `mlx_backend`
//! (feature `mlx`) the same on Apple's MLX; [`data`] turns
//! examples into token sequences with the model's own chat template.

pub mod adapters;
pub mod backend;
pub mod candle_backend;
pub mod config;
pub mod data;
pub mod feedback;
#[cfg(feature = "mlx")]
pub mod mlx_backend;
mod ops;
pub mod runs;
pub mod trainer;

use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

pub use config::TrainingConfig;
use data::{Encoder, Example, Sequence};

use crate::llm::{chat_template::ChatTemplate, gguf_tokenizer};

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
