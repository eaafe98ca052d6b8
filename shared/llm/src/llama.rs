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
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::llama_config::Config;
use crate::lora::{LoadedAdapter, Target};

/// Weights shared by every session.
pub struct Weights {
    embeddings: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Projection,
    config: Config,
    cos: Tensor,
    sin: Tensor,
}

struct Layer {
    attention_norm: Tensor,
    qkv: Projection,
    attention_out: Projection,
    ffn_norm: Tensor,
    gate_up: Projection,
    down: Projection,
}

/// A Q8_0 weight matrix, its input width padded with zero columns to whole
/// 256-value superblocks where the CPU has VNNI: candle's packed VNNI
/// kernels (several times faster than its generic dot products) only take
/// such widths, and SmolLM2's 576 is not one. The zeros cost a third more
/// multiply-adds on a much faster kernel.
struct Projection {
    matmul: QMatMul,
    pad: usize,
}

impl Projection {
    /// Quantizes `weight` (outputs × inputs, f32) as Q8_0: same values up
    /// to 8-bit rounding of the GGUF's 4-bit ones, and Q8_0 has SIMD
    /// kernels where Q4_1 has only scalar ones.
    fn new(weight: &Tensor, pad_for_packed: bool) -> Result<Self> {
        let inputs = weight.dim(1)?;
        let pad = match pad_for_packed {
            true => inputs.next_multiple_of(256) - inputs,
            false => 0,
        };
        let weight = match pad {
            0 => weight.clone(),
            _ => weight.pad_with_zeros(1, 0, pad)?,
        };
        let projection = Self {
            matmul: QMatMul::from_qtensor(QTensor::quantize(&weight, GgmlDType::Q8_0)?)?,
            pad,
        };
        // candle packs a matrix for its VNNI kernels on first use: do it
        // now, not in the first request.
        projection.forward(&Tensor::zeros((1, inputs), DType::F32, &Device::Cpu)?)?;
        Ok(projection)
    }

    /// Reads one matrix: Q4_1 ones, and Q8_0 ones that need padding,
    /// through [`Projection::new`]; anything else as the file holds it.
    fn read<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        name: &str,
        pad_for_packed: bool,
    ) -> Result<Self> {
        let tensor = content.tensor(reader, name, &Device::Cpu)?;
        match tensor.dtype() {
            GgmlDType::Q4_1 => Self::new(&tensor.dequantize(&Device::Cpu)?, pad_for_packed),
            GgmlDType::Q8_0 if pad_for_packed => Self::new(&tensor.dequantize(&Device::Cpu)?, true),
            _ => Ok(Self {
                matmul: QMatMul::from_qtensor(tensor)?,
                pad: 0,
            }),
        }
    }

    /// Several matrices reading the same input, stacked into one.
    fn stacked<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        names: &[String],
        pad_for_packed: bool,
    ) -> Result<Self> {
        let parts = names
            .iter()
            .map(|name| {
                content
                    .tensor(reader, name, &Device::Cpu)?
                    .dequantize(&Device::Cpu)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(&Tensor::cat(&parts, 0)?, pad_for_packed)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.pad {
            0 => self.matmul.forward(x),
            pad => self.matmul.forward(&x.pad_with_zeros(D::Minus1, 0, pad)?),
        }
    }
}

/// Which matrix kernels a local model runs on (`kernels` in models.toml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// candle's packed VNNI kernels where the CPU has them: activations
    /// quantized 256 values to a scale, about 1.3x faster decoding and 5x
    /// faster prompts.
    #[default]
    Fast,
    /// Activations quantized 32 values to a scale, as llama.cpp does for
    /// Q4_1 files: about 3x closer to unquantized activations.
    Precise,
}

