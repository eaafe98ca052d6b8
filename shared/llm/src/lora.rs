//! LoRA adapters: the weights a fine-tuning run adds to a llama model, and
//! their files in Hugging Face PEFT's format (`adapter_model.safetensors`
//! plus `adapter_config.json`), so an adapter moves between this project,
//! PEFT and the tools that read PEFT adapters.
//!
//! In memory, weights follow the GGUF's row order. llama.cpp stores q_proj
//! and k_proj rows permuted (rotary pairs interleaved); PEFT files hold Hugging
//! Face's order, so the `lora_B` rows of those two are permuted on the way
//! in and out.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::llama_config::Config;

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Largest adapter_config.json read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// A projection a LoRA pair can sit on, named as in PEFT's target_modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    pub fn from_peft_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.peft_name() == name)
    }

    /// The PEFT tensor-name prefix of this projection in block `layer`.
    fn peft_path(self, layer: usize) -> String {
        let group = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        };
        format!(
            "base_model.model.model.layers.{layer}.{group}.{}",
            self.peft_name()
        )
    }

    /// (input, output) widths of the projection.
    pub fn dims(self, c: &Config) -> (usize, usize) {
        let attention = c.heads * c.head_dim;
        let kv = c.kv_heads * c.head_dim;
        match self {
            Target::Q => (c.hidden, attention),
            Target::K | Target::V => (c.hidden, kv),
            Target::O => (attention, c.hidden),
            Target::Gate | Target::Up => (c.hidden, c.feed_forward),
            Target::Down => (c.feed_forward, c.hidden),
        }
    }

    /// For each row in Hugging Face order, the GGUF row holding it (q and k
    /// only; the others are not permuted).
    fn gguf_rows_of_hf(self, c: &Config) -> Option<Vec<u32>> {
        let heads = match self {
            Target::Q => c.heads,
            Target::K => c.kv_heads,
            _ => return None,
        };
        let half = c.head_dim / 2;
        let mut rows = vec![0u32; heads * c.head_dim];
        for h in 0..heads {
            for s in 0..2 {
                for j in 0..half {
                    let hf = h * c.head_dim + s * half + j;
                    rows[hf] = (h * c.head_dim + 2 * j + s) as u32;
                }
            }
        }
        Some(rows)
    }
}

/// adapter_config.json, with the fields PEFT writes for a LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub bias: String,
    #[serde(default)]
    pub base_model_name_or_path: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
}

impl AdapterConfig {
    pub fn lora(r: usize, alpha: f64, dropout: f64, targets: &[Target], base_model: &str) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r,
            lora_alpha: alpha,
            lora_dropout: dropout,
            target_modules: targets.iter().map(|t| t.peft_name().to_string()).collect(),
            bias: "none".into(),
            base_model_name_or_path: base_model.into(),
            fan_in_fan_out: false,
            inference_mode: true,
            use_rslora: false,
            use_dora: false,
        }
    }

    /// The factor the product B·A is multiplied by.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    pub fn targets(&self) -> anyhow::Result<Vec<Target>> {
        self.target_modules
            .iter()
            .map(|name| {
                Target::from_peft_name(name)
                    .with_context(|| format!("unsupported LoRA target module {name:?}"))
            })
            .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.peft_type == "LORA",
            "peft_type {} is not LORA",
            self.peft_type
        );
        ensure!((1..=256).contains(&self.r), "rank r must be 1 to 256");
        ensure!(
            self.lora_alpha.is_finite() && self.lora_alpha > 0.0,
            "lora_alpha must be positive"
        );
        ensure!(
            !self.use_dora && !self.use_rslora && !self.fan_in_fan_out,
            "DoRA, rsLoRA and fan_in_fan_out adapters are not supported"
        );
        ensure!(
            self.bias.is_empty() || self.bias == "none",
            "adapters with trained biases are not supported"
        );
        ensure!(!self.target_modules.is_empty(), "no target_modules");
        self.targets().map(|_| ())
    }
}

