//! Picks models for a task: score = capability, cost, history and
//! availability, weighted by the workflow's optimisation target. Pure and
//! deterministic: the same inputs give the same plan (ties go to the id
//! that sorts first).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::registry::ModelSpec;

/// A call costing this much (USD) gets half the cost score of a free one;
/// absolute rather than relative to the dearest model, so a cheap model is
/// not scored as "expensive" just because the registry has nothing dearer.
const COST_HALF_SCORE_USD: f64 = 0.01;

/// What a workflow optimises for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationTarget {
    Speed,
    Cost,
    Quality,
    #[default]
    Balanced,
}

/// Weights of the four score parts; they sum to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub capability: f64,
    pub cost: f64,
    pub history: f64,
    pub availability: f64,
}

impl OptimizationTarget {
    pub fn weights(self) -> Weights {
        let (capability, cost, history, availability) = match self {
            OptimizationTarget::Balanced => (0.40, 0.20, 0.25, 0.15),
            OptimizationTarget::Speed => (0.25, 0.10, 0.25, 0.40),
            OptimizationTarget::Cost => (0.25, 0.50, 0.15, 0.10),
            OptimizationTarget::Quality => (0.60, 0.05, 0.30, 0.05),
        };
        Weights {
            capability,
            cost,
            history,
            availability,
        }
    }

    /// How much latency counts inside the history score.
    fn latency_share(self) -> f64 {
        match self {
            OptimizationTarget::Speed => 0.5,
            _ => 0.2,
        }
    }
}

/// Decayed record of one model on one task type.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, ToSchema)]
pub struct History {
    pub samples: u32,
    /// Share of calls that answered (0..1).
    pub success: f64,
    /// Share of validated answers that passed (0..1).
    pub validation: f64,
    pub latency_ms: f64,
}

/// Everything a decision depends on.
pub struct Inputs<'a> {
    pub task_type: &'a str,
    pub models: &'a [ModelSpec],
    pub history: &'a HashMap<String, History>,
    /// Calls running now, per model, across the fleet.
    pub in_flight: &'a HashMap<String, u32>,
    pub target: OptimizationTarget,
    /// Models the user asked for, best first; they lead the plan.
    pub preferences: &'a [String],
    /// What is left of the workflow's budget (USD), if it has one.
    pub budget_left: Option<f64>,
    pub estimated_input_tokens: u32,
    pub estimated_output_tokens: u32,
}

/// The models chosen for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub primary: String,
    /// Judges the primary's answer; always a different model (none when
    /// only one model is usable).
    pub validator: Option<String>,
    /// Tried in order when the primary fails or its answer is rejected.
    pub fallbacks: Vec<String>,
}

impl Plan {
    /// Primary then fallbacks.
    pub fn chain(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.primary).chain(self.fallbacks.iter())
    }
}

/// A model's total score for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub id: String,
    pub score: f64,
}

