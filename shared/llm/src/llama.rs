//! A llama forward pass shaped for decoding one token at a time on a CPU.
//!
//! candle-transformers' `quantized_llama` spends most of a decode step
//! outside the matrix products: seven small matmuls per layer (each a
//! thread-pool round trip), the KV cache concatenated afresh every token,
//! and keys and values copied once per query head for grouped-query
//! attention. Here q/k/v and gate/up are fused into one matmul each (four
//! per layer instead of seven), the KV cache is allocated for the session's
//! need and written in place, and grouped-query attention folds the query
//! heads that share a key head into one batched product instead of copying
//! keys and values. The matrices stay in the file's own quantization,
//! memory-mapped ([`crate::quant`]), unless `kernels` asks for candle's.

use std::{io::Cursor, sync::Arc};

use candle_core::{
    D, DType, Device, Module, Result, Tensor,
    quantized::{GgmlDType, QMatMul, QTensor, gguf_file},
};
use candle_nn::{Embedding, kv_cache::KvCache};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::llama_config::Config;
use crate::{
    lora::{LoadedAdapter, Target},
    quant::{self, Isa, QMatrix, Stacked},
};

/// Weights shared by every session.
pub struct Weights {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Projection,
    config: Config,
    cos: Tensor,
    sin: Tensor,
    kernels: Kernels,
}

struct Layer {
    attention_norm: Tensor,
    qkv: Projection,
    attention_out: Projection,
    ffn_norm: Tensor,
    gate_up: Projection,
    down: Projection,
}

/// The token embedding table.
enum Embeddings {
    /// Rows dequantized on lookup from the file's own blocks.
    Native(QMatrix),
    Dense(Embedding),
}

impl Embeddings {
    fn forward(&self, tokens: &[u32], hidden: usize) -> Result<Tensor> {
        match self {
            Self::Native(table) => {
                let mut rows = vec![0f32; tokens.len() * hidden];
                for (&token, row) in tokens.iter().zip(rows.chunks_exact_mut(hidden)) {
                    if token as usize >= table.rows() {
                        candle_core::bail!("token {token} is outside the vocabulary");
                    }
                    table.dequantize_row(token as usize, row);
                }
                Tensor::from_vec(rows, (1, tokens.len(), hidden), &Device::Cpu)
            }
            Self::Dense(embedding) => {
                embedding.forward(&Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?)
            }
        }
    }
}

/// One weight matrix (or several reading the same input, stacked).
enum Projection {
    /// The file's own Q4_1/Q8_0 blocks, read in place ([`quant`]).
    Native(Stacked),
    /// candle's kernels on a Q8_0 copy, its input width padded with zero
    /// columns to whole 256-value superblocks for `fast` where the CPU has
    /// VNNI: candle's packed kernels only take such widths, and SmolLM2's
    /// 576 is not one.
    Candle { matmul: QMatMul, pad: usize },
    /// Unquantized f32 (outputs × inputs): the reference that fidelity is
    /// measured against.
    Dense(Tensor),
}

/// Where and how [`Weights`] read their matrices.
struct Loader<'a> {
    content: &'a gguf_file::Content,
    map: &'a Arc<Mmap>,
    kernels: Kernels,
    /// Pad inputs for candle's packed kernels (`fast` on a VNNI CPU).
    pad: bool,
    isa: Isa,
}

impl Loader<'_> {
    fn tensor(&self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(&mut Cursor::new(&self.map[..]), name, &Device::Cpu)
    }

    fn dense(&self, name: &str) -> Result<Tensor> {
        self.tensor(name)?.dequantize(&Device::Cpu)
    }

    /// The matrix `name` in place, when its format has a kernel here.
    fn native(&self, name: &str) -> Result<Option<QMatrix>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            candle_core::bail!("the file has no tensor {name}");
        };
        let Some(format) = quant::Format::of(info.ggml_dtype) else {
            return Ok(None);
        };
        let (rows, cols) = info.shape.dims2()?;
        let start = self.content.tensor_data_offset as usize + info.offset as usize;
        QMatrix::new(self.map.clone(), start, format, rows, cols).map(Some)
    }

    /// Several matrices reading the same input, stacked into one.
    fn projection(&self, names: &[&str]) -> Result<Projection> {
        if self.kernels == Kernels::Native {
            let parts = names
                .iter()
                .map(|name| self.native(name))
                .collect::<Result<Option<Vec<_>>>>()?;
            if let Some(parts) = parts {
                return Ok(Projection::Native(Stacked::new(parts, self.isa)?));
            }
        }
        let parts = names
            .iter()
            .map(|name| self.dense(name))
            .collect::<Result<Vec<_>>>()?;
        let weight = match parts.len() {
            1 => parts.into_iter().next().expect("one part"),
            _ => Tensor::cat(&parts, 0)?,
        };
        self.dense_projection(weight)
    }

    fn dense_projection(&self, weight: Tensor) -> Result<Projection> {
        match self.kernels {
            Kernels::Reference => Ok(Projection::Dense(weight)),
            _ => Projection::quantized(&weight, self.pad),
        }
    }
}

