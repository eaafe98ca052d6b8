//! Training-data generation: sources of examples, the formats they are
//! written in, the filters that drop bad or repeated ones, and shards.
//!
//! A run of `count` examples is cut into shards of `shard_size`. Example
//! `i` is drawn from a generator seeded by (run seed, `i`) alone, so a shard
//! is the same bytes however often and wherever it is generated: a shard job
//! delivered twice writes the same lines, and at-least-once delivery still
//! yields every example exactly once.

pub mod llm;
pub mod quality;
pub mod runs;
pub mod snapshot;
pub mod sources;
pub mod synthetic;

use std::collections::{BTreeMap, HashSet};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sources::Source;

/// Most examples one run may ask for.
pub const MAX_COUNT: u64 = 10_000_000;
/// Most examples in one shard.
pub const MAX_SHARD_SIZE: u64 = 100_000;
/// Most shards (jobs) in one run: a run of 10,000,000 examples has shards
/// of at least 1,000.
pub const MAX_SHARDS: u64 = 10_000;

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

    /// The prompt and answer of a line written in this format.
    pub fn parse(self, line: &[u8]) -> Option<(String, String)> {
        let value: serde_json::Value = serde_json::from_slice(line).ok()?;
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        match self {
            Format::Chat => Some((
                text(&value["messages"][0]["content"])?,
                text(&value["messages"][1]["content"])?,
            )),
            Format::Alpaca => {
                let instruction = text(&value["instruction"])?;
                let input = text(&value["input"]).unwrap_or_default();
                let prompt = match input.is_empty() {
                    true => instruction,
                    false => format!("{instruction}\n\n{input}"),
                };
                Some((prompt, text(&value["output"])?))
            }
            Format::Completion => Some((text(&value["prompt"])?, text(&value["completion"])?)),
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
    /// Drop an example whose prompt and answer are this similar (estimated
    /// Jaccard similarity of word 5-shingles, MinHash) to one kept before
    /// it in its shard; 0 turns the filter off (the default: tasks drawn
    /// from one template differ only in their values and are not repeats).
    pub near_duplicates: f64,
    /// Keep only examples in these languages (ISO 639-3 codes such as
    /// `eng`); text whose language cannot be told reliably is kept. Empty
    /// keeps every language.
    pub languages: Vec<String>,
    /// Drop garbled answers: broken or control characters, a character or
    /// word repeated on and on, hardly a letter or digit.
    pub garbled: bool,
}

impl Default for Filters {
    fn default() -> Self {
        Self {
            min_chars: 8,
            max_chars: 16_384,
            dedup: true,
            near_duplicates: 0.0,
            languages: Vec::new(),
            garbled: true,
        }
    }
}

/// One source and its share of the mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceWeight {
    /// `synthetic`, `campaign`, `context_pack`, `workflows`, `feedback` or
    /// `llm`.
    pub source: String,
    #[serde(default = "one")]
    pub weight: f64,
    /// `campaign`: the campaign whose items are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// `context_pack`: the pack whose files are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    /// `llm`: the registry model that writes tasks and answers; `feedback`:
    /// only feedback on this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `llm`: a second model that checks each answer; answers it does not
    /// pass are dropped (`failed_validation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
    /// `llm`: tokens (prompt and completion, every call) the whole run may
    /// spend; shared equally by its shards. Default 200,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_total: Option<u64>,
    /// `llm`: example tasks that new ones are modelled on (default: a
    /// built-in set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_prompts: Option<Vec<String>>,
    /// `llm`: longest answer written, in tokens (16 to 4,096; default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answer_tokens: Option<u32>,
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
pub const SOURCES: [&str; 6] = [
    "synthetic",
    "campaign",
    "context_pack",
    "workflows",
    "feedback",
    "llm",
];

/// The fields each source takes besides `source` and `weight`.
fn fields_of(source: &str) -> &'static [&'static str] {
    match source {
        "campaign" => &["campaign"],
        "context_pack" => &["pack"],
        "feedback" => &["model"],
        "llm" => &[
            "model",
            "validator",
            "max_tokens_total",
            "seed_prompts",
            "max_answer_tokens",
        ],
        _ => &[],
    }
}

