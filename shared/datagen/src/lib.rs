//! Training-data generation: sources of examples, the formats they are
//! written in, the filters that drop bad or repeated ones, and shards.
//!
//! A run of `count` examples is cut into shards of `shard_size`. Example
//! `i` is drawn from a generator seeded by (run seed, `i`) alone, so a shard
//! is the same bytes however often and wherever it is generated: a shard job
//! delivered twice writes the same lines, and at-least-once delivery still
//! yields every example exactly once.

pub mod runs;
pub mod synthetic;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most examples one run may ask for.
pub const MAX_COUNT: u64 = 10_000_000;
/// Most examples in one shard.
pub const MAX_SHARD_SIZE: u64 = 100_000;

/// One generated example, before it is written in a format.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub source: String,
    /// The task family (`arithmetic`, `sql`, ...): the pattern it follows.
    pub family: String,
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// How examples are written, one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`
    #[default]
    Chat,
    /// `{"instruction", "input", "output"}`
    Alpaca,
    /// `{"prompt", "completion"}`
    Completion,
}

impl Format {
    pub fn render(self, example: &Example) -> serde_json::Value {
        let prompt = match example.input.is_empty() {
            true => example.instruction.clone(),
            false => format!("{}\n\n{}", example.instruction, example.input),
        };
        match self {
            Format::Chat => serde_json::json!({"messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": example.output},
            ]}),
            Format::Alpaca => serde_json::json!({
                "instruction": example.instruction,
                "input": example.input,
                "output": example.output,
            }),
            Format::Completion => {
                serde_json::json!({"prompt": prompt, "completion": example.output})
            }
        }
    }
}

/// What is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    /// Shortest example kept, in characters of prompt and answer together.
    pub min_chars: usize,
    /// Longest example kept.
    pub max_chars: usize,
    /// Drop exact repeats (same prompt and answer once whitespace and case
    /// are normalized) across the whole run.
    pub dedup: bool,
}

impl Default for Filters {
    fn default() -> Self {
        Self {
            min_chars: 8,
            max_chars: 16_384,
            dedup: true,
        }
    }
}

/// One source and its share of the mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceWeight {
    /// `synthetic`.
    pub source: String,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// Everything that decides a run's examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub count: u64,
    pub shard_size: u64,
    pub seed: u64,
    pub eval_fraction: f64,
    pub format: Format,
    pub filters: Filters,
    pub sources: Vec<SourceWeight>,
}

/// A plan that cannot run, naming the field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct PlanError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> PlanError {
    PlanError {
        field,
        message: message.into(),
    }
}

/// Sources this build can generate from.
pub const SOURCES: [&str; 1] = ["synthetic"];

impl Plan {
    /// Checks every field; nothing is created from a plan that fails.
    pub fn check(&self) -> Result<(), PlanError> {
        if !(1..=MAX_COUNT).contains(&self.count) {
            return Err(invalid("count", format!("must be 1 to {MAX_COUNT}")));
        }
        if !(1..=MAX_SHARD_SIZE).contains(&self.shard_size) {
            return Err(invalid(
                "shard_size",
                format!("must be 1 to {MAX_SHARD_SIZE}"),
            ));
        }
        if !(0.0..=0.5).contains(&self.eval_fraction) {
            return Err(invalid("eval_fraction", "must be 0 to 0.5"));
        }
        if self.filters.min_chars > self.filters.max_chars {
            return Err(invalid("filters", "min_chars is over max_chars"));
        }
        if self.sources.is_empty() || self.sources.len() > 16 {
            return Err(invalid("sources", "give 1 to 16 sources"));
        }
        for source in &self.sources {
            if !SOURCES.contains(&source.source.as_str()) {
                return Err(invalid(
                    "sources",
                    format!(
                        "unknown source {:?}; this build generates from: {}",
                        source.source.chars().take(64).collect::<String>(),
                        SOURCES.join(", ")
                    ),
                ));
            }
            if !(source.weight.is_finite() && source.weight >= 0.0) {
                return Err(invalid(
                    "sources",
                    "weights must be finite and not negative",
                ));
            }
        }
        if self.sources.iter().map(|s| s.weight).sum::<f64>() <= 0.0 {
            return Err(invalid(
                "sources",
                "the weights must sum to a positive number",
            ));
        }
        Ok(())
    }

    pub fn shards(&self) -> u64 {
        self.count.div_ceil(self.shard_size)
    }

    /// Examples `[first, end)` of shard `shard`.
    pub fn range(&self, shard: u64) -> std::ops::Range<u64> {
        let first = shard * self.shard_size;
        first..(first + self.shard_size).min(self.count)
    }

    /// Generates shard `shard`: the same output for the same plan, always.
    pub fn generate(&self, shard: u64) -> Shard {
        let mut out = Shard::default();
        let mut seen = std::collections::HashSet::new();
        for index in self.range(shard) {
            let mut rng = StdRng::seed_from_u64(mix(self.seed, index));
            let eval = rng.random_bool(self.eval_fraction);
            let example = self.draw(&mut rng);
            let size = example.instruction.len() + example.input.len() + example.output.len();
            if example.output.trim().is_empty() {
                out.drop("empty");
                continue;
            }
            if size < self.filters.min_chars {
                out.drop("too_short");
                continue;
            }
            if size > self.filters.max_chars {
                out.drop("too_long");
                continue;
            }
            let key = dedup_key(&example);
            if self.filters.dedup && !seen.insert(key) {
                out.drop("duplicate");
                continue;
            }
            out.keep(self.format, &example, key, eval);
        }
        out
    }