/// One low-rank pair: the projection gains `scale · B·A·x`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// (rank, input)
    pub a: Tensor,
    /// (output, rank), rows in GGUF order.
    pub b: Tensor,
}

/// An adapter's weights, per block and target, in GGUF row order.
#[derive(Debug, Clone)]
pub struct AdapterWeights {
    pub config: AdapterConfig,
    pub layers: Vec<HashMap<Target, LoraPair>>,
}

impl AdapterWeights {
    /// Writes the adapter into `dir` in PEFT's format.
    pub fn save(&self, dir: &Path, model: &Config) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors = HashMap::new();
        for (layer, pairs) in self.layers.iter().enumerate() {
            for (target, pair) in pairs {
                let b = match target.gguf_rows_of_hf(model) {
                    Some(rows) => reorder(&pair.b, &rows)?,
                    None => pair.b.clone(),
                };
                let path = target.peft_path(layer);
                tensors.insert(format!("{path}.lora_A.weight"), pair.a.contiguous()?);
                tensors.insert(format!("{path}.lora_B.weight"), b.contiguous()?);
            }
        }
        candle_core::safetensors::save(&tensors, dir.join(WEIGHTS_FILE))?;
        std::fs::write(
            dir.join(CONFIG_FILE),
            serde_json::to_string_pretty(&self.config)?,
        )?;
        Ok(())
    }

    /// Reads a PEFT adapter for a model of shape `model`, checking every
    /// tensor's shape.
    pub fn load(dir: &Path, model: &Config) -> anyhow::Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let size = std::fs::metadata(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?
            .len();
        ensure!(
            size <= MAX_CONFIG_BYTES,
            "{} is too large",
            config_path.display()
        );
        let config: AdapterConfig = serde_json::from_slice(&std::fs::read(&config_path)?)
            .with_context(|| format!("{} is not a LoRA adapter config", config_path.display()))?;
        config.check()?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let mut tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .with_context(|| format!("cannot read {}", weights_path.display()))?;
        let targets = config.targets()?;
        let mut layers = Vec::with_capacity(model.blocks);
        for layer in 0..model.blocks {
            let mut pairs = HashMap::new();
            for &target in &targets {
                let path = target.peft_path(layer);
                let mut take = |part: &str, shape: (usize, usize)| -> anyhow::Result<Tensor> {
                    let name = format!("{path}.{part}.weight");
                    let tensor = tensors
                        .remove(&name)
                        .with_context(|| format!("adapter lacks {name}"))?
                        .to_dtype(DType::F32)?;
                    if tensor.dims2()? != shape {
                        bail!("{name} has shape {:?}, expected {shape:?}", tensor.dims());
                    }
                    Ok(tensor)
                };
                let (input, output) = target.dims(model);
                let a = take("lora_A", (config.r, input))?;
                let b = take("lora_B", (output, config.r))?;
                let b = match target.gguf_rows_of_hf(model) {
                    Some(rows) => reorder(&b, &invert(&rows))?,
                    None => b,
                };
                pairs.insert(target, LoraPair { a, b });
            }
            layers.push(pairs);
        }
        Ok(Self { config, layers })
    }
}

/// Row `i` of the result is row `rows[i]` of `tensor`.
fn reorder(tensor: &Tensor, rows: &[u32]) -> candle_core::Result<Tensor> {
    let index = Tensor::new(rows, tensor.device())?;
    tensor.index_select(&index, 0)
}

fn invert(rows: &[u32]) -> Vec<u32> {
    let mut inverse = vec![0u32; rows.len()];
    for (i, &r) in rows.iter().enumerate() {
        inverse[r as usize] = i as u32;
    }
    inverse
}

/// An adapter ready for decoding: per block, the extra outputs of the fused
/// q/k/v and gate/up projections and of o/down, as `x·Aᵀ·(scale·Bᵀ)`.
pub struct LoadedAdapter {
    layers: Vec<HashMap<Target, (Tensor, Tensor)>>,
}

