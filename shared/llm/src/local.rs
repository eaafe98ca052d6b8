//! The local provider: a llama-architecture GGUF run with candle on the CPU.
//!
//! The weights load once; every session clones the model, which shares the
//! weight tensors and owns only its KV cache, so several conversations run
//! against one loaded model at once (bounded by the model's
//! `max_concurrency`).

use std::{
    io::Cursor,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;
use tokio::sync::Semaphore;

use super::{
    ChatMessage, Completion, FinishReason, GenerationParams, LlmError, TokenSink,
    chat_template::ChatTemplate,
    gguf_tokenizer, llama,
    lora::{AdapterWeights, LoadedAdapter},
};

/// Longest context a session may use, whatever the model was trained on
/// (bounds the rotary tables and per-session KV caches).
const MAX_CONTEXT: usize = 4_096;

/// One loaded model, shared by every session; with an adapter, the same
/// base weights plus a LoRA adapter on them.
#[derive(Clone)]
pub struct LocalModel {
    weights: Arc<llama::Weights>,
    adapter: Option<Arc<LoadedAdapter>>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    end_of_turn: Vec<u32>,
    context_window: usize,
    sessions: Arc<Semaphore>,
    path: PathBuf,
}

/// Timings of one generation, for benchmarks and logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generated_tokens: usize,
    pub decode_seconds: f64,
}

