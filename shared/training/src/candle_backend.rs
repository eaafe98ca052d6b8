//! The candle training backend (CPU): the base model in f32, dequantized
//! from its GGUF, frozen; LoRA pairs as the only variables; AdamW. The
//! projections, norms, rotary embeddings and softmax are the custom ops of
//! [`super::ops`], which keep the graph small and skip frozen weights'
//! gradients.

use std::{collections::HashMap, io::Cursor, path::Path};

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var, quantized::gguf_file};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{
    TrainingConfig,
    backend::TrainBackend,
    data::Batch,
    ops::{self, Frozen},
};
use orchestrator_llm::{
    llama::{Config, rope_tables},
    lora::{AdapterConfig, AdapterWeights, LoraPair, Target},
};

struct Block {
    attention_norm: Tensor,
    qkv: Frozen,
    attention_out: Frozen,
    ffn_norm: Tensor,
    gate_up: Frozen,
    down: Frozen,
}

/// The frozen base model.
struct Base {
    config: Config,
    embeddings: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Frozen,
    cos: Tensor,
    sin: Tensor,
}

/// A llama model's weights in f32, dequantized from its GGUF, with q/k/v and
/// gate/up stacked into one matrix each (rows of q, k, v in that order).
/// Shared by the training backends, so they start from the same numbers.
pub(crate) struct BaseWeights {
    pub config: Config,
    pub embeddings: Tensor,
    pub blocks: Vec<BlockWeights>,
    pub norm: Tensor,
    /// None when the model ties its output projection to the embeddings.
    pub output: Option<Tensor>,
}

/// One block's weights; projections are (output, input).
pub(crate) struct BlockWeights {
    pub attention_norm: Tensor,
    pub qkv: Tensor,
    pub attention_out: Tensor,
    pub ffn_norm: Tensor,
    pub gate_up: Tensor,
    pub down: Tensor,
}

impl BaseWeights {
    pub fn load(gguf: &Path) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(gguf).with_context(|| format!("cannot read {}", gguf.display()))?;
        let mut reader = Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut reader)
            .with_context(|| format!("{} is not a GGUF file", gguf.display()))?;
        let config = Config::from_gguf(&content)?;
        let mut stacked = |names: &[&str]| -> anyhow::Result<Tensor> {
            let parts = names
                .iter()
                .map(|name| {
                    Ok(content
                        .tensor(&mut reader, name, &Device::Cpu)
                        .with_context(|| format!("GGUF lacks {name}"))?
                        .dequantize(&Device::Cpu)?)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        let mut blocks = Vec::with_capacity(config.blocks);
        for b in 0..config.blocks {
            let name = |suffix: &str| format!("blk.{b}.{suffix}.weight");
            blocks.push(BlockWeights {
                attention_norm: stacked(&[&name("attn_norm")])?,
                qkv: stacked(&[&name("attn_q"), &name("attn_k"), &name("attn_v")])?,
                attention_out: stacked(&[&name("attn_output")])?,
                ffn_norm: stacked(&[&name("ffn_norm")])?,
                gate_up: stacked(&[&name("ffn_gate"), &name("ffn_up")])?,
                down: stacked(&[&name("ffn_down")])?,
            });
        }
        let embeddings = stacked(&["token_embd.weight"])?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Some(stacked(&["output.weight"])?),
            false => None,
        };
        let norm = stacked(&["output_norm.weight"])?;
        Ok(Self {
            config,
            embeddings,
            blocks,
            norm,
            output,
        })
    }
}

impl Base {
    fn load(gguf: &Path, max_positions: usize) -> anyhow::Result<Self> {
        let weights = BaseWeights::load(gguf)?;
        let config = weights.config;
        let frozen = |weight: Tensor| Frozen { weight };
        let blocks = weights
            .blocks
            .into_iter()
            .map(|b| Block {
                attention_norm: b.attention_norm,
                qkv: frozen(b.qkv),
                attention_out: frozen(b.attention_out),
                ffn_norm: b.ffn_norm,
                gate_up: frozen(b.gate_up),
                down: frozen(b.down),
            })
            .collect();
        let output = frozen(weights.output.unwrap_or_else(|| weights.embeddings.clone()));
        let (cos, sin) = rope_tables(config.head_dim, config.freq_base, max_positions)?;
        Ok(Self {
            config,
            embeddings: weights.embeddings,
            blocks,
            norm: weights.norm,
            output,
            cos,
            sin,
        })
    }
}

/// LoRA variables of one block.
type BlockLora = HashMap<Target, (Var, Var)>;

pub struct CandleBackend {
    base: Base,
    lora: Vec<BlockLora>,
    scale: f64,
    dropout: f64,
    optimizer: AdamW,
    adapter_config: AdapterConfig,
}

