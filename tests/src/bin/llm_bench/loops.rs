//! How often the local model loops, with and without a repetition penalty:
//! 20 fixed prompts of the kinds workflows send, greedy decoding, each
//! answer judged by the same check the workflow executor applies.

use std::{path::Path, sync::Arc};

use orchestrator_llm::{ChatMessage, GenerationParams, Kernels, LocalModel, Penalties};
use orchestrator_workflow::judge;
use serde_json::json;

const PROMPTS: [&str; 20] = [
    "Tabs versus spaces: which should a new Rust project use, and why?",
    "Summarize the benefits of unit testing in three sentences.",
    "Explain what a job queue is to a new developer.",
    "List five things to check before deploying a web service.",
    "Write a short story about a dragon who learns to paint.",
    "What is the difference between a process and a thread?",
    "Give advice to someone learning to cook.",
    "Describe the water cycle.",
    "Why do databases use indexes?",
    "Write a haiku about autumn, then explain it.",
    "Compare SQLite and PostgreSQL for a small web app.",
    "What are the pros and cons of working from home?",
    "Explain recursion with an example.",
    "Plan a one-day trip to a city you like.",
    "How does a hash map work?",
    "Write a product description for a reusable water bottle.",
    "What should a good README contain?",
    "Explain why the sky is blue.",
    "Suggest names for a coffee shop and say why each fits.",
    "Describe how to review a pull request well.",
];

pub fn run(path: &Path, penalties: &[f32], tokens: u32) -> anyhow::Result<()> {
    let model = Arc::new(LocalModel::load(path, 1, Kernels::default())?);
    for &penalty in penalties {
        let params = GenerationParams {
            max_tokens: tokens,
            penalties: Penalties {
                repetition_penalty: Some(penalty),
                repeat_last_n: Some(64),
                ..Penalties::default()
            },
            ..GenerationParams::default()
        };
        let mut looped = 0;
        let mut words = 0;
        for prompt in PROMPTS {
            let ids = model.encode_chat(&[ChatMessage::new("user", prompt)])?;
            let (completion, _) = model.generate(&ids, &params, None)?;
            words += completion.text.split_whitespace().count();
            if judge::degenerate(&completion.text).is_some() {
                looped += 1;
            }
        }
        println!(
            "{}",
            json!({
                "bench": "loops",
                "repetition_penalty": (f64::from(penalty) * 1000.0).round() / 1000.0,
                "prompts": PROMPTS.len(),
                "looped": looped, "loop_share": looped as f64 / PROMPTS.len() as f64,
                "mean_words": words / PROMPTS.len(),
            })
        );
    }
    Ok(())
}
