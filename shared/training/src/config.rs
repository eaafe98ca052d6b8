//! A training run's settings: the LoRA shape and the optimisation loop.
//! Defaults follow common PEFT practice for small models.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use orchestrator_llm::lora::Target;

/// LoRA fine-tuning settings. Every field is optional in requests; missing
/// ones take the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha; updates are scaled by alpha / rank.
    pub alpha: f64,
    /// Dropout on the LoRA input while training.
    pub dropout: f64,
    /// Projections that get LoRA pairs (PEFT names: q_proj, k_proj, v_proj,
    /// o_proj, gate_proj, up_proj, down_proj).
    pub target_modules: Vec<String>,
    /// AdamW learning rate.
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Tokens per example (prompt plus response); longer ones are cut.
    pub max_seq_len: usize,
    /// Share of the examples held out to evaluate the adapter.
    pub eval_fraction: f64,
    /// Seeds the split, the order, the initial weights and dropout, so a run
    /// repeats exactly.
    pub seed: u64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.1,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            learning_rate: 1e-4,
            weight_decay: 0.0,
            epochs: 3,
            batch_size: 4,
            max_seq_len: 256,
            eval_fraction: 0.2,
            seed: 42,
        }
    }
}

impl TrainingConfig {
    /// Checks every field, naming the first bad one.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.rank) {
            return Err("rank must be 1 to 256".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 4_096.0) {
            return Err("alpha must be above 0 and at most 4096".into());
        }
        if !(0.0..0.9).contains(&self.dropout) {
            return Err("dropout must be 0 to 0.9".into());
        }
        if self.target_modules.is_empty() || self.target_modules.len() > Target::ALL.len() {
            return Err("target_modules must name 1 to 7 projections".into());
        }
        let mut seen = std::collections::HashSet::new();
        for name in &self.target_modules {
            if Target::from_peft_name(name).is_none() {
                return Err(format!(
                    "target module {name:?} is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                ));
            }
            if !seen.insert(name) {
                return Err(format!("target module {name} is listed twice"));
            }
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 10.0)
        {
            return Err("learning_rate must be above 0 and at most 10".into());
        }
        if !(0.0..=1.0).contains(&self.weight_decay) {
            return Err("weight_decay must be 0 to 1".into());
        }
        if !(1..=1_000).contains(&self.epochs) {
            return Err("epochs must be 1 to 1000".into());
        }
        if !(1..=256).contains(&self.batch_size) {
            return Err("batch_size must be 1 to 256".into());
        }
        if !(16..=4_096).contains(&self.max_seq_len) {
            return Err("max_seq_len must be 16 to 4096".into());
        }
        if !(0.05..=0.5).contains(&self.eval_fraction) {
            return Err("eval_fraction must be 0.05 to 0.5".into());
        }
        Ok(())
    }

    pub fn targets(&self) -> Vec<Target> {
        self.target_modules
            .iter()
            .filter_map(|n| Target::from_peft_name(n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        assert_eq!(TrainingConfig::default().check(), Ok(()));
        let bad = [
            (r#"{"rank": 0}"#, "rank"),
            (r#"{"dropout": 1.5}"#, "dropout"),
            (r#"{"target_modules": ["lm_head"]}"#, "lm_head"),
            (r#"{"target_modules": ["q_proj", "q_proj"]}"#, "twice"),
            (r#"{"learning_rate": -1}"#, "learning_rate"),
            (r#"{"epochs": 100000}"#, "epochs"),
            (r#"{"max_seq_len": 1}"#, "max_seq_len"),
        ];
        for (json, want) in bad {
            let config: TrainingConfig = serde_json::from_str(json).unwrap();
            let err = config.check().unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        assert!(serde_json::from_str::<TrainingConfig>(r#"{"colour": 1}"#).is_err());
    }
}
