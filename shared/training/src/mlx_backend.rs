//! The MLX training backend (cargo feature `mlx`): the same model, LoRA
//! pairs, dropout and AdamW as [`super::candle_backend`], on MLX arrays, so
//! a run on Apple silicon uses its GPU and unified memory. Off macOS it runs
//! on MLX's CPU backend (README.md, "MLX backend", says how to build it).
//!
//! The base weights enter the differentiated function as captured
//! constants and only the LoRA arrays as its arguments, so MLX computes no
//! gradient for a frozen weight (what the candle backend needs a custom op
//! for).

use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use mlx_rs::{Array, error::Exception, fast, ops, transforms};
use rand::{SeedableRng, rngs::StdRng};

use super::{
    TrainingConfig,
    backend::TrainBackend,
    candle_backend::{BaseWeights, dropout_mask, lora_a_init},
    data::Batch,
};
use orchestrator_llm::{
    llama::{Config, rope_tables},
    lora::{AdapterConfig, AdapterWeights, LoraPair, Target},
};

type MlxResult<T> = Result<T, Exception>;

/// One block's frozen weights; projections are (output, input).
struct Block {
    attention_norm: Array,
    qkv: Array,
    attention_out: Array,
    ffn_norm: Array,
    gate_up: Array,
    down: Array,
}

/// The frozen base model.
struct Base {
    config: Config,
    embeddings: Array,
    blocks: Vec<Block>,
    norm: Array,
    /// (vocabulary, hidden); the embeddings themselves when tied.
    output: Array,
    /// (positions, head_dim / 2)
    cos: Array,
    sin: Array,
}

impl Base {
    /// Dequantizes with candle (as the candle backend does, so both start
    /// from the same f32 weights) and copies into MLX.
    fn load(gguf: &Path, max_positions: usize) -> anyhow::Result<Self> {
        let weights = BaseWeights::load(gguf)?;
        let config = weights.config;
        let blocks = weights
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    attention_norm: to_array(&b.attention_norm)?,
                    qkv: to_array(&b.qkv)?,
                    attention_out: to_array(&b.attention_out)?,
                    ffn_norm: to_array(&b.ffn_norm)?,
                    gate_up: to_array(&b.gate_up)?,
                    down: to_array(&b.down)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let embeddings = to_array(&weights.embeddings)?;
        let output = match &weights.output {
            Some(output) => to_array(output)?,
            None => embeddings.clone(),
        };
        let (cos, sin) = rope_tables(config.head_dim, config.freq_base, max_positions)?;
        Ok(Self {
            config,
            embeddings,
            blocks,
            norm: to_array(&weights.norm)?,
            output,
            cos: to_array(&cos)?,
            sin: to_array(&sin)?,
        })
    }
}

fn to_array(tensor: &Tensor) -> anyhow::Result<Array> {
    let shape: Vec<i32> = tensor.dims().iter().map(|&d| d as i32).collect();
    let data = tensor.flatten_all()?.to_vec1::<f32>()?;
    Ok(Array::from_slice(&data, &shape))
}

fn to_tensor(array: &Array) -> anyhow::Result<Tensor> {
    let dims: Vec<usize> = array.shape().iter().map(|&d| d as usize).collect();
    let data = array
        .try_as_slice::<f32>()
        .map_err(|e| anyhow::anyhow!("reading an MLX array: {e}"))?;
    Ok(Tensor::from_slice(data, dims, &Device::Cpu)?)
}

/// Where each LoRA pair sits in the flat parameter list MLX's transforms
/// take: pair `block · targets.len() + j` (target `targets[j]`) is A at
/// twice that index, B right after.
struct Layout {
    targets: Vec<Target>,
    scale: f32,
}

impl Layout {
    fn pair(&self, block: usize, target: Target) -> Option<usize> {
        let j = self.targets.iter().position(|&t| t == target)?;
        Some(block * self.targets.len() + j)
    }
}

/// A batch as MLX arrays.
struct Inputs {
    n: i32,
    tokens: Array,
    /// (n, head_dim / 2, 1): each token's rotary angles, shaped to
    /// broadcast over heads and over a pair's two elements.
    cos: Array,
    sin: Array,
    /// (n, n) additive mask, broadcast over heads.
    mask: Array,
    rows: Array,
    targets: Array,
}

