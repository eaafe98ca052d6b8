//! The `llm` source: self-instruct with a registry model. For each example
//! the model is shown a few seed tasks and writes a new one, then answers
//! it; a second model, when named, judges the answer and only passed ones
//! are kept. Each shard spends at most its share of the run's token budget.
//!
//! Model output is not reproducible the way a seeded generator is (remote
//! models sample as they like), so a shard regenerated after a crash may
//! differ; the shard is still stored once, by whichever run of it finishes
//! first, so the dataset has no gap and no repeat.

use std::time::Instant;

use orchestrator_llm::{ChatMessage, GenerationParams};
use orchestrator_models::Models;
use orchestrator_workflow::judge;
use rand::{SeedableRng, rngs::StdRng, seq::IndexedRandom};

use crate::{Candidate, Example, SourceWeight};

/// A run's token budget when its `llm` entry sets none.
pub const DEFAULT_MAX_TOKENS_TOTAL: u64 = 200_000;
/// Seed tasks shown to the model for each new one.
const SHOWN: usize = 3;

/// Seed tasks when a run gives none: short, checkable, varied.
const SEED_PROMPTS: [&str; 12] = [
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that returns the largest of three numbers.",
    "List three ways to reduce memory use in a web server.",
    "Summarize the water cycle for a ten-year-old.",
    "Convert 72 degrees Fahrenheit to Celsius and show the formula.",
    "Give a SQL query that counts orders per customer.",
    "What is the difference between a process and a thread?",
    "Write a haiku about autumn rain.",
    "Name the planets of the solar system in order from the sun.",
    "Rewrite this sentence in the passive voice: The cat chased the mouse.",
    "Explain what a hash table is and when to use one.",
    "Give two arguments for and two against remote work.",
];

/// Tokens a shard may still spend, and what it spent.
#[derive(Debug, Clone)]
pub struct Budget {
    pub left: u64,
    pub spent: u64,
    pub seconds: f64,
}

impl Budget {
    /// Shard `shards`' equal share of `entry`'s budget.
    pub fn share(entry: &SourceWeight, shards: u64) -> Self {
        let total = entry.max_tokens_total.unwrap_or(DEFAULT_MAX_TOKENS_TOTAL);
        Self {
            left: (total / shards.max(1)).max(1),
            spent: 0,
            seconds: 0.0,
        }
    }

    fn charge(&mut self, tokens: u64) {
        self.spent += tokens;
        self.left = self.left.saturating_sub(tokens);
    }
}

/// Writes one example (of the eval split when `eval`) with `entry`'s model
/// and validator, or says why there is none.
pub async fn write(
    models: &Models,
    entry: &SourceWeight,
    seed: u64,
    eval: bool,
    budget: &mut Budget,
) -> Candidate {
    if budget.left == 0 {
        return Candidate::Dropped("budget".into());
    }
    let started = Instant::now();
    let result = self_instruct(models, entry, seed, eval, budget).await;
    budget.seconds += started.elapsed().as_secs_f64();
    match result {
        Ok(candidate) => candidate,
        Err(err) => {
            tracing::warn!(error = %err, "llm source: a model call failed");
            Candidate::Dropped("model_error".into())
        }
    }
}

async fn self_instruct(
    models: &Models,
    entry: &SourceWeight,
    seed: u64,
    eval: bool,
    budget: &mut Budget,
) -> anyhow::Result<Candidate> {
    let model = entry.model.as_deref().expect("checked: llm names a model");
    let mut rng = StdRng::seed_from_u64(seed);
    let pool: Vec<&str> = match &entry.seed_prompts {
        Some(seeds) => seeds.iter().map(String::as_str).collect(),
        None => SEED_PROMPTS.to_vec(),
    };
    let shown: Vec<&&str> = pool.choose_multiple(&mut rng, SHOWN).collect();
    let examples = shown
        .iter()
        .enumerate()
        .map(|(n, task)| format!("{}. {task}", n + 1))
        .collect::<Vec<_>>()
        .join("\n");
    let ask = vec![
        ChatMessage::new(
            "system",
            "You write tasks for training an assistant. Reply with the new task only.",
        ),
        ChatMessage::new(
            "user",
            format!("Example tasks:\n{examples}\n\nWrite one new task of the same kind."),
        ),
    ];
    let task = call(models, model, &ask, 96, 0.8, seed, budget).await?;
    let task = first_paragraph(&task);
    if task.len() < 8 {
        return Ok(Candidate::Dropped("empty".into()));
    }
    let answer = call(
        models,
        model,
        &[ChatMessage::new("user", task.clone())],
        entry.max_answer_tokens.unwrap_or(256),
        0.0,
        seed,
        budget,
    )
    .await?;
    if judge::degenerate(&answer).is_some() {
        return Ok(Candidate::Dropped("garbled".into()));
    }
    if let Some(validator) = &entry.validator {
        let verdict = call(
            models,
            validator,
            &judge::judge_prompt(&task, &answer),
            64,
            0.0,
            seed,
            budget,
        )
        .await?;
        if !judge::parse_verdict(&verdict).pass {
            return Ok(Candidate::Dropped("failed_validation".into()));
        }
    }
    Ok(Candidate::Example(
        eval,
        Example {
            source: "llm".into(),
            family: "self_instruct".into(),
            instruction: task,
            input: String::new(),
            output: answer.trim().to_string(),
        },
    ))
}

/// One completion, charged to the budget; capped so a call never spends
/// more than is left.
async fn call(
    models: &Models,
    model: &str,
    messages: &[ChatMessage],
    max_tokens: u32,
    temperature: f64,
    seed: u64,
    budget: &mut Budget,
) -> anyhow::Result<String> {
    let params = GenerationParams {
        max_tokens: max_tokens
            .min(budget.left.min(u32::MAX as u64) as u32)
            .max(1),
        temperature,
        seed,
        ..GenerationParams::default()
    };
    let answer = models.complete(model, messages, &params, None).await?;
    let completion = answer.completion;
    budget.charge(completion.prompt_tokens as u64 + completion.completion_tokens as u64);
    Ok(completion.text)
}

/// A model's task up to its first blank line, without list numbering.
fn first_paragraph(text: &str) -> String {
    let paragraph = text.trim().split("\n\n").next().unwrap_or_default();
    paragraph
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .trim()
        .chars()
        .take(1_000)
        .collect()
}