impl LoadedAdapter {
    pub fn new(weights: &AdapterWeights) -> candle_core::Result<Self> {
        let scale = weights.config.scale();
        let layers = weights
            .layers
            .iter()
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|(&target, pair)| {
                        let a_t = pair.a.t()?.contiguous()?;
                        let b_t = (pair.b.t()? * scale)?.contiguous()?;
                        Ok((target, (a_t, b_t)))
                    })
                    .collect::<candle_core::Result<HashMap<_, _>>>()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `base` (the output of the projections `parts`, concatenated on the
    /// last dimension, each with its width) plus the adapter's share for
    /// block `layer`, from the projections' common input `x`.
    pub fn add(
        &self,
        layer: usize,
        x: &Tensor,
        base: Tensor,
        parts: &[(Target, usize)],
    ) -> candle_core::Result<Tensor> {
        let pairs = &self.layers[layer];
        if parts.iter().all(|(t, _)| !pairs.contains_key(t)) {
            return Ok(base);
        }
        let mut pieces = Vec::with_capacity(parts.len());
        for (target, width) in parts {
            pieces.push(match pairs.get(target) {
                Some((a_t, b_t)) => x.broadcast_matmul(a_t)?.broadcast_matmul(b_t)?,
                None => {
                    let mut shape = x.dims().to_vec();
                    *shape.last_mut().expect("rank ≥ 1") = *width;
                    Tensor::zeros(shape, x.dtype(), x.device())?
                }
            });
        }
        base + Tensor::cat(&pieces, candle_core::D::Minus1)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            hidden: 32,
            blocks: 2,
            feed_forward: 48,
            eps: 1e-5,
            freq_base: 10_000.0,
        }
    }

    #[test]
    fn the_q_permutation_is_llama_cpps() {
        // llama.cpp: reshape(heads, 2, head_dim / 2, ...).swapaxes(1, 2).
        let c = config();
        let rows = Target::Q.gguf_rows_of_hf(&c).unwrap();
        // HF row 1 (head 0, first half, j = 1) sits at GGUF row 2.
        assert_eq!(rows[1], 2);
        // HF row 4 (head 0, second half, j = 0) sits at GGUF row 1.
        assert_eq!(rows[4], 1);
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(sorted, (0..32).collect::<Vec<u32>>());
        assert_eq!(Target::K.gguf_rows_of_hf(&c).unwrap().len(), 16);
        assert!(Target::V.gguf_rows_of_hf(&c).is_none());
    }

    #[test]
    fn save_then_load_gives_the_same_weights() {
        let c = config();
        let dir = std::env::temp_dir().join(format!("lora-{}", uuid::Uuid::now_v7()));
        let targets = [Target::Q, Target::V, Target::Down];
        let mut layers = Vec::new();
        for _ in 0..c.blocks {
            let mut pairs = HashMap::new();
            for t in targets {
                let (input, output) = t.dims(&c);
                pairs.insert(
                    t,
                    LoraPair {
                        a: Tensor::randn(0f32, 1.0, (4, input), &Device::Cpu).unwrap(),
                        b: Tensor::randn(0f32, 1.0, (output, 4), &Device::Cpu).unwrap(),
                    },
                );
            }
            layers.push(pairs);
        }
        let weights = AdapterWeights {
            config: AdapterConfig::lora(4, 8.0, 0.1, &targets, "smollm2"),
            layers,
        };
        weights.save(&dir, &c).unwrap();
        let loaded = AdapterWeights::load(&dir, &c).unwrap();
        for (before, after) in weights.layers.iter().zip(&loaded.layers) {
            for t in targets {
                let diff = (&before[&t].b - &after[&t].b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
            }
        }
        // On disk, q_proj's B rows are in Hugging Face order.
        let raw = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        let on_disk = &raw["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
        let gguf_row2 = weights.layers[0][&Target::Q].b.get(2).unwrap();
        let hf_row1 = on_disk.get(1).unwrap();
        let diff = (gguf_row2 - hf_row1)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