impl Inputs {
    fn new(base: &Base, batch: &Batch) -> MlxResult<Self> {
        let n = batch.tokens.len() as i32;
        let half = (base.config.head_dim / 2) as i32;
        let positions = Array::from_slice(&batch.positions, &[n]);
        let angles = |table: &Array| table.take_axis(&positions, 0)?.reshape(&[n, half, 1]);
        Ok(Self {
            n,
            tokens: Array::from_slice(&batch.tokens, &[n]),
            cos: angles(&base.cos)?,
            sin: angles(&base.sin)?,
            mask: Array::from_slice(&batch.mask(), &[n, n]),
            rows: Array::from_slice(&batch.scored_rows, &[batch.scored_rows.len() as i32]),
            targets: Array::from_slice(&batch.targets, &[batch.targets.len() as i32, 1]),
        })
    }
}

/// One forward pass, the LoRA arrays given as `params` (MLX's tracers
/// while differentiating).
struct Forward<'a> {
    base: &'a Base,
    layout: &'a Layout,
    params: &'a [Array],
    /// Per pair, the dropout mask of its input; None without dropout.
    dropout: Option<&'a [Array]>,
    inputs: &'a Inputs,
}

impl Forward<'_> {
    /// Mean cross-entropy over the batch's scored tokens.
    fn loss(&self) -> MlxResult<Array> {
        let c = self.base.config;
        let mut x = self.base.embeddings.take_axis(&self.inputs.tokens, 0)?;
        for (index, block) in self.base.blocks.iter().enumerate() {
            x = self.block(index, block, x)?;
        }
        let x = x.take_axis(&self.inputs.rows, 0)?;
        let h = fast::rms_norm(&x, Some(&self.base.norm), c.eps)?;
        let logits = h.matmul(self.base.output.t())?;
        let picked = logits.take_along_axis(&self.inputs.targets, -1)?;
        let picked = picked.reshape(&[-1])?;
        logits
            .logsumexp_axis(-1, false)?
            .subtract(picked)?
            .mean(false)
    }

    fn block(&self, index: usize, block: &Block, x: Array) -> MlxResult<Array> {
        let c = self.base.config;
        let h = fast::rms_norm(&x, Some(&block.attention_norm), c.eps)?;
        let qkv = self.project(index, &block.qkv, &h, &[Target::Q, Target::K, Target::V])?;
        let attended = self.attention(&qkv)?;
        let out = self.project(index, &block.attention_out, &attended, &[Target::O])?;
        let x = x.add(out)?;
        let h = fast::rms_norm(&x, Some(&block.ffn_norm), c.eps)?;
        let gate_up = self.project(index, &block.gate_up, &h, &[Target::Gate, Target::Up])?;
        let halves = gate_up.split_at_indices(&[c.feed_forward as i32], 1)?;
        let (gate, up) = (&halves[0], &halves[1]);
        let act = gate.multiply(ops::sigmoid(gate)?)?.multiply(up)?;
        let down = self.project(index, &block.down, &act, &[Target::Down])?;
        x.add(down)
    }

    /// Grouped-query attention within each packed sequence; `qkv` is
    /// (n, q | k | v), the result (n, heads · head_dim).
    fn attention(&self, qkv: &Array) -> MlxResult<Array> {
        let c = self.base.config;
        let (n, d) = (self.inputs.n, c.head_dim as i32);
        let (heads, kv_heads) = (c.heads as i32, c.kv_heads as i32);
        let parts = qkv.split_at_indices(&[heads * d, (heads + kv_heads) * d], 1)?;
        let split_heads = |x: &Array, count: i32| x.reshape(&[n, count, d])?.swap_axes(0, 1);
        // Query heads sharing a key head are consecutive: (kv_heads, group,
        // n, d) against keys and values of (kv_heads, 1, n, d) broadcasts.
        let q = self.rope(&split_heads(&parts[0], heads)?)?;
        let q = q.reshape(&[kv_heads, heads / kv_heads, n, d])?;
        let k = self.rope(&split_heads(&parts[1], kv_heads)?)?;
        let k = k.reshape(&[kv_heads, 1, n, d])?;
        let v = split_heads(&parts[2], kv_heads)?.reshape(&[kv_heads, 1, n, d])?;
        let scores = q
            .matmul(k.swap_axes(-1, -2)?)?
            .multiply(Array::from_f32(1.0 / (d as f32).sqrt()))?
            .add(&self.inputs.mask)?;
        let weights = ops::softmax_axis(&scores, -1, true)?;
        weights
            .matmul(v)?
            .reshape(&[heads, n, d])?
            .swap_axes(0, 1)?
            .reshape(&[n, heads * d])
    }

    /// Rotary embedding of (heads, n, head_dim) over interleaved pairs
    /// (elements 2i and 2i+1), the order GGUF stores q and k rows in.
    fn rope(&self, x: &Array) -> MlxResult<Array> {
        let shape = x.shape().to_vec();
        let (count, n, d) = (shape[0], shape[1], shape[2]);
        let pairs = x
            .reshape(&[count, n, d / 2, 2])?
            .split_at_indices(&[1], -1)?;
        let (even, odd) = (&pairs[0], &pairs[1]);
        let (cos, sin) = (&self.inputs.cos, &self.inputs.sin);
        let first = even.multiply(cos)?.subtract(odd.multiply(sin)?)?;
        let second = even.multiply(sin)?.add(odd.multiply(cos)?)?;
        ops::concatenate(&[first, second], -1)?.reshape(&[count, n, d])
    }

    /// `input · weightᵀ`, the output of the projections `parts` side by
    /// side, plus each one's `scale · B·A·dropout(input)` where it has a pair.
    fn project(
        &self,
        block: usize,
        weight: &Array,
        input: &Array,
        parts: &[Target],
    ) -> MlxResult<Array> {
        let out = input.matmul(weight.t())?;
        let pairs: Vec<Option<usize>> = parts.iter().map(|&t| self.layout.pair(block, t)).collect();
        if pairs.iter().all(Option::is_none) {
            return Ok(out);
        }
        let mut bounds = Vec::new();
        let mut end = 0;
        for &target in &parts[..parts.len() - 1] {
            end += target.dims(&self.base.config).1 as i32;
            bounds.push(end);
        }
        let mut pieces = out.split_at_indices(&bounds, 1)?;
        for (piece, pair) in pieces.iter_mut().zip(pairs) {
            if let Some(pair) = pair {
                *piece = piece.add(self.lora(pair, input)?)?;
            }
        }
        ops::concatenate(&pieces, 1)
    }

    fn lora(&self, pair: usize, input: &Array) -> MlxResult<Array> {
        let (a, b) = (&self.params[2 * pair], &self.params[2 * pair + 1]);
        let x = match self.dropout {
            Some(masks) => input.multiply(&masks[pair])?,
            None => input.clone(),
        };
        x.matmul(a.t())?
            .matmul(b.t())?
            .multiply(Array::from_f32(self.layout.scale))
    }
}

