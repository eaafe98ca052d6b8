//! The shape of a llama-architecture model, read from its GGUF metadata:
//! what the forward pass ([`crate::llama`]) and LoRA adapters
//! ([`crate::lora`]) both size their tensors by.

use candle_core::{Result, quantized::gguf_file};

/// The shape of a llama model, read from its GGUF metadata.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub blocks: usize,
    pub feed_forward: usize,
    pub eps: f32,
    pub freq_base: f32,
}

impl Config {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let heads = metadata_u32(content, "llama.attention.head_count")?;
        let hidden = metadata_u32(content, "llama.embedding_length")?;
        let float = |key: &str, default: f32| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(default)
        };
        Ok(Self {
            heads,
            kv_heads: metadata_u32(content, "llama.attention.head_count_kv")?,
            head_dim: hidden / heads,
            hidden,
            blocks: metadata_u32(content, "llama.block_count")?,
            feed_forward: metadata_u32(content, "llama.feed_forward_length")?,
            eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5),
            freq_base: float("llama.rope.freq_base", 10_000.0),
        })
    }
}

fn metadata_u32(content: &gguf_file::Content, key: &str) -> Result<usize> {
    match content.metadata.get(key) {
        Some(v) => Ok(v.to_u32()? as usize),
        None => candle_core::bail!("GGUF has no {key}"),
    }
}