impl Projection {
    /// Quantizes `weight` (outputs × inputs, f32) as Q8_0 for candle's
    /// kernels: Q8_0 has SIMD kernels there where Q4_1 has only scalar ones.
    fn quantized(weight: &Tensor, pad_for_packed: bool) -> Result<Self> {
        let inputs = weight.dim(1)?;
        let pad = match pad_for_packed {
            true => inputs.next_multiple_of(256) - inputs,
            false => 0,
        };
        let weight = match pad {
            0 => weight.clone(),
            _ => weight.pad_with_zeros(1, 0, pad)?,
        };
        let projection = Self::Candle {
            matmul: QMatMul::from_qtensor(QTensor::quantize(&weight, GgmlDType::Q8_0)?)?,
            pad,
        };
        // candle packs a matrix for its VNNI kernels on first use: do it
        // now, not in the first request.
        projection.forward(&Tensor::zeros((1, inputs), DType::F32, &Device::Cpu)?)?;
        Ok(projection)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Native(matrix) => {
                let mut dims = x.dims().to_vec();
                let values = x.flatten_all()?.to_vec1::<f32>()?;
                *dims.last_mut().expect("a matrix input") = matrix.rows();
                Tensor::from_vec(matrix.matmul(&values), dims, &Device::Cpu)
            }
            Self::Candle { matmul, pad: 0 } => matmul.forward(x),
            Self::Candle { matmul, pad } => {
                matmul.forward(&x.pad_with_zeros(D::Minus1, 0, *pad)?)
            }
            Self::Dense(weight) => x.broadcast_matmul(&weight.t()?),
        }
    }
}

/// Which matrix kernels a local model runs on (`kernels` in models.toml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The file's own 4- and 8-bit blocks, memory-mapped and read in place
    /// by this crate's kernels (AVX-512 VNNI or AVX2), activations
    /// quantized 32 values to a scale as llama.cpp does: the least memory
    /// (one copy of the file, shared between processes) and llama.cpp's
    /// arithmetic. Other block formats fall back to `precise`.
    #[default]
    Native,
    /// candle's packed VNNI kernels on a Q8_0 copy where the CPU has them:
    /// activations quantized 256 values to a scale.
    Fast,
    /// candle's Q8_0 kernels on a Q8_0 copy, activations quantized 32
    /// values to a scale.
    Precise,
    /// Unquantized f32 matrices and activations: slow and large, the
    /// reference that the others' fidelity is measured against.
    Reference,
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
    /// The weights of the GGUF file mapped at `map` (`content` is its
    /// header), with rotary tables for `max_positions`.
    pub fn from_gguf(
        content: &gguf_file::Content,
        map: &Arc<Mmap>,
        max_positions: usize,
        kernels: Kernels,
    ) -> Result<Self> {
        let loader = Loader {
            content,
            map,
            kernels,
            pad: kernels == Kernels::Fast && packed_kernels(),
            isa: Isa::detect(),
        };
        let config = Config::from_gguf(content)?;
        let (cos, sin) = rope_tables(config.head_dim, config.freq_base, max_positions)?;

        let native_table = match kernels {
            Kernels::Native => loader.native("token_embd.weight")?,
            _ => None,
        };
        let (embeddings, output) = match native_table {
            Some(table) => {
                let output = match content.tensor_infos.contains_key("output.weight") {
                    true => loader.projection(&["output.weight"])?,
                    false => Projection::Native(Stacked::new(vec![table.clone()], loader.isa)?),
                };
                (Embeddings::Native(table), output)
            }
            None => {
                let table = loader.dense("token_embd.weight")?;
                let output = match content.tensor_infos.contains_key("output.weight") {
                    true => loader.projection(&["output.weight"])?,
                    false => loader.dense_projection(table.clone())?,
                };
                (
                    Embeddings::Dense(Embedding::new(table, config.hidden)),
                    output,
                )
            }
        };
        let mut layers = Vec::with_capacity(config.blocks);
        for block in 0..config.blocks {
            let name = |suffix: &str| format!("blk.{block}.{suffix}.weight");
            let (q, k, v) = (name("attn_q"), name("attn_k"), name("attn_v"));
            let (gate, up) = (name("ffn_gate"), name("ffn_up"));
            layers.push(Layer {
                attention_norm: loader.dense(&name("attn_norm"))?,
                qkv: loader.projection(&[&q, &k, &v])?,
                attention_out: loader.projection(&[&name("attn_output")])?,
                ffn_norm: loader.dense(&name("ffn_norm"))?,
                gate_up: loader.projection(&[&gate, &up])?,
                down: loader.projection(&[&name("ffn_down")])?,
            });
        }
        Ok(Self {
            embeddings,
            layers,
            norm: loader.dense("output_norm.weight")?,
            output,
            config,
            cos,
            sin,
            kernels,
        })
    }

    /// The kernels these weights run on, and for `native` the CPU's
    /// instruction set they use.
    pub fn kernels(&self) -> String {
        match self.kernels {
            Kernels::Native => format!("native ({})", Isa::detect().name()),
            Kernels::Fast if packed_kernels() => "fast (candle, packed vnni)".into(),
            other => format!("{other:?}").to_lowercase(),
        }
    }
}