/// AdamW as candle-nn computes it (decoupled weight decay, bias-corrected
/// moments), so both backends take the same steps.
struct AdamW {
    lr: f64,
    weight_decay: f64,
    step: i32,
    first: Vec<Array>,
    second: Vec<Array>,
}

impl AdamW {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(params: &[Array], lr: f64, weight_decay: f64) -> MlxResult<Self> {
        let zeros = || params.iter().map(ops::zeros_like).collect::<MlxResult<_>>();
        Ok(Self {
            lr,
            weight_decay,
            step: 0,
            first: zeros()?,
            second: zeros()?,
        })
    }

    fn update(&mut self, params: &mut [Array], grads: &[Array]) -> MlxResult<()> {
        self.step += 1;
        let f = |x: f64| Array::from_f32(x as f32);
        let (b1, b2) = (Self::BETA1, Self::BETA2);
        let scale_m = f(1.0 / (1.0 - b1.powi(self.step)));
        let scale_v = f(1.0 / (1.0 - b2.powi(self.step)));
        let decay = f(1.0 - self.lr * self.weight_decay);
        let moments = self.first.iter_mut().zip(self.second.iter_mut());
        for ((param, grad), (m, v)) in params.iter_mut().zip(grads).zip(moments) {
            *m = m.multiply(f(b1))?.add(grad.multiply(f(1.0 - b1))?)?;
            *v = v
                .multiply(f(b2))?
                .add(grad.square()?.multiply(f(1.0 - b2))?)?;
            let denominator = v.multiply(&scale_v)?.sqrt()?.add(f(Self::EPS))?;
            let adjusted = m.multiply(&scale_m)?.divide(denominator)?;
            *param = param
                .multiply(&decay)?
                .subtract(adjusted.multiply(f(self.lr))?)?;
        }
        // Materialize now, so the next step's graph does not hold this one.
        transforms::eval(params.iter().chain(&self.first).chain(&self.second))
    }
}