impl SourceWeight {
    /// The optional fields this entry sets, by name.
    fn set_fields(&self) -> Vec<&'static str> {
        let pairs = [
            ("campaign", self.campaign.is_some()),
            ("pack", self.pack.is_some()),
            ("model", self.model.is_some()),
            ("validator", self.validator.is_some()),
            ("max_tokens_total", self.max_tokens_total.is_some()),
            ("seed_prompts", self.seed_prompts.is_some()),
            ("max_answer_tokens", self.max_answer_tokens.is_some()),
        ];
        pairs
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| name)
            .collect()
    }

    fn check(&self) -> Result<(), PlanError> {
        let name = self.source.as_str();
        if !SOURCES.contains(&name) {
            return Err(invalid(
                "sources",
                format!(
                    "unknown source {:?}; this build generates from: {}",
                    name.chars().take(64).collect::<String>(),
                    SOURCES.join(", ")
                ),
            ));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(invalid(
                "sources",
                "weights must be finite and not negative",
            ));
        }
        if let Some(extra) = self
            .set_fields()
            .into_iter()
            .find(|field| !fields_of(name).contains(field))
        {
            return Err(invalid(
                "sources",
                format!("{name} takes no {extra:?} field"),
            ));
        }
        let missing = match name {
            "campaign" if self.campaign.is_none() => Some("campaign"),
            "context_pack" if self.pack.is_none() => Some("pack"),
            "llm" if self.model.is_none() => Some("model"),
            _ => None,
        };
        if let Some(field) = missing {
            return Err(invalid(
                "sources",
                format!("{name} needs {field:?}: which one to use"),
            ));
        }
        for id in [&self.campaign, &self.pack, &self.model, &self.validator]
            .into_iter()
            .flatten()
        {
            if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
                return Err(invalid("sources", "ids are 1 to 128 characters"));
            }
        }
        if self
            .max_tokens_total
            .is_some_and(|t| !(1..=100_000_000).contains(&t))
        {
            return Err(invalid(
                "sources",
                "max_tokens_total must be 1 to 100,000,000",
            ));
        }
        if self
            .max_answer_tokens
            .is_some_and(|t| !(16..=4_096).contains(&t))
        {
            return Err(invalid("sources", "max_answer_tokens must be 16 to 4,096"));
        }
        if let Some(seeds) = &self.seed_prompts
            && (seeds.is_empty()
                || seeds.len() > 100
                || seeds.iter().any(|s| s.trim().is_empty() || s.len() > 2_000))
        {
            return Err(invalid(
                "sources",
                "seed_prompts: 1 to 100 prompts of 1 to 2,000 characters",
            ));
        }
        Ok(())
    }
}

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
        if self.shards() > MAX_SHARDS {
            return Err(invalid(
                "shard_size",
                format!(
                    "{} shards of {}: a run has at most {MAX_SHARDS} shards, so shard_size must be at least {}",
                    self.shards(),
                    self.shard_size,
                    self.count.div_ceil(MAX_SHARDS)
                ),
            ));
        }
        if !(0.0..=0.5).contains(&self.eval_fraction) {
            return Err(invalid("eval_fraction", "must be 0 to 0.5"));
        }
        if self.filters.min_chars > self.filters.max_chars {
            return Err(invalid("filters", "min_chars is over max_chars"));
        }
        if !(self.filters.near_duplicates == 0.0
            || (0.5..1.0).contains(&self.filters.near_duplicates))
        {
            return Err(invalid(
                "filters",
                "near_duplicates is 0 (off) or a similarity from 0.5 to under 1",
            ));
        }
        if self.filters.languages.len() > 16 {
            return Err(invalid("filters", "at most 16 languages"));
        }
        if let Some(bad) = self
            .filters
            .languages
            .iter()
            .find(|code| quality::language(code).is_none())
        {
            return Err(invalid(
                "filters",
                format!(
                    "unknown language {:?}; use ISO 639-3 codes such as \"eng\", \"deu\", \"fra\"",
                    bad.chars().take(16).collect::<String>()
                ),
            ));
        }
        if self.sources.is_empty() || self.sources.len() > 16 {
            return Err(invalid("sources", "give 1 to 16 sources"));
        }
        for source in &self.sources {
            source.check()?;
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

    /// What each example of shard `shard` is to be: its split and, for
    /// every source but `llm`, the example itself; the same for the same
    /// plan and inputs, always.
    pub fn draws(&self, shard: u64, inputs: &Inputs) -> Vec<Draw> {
        let total: f64 = self.sources.iter().map(|s| s.weight).sum();
        self.range(shard)
            .map(|index| {
                let mut rng = StdRng::seed_from_u64(mix(self.seed, index));
                let eval = rng.random_bool(self.eval_fraction);
                let source = pick_source(&self.sources, total, &mut rng);
                let what = match &inputs.sources[source] {
                    Input::Ready(source) => What::Example(source.draw(&mut rng)),
                    Input::Llm => What::Ask {
                        source,
                        seed: rng.random(),
                    },
                };
                Draw { eval, what }
            })
            .collect()
    }

    /// Generates shard `shard` of a plan with no `llm` source.
    pub fn generate(&self, shard: u64, inputs: &Inputs) -> Shard {
        let candidates = self
            .draws(shard, inputs)
            .into_iter()
            .map(|draw| match draw.what {
                What::Example(example) => Candidate::Example(draw.eval, example),
                What::Ask { .. } => Candidate::Dropped("no_model".into()),
            });
        self.filter(candidates)
    }

    /// Runs the filters over a shard's examples in order and writes the
    /// ones kept.
    pub fn filter(&self, candidates: impl IntoIterator<Item = Candidate>) -> Shard {
        let filters = &self.filters;
        let languages: Vec<_> = filters
            .languages
            .iter()
            .filter_map(|code| quality::language(code))
            .collect();
        let mut near = (filters.near_duplicates > 0.0)
            .then(|| quality::NearDuplicates::new(filters.near_duplicates));
        let mut out = Shard::default();
        let mut seen = HashSet::new();
        for candidate in candidates {
            let (eval, example) = match candidate {
                Candidate::Example(eval, example) => (eval, example),
                Candidate::Dropped(filter) => {
                    out.drop(&filter);
                    continue;
                }
            };
            let size = example.instruction.len() + example.input.len() + example.output.len();
            let dropped_by = if example.output.trim().is_empty() {
                Some("empty")
            } else if filters.garbled && quality::garbled(&example.output) {
                Some("garbled")
            } else if size < filters.min_chars {
                Some("too_short")
            } else if size > filters.max_chars {
                Some("too_long")
            } else if !languages.is_empty()
                && !quality::in_languages(&text_of(&example), &languages)
            {
                Some("language")
            } else {
                None
            };
            if let Some(filter) = dropped_by {
                out.drop(filter);
                continue;
            }
            let key = dedup_key(&example);
            if filters.dedup && !seen.insert(key) {
                out.drop("duplicate");
                continue;
            }
            if near
                .as_mut()
                .is_some_and(|near| near.check(&text_of(&example)))
            {
                out.drop("near_duplicate");
                continue;
            }
            out.keep(self.format, &example, key, eval);
        }
        out
    }
}

