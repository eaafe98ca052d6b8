//! A llama forward pass shaped for decoding one token at a time on a CPU.
//!
//! candle-transformers' `quantized_llama` spends most of a decode step
//! outside the matrix products: seven small matmuls per layer (each a
//! thread-pool round trip), the KV cache concatenated afresh every token,
//! and keys and values copied once per query head for grouped-query
//! attention. Here q/k/v and gate/up are fused into one matmul each (four
//! per layer instead of seven), the KV cache is preallocated for the
//! session and written in place, and grouped-query attention folds the query
//! heads that share a key head into one batched product instead of copying
//! keys and values. Same weights and arithmetic, so the same tokens.

use std::sync::Arc;

use candle_core::{
    D, DType, Device, Module, Result, Tensor,
    quantized::{GgmlDType, QMatMul, QTensor, gguf_file},
};
use candle_nn::{Embedding, kv_cache::KvCache};

use super::lora::{LoadedAdapter, Target};

/// Weights shared by every session.
pub struct Weights {
    embeddings: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    config: Config,
    cos: Tensor,
    sin: Tensor,
}

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

struct Layer {
    attention_norm: Tensor,
    qkv: QMatMul,
    attention_out: QMatMul,
    ffn_norm: Tensor,
    gate_up: QMatMul,
    down: QMatMul,
}

/// Reads a tensor, re-encoding Q4_1 (scalar kernels in candle) as Q8_0
/// (SIMD kernels): same values up to 8-bit rounding of 4-bit ones.
fn fast<R: std::io::Seek + std::io::Read>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<QTensor> {
    let tensor = content.tensor(reader, name, &Device::Cpu)?;
    if tensor.dtype() == GgmlDType::Q4_1 {
        return QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, GgmlDType::Q8_0);
    }
    Ok(tensor)
}

/// One matmul over the rows of several weight matrices stacked, so a single
/// pass over the input computes all their outputs.
fn fused<R: std::io::Seek + std::io::Read>(
    content: &gguf_file::Content,
    reader: &mut R,
    names: &[String],
) -> Result<QMatMul> {
    let parts = names
        .iter()
        .map(|name| {
            content
                .tensor(reader, name, &Device::Cpu)?
                .dequantize(&Device::Cpu)
        })
        .collect::<Result<Vec<_>>>()?;
    let stacked = Tensor::cat(&parts, 0)?;
    QMatMul::from_qtensor(QTensor::quantize(&stacked, GgmlDType::Q8_0)?)
}

fn metadata_u32(content: &gguf_file::Content, key: &str) -> Result<usize> {
    match content.metadata.get(key) {
        Some(v) => Ok(v.to_u32()? as usize),
        None => candle_core::bail!("GGUF has no {key}"),
    }
}

impl Weights {
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        max_positions: usize,
    ) -> Result<Self> {
        let config = Config::from_gguf(content)?;
        let (cos, sin) = rope_tables(config.head_dim, config.freq_base, max_positions)?;

        let embedding = content.tensor(reader, "token_embd.weight", &Device::Cpu)?;
        let embeddings = Embedding::new(embedding.dequantize(&Device::Cpu)?, config.hidden);
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => fast(content, reader, "output.weight")?,
            false => QTensor::quantize(embeddings.embeddings(), GgmlDType::Q8_0)?,
        };
        let norm_of = |reader: &mut R, name: &str| -> Result<Tensor> {
            content
                .tensor(reader, name, &Device::Cpu)?
                .dequantize(&Device::Cpu)
        };
        let mut layers = Vec::with_capacity(config.blocks);
        for block in 0..config.blocks {
            let name = |suffix: &str| format!("blk.{block}.{suffix}.weight");
            layers.push(Layer {
                attention_norm: norm_of(reader, &name("attn_norm"))?,
                qkv: fused(
                    content,
                    reader,
                    &[name("attn_q"), name("attn_k"), name("attn_v")],
                )?,
                attention_out: QMatMul::from_qtensor(fast(content, reader, &name("attn_output"))?)?,
                ffn_norm: norm_of(reader, &name("ffn_norm"))?,
                gate_up: fused(content, reader, &[name("ffn_gate"), name("ffn_up")])?,
                down: QMatMul::from_qtensor(fast(content, reader, &name("ffn_down"))?)?,
            });
        }
        Ok(Self {
            embeddings,
            layers,
            norm: norm_of(reader, "output_norm.weight")?,
            output: QMatMul::from_qtensor(output)?,
            config,
            cos,
            sin,
        })
    }
}

impl Weights {
    pub(crate) fn config(&self) -> Config {
        self.config
    }
}

