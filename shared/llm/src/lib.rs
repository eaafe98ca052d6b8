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