/// Maps the GGUF file at `path` and reads its header. The weights are read
/// in place: the file must not change while it is loaded.
pub fn map_gguf(path: &std::path::Path) -> anyhow::Result<(Arc<Mmap>, gguf_file::Content)> {
    use anyhow::Context;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read model weights {}", path.display()))?;
    // SAFETY: the model file is the operator's and not written while
    // served; a truncated file is refused below before any tensor is read.
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot map model weights {}", path.display()))?;
    let content = gguf_file::Content::read(&mut Cursor::new(&map[..]))
        .with_context(|| format!("{} is not a GGUF file", path.display()))?;
    Ok((Arc::new(map), content))
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
        let mut x = w.embeddings.forward(tokens, w.config.hidden)?;
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

/// How closely one set of kernels follows another on a text: next-token
/// distributions compared at every position.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fidelity {
    /// Mean KL divergence of the candidate's next-token distribution from
    /// the reference's (nats).
    pub mean_kl: f64,
    /// Positions where both pick the same most likely token.
    pub same_top_token: usize,
    pub positions: usize,
}

/// Compares `candidate` with `reference` on `tokens`, fed one at a time.
pub fn fidelity(
    candidate: Arc<Weights>,
    reference: Arc<Weights>,
    tokens: &[u32],
) -> Result<Fidelity> {
    let (ours, theirs) = (
        logits_along(candidate, tokens)?,
        logits_along(reference, tokens)?,
    );
    let mut kl = 0f64;
    let mut same_top_token = 0;
    for (p, q) in theirs.iter().zip(&ours) {
        let (log_p, log_q) = (log_softmax(p), log_softmax(q));
        kl += log_p
            .iter()
            .zip(&log_q)
            .map(|(lp, lq)| lp.exp() * (lp - lq))
            .sum::<f64>();
        same_top_token += usize::from(argmax(p) == argmax(q));
    }
    Ok(Fidelity {
        mean_kl: kl / tokens.len() as f64,
        same_top_token,
        positions: tokens.len(),
    })
}

/// Next-token logits at every position of `tokens`, fed one at a time.
fn logits_along(weights: Arc<Weights>, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    let mut session = Session::new(weights, None, tokens.len());
    (0..tokens.len())
        .map(|i| session.forward(&tokens[i..=i], i)?.to_vec1())
        .collect()
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

/// A text for fidelity checks: prose, facts, code.
pub const FIDELITY_TEXT: &str = "The quick brown fox jumps over the lazy dog. Paris is the capital of \
    France, and Berlin is the capital of Germany. fn main() { println!(\"hi\"); }";

#[cfg(test)]
mod tests {
    use super::*;

    fn load(kernels: Kernels, positions: usize) -> Arc<Weights> {
        let (map, content) = map_gguf(&crate::test_gguf()).unwrap();
        Arc::new(Weights::from_gguf(&content, &map, positions, kernels).unwrap())
    }

    #[test]
    fn every_kernel_setting_follows_the_unquantized_model() {
        let (_, content) = map_gguf(&crate::test_gguf()).unwrap();
        let tokenizer = super::super::gguf_tokenizer::from_gguf(&content).unwrap();
        let tokens = tokenizer
            .encode(FIDELITY_TEXT, false)
            .unwrap()
            .get_ids()
            .to_vec();
        let reference = load(Kernels::Reference, tokens.len());
        for kernels in [Kernels::Native, Kernels::Fast, Kernels::Precise] {
            let weights = load(kernels, tokens.len());
            if kernels == Kernels::Native {
                assert!(
                    matches!(weights.layers[0].qkv, Projection::Native(_)),
                    "Q4_1 matrices are read in place"
                );
            }
            let f = fidelity(weights, reference.clone(), &tokens).unwrap();
            eprintln!("{kernels:?}: {f:?}");
            // Wrong kernels (a bad block layout, a lost minimum term, a
            // mixed-up stacked row) give another model altogether, with a
            // KL in whole nats; rounding of the activations gives hundredths.
            assert!(f.mean_kl < 0.1, "{kernels:?}: {f:?}");
            assert!(
                f.same_top_token * 100 >= f.positions * 85,
                "{kernels:?}: {f:?}"
            );
        }
    }
}
