//! Sentence embeddings with all-MiniLM-L6-v2 on candle: BERT forward, mean
//! pooling over real tokens, L2 normalisation, exactly what
//! sentence-transformers computes for this model.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The model's directory name under `ORCH_MODELS_DIR`.
pub const MODEL_DIR: &str = "all-minilm-l6-v2";
/// sentence-transformers' `max_seq_length` for this model: longer texts are
/// cut here (the tokenizer.json it ships says 128, the model card 256).
pub const MAX_TOKENS: usize = 256;
/// Texts per forward pass. Texts are sorted by length first, so a batch pads
/// to similar lengths and little work is wasted on padding.
const BATCH: usize = 32;

/// A loaded embedding model. Cheap to share behind an `Arc`; `embed` may be
/// called from many threads.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation or padding, for counting.
    counter: Tokenizer,
    dimension: usize,
}

/// Every candle op allocates its output afresh, several MB per op at
/// embedding batch sizes. glibc serves blocks that big with mmap and unmaps
/// them on free, so each op page-faulted its output back in: a fifth of the
/// embedder's time went to the kernel. Raising the thresholds keeps freed
/// blocks in the heap for the next op. Process-wide, set once.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            const LIMIT: libc::c_int = 512 << 20;
            // SAFETY: mallopt only changes allocator tuning parameters.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT);
                libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT);
            }
        });
    }
}

/// Where the embedding model lives under a models directory.
pub fn model_path(models_dir: &Path) -> PathBuf {
    models_dir.join(MODEL_DIR)
}

impl Embedder {
    /// Loads weights and tokenizer from `dir` (a sentence-transformers folder).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        keep_freed_memory();
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            anyhow::bail!(
                "embedding model not found at {} (run deploy/scripts/fetch-models.sh)",
                dir.display()
            );
        }
        let config: Config = serde_json::from_slice(
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
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        // SAFETY: the weights file is not modified while it is mapped; it is
        // only ever replaced by a rename in fetch-models.sh.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
        let model = BertModel::load(vb, &config).context("loading BERT weights")?;
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

    /// Embeds every text, in input order. Batches run in parallel on the
    /// rayon pool so both cores work even where a batch's matmuls are small.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let batches: Vec<Vec<Vec<f32>>> = order
            .chunks(BATCH)
            .map(|chunk| {
                let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
                self.embed_batch(&batch)
            })
            .collect::<anyhow::Result<_>>()?;
        let mut out = vec![Vec::new(); texts.len()];
        for (i, vector) in order.into_iter().zip(batches.into_iter().flatten()) {
            out[i] = vector;
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.len());
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in &encodings {
            ids.extend(encoding.get_ids().iter().copied());
            mask.extend(encoding.get_attention_mask().iter().copied());
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens only: padding must not pull the average.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