impl LocalModel {
    /// Loads a GGUF file. `sessions` bounds how many conversations run at
    /// once.
    pub fn load(path: &Path, sessions: usize, kernels: llama::Kernels) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read model weights {}", path.display()))?;
        let mut reader = Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut reader)
            .with_context(|| format!("{} is not a GGUF file", path.display()))?;
        let tokenizer = gguf_tokenizer::from_gguf(&content)?;
        let end_of_turn = gguf_tokenizer::end_of_turn_ids(&content, &tokenizer);
        let template = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        let template = ChatTemplate::new(template)?;
        let trained_context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(2_048) as usize;
        let context_window = trained_context.min(MAX_CONTEXT);
        let weights = llama::Weights::from_gguf(&content, &mut reader, context_window, kernels)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(Self {
            weights: Arc::new(weights),
            adapter: None,
            tokenizer,
            template,
            end_of_turn,
            context_window,
            sessions: Arc::new(Semaphore::new(sessions.max(1))),
            path: path.to_path_buf(),
        })
    }

    /// This model with the PEFT LoRA adapter in `dir` on it (sharing the
    /// base weights, which stay loaded once). `sessions` bounds the new
    /// model's conversations.
    pub fn with_adapter(&self, dir: &Path, sessions: usize) -> anyhow::Result<Self> {
        let weights = AdapterWeights::load(dir, &self.weights.config())?;
        let adapter = LoadedAdapter::new(&weights)?;
        Ok(Self {
            adapter: Some(Arc::new(adapter)),
            sessions: Arc::new(Semaphore::new(sessions.max(1))),
            ..self.clone()
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn context_window(&self) -> usize {
        self.context_window
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt token ids for a conversation.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LlmError> {
        let text = self
            .template
            .render(messages)
            .map_err(|e| LlmError::Rejected(format!("{e:#}")))?;
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| LlmError::Rejected(format!("tokenizing the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Answers a conversation, streaming text pieces into `sink` as they are
    /// generated. Waits for a free session first.
    pub async fn complete(
        self: &Arc<Self>,
        messages: &[ChatMessage],
        params: &GenerationParams,
        sink: Option<TokenSink>,
    ) -> Result<Completion, LlmError> {
        let prompt = self.encode_chat(messages)?;
        let _permit = self
            .sessions
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LlmError::Unavailable("model is shutting down".into()))?;
        let model = self.clone();
        let params = params.clone();
        tokio::task::spawn_blocking(move || model.generate(&prompt, &params, sink))
            .await
            .map_err(|e| LlmError::Unavailable(format!("generation task failed: {e}")))?
            .map(|(completion, _)| completion)
    }

    /// Generates from prompt token ids on the calling thread.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerationParams,
        sink: Option<TokenSink>,
    ) -> Result<(Completion, Timings), LlmError> {
        if prompt.is_empty() {
            return Err(LlmError::Rejected("empty prompt".into()));
        }
        if prompt.len() + params.max_tokens as usize > self.context_window {
            return Err(LlmError::Rejected(format!(
                "prompt of {} tokens plus max_tokens {} exceeds the context window of {}",
                prompt.len(),
                params.max_tokens,
                self.context_window
            )));
        }
        Session::new(
            self,
            params,
            sink,
            prompt.len() + params.max_tokens as usize,
        )
        .run(prompt)
        .map_err(|e| LlmError::Unavailable(format!("local generation failed: {e:#}")))
    }
}

/// One conversation's generation state: its own KV cache (a clone of the
/// model shares the weights), sampler and text so far.
struct Session<'a> {
    model: &'a LocalModel,
    state: llama::Session,
    sampler: LogitsProcessor,
    params: &'a GenerationParams,
    sink: Option<TokenSink>,
    generated: Vec<u32>,
    text: String,
    /// Bytes of `text` already sent to the sink.
    sent: usize,
}

impl<'a> Session<'a> {
    /// A session holding up to `positions` tokens (prompt plus answer).
    fn new(
        model: &'a LocalModel,
        params: &'a GenerationParams,
        sink: Option<TokenSink>,
        positions: usize,
    ) -> Self {
        let sampling = match (params.temperature, params.top_p) {
            (t, _) if t <= 0.0 => Sampling::ArgMax,
            (temperature, None) => Sampling::All { temperature },
            (temperature, Some(p)) => Sampling::TopP { p, temperature },
        };
        Self {
            model,
            state: llama::Session::new(model.weights.clone(), model.adapter.clone(), positions),
            sampler: LogitsProcessor::from_sampling(params.seed, sampling),
            params,
            sink,
            generated: Vec::new(),
            text: String::new(),
            sent: 0,
        }
    }

    fn run(mut self, prompt: &[u32]) -> anyhow::Result<(Completion, Timings)> {
        let mut timings = Timings {
            prompt_tokens: prompt.len(),
            ..Timings::default()
        };
        let started = Instant::now();
        let mut next = self.step(prompt, 0)?;
        timings.prompt_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let finish = loop {
            if !self.params.ignore_eos && self.model.end_of_turn.contains(&next) {
                break FinishReason::Stop;
            }
            self.generated.push(next);
            if self.extend_text()? {
                break FinishReason::Stop;
            }
            if self.generated.len() >= self.params.max_tokens as usize {
                break FinishReason::Length;
            }
            let position = prompt.len() + self.generated.len() - 1;
            next = self.step(&[next], position)?;
        };
        timings.generated_tokens = self.generated.len();
        timings.decode_seconds = started.elapsed().as_secs_f64();
        self.flush(self.text.len());
        let completion = Completion {
            text: self.text,
            prompt_tokens: prompt.len() as u32,
            completion_tokens: self.generated.len() as u32,
            finish_reason: finish,
        };
        Ok((completion, timings))
    }

    /// Runs the model over `tokens` at `position` and samples the next token.
    fn step(&mut self, tokens: &[u32], position: usize) -> anyhow::Result<u32> {
        let logits = self.state.forward(tokens, position)?;
        Ok(self.sampler.sample(&logits)?)
    }

    /// Re-decodes the generated tokens (so multi-byte characters split over
    /// tokens come out whole), cuts at a stop string, and streams what can
    /// no longer turn into one. True when a stop string was found.
    fn extend_text(&mut self) -> anyhow::Result<bool> {
        self.text = self
            .model
            .tokenizer
            .decode(&self.generated, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        if let Some(cut) = self
            .params
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            return Ok(true);
        }
        // Hold back a tail that could still become a stop string; a
        // replacement character means a multi-byte character is unfinished.
        let hold = self
            .params
            .stop
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold);
        if let Some(partial) = self.text.find('\u{fffd}') {
            safe = safe.min(partial);
        }
        self.flush(safe);
        Ok(false)
    }

    fn flush(&mut self, upto: usize) {
        let mut upto = upto.min(self.text.len());
        while !self.text.is_char_boundary(upto) {
            upto -= 1;
        }
        if upto > self.sent {
            if let Some(sink) = &self.sink {
                let _ = sink.send(self.text[self.sent..upto].to_string());
            }
            self.sent = upto;
        }
    }
}