/// Prompt and answer together, as the language and near-duplicate
/// filters read them.
fn text_of(example: &Example) -> String {
    format!(
        "{} {} {}",
        example.instruction, example.input, example.output
    )
}

/// The index of the source example `rng` comes from, by weight.
fn pick_source(sources: &[SourceWeight], total: f64, rng: &mut StdRng) -> usize {
    if sources.len() == 1 {
        return 0;
    }
    let mut at = rng.random::<f64>() * total;
    for (index, source) in sources.iter().enumerate() {
        if at < source.weight {
            return index;
        }
        at -= source.weight;
    }
    // Rounding left `at` just past the last weight.
    sources.iter().rposition(|s| s.weight > 0.0).unwrap_or(0)
}

/// What a run's sources generate from, one per `sources` entry.
pub struct Inputs {
    pub sources: Vec<Input>,
}

impl Inputs {
    /// Synthetic alone: what a plan of only `synthetic` needs.
    pub fn synthetic() -> Self {
        Self {
            sources: vec![Input::Ready(Box::new(sources::Synthetic))],
        }
    }
}

/// One source, ready to draw from or answered by a model.
pub enum Input {
    Ready(Box<dyn Source>),
    /// `llm`: the example is written by a model, asynchronously.
    Llm,
}

/// One example of a shard, before the filters.
pub struct Draw {
    pub eval: bool,
    pub what: What,
}

pub enum What {
    Example(Example),
    /// A model is asked to write it, with this seed; `source` is the
    /// index of the run's `llm` entry.
    Ask {
        source: usize,
        seed: u64,
    },
}

/// An example for the filters, or the reason there is none.
pub enum Candidate {
    Example(bool, Example),
    /// Counted under this filter name (the model's answer failed
    /// validation, the budget ran out, ...).
    Dropped(String),
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
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_shard_is_the_same_bytes_every_time() {
        let plan = plan(5_000, 1_000);
        assert_eq!(
            plan.generate(3, &Inputs::synthetic()),
            plan.generate(3, &Inputs::synthetic())
        );
        assert_ne!(
            plan.generate(3, &Inputs::synthetic()).train,
            plan.generate(2, &Inputs::synthetic()).train
        );
    }

    #[test]
    fn shards_cover_every_index_once_whatever_their_size() {
        let small = plan(2_500, 700);
        assert_eq!(small.shards(), 4);
        assert_eq!(small.range(3), 2_100..2_500);
        let joined: Vec<u8> = (0..small.shards())
            .flat_map(|s| small.generate(s, &Inputs::synthetic()).train)
            .collect();
        let whole = plan(2_500, 2_500).generate(0, &Inputs::synthetic());
        // Same examples; only within-shard dedup may differ at the seams.
        let lines = |bytes: &[u8]| bytes.split(|b| *b == b'\n').count();
        assert!(lines(&joined) >= lines(&whole.train));
    }

    #[test]
    fn every_line_is_json_in_the_chosen_format_and_the_split_holds() {
        let mut plan = plan(2_000, 2_000);
        plan.format = Format::Alpaca;
        let shard = plan.generate(0, &Inputs::synthetic());
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
        let shard = tiny.generate(0, &Inputs::synthetic());
        assert!(shard.dropped.get("too_long").copied().unwrap_or(0) > 0);
        let mut keys = [shard.train_keys.clone(), shard.eval_keys.clone()].concat();
        let kept = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), kept, "a repeat was kept");
    }
}