/// Whether candle runs Q8_0 products on its packed VNNI kernels here.
fn packed_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni"))
            || (std::is_x86_feature_detected!("avxvnni") && std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Weights {
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        max_positions: usize,
        kernels: Kernels,
    ) -> Result<Self> {
        let pad = kernels == Kernels::Fast && packed_kernels();
        Self::load(content, reader, max_positions, pad)
    }

    /// `pad_for_packed`: shape the matrices for candle's packed kernels
    /// (see [`Projection`]); the tests load both ways and compare.
    fn load<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        max_positions: usize,
        pad: bool,
    ) -> Result<Self> {
        let config = Config::from_gguf(content)?;
        let (cos, sin) = rope_tables(config.head_dim, config.freq_base, max_positions)?;

        let embedding = content.tensor(reader, "token_embd.weight", &Device::Cpu)?;
        let embeddings = Embedding::new(embedding.dequantize(&Device::Cpu)?, config.hidden);
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Projection::read(content, reader, "output.weight", pad)?,
            false => Projection::new(embeddings.embeddings(), pad)?,
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
                qkv: Projection::stacked(
                    content,
                    reader,
                    &[name("attn_q"), name("attn_k"), name("attn_v")],
                    pad,
                )?,
                attention_out: Projection::read(content, reader, &name("attn_output"), pad)?,
                ffn_norm: norm_of(reader, &name("ffn_norm"))?,
                gate_up: Projection::stacked(
                    content,
                    reader,
                    &[name("ffn_gate"), name("ffn_up")],
                    pad,
                )?,
                down: Projection::read(content, reader, &name("ffn_down"), pad)?,
            });
        }
        Ok(Self {
            embeddings,
            layers,
            norm: norm_of(reader, "output_norm.weight")?,
            output,
            config,
            cos,
            sin,
        })
    }
}

impl Weights {
    pub fn config(&self) -> Config {
        self.config
    }
}

/// Rotary tables for `positions` positions (llama's interleaved pairs).
pub fn rope_tables(head_dim: usize, freq_base: f32, positions: usize) -> Result<(Tensor, Tensor)> {
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// Next-token logits at every position of `tokens`, fed one at a time.
    fn logits_along(weights: Arc<Weights>, tokens: &[u32]) -> Vec<Vec<f32>> {
        let mut session = Session::new(weights, None, tokens.len());
        (0..tokens.len())
            .map(|i| {
                session
                    .forward(&tokens[i..=i], i)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }

    fn argmax(v: &[f32]) -> usize {
        (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
    }

    #[test]
    fn padded_matrices_give_the_same_predictions() {
        let mut reader = Cursor::new(std::fs::read(crate::test_gguf()).unwrap());
        let content = gguf_file::Content::read(&mut reader).unwrap();
        let tokenizer = super::super::gguf_tokenizer::from_gguf(&content).unwrap();
        let text = "The quick brown fox jumps over the lazy dog. Paris is the capital of \
                    France, and Berlin is the capital of Germany. fn main() { println!(\"hi\"); }";
        let tokens = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let padded = Arc::new(Weights::load(&content, &mut reader, tokens.len(), true).unwrap());
        let plain = Arc::new(Weights::load(&content, &mut reader, tokens.len(), false).unwrap());
        assert!(
            padded.layers[0].qkv.pad > 0,
            "576-wide inputs are padded to 768"
        );
        let (a, b) = (logits_along(padded, &tokens), logits_along(plain, &tokens));
        let agree = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| argmax(x) == argmax(y))
            .count();
        let differences: Vec<f32> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .collect();
        let mean = differences.iter().sum::<f32>() / differences.len() as f32;
        eprintln!(
            "top-1 agreement {agree}/{}, mean logit difference {mean}",
            tokens.len()
        );
        // Wrongly padded matrices give another model altogether; the two
        // activation quantizations differ by rounding only.
        assert!(
            agree * 100 >= tokens.len() * 90,
            "top-1 agreement {agree}/{}",
            tokens.len()
        );
        assert!(mean < 1.0, "mean logit difference {mean}");
    }
}
