//! Sentence embeddings with all-MiniLM-L6-v2: the project's BERT encoder
//! ([`super::bert`]), mean pooling over each text's tokens, L2
//! normalisation, exactly what sentence-transformers computes for this
//! model.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

use super::bert::{Bert, BertConfig};

/// The model's directory name under `ORCH_MODELS_DIR`.
pub const MODEL_DIR: &str = "all-minilm-l6-v2";
/// sentence-transformers' `max_seq_length` for this model: longer texts are
/// cut here (the tokenizer.json it ships says 128, the model card 256).
pub const MAX_TOKENS: usize = 256;
/// Texts per forward pass: enough tokens for every product to keep both
/// cores busy, few enough that the activations stay small (~40 MB).
const BATCH: usize = 32;

/// A loaded embedding model. Cheap to share behind an `Arc`; `embed` may be
/// called from many threads.
pub struct Embedder {
    model: Bert,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation or padding, for counting.
    counter: Tokenizer,
    dimension: usize,
}

/// Where the embedding model lives under a models directory.
pub fn model_path(models_dir: &Path) -> PathBuf {
    models_dir.join(MODEL_DIR)
}

impl Embedder {
    /// Loads weights and tokenizer from `dir` (a sentence-transformers folder).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            anyhow::bail!(
                "embedding model not found at {} (run deploy/scripts/fetch-models.sh)",
                dir.display()
            );
        }
        let config: BertConfig = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).context("reading the model's config.json")?,
        )
        .context("parsing the model's config.json")?;
        let mut counter = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("loading tokenizer.json: {e}"))?;
        counter
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
        counter.with_padding(None);
        let mut tokenizer = counter.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
        // SAFETY: the weights file is not modified while it is mapped; it is
        // only ever replaced by a rename in fetch-models.sh.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
        let model = Bert::load(vb, &config).context("loading BERT weights")?;
        Ok(Self {
            model,
            tokenizer,
            counter,
            dimension: config.hidden_size,
        })
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Token count of `text` as the model sees it (special tokens included,
    /// before truncation); used to fit context into a token budget.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.counter
            .encode_fast(text, true)
            .map(|e| e.len())
            .unwrap_or(text.len() / 4)
    }

    /// Embeds every text, in input order.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            out.extend(self.embed_batch(batch)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let (hidden, offsets) = self.model.forward(&ids)?;
        let size = self.dimension;
        Ok(offsets
            .par_windows(2)
            .map(|span| mean_pool(&hidden[span[0] * size..span[1] * size], size))
            .collect())
    }
}

/// The mean of a text's token vectors, scaled to unit length
/// (sentence-transformers' Pooling + Normalize modules).
fn mean_pool(rows: &[f32], size: usize) -> Vec<f32> {
    let mut mean = vec![0f32; size];
    for row in rows.chunks_exact(size) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    let count = (rows.len() / size).max(1) as f32;
    mean.iter_mut().for_each(|m| *m /= count);
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    mean.iter_mut().for_each(|m| *m /= norm);
    mean
}