    /// The next example. `synthetic` is the one source this build has
    /// (checked by [`Plan::check`]); a weighted pick among sources goes
    /// here with the second.
    fn draw(&self, rng: &mut StdRng) -> Example {
        synthetic::generate(rng)
    }
}

/// A well-mixed seed for example `index` of a run (SplitMix64).
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An example's identity for deduplication: prompt and answer with case
/// and whitespace normalized, hashed.
pub fn dedup_key(example: &Example) -> u64 {
    let mut hasher = blake3::Hasher::new();
    for part in [&example.instruction, &example.input, &example.output] {
        for word in part.split_whitespace() {
            hasher.update(word.to_lowercase().as_bytes());
            hasher.update(b" ");
        }
        hasher.update(b"\x1f");
    }
    let bytes = hasher.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// What one shard produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Shard {
    /// JSON lines of the train split.
    pub train: Vec<u8>,
    /// JSON lines of the eval split.
    pub eval: Vec<u8>,
    /// The dedup key of every train line, in order.
    pub train_keys: Vec<u64>,
    /// The dedup key of every eval line, in order.
    pub eval_keys: Vec<u64>,
    pub kept: u64,
    /// Dropped examples by filter (`empty`, `too_short`, `too_long`, `duplicate`).
    pub dropped: BTreeMap<String, u64>,
    /// Kept examples by source and by family.
    pub sources: BTreeMap<String, u64>,
    pub families: BTreeMap<String, u64>,
}

impl Shard {
    fn drop(&mut self, filter: &str) {
        *self.dropped.entry(filter.into()).or_default() += 1;
    }

    fn keep(&mut self, format: Format, example: &Example, key: u64, eval: bool) {
        let (split, keys) = match eval {
            true => (&mut self.eval, &mut self.eval_keys),
            false => (&mut self.train, &mut self.train_keys),
        };
        serde_json::to_writer(&mut *split, &format.render(example)).expect("JSON to memory");
        split.push(b'\n');
        keys.push(key);
        self.kept += 1;
        *self.sources.entry(example.source.clone()).or_default() += 1;
        *self.families.entry(example.family.clone()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(count: u64, shard_size: u64) -> Plan {
        Plan {
            count,
            shard_size,
            seed: 42,
            eval_fraction: 0.1,
            format: Format::Chat,
            filters: Filters::default(),
            sources: vec![SourceWeight {
                source: "synthetic".into(),
                weight: 1.0,
            }],
        }
    }

    #[test]
    fn a_shard_is_the_same_bytes_every_time() {
        let plan = plan(5_000, 1_000);
        assert_eq!(plan.generate(3), plan.generate(3));
        assert_ne!(plan.generate(3).train, plan.generate(2).train);
    }

    #[test]
    fn shards_cover_every_index_once_whatever_their_size() {
        let small = plan(2_500, 700);
        assert_eq!(small.shards(), 4);
        assert_eq!(small.range(3), 2_100..2_500);
        let joined: Vec<u8> = (0..small.shards())
            .flat_map(|s| small.generate(s).train)
            .collect();
        let whole = plan(2_500, 2_500).generate(0);
        // Same examples; only within-shard dedup may differ at the seams.
        let lines = |bytes: &[u8]| bytes.split(|b| *b == b'\n').count();
        assert!(lines(&joined) >= lines(&whole.train));
    }

    #[test]
    fn every_line_is_json_in_the_chosen_format_and_the_split_holds() {
        let mut plan = plan(2_000, 2_000);
        plan.format = Format::Alpaca;
        let shard = plan.generate(0);
        let train: Vec<serde_json::Value> = shard
            .train
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let eval = shard
            .eval
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(train.len() + eval, shard.kept as usize);
        assert!(
            train
                .iter()
                .all(|l| l["instruction"].is_string() && l["output"].is_string())
        );
        let share = eval as f64 / shard.kept as f64;
        assert!((0.05..0.15).contains(&share), "{share}");
        assert_eq!(shard.kept + shard.dropped.values().sum::<u64>(), 2_000);
    }

    #[test]
    fn bad_plans_name_their_field() {
        let mut bad = plan(0, 10);
        assert_eq!(bad.check().unwrap_err().field, "count");
        bad.count = 10;
        bad.sources[0].source = "oracle".into();
        assert_eq!(bad.check().unwrap_err().field, "sources");
        bad.sources[0].source = "synthetic".into();
        bad.sources[0].weight = 0.0;
        assert!(bad.check().unwrap_err().message.contains("positive"));
        bad.sources[0].weight = 1.0;
        assert_eq!(bad.check(), Ok(()));
    }

    #[test]
    fn repeats_are_dropped_and_counted() {
        let mut tiny = plan(3_000, 3_000);
        tiny.filters.max_chars = 60;
        let shard = tiny.generate(0);
        assert!(shard.dropped.get("too_long").copied().unwrap_or(0) > 0);
        let mut keys = [shard.train_keys.clone(), shard.eval_keys.clone()].concat();
        let kept = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), kept, "a repeat was kept");
    }
}
