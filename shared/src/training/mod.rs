//! Learning from feedback: feedback becomes training examples, a trainer
//! fine-tunes LoRA adapters on a local base model, and the adapters it
//! publishes are served as models of their own.
//!
//! [`backend`] holds the training loop every backend shares and
//! [`candle_backend`] the default backend's tensor work; [`data`] turns
//! examples into token sequences with the model's own chat template.

pub mod adapters;
pub mod backend;
pub mod candle_backend;
pub mod config;
pub mod data;
pub mod feedback;
pub mod runs;
pub mod trainer;

use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

pub use config::TrainingConfig;
use data::{Encoder, Example, Sequence};

use crate::llm::{chat_template::ChatTemplate, gguf_tokenizer};

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
