//! Language-model providers: the local one (candle, quantized GGUF weights
//! loaded once and shared by every session) and the remote one (any
//! OpenAI-compatible chat completions server). Both take the same request
//! and give the same answer, so the scheduler can put any model on any task.
//! LoRA adapters ([`lora`]) load onto local models; the trainer reuses the
//! model's shape, tokenizer and chat template from here.
//!
//! It knows no queue, store, registry or workflow: it turns a request into
//! tokens and nothing else.

pub mod chat_template;
pub mod gguf_tokenizer;
pub mod llama;
mod llama_config;
pub use llama::Kernels;
pub mod local;
pub mod lora;
pub mod quant;
pub mod remote;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

pub use llama::Config as LlamaConfig;
pub use local::LocalModel;
pub use remote::RemoteClient;

/// Longest message text a request may carry, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Most messages in one conversation.
pub const MAX_MESSAGES: usize = 256;
/// Most tokens one answer may ask for.
pub const MAX_NEW_TOKENS: u32 = 4_096;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub max_tokens: u32,
    /// 0 picks the most likely token every time (deterministic).
    pub temperature: f64,
    pub top_p: Option<f64>,
    /// Generation ends before the first of these strings.
    pub stop: Vec<String>,
    pub seed: u64,
    /// Keep generating past the end-of-turn token (benchmarks only).
    pub ignore_eos: bool,
    /// Repetition penalties; unset ones take the model's defaults.
    pub penalties: Penalties,
}

/// Penalties on tokens the conversation already holds, as llama.cpp and
/// OpenAI define them. Small models loop without them: SmolLM2 at
/// temperature 0 repeats its first line until max_tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Penalties {
    /// llama.cpp's `repeat_penalty`: a seen token's logit is divided by it
    /// (multiplied when negative). 1 is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// OpenAI's: subtracted once per occurrence of a token. 0 is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// OpenAI's: subtracted once from every token that occurred. 0 is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// How many of the latest tokens (prompt and answer) are looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_last_n: Option<u32>,
}

/// Most tokens a penalty window may span.
pub const MAX_REPEAT_LAST_N: u32 = 4_096;

impl Penalties {
    /// These penalties, with unset ones taken from `defaults`.
    pub fn or(self, defaults: Penalties) -> Penalties {
        Penalties {
            repetition_penalty: self.repetition_penalty.or(defaults.repetition_penalty),
            frequency_penalty: self.frequency_penalty.or(defaults.frequency_penalty),
            presence_penalty: self.presence_penalty.or(defaults.presence_penalty),
            repeat_last_n: self.repeat_last_n.or(defaults.repeat_last_n),
        }
    }

    /// Checks the ranges llama.cpp and OpenAI accept.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = self.repetition_penalty
            && !(0.5..=2.0).contains(&p)
        {
            return Err("repetition_penalty must be 0.5 to 2".into());
        }
        for (name, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
                return Err(format!("{name} must be -2 to 2"));
            }
        }
        if self.repeat_last_n.is_some_and(|n| n > MAX_REPEAT_LAST_N) {
            return Err(format!("repeat_last_n must be at most {MAX_REPEAT_LAST_N}"));
        }
        Ok(())
    }

    /// Whether any penalty is in effect.
    pub fn active(&self) -> bool {
        self.repetition_penalty.is_some_and(|p| p != 1.0)
            || self.frequency_penalty.is_some_and(|p| p != 0.0)
            || self.presence_penalty.is_some_and(|p| p != 0.0)
    }

    /// Applies the penalties to `logits` for the tokens in `history`'s
    /// window.
    pub fn apply(&self, logits: &mut [f32], history: &[u32]) {
        let window = self.repeat_last_n.unwrap_or(64) as usize;
        let recent = &history[history.len().saturating_sub(window)..];
        let mut counts: std::collections::HashMap<u32, u32> = Default::default();
        for &token in recent {
            *counts.entry(token).or_default() += 1;
        }
        let repetition = self.repetition_penalty.unwrap_or(1.0);
        let frequency = self.frequency_penalty.unwrap_or(0.0);
        let presence = self.presence_penalty.unwrap_or(0.0);
        for (token, count) in counts {
            let Some(logit) = logits.get_mut(token as usize) else {
                continue;
            };
            *logit = if *logit > 0.0 {
                *logit / repetition
            } else {
                *logit * repetition
            };
            *logit -= count as f32 * frequency + presence;
        }
    }
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            stop: Vec::new(),
            seed: 299_792_458,
            ignore_eos: false,
            penalties: Penalties::default(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// A finished answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
}

/// Receives generated text piece by piece while a completion runs.
pub type TokenSink = mpsc::UnboundedSender<String>;