impl CandleBackend {
    /// Loads the base model and sets up fresh LoRA pairs: A uniform in
    /// ±1/√input (PEFT's Kaiming init), B zero, so training starts from
    /// exactly the base model.
    pub fn new(gguf: &Path, base_model: &str, config: &TrainingConfig) -> anyhow::Result<Self> {
        let base = Base::load(gguf, config.max_seq_len)?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let targets = config.targets();
        let mut lora = Vec::with_capacity(base.config.blocks);
        let mut vars = Vec::new();
        for _ in 0..base.config.blocks {
            let mut block = HashMap::new();
            for &target in &targets {
                let (input, output) = target.dims(&base.config);
                let a = lora_a_init(config.rank, input, &mut rng);
                let a =
                    Var::from_tensor(&Tensor::from_vec(a, (config.rank, input), &Device::Cpu)?)?;
                let b = Var::zeros((output, config.rank), DType::F32, &Device::Cpu)?;
                vars.push(a.clone());
                vars.push(b.clone());
                block.insert(target, (a, b));
            }
            lora.push(block);
        }
        let optimizer = AdamW::new(
            vars,
            ParamsAdamW {
                lr: config.learning_rate,
                weight_decay: config.weight_decay,
                ..ParamsAdamW::default()
            },
        )?;
        Ok(Self {
            base,
            lora,
            scale: config.alpha / config.rank as f64,
            dropout: config.dropout,
            optimizer,
            adapter_config: AdapterConfig::lora(
                config.rank,
                config.alpha,
                config.dropout,
                &targets,
                base_model,
            ),
        })
    }

    /// Mean cross-entropy over the batch's scored tokens. With `rng`,
    /// dropout is applied to every LoRA input.
    fn loss(&self, batch: &Batch, mut rng: Option<&mut StdRng>) -> anyhow::Result<Tensor> {
        let c = self.base.config;
        let n = batch.tokens.len();
        let device = &Device::Cpu;
        let tokens = Tensor::new(batch.tokens.as_slice(), device)?;
        let positions = Tensor::new(batch.positions.as_slice(), device)?;
        let cos = self.base.cos.index_select(&positions, 0)?;
        let sin = self.base.sin.index_select(&positions, 0)?;
        let group = c.heads / c.kv_heads;
        let masks = causal_masks(&batch.lengths, group)?;
        let mut x = self.base.embeddings.index_select(&tokens, 0)?;
        for (block, lora) in self.base.blocks.iter().zip(&self.lora) {
            let mut project = |frozen: &Frozen, input: &Tensor, parts: &[(Target, usize)]| {
                let out = frozen.forward(input)?;
                self.add_lora(lora, input, out, parts, rng.as_deref_mut())
            };
            let h = ops::rms_norm(&x, &block.attention_norm, c.eps)?;
            let attention = c.heads * c.head_dim;
            let kv = c.kv_heads * c.head_dim;
            let qkv = project(
                &block.qkv,
                &h,
                &[(Target::Q, attention), (Target::K, kv), (Target::V, kv)],
            )?;
            let heads = |start: usize, count: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, start * c.head_dim, count * c.head_dim)?
                    .reshape((n, count, c.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .unsqueeze(0)
            };
            let q = ops::rope(&heads(0, c.heads)?, &cos, &sin)?.squeeze(0)?;
            let k = ops::rope(&heads(c.heads, c.kv_heads)?, &cos, &sin)?.squeeze(0)?;
            let v = heads(c.heads + c.kv_heads, c.kv_heads)?.squeeze(0)?;
            let attended = packed_attention(&q, &k, &v, &batch.lengths, &masks, c)?
                .transpose(0, 1)?
                .reshape((n, attention))?;
            let out = project(&block.attention_out, &attended, &[(Target::O, c.hidden)])?;
            x = (x + out)?;
            let h = ops::rms_norm(&x, &block.ffn_norm, c.eps)?;
            let ff = c.feed_forward;
            let gate_up = project(&block.gate_up, &h, &[(Target::Gate, ff), (Target::Up, ff)])?;
            let act = (gate_up.narrow(1, 0, ff)?.silu()? * gate_up.narrow(1, ff, ff)?)?;
            let down = project(&block.down, &act, &[(Target::Down, c.hidden)])?;
            x = (x + down)?;
        }
        let rows = Tensor::new(batch.scored_rows.as_slice(), device)?;
        let h = ops::rms_norm(&x.index_select(&rows, 0)?, &self.base.norm, c.eps)?;
        let logits = self.base.output.forward(&h)?;
        let targets = Tensor::new(batch.targets.as_slice(), device)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    }