pub struct MlxBackend {
    base: Base,
    layout: Layout,
    /// Per pair, A (rank, input) then B (output, rank); see [`Layout`].
    params: Vec<Array>,
    optimizer: AdamW,
    dropout: f64,
    adapter_config: AdapterConfig,
}

impl MlxBackend {
    /// Loads the base model and sets up fresh LoRA pairs exactly as the
    /// candle backend does (same seeded draws, in the same order): A
    /// uniform in ±1/√input, B zero.
    pub fn new(gguf: &Path, base_model: &str, config: &TrainingConfig) -> anyhow::Result<Self> {
        let base = Base::load(gguf, config.max_seq_len)?;
        let targets = config.targets();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let rank = config.rank as i32;
        let mut params = Vec::with_capacity(2 * base.config.blocks * targets.len());
        for _ in 0..base.config.blocks {
            for &target in &targets {
                let (input, output) = target.dims(&base.config);
                let a = lora_a_init(config.rank, input, &mut rng);
                params.push(Array::from_slice(&a, &[rank, input as i32]));
                params.push(ops::zeros::<f32>(&[output as i32, rank])?);
            }
        }
        let optimizer = AdamW::new(&params, config.learning_rate, config.weight_decay)?;
        Ok(Self {
            base,
            layout: Layout {
                targets: targets.clone(),
                scale: (config.alpha / config.rank as f64) as f32,
            },
            params,
            optimizer,
            dropout: config.dropout,
            adapter_config: AdapterConfig::lora(
                config.rank,
                config.alpha,
                config.dropout,
                &targets,
                base_model,
            ),
        })
    }

    /// The step's dropout masks, one per pair, drawn in the order the
    /// candle backend draws them (block by block, projections in forward
    /// order), so one seed drops the same elements on both.
    fn dropout_masks(&self, n: usize, seed: u64) -> anyhow::Result<Option<Vec<Array>>> {
        if self.dropout <= 0.0 {
            return Ok(None);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut masks = vec![None; self.params.len() / 2];
        for (block, _) in self.base.blocks.iter().enumerate() {
            for target in Target::ALL {
                if let Some(pair) = self.layout.pair(block, target) {
                    let input = target.dims(&self.base.config).0;
                    let mask = dropout_mask(n * input, self.dropout, &mut rng);
                    masks[pair] = Some(Array::from_slice(&mask, &[n as i32, input as i32]));
                }
            }
        }
        Ok(Some(
            masks
                .into_iter()
                .collect::<Option<_>>()
                .context("a pair without a mask")?,
        ))
    }
}

impl TrainBackend for MlxBackend {
    fn name(&self) -> &'static str {
        "mlx"
    }

    fn step(&mut self, batch: &Batch, seed: u64) -> anyhow::Result<f32> {
        let inputs = Inputs::new(&self.base, batch)?;
        let masks = self.dropout_masks(batch.tokens.len(), seed)?;
        let argnums: Vec<i32> = (0..self.params.len() as i32).collect();
        let (loss, grads) = {
            let loss = |params: &[Array]| -> MlxResult<Vec<Array>> {
                let forward = Forward {
                    base: &self.base,
                    layout: &self.layout,
                    params,
                    dropout: masks.as_deref(),
                    inputs: &inputs,
                };
                Ok(vec![forward.loss()?])
            };
            transforms::value_and_grad_with_argnums(loss, argnums.as_slice())(&self.params)?
        };
        transforms::eval(loss.iter().chain(&grads))?;
        self.optimizer.update(&mut self.params, &grads)?;
        Ok(loss[0].item_exact::<f32>())
    }

    fn eval(&mut self, batch: &Batch) -> anyhow::Result<f32> {
        let inputs = Inputs::new(&self.base, batch)?;
        let forward = Forward {
            base: &self.base,
            layout: &self.layout,
            params: &self.params,
            dropout: None,
            inputs: &inputs,
        };
        Ok(forward.loss()?.item_exact::<f32>())
    }

