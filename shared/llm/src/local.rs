//! The local provider: a llama-architecture GGUF run on the CPU.
//!
//! The weights load once (memory-mapped); every session clones the model,
//! which shares the weights and owns only its KV cache, so several conversations run
//! against one loaded model at once (bounded by the model's
//! `max_concurrency`).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::Context;
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
    /// Sessions decoding right now (never more than `sessions` allows).
    decoding: Arc<AtomicUsize>,
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
        let (map, content) = llama::map_gguf(path)?;
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
        let weights = llama::Weights::from_gguf(&content, &map, context_window, kernels)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(Self {
            weights: Arc::new(weights),
            adapter: None,
            tokenizer,
            template,
            end_of_turn,
            context_window,
            sessions: Arc::new(Semaphore::new(sessions.max(1))),
            decoding: Arc::default(),
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
            decoding: Arc::default(),
            ..self.clone()
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The matrix kernels this model runs on (see [`llama::Kernels`]).
    pub fn kernels(&self) -> String {
        self.weights.kernels()
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

    /// Sessions decoding at this moment.
    pub fn decoding(&self) -> usize {
        self.decoding.load(Ordering::SeqCst)
    }

    /// Answers a conversation, streaming text pieces into `sink` as they are
    /// generated. Waits for a free session first.
    ///
    /// Dropping the returned future (the client went away, a timeout fired)
    /// stops the decoding within one token; the session stays taken until
    /// then, so the model never decodes more conversations than its
    /// `max_concurrency`.
    pub async fn complete(
        self: &Arc<Self>,
        messages: &[ChatMessage],
        params: &GenerationParams,
        sink: Option<TokenSink>,
    ) -> Result<Completion, LlmError> {
        let prompt = self.encode_chat(messages)?;
        let permit = self
            .sessions
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LlmError::Unavailable("model is shutting down".into()))?;
        let model = self.clone();
        let params = params.clone();
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            model.decoding.fetch_add(1, Ordering::SeqCst);
            let result = model.generate_until(&prompt, &params, sink, &cancelled);
            model.decoding.fetch_sub(1, Ordering::SeqCst);
            result
        })
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
        self.generate_until(prompt, params, sink, &AtomicBool::new(false))
    }

    /// Generates on the calling thread until done or `cancelled` is set.
    fn generate_until(
        &self,
        prompt: &[u32],
        params: &GenerationParams,
        sink: Option<TokenSink>,
        cancelled: &AtomicBool,
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
        .run(prompt, cancelled)
        .map_err(|e| LlmError::Unavailable(format!("local generation failed: {e:#}")))
    }
}

/// Sets its flag when dropped: tells a blocking generation that nobody
/// waits for it any more.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
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
    /// Every token fed to the model so far (prompt and answer), for the
    /// repetition penalties.
    history: Vec<u32>,
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
            history: Vec::new(),
            text: String::new(),
            sent: 0,
        }
    }

    fn run(
        mut self,
        prompt: &[u32],
        cancelled: &AtomicBool,
    ) -> anyhow::Result<(Completion, Timings)> {
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
            // The caller is gone (disconnect, timeout), or a streaming
            // client closed its end: stop spending the core on it.
            if cancelled.load(Ordering::Relaxed)
                || self.sink.as_ref().is_some_and(|s| s.is_closed())
            {
                anyhow::bail!("cancelled: nobody waits for the answer");
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
        let penalties = &self.params.penalties;
        if !penalties.active() {
            return Ok(self.sampler.sample(&logits)?);
        }
        self.history.extend_from_slice(tokens);
        let mut values = logits.to_vec1::<f32>()?;
        penalties.apply(&mut values, &self.history);
        let logits = candle_core::Tensor::new(values, logits.device())?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Watches the decoding count for `window`, returning its peak.
    async fn peak_over(model: &LocalModel, window: Duration) -> usize {
        let mut peak = 0;
        let until = Instant::now() + window;
        while Instant::now() < until {
            peak = peak.max(model.decoding());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        peak
    }

    /// 20 streaming clients on a model with 2 sessions. The two being
    /// answered disconnect: their decoding stops and two waiting clients
    /// take the sessions, never more than 2 decoding at once. Then everyone
    /// disconnects: decoding stops within a token instead of running on to
    /// max_tokens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_generations_stop_and_never_exceed_the_session_limit() {
        let model =
            Arc::new(LocalModel::load(&crate::test_gguf(), 2, llama::Kernels::Native).unwrap());
        let params = GenerationParams {
            max_tokens: 2_000,
            ignore_eos: true,
            ..GenerationParams::default()
        };
        let messages = [ChatMessage::new("user", "Count from one to a thousand.")];
        let mut clients = Vec::new();
        for _ in 0..20 {
            let (sink, pieces) = tokio::sync::mpsc::unbounded_channel();
            let (model, params, messages) = (model.clone(), params.clone(), messages.clone());
            let task =
                tokio::spawn(async move { model.complete(&messages, &params, Some(sink)).await });
            clients.push((task, Some(pieces)));
        }
        assert_eq!(peak_over(&model, Duration::from_secs(3)).await, 2);
        // The clients being answered are those that have received text.
        let mut answered = 0;
        for (task, pieces) in &mut clients {
            if pieces.as_mut().is_some_and(|p| p.try_recv().is_ok()) {
                task.abort();
                *pieces = None;
                answered += 1;
            }
        }
        assert_eq!(answered, 2, "two clients were being answered");
        let peak = peak_over(&model, Duration::from_secs(3)).await;
        assert!(
            (1..=2).contains(&peak),
            "waiting clients took over the sessions, never more than two: {peak}"
        );
        // Everyone leaves. Each session stops at its next token; running
        // on to max_tokens would take 2,000 tokens (over 15 s here). The
        // bound is loose because a loaded CI machine can stall one token.
        for (task, pieces) in &mut clients {
            task.abort();
            *pieces = None;
        }
        let left = Instant::now();
        while model.decoding() > 0 {
            assert!(
                left.elapsed() < Duration::from_secs(5),
                "decoding went on after every client left"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            peak_over(&model, Duration::from_millis(300)).await,
            0,
            "no abandoned request started decoding"
        );
    }
}