/// Rotary tables for `positions` positions (llama's interleaved pairs).
pub(crate) fn rope_tables(
    head_dim: usize,
    freq_base: f32,
    positions: usize,
) -> Result<(Tensor, Tensor)> {
    let inverse: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / freq_base.powf(i as f32 / head_dim as f32))
        .collect();
    let inverse = Tensor::new(inverse.as_slice(), &Device::Cpu)?;
    let angles = Tensor::arange(0, positions as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&inverse.reshape((1, head_dim / 2))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// One conversation: shared weights, optionally a LoRA adapter on them,
/// plus its own KV cache.
pub struct Session {
    weights: Arc<Weights>,
    adapter: Option<Arc<LoadedAdapter>>,
    caches: Vec<KvCache>,
}

impl Session {
    /// A session holding up to `positions` tokens.
    pub fn new(
        weights: Arc<Weights>,
        adapter: Option<Arc<LoadedAdapter>>,
        positions: usize,
    ) -> Self {
        let caches = (0..weights.layers.len())
            .map(|_| KvCache::new(2, positions))
            .collect();
        Self {
            weights,
            adapter,
            caches,
        }
    }

    /// Runs `tokens` at `position` (the number of tokens already seen) and
    /// returns the logits of the last one.
    pub fn forward(&mut self, tokens: &[u32], position: usize) -> Result<Tensor> {
        let w = self.weights.clone();
        let seq = tokens.len();
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let mut x = w.embeddings.forward(&input)?;
        let cos = w.cos.narrow(0, position, seq)?;
        let sin = w.sin.narrow(0, position, seq)?;
        let mask = (seq > 1)
            .then(|| causal_mask(seq, position, w.config.heads / w.config.kv_heads))
            .transpose()?;
        let c = w.config;
        for (index, (layer, cache)) in w.layers.iter().zip(self.caches.iter_mut()).enumerate() {
            let lora = |x: &Tensor, out: Tensor, parts: &[(Target, usize)]| match &self.adapter {
                Some(adapter) => adapter.add(index, x, out, parts),
                None => Ok(out),
            };
            let h = candle_nn::ops::rms_norm(&x, &layer.attention_norm, c.eps)?;
            let qkv = lora(
                &h,
                layer.qkv.forward(&h)?,
                &[
                    (Target::Q, c.heads * c.head_dim),
                    (Target::K, c.kv_heads * c.head_dim),
                    (Target::V, c.kv_heads * c.head_dim),
                ],
            )?;
            let attended = attention(cache, &qkv, &cos, &sin, mask.as_ref(), c)?;
            let out = lora(
                &attended,
                layer.attention_out.forward(&attended)?,
                &[(Target::O, c.hidden)],
            )?;
            x = (x + out)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.eps)?;
            let ff = c.feed_forward;
            let gate_up = lora(
                &h,
                layer.gate_up.forward(&h)?,
                &[(Target::Gate, ff), (Target::Up, ff)],
            )?;
            let gate = candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, ff)?)?;
            let up = gate_up.narrow(D::Minus1, ff, ff)?;
            let act = (gate * up)?;
            let down = lora(&act, layer.down.forward(&act)?, &[(Target::Down, c.hidden)])?;
            x = (x + down)?;
        }
        let last = x.narrow(1, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &w.norm, w.config.eps)?;
        w.output.forward(&last)?.squeeze(0)?.squeeze(0)
    }
}

/// Attention over the fused q/k/v projections `qkv` of the new tokens.
fn attention(
    cache: &mut KvCache,
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    c: Config,
) -> Result<Tensor> {
    let (batch, seq, _) = qkv.dims3()?;
    let split = |start: usize, heads: usize| -> Result<Tensor> {
        qkv.narrow(D::Minus1, start * c.head_dim, heads * c.head_dim)?
            .reshape((batch, seq, heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = candle_nn::rotary_emb::rope_i(&split(0, c.heads)?, cos, sin)?;
    let k = candle_nn::rotary_emb::rope_i(&split(c.heads, c.kv_heads)?, cos, sin)?;
    let v = split(c.heads + c.kv_heads, c.kv_heads)?;
    let (k, v) = cache.append(&k, &v)?;
    // Query heads sharing a key head are consecutive: fold them into the
    // rows of one product per key head instead of repeating keys/values.
    let group = c.heads / c.kv_heads;
    let q = q.reshape((batch, c.kv_heads, group * seq, c.head_dim))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (c.head_dim as f64).sqrt()))?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    weights
        .matmul(&v.contiguous()?)?
        .reshape((batch, c.heads, seq, c.head_dim))?
        .transpose(1, 2)?
        .reshape((batch, seq, c.heads * c.head_dim))
}

/// Additive causal mask for `seq` new tokens after `position` cached ones,
/// repeated for the `group` query heads folded into each row block.
fn causal_mask(seq: usize, position: usize, group: usize) -> Result<Tensor> {
    let total = position + seq;
    let mut mask = Vec::with_capacity(group * seq * total);
    for _ in 0..group {
        for row in 0..seq {
            for col in 0..total {
                mask.push(if col > position + row {
                    f32::NEG_INFINITY
                } else {
                    0.0
                });
            }
        }
    }
    Tensor::from_vec(mask, (group * seq, total), &Device::Cpu)
}