    fn export(&self) -> anyhow::Result<AdapterWeights> {
        let layers = (0..self.base.config.blocks)
            .map(|block| {
                self.layout
                    .targets
                    .iter()
                    .map(|&target| {
                        let index = self.layout.pair(block, target).context("no such pair")?;
                        let pair = LoraPair {
                            a: to_tensor(&self.params[2 * index])?,
                            b: to_tensor(&self.params[2 * index + 1])?,
                        };
                        Ok((target, pair))
                    })
                    .collect::<anyhow::Result<_>>()
            })
            .collect::<anyhow::Result<_>>()?;
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
        let index = self
            .layout
            .pair(layer, target)
            .context("no such LoRA pair")?;
        self.params[2 * index] = to_array(&pair.a)?;
        self.params[2 * index + 1] = to_array(&pair.b)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TextFormat, candle_backend::CandleBackend, data::Example};

    fn batch(gguf: &Path, config: &TrainingConfig) -> Batch {
        let examples: Vec<Example> = [
            (
                "What is the capital of France?",
                "Paris is the capital of France.",
            ),
            ("Name a primary colour.", "Red is a primary colour."),
            ("What is two plus two?", "Two plus two is four."),
        ]
        .into_iter()
        .map(|(prompt, target)| Example {
            prompt: prompt.into(),
            target: target.into(),
            synthetic: false,
            held_out: false,
        })
        .collect();
        let sequences = TextFormat::from_gguf(gguf)
            .unwrap()
            .encode(&examples, config.max_seq_len)
            .unwrap();
        Batch::pack(&sequences.iter().collect::<Vec<_>>())
    }

    fn close(a: f32, b: f32, relative: f32) -> bool {
        (a - b).abs() <= relative * a.abs().max(b.abs())
    }

    /// Three steps on `batch`; prints the throughput.
    fn train(backend: &mut dyn TrainBackend, batch: &Batch) -> Vec<f32> {
        let started = std::time::Instant::now();
        let losses: Vec<f32> = (0..3).map(|s| backend.step(batch, s).unwrap()).collect();
        let seconds = started.elapsed().as_secs_f64();
        let tokens = 3 * batch.tokens.len();
        eprintln!(
            "{}: {:.0} tokens/s ({tokens} tokens in {seconds:.2} s)",
            backend.name(),
            tokens as f64 / seconds
        );
        losses
    }

    #[test]
    fn matches_the_candle_backend() {
        let gguf = orchestrator_llm::test_gguf();
        let config = TrainingConfig {
            // No dropout, so both see the same inputs; every projection
            // trains, so every LoRA path is compared.
            dropout: 0.0,
            target_modules: Target::ALL.iter().map(|t| t.peft_name().into()).collect(),
            learning_rate: 1e-3,
            max_seq_len: 64,
            ..TrainingConfig::default()
        };
        let batch = batch(&gguf, &config);
        let mut mlx = MlxBackend::new(&gguf, "smollm2", &config).unwrap();
        let mut candle = CandleBackend::new(&gguf, "smollm2", &config).unwrap();
        let (before_mlx, before_candle) = (mlx.eval(&batch).unwrap(), candle.eval(&batch).unwrap());
        assert!(
            close(before_mlx, before_candle, 1e-3),
            "eval: mlx {before_mlx}, candle {before_candle}"
        );
        let mlx_losses = train(&mut mlx, &batch);
        let candle_losses = train(&mut candle, &batch);
        let (after_mlx, after_candle) = (mlx.eval(&batch).unwrap(), candle.eval(&batch).unwrap());
        eprintln!("mlx {mlx_losses:?} → {after_mlx}; candle {candle_losses:?} → {after_candle}");
        assert!(after_mlx < before_mlx * 0.9, "mlx loss did not fall");
        assert!(
            close(after_mlx, after_candle, 0.03),
            "after 3 steps: mlx {after_mlx}, candle {after_candle}"
        );
        let exported = mlx.export().unwrap();
        assert_eq!(exported.layers.len(), mlx.model_config().blocks);
        assert_eq!(exported.layers[0].len(), Target::ALL.len());
    }

    #[test]
    fn dropout_steps_are_seeded() {
        let gguf = orchestrator_llm::test_gguf();
        let config = TrainingConfig {
            max_seq_len: 64,
            ..TrainingConfig::default()
        };
        let batch = batch(&gguf, &config);
        let run = || {
            let mut mlx = MlxBackend::new(&gguf, "smollm2", &config).unwrap();
            (0..2)
                .map(|s| mlx.step(&batch, s).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