/// Why a completion failed, split by what the caller should do next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The request itself is wrong (too long, bad parameters): retrying or
    /// another model of the same kind will not help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The model could not answer now (down, overloaded, timed out, weights
    /// missing): another attempt or another model may.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Checks a conversation before it reaches a model.
pub fn check_messages(messages: &[ChatMessage]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("messages must not be empty".into());
    }
    if messages.len() > MAX_MESSAGES {
        return Err(format!("at most {MAX_MESSAGES} messages"));
    }
    for message in messages {
        if !matches!(message.role.as_str(), "system" | "user" | "assistant") {
            return Err(format!(
                "message role must be system, user or assistant, not {:?}",
                message.role
            ));
        }
        if message.content.len() > MAX_MESSAGE_BYTES {
            return Err(format!("message content is over {MAX_MESSAGE_BYTES} bytes"));
        }
    }
    Ok(())
}

/// Checks sampling parameters.
pub fn check_params(params: &GenerationParams) -> Result<(), String> {
    if params.max_tokens == 0 || params.max_tokens > MAX_NEW_TOKENS {
        return Err(format!("max_tokens must be 1 to {MAX_NEW_TOKENS}"));
    }
    if !(0.0..=2.0).contains(&params.temperature) {
        return Err("temperature must be 0 to 2".into());
    }
    if let Some(p) = params.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err("top_p must be above 0 and at most 1".into());
    }
    params.penalties.check()?;
    if params.stop.len() > 4 || params.stop.iter().any(|s| s.is_empty() || s.len() > 64) {
        return Err("stop: at most 4 strings of 1 to 64 bytes".into());
    }
    Ok(())
}

/// The SmolLM2 GGUF the unit tests (here and in the trainer crate) run: under `ORCH_TEST_MODELS_DIR`, else
/// `ORCH_MODELS_DIR`, else the repository's `models/`; fails loudly when
/// it is missing.
#[doc(hidden)]
pub fn test_gguf() -> std::path::PathBuf {
    let dir = std::env::var_os("ORCH_TEST_MODELS_DIR")
        .or_else(|| std::env::var_os("ORCH_MODELS_DIR"))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let path = dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run deploy/scripts/fetch-models.sh or set ORCH_MODELS_DIR",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_conversations_are_refused() {
        assert!(check_messages(&[]).is_err());
        assert!(check_messages(&[ChatMessage::new("tool", "x")]).is_err());
        let huge = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(check_messages(&[ChatMessage::new("user", huge)]).is_err());
        assert!(check_messages(&[ChatMessage::new("user", "hi")]).is_ok());
    }

    #[test]
    fn penalties_follow_llama_cpp_and_openai() {
        let mut logits = vec![2.0, -2.0, 1.0, 0.5];
        let history = [0, 1, 0, 3];
        Penalties {
            repetition_penalty: Some(2.0),
            frequency_penalty: Some(0.1),
            presence_penalty: Some(0.5),
            repeat_last_n: Some(3),
        }
        .apply(&mut logits, &history);
        // Window [1, 0, 3]: token 0 once, 1 once, 3 once; token 2 unseen.
        assert_eq!(
            logits,
            vec![2.0 / 2.0 - 0.6, -2.0 * 2.0 - 0.6, 1.0, 0.5 / 2.0 - 0.6]
        );
        let unset = Penalties::default();
        assert!(!unset.active());
        let model = Penalties {
            repetition_penalty: Some(1.1),
            ..unset
        };
        let asked = Penalties {
            repetition_penalty: Some(1.0),
            ..unset
        };
        assert_eq!(unset.or(model).repetition_penalty, Some(1.1));
        assert_eq!(asked.or(model).repetition_penalty, Some(1.0), "asked wins");
        for bad in [
            Penalties {
                repetition_penalty: Some(0.0),
                ..unset
            },
            Penalties {
                frequency_penalty: Some(2.5),
                ..unset
            },
            Penalties {
                presence_penalty: Some(-3.0),
                ..unset
            },
            Penalties {
                repeat_last_n: Some(MAX_REPEAT_LAST_N + 1),
                ..unset
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_params_are_refused() {
        let ok = GenerationParams::default();
        assert!(check_params(&ok).is_ok());
        for bad in [
            GenerationParams {
                max_tokens: 0,
                ..ok.clone()
            },
            GenerationParams {
                temperature: 3.0,
                ..ok.clone()
            },
            GenerationParams {
                top_p: Some(0.0),
                ..ok.clone()
            },
            GenerationParams {
                stop: vec![String::new()],
                ..ok.clone()
            },
        ] {
            assert!(check_params(&bad).is_err(), "{bad:?}");
        }
    }
}