    /// `out` plus each target's `scale · B·A·dropout(input)`.
    fn add_lora(
        &self,
        lora: &BlockLora,
        input: &Tensor,
        out: Tensor,
        parts: &[(Target, usize)],
        mut rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        if parts.iter().all(|(t, _)| !lora.contains_key(t)) {
            return Ok(out);
        }
        let n = input.dim(0)?;
        let mut pieces = Vec::with_capacity(parts.len());
        for &(target, width) in parts {
            pieces.push(match lora.get(&target) {
                Some((a, b)) => {
                    let x = match rng.as_deref_mut() {
                        Some(rng) if self.dropout > 0.0 => dropout(input, self.dropout, rng)?,
                        _ => input.clone(),
                    };
                    (x.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)? * self.scale)?
                }
                None => Tensor::zeros((n, width), DType::F32, input.device())?,
            });
        }
        out + Tensor::cat(&pieces, 1)?
    }
}

/// Attention of each packed sequence with itself only: products of
/// Σ len² per head instead of (Σ len)² with a mask blanking the rest.
/// `q` is (heads, n, head_dim), `k` and `v` (kv_heads, n, head_dim); the
/// result is (heads, n, head_dim).
fn packed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lengths: &[usize],
    masks: &HashMap<usize, Tensor>,
    c: Config,
) -> candle_core::Result<Tensor> {
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (c.head_dim as f64).sqrt();
    let mut outputs = Vec::with_capacity(lengths.len());
    let mut start = 0;
    for &len in lengths {
        // Query heads sharing a key head are consecutive: fold them into
        // the rows of one product per key head.
        let q = q.narrow(1, start, len)?.contiguous()?.reshape((
            c.kv_heads,
            group * len,
            c.head_dim,
        ))?;
        let k = k.narrow(1, start, len)?.contiguous()?;
        let v = v.narrow(1, start, len)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&masks[&len])?;
        let attended = ops::softmax(&scores)?.matmul(&v)?;
        outputs.push(attended.reshape((c.heads, len, c.head_dim))?);
        start += len;
    }
    Tensor::cat(&outputs, 1)
}

/// An additive causal mask per distinct sequence length, for `group` query
/// heads folded into the rows: (group·len × len).
fn causal_masks(lengths: &[usize], group: usize) -> candle_core::Result<HashMap<usize, Tensor>> {
    let mut masks = HashMap::new();
    for &len in lengths {
        if masks.contains_key(&len) {
            continue;
        }
        let mask: Vec<f32> = (0..group * len)
            .flat_map(|row| (0..len).map(move |col| if col <= row % len { 0.0 } else { -1e9 }))
            .collect();
        masks.insert(
            len,
            Tensor::from_vec(mask, (group * len, len), &Device::Cpu)?,
        );
    }
    Ok(masks)
}

/// Inverted dropout with a mask drawn from the run's seeded generator.
fn dropout(x: &Tensor, p: f64, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    let mask = dropout_mask(x.elem_count(), p, rng);
    x * Tensor::from_vec(mask, x.shape(), x.device())?
}

/// A fresh LoRA A (rank × input, row-major): uniform in ±1/√input, PEFT's
/// Kaiming init. Every backend draws it the same way, so a seed gives the
/// same start on each.
pub(crate) fn lora_a_init(rank: usize, input: usize, rng: &mut StdRng) -> Vec<f32> {
    let bound = 1.0 / (input as f32).sqrt();
    (0..rank * input)
        .map(|_| rng.random_range(-bound..bound))
        .collect()
}

/// An inverted-dropout mask of `len` factors (0 or 1/(1-p)), shared by the
/// backends so a step's seed drops the same elements on each.
pub(crate) fn dropout_mask(len: usize, p: f64, rng: &mut StdRng) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    (0..len)
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect()
}

impl TrainBackend for CandleBackend {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn step(&mut self, batch: &Batch, seed: u64) -> anyhow::Result<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let loss = self.loss(batch, Some(&mut rng))?;
        self.optimizer.backward_step(&loss)?;
        Ok(loss.to_scalar::<f32>()?)
    }

    fn eval(&mut self, batch: &Batch) -> anyhow::Result<f32> {
        Ok(self.loss(batch, None)?.detach().to_scalar::<f32>()?)
    }

    fn export(&self) -> anyhow::Result<AdapterWeights> {
        let layers = self
            .lora
            .iter()
            .map(|block| {
                block
                    .iter()
                    .map(|(&target, (a, b))| {
                        let pair = LoraPair {
                            a: a.as_tensor().detach(),
                            b: b.as_tensor().detach(),
                        };
                        (target, pair)
                    })
                    .collect()
            })
            .collect();
        Ok(AdapterWeights {
            config: self.adapter_config.clone(),
            layers,
        })
    }

    fn model_config(&self) -> Config {
        self.base.config
    }

    fn adapter_config(&self) -> &AdapterConfig {
        &self.adapter_config
    }

    fn set_pair(&mut self, layer: usize, target: Target, pair: &LoraPair) -> anyhow::Result<()> {
        let (a, b) = self.lora[layer].get(&target).context("no such LoRA pair")?;
        a.set(&pair.a)?;
        b.set(&pair.b)?;
        Ok(())
    }
}
