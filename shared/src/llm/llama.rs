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

#[derive(Debug, Clone, Copy)]
struct Config {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    feed_forward: usize,
    eps: f32,
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
        let heads = metadata_u32(content, "llama.attention.head_count")?;
        let kv_heads = metadata_u32(content, "llama.attention.head_count_kv")?;
        let blocks = metadata_u32(content, "llama.block_count")?;
        let hidden = metadata_u32(content, "llama.embedding_length")?;
        let feed_forward = metadata_u32(content, "llama.feed_forward_length")?;
        let eps = match content
            .metadata
            .get("llama.attention.layer_norm_rms_epsilon")
        {
            Some(v) => v.to_f32()?,
            None => 1e-5,
        };
        let freq_base = content
            .metadata
            .get("llama.rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(10_000.0);
        let head_dim = hidden / heads;
        let (cos, sin) = rope_tables(head_dim, freq_base, max_positions)?;

        let embedding = content.tensor(reader, "token_embd.weight", &Device::Cpu)?;
        let embeddings = Embedding::new(embedding.dequantize(&Device::Cpu)?, hidden);
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => fast(content, reader, "output.weight")?,
            false => QTensor::quantize(embeddings.embeddings(), GgmlDType::Q8_0)?,
        };
        let norm_of = |reader: &mut R, name: &str| -> Result<Tensor> {
            content
                .tensor(reader, name, &Device::Cpu)?
                .dequantize(&Device::Cpu)
        };
        let mut layers = Vec::with_capacity(blocks);
        for block in 0..blocks {
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
            config: Config {
                heads,
                kv_heads,
                head_dim,
                feed_forward,
                eps,
            },
            cos,
            sin,
        })
    }
}

/// Rotary tables for `positions` positions (llama's interleaved pairs).
fn rope_tables(head_dim: usize, freq_base: f32, positions: usize) -> Result<(Tensor, Tensor)> {
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

/// One conversation: shared weights plus its own KV cache.
pub struct Session {
    weights: Arc<Weights>,
    caches: Vec<KvCache>,
}

impl Session {
    /// A session holding up to `positions` tokens.
    pub fn new(weights: Arc<Weights>, positions: usize) -> Self {
        let caches = (0..weights.layers.len())
            .map(|_| KvCache::new(2, positions))
            .collect();
        Self { weights, caches }
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
        for (layer, cache) in w.layers.iter().zip(self.caches.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attention_norm, w.config.eps)?;
            let attended = attention(layer, cache, &h, &cos, &sin, mask.as_ref(), w.config)?;
            x = (x + layer.attention_out.forward(&attended)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, w.config.eps)?;
            let gate_up = layer.gate_up.forward(&h)?;
            let ff = w.config.feed_forward;
            let gate = candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, ff)?)?;
            let up = gate_up.narrow(D::Minus1, ff, ff)?;
            x = (x + layer.down.forward(&(gate * up)?)?)?;
        }
        let last = x.narrow(1, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &w.norm, w.config.eps)?;
        w.output.forward(&last)?.squeeze(0)?.squeeze(0)
    }
}

fn attention(
    layer: &Layer,
    cache: &mut KvCache,
    h: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    c: Config,
) -> Result<Tensor> {
    let (batch, seq, _) = h.dims3()?;
    let qkv = layer.qkv.forward(h)?;
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