/// Scores every model for the task, best first.
pub fn rank(inputs: &Inputs) -> Vec<Scored> {
    let weights = inputs.target.weights();
    let mut ranked: Vec<Scored> = inputs
        .models
        .iter()
        .map(|model| {
            let cost = model.cost(
                inputs.estimated_input_tokens,
                inputs.estimated_output_tokens,
            );
            let cost_score = 1.0 / (1.0 + cost / COST_HALF_SCORE_USD);
            let score = weights.capability * model.capability(inputs.task_type)
                + weights.cost * cost_score
                + weights.history * history_score(inputs.history.get(&model.id), inputs.target)
                + weights.availability * availability(model, inputs.in_flight);
            Scored {
                id: model.id.clone(),
                score,
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    ranked
}

/// Picks primary, validator and fallbacks. `None` when no model is left
/// (an empty registry).
pub fn plan(inputs: &Inputs) -> Option<Plan> {
    let ranked = rank(inputs);
    let affordable = |id: &str| {
        let Some(left) = inputs.budget_left else {
            return true;
        };
        inputs.models.iter().find(|m| m.id == id).is_some_and(|m| {
            m.cost(
                inputs.estimated_input_tokens,
                inputs.estimated_output_tokens,
            ) <= left
        })
    };
    // Preferred models first, in the user's order, then the rest by score;
    // models over budget go last rather than vanish, so a plan always exists.
    let mut order: Vec<String> = inputs
        .preferences
        .iter()
        .filter(|p| ranked.iter().any(|r| &&r.id == p))
        .cloned()
        .collect();
    for scored in &ranked {
        if !order.contains(&scored.id) {
            order.push(scored.id.clone());
        }
    }
    order.sort_by_key(|id| !affordable(id));
    let primary = order.first()?.clone();
    let validator = ranked
        .iter()
        .map(|s| &s.id)
        .find(|id| **id != primary)
        .cloned();
    Some(Plan {
        fallbacks: order.into_iter().skip(1).collect(),
        primary,
        validator,
    })
}

/// 0.5 for a model never seen on this task type, so newcomers get tried.
fn history_score(history: Option<&History>, target: OptimizationTarget) -> f64 {
    let Some(h) = history.filter(|h| h.samples > 0) else {
        return 0.5;
    };
    let latency = 1.0 / (1.0 + h.latency_ms / 5_000.0);
    let share = target.latency_share();
    let quality = 0.6 * h.success + 0.4 * h.validation;
    (1.0 - share) * quality + share * latency
}

fn availability(model: &ModelSpec, in_flight: &HashMap<String, u32>) -> f64 {
    let busy = in_flight.get(&model.id).copied().unwrap_or(0) as f64;
    (1.0 - busy / model.max_concurrency.max(1) as f64).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn registry() -> Registry {
        Registry::parse(
            r#"
[[model]]
id = "cheap"
provider = "local"
file = "a.gguf"
specialties = { coding = 0.3, general = 0.4 }
max_concurrency = 2

[[model]]
id = "smart"
provider = "openai"
base_url = "http://127.0.0.1:1/v1"
model = "m"
cost_per_1k_input = 1.0
cost_per_1k_output = 2.0
specialties = { coding = 0.95, general = 0.9 }
max_concurrency = 4

[[model]]
id = "middle"
provider = "openai"
base_url = "http://127.0.0.1:1/v1"
model = "m"
cost_per_1k_input = 0.1
cost_per_1k_output = 0.2
specialties = { coding = 0.7, general = 0.6 }
"#,
        )
        .unwrap()
    }

    fn inputs<'a>(
        registry: &'a Registry,
        history: &'a HashMap<String, History>,
        in_flight: &'a HashMap<String, u32>,
        target: OptimizationTarget,
    ) -> Inputs<'a> {
        Inputs {
            task_type: "coding",
            models: registry.models(),
            history,
            in_flight,
            target,
            preferences: &[],
            budget_left: None,
            estimated_input_tokens: 1_000,
            estimated_output_tokens: 500,
        }
    }

    #[test]
    fn quality_picks_the_capable_model_and_cost_the_cheap_one() {
        let (r, h, f) = (registry(), HashMap::new(), HashMap::new());
        let quality = plan(&inputs(&r, &h, &f, OptimizationTarget::Quality)).unwrap();
        assert_eq!(quality.primary, "smart");
        assert_eq!(quality.validator.as_deref(), Some("middle"));
        let cost = plan(&inputs(&r, &h, &f, OptimizationTarget::Cost)).unwrap();
        assert_eq!(cost.primary, "cheap");
        assert_ne!(cost.validator.as_deref(), Some("cheap"));
        assert_eq!(cost.fallbacks.len(), 2);
    }

    #[test]
    fn default_weights_are_the_documented_ones() {
        let w = OptimizationTarget::Balanced.weights();
        assert_eq!(
            (w.capability, w.cost, w.history, w.availability),
            (0.4, 0.2, 0.25, 0.15)
        );
        for t in [
            OptimizationTarget::Speed,
            OptimizationTarget::Cost,
            OptimizationTarget::Quality,
        ] {
            let w = t.weights();
            assert!((w.capability + w.cost + w.history + w.availability - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn bad_history_and_full_load_demote_a_model() {
        let r = registry();
        let f = HashMap::new();
        let h = HashMap::new();
        let before = plan(&inputs(&r, &h, &f, OptimizationTarget::Balanced)).unwrap();
        assert_eq!(before.primary, "smart");
        let mut h = HashMap::new();
        h.insert(
            "smart".to_string(),
            History {
                samples: 20,
                success: 0.1,
                validation: 0.0,
                latency_ms: 60_000.0,
            },
        );
        let mut busy = HashMap::new();
        busy.insert("smart".to_string(), 4);
        let after = plan(&inputs(&r, &h, &busy, OptimizationTarget::Balanced)).unwrap();
        assert_ne!(after.primary, "smart");
        assert!(after.fallbacks.contains(&"smart".to_string()));
    }

    #[test]
    fn preferences_lead_and_budget_pushes_expensive_models_last() {
        let (r, h, f) = (registry(), HashMap::new(), HashMap::new());
        let prefs = vec!["middle".to_string()];
        let mut i = inputs(&r, &h, &f, OptimizationTarget::Quality);
        i.preferences = &prefs;
        assert_eq!(plan(&i).unwrap().primary, "middle");
        let mut i = inputs(&r, &h, &f, OptimizationTarget::Quality);
        i.budget_left = Some(0.5); // smart costs 2.0 here, middle 0.2
        let p = plan(&i).unwrap();
        assert_eq!(p.primary, "middle");
        assert_eq!(p.fallbacks.last().map(String::as_str), Some("smart"));
    }

    #[test]
    fn same_inputs_same_plan() {
        let (r, h, f) = (registry(), HashMap::new(), HashMap::new());
        let a = plan(&inputs(&r, &h, &f, OptimizationTarget::Speed));
        for _ in 0..10 {
            assert_eq!(plan(&inputs(&r, &h, &f, OptimizationTarget::Speed)), a);
        }
    }
}
