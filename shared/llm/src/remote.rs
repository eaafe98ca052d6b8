//! The remote provider: any OpenAI-compatible chat completions server
//! (OpenAI, DeepSeek, vLLM, Ollama, llama.cpp's server, or this project's
//! own `/v1/chat/completions`). Retries 429 and 5xx answers with backoff,
//! honouring `Retry-After`. The API key comes from the environment and is
//! never logged or shown in errors.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatMessage, Completion, FinishReason, GenerationParams, LlmError, TokenSink};

/// Longest wait a `Retry-After` header may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Largest answer accepted (a whole body, or a stream's text).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A client for one model on one server.
#[derive(Clone)]
pub struct RemoteClient {
    http: reqwest::Client,
    endpoint: String,
    /// The endpoint as messages show it: no user info, no query.
    shown: String,
    api_key: Option<String>,
    model: String,
    retries: u32,
    base_backoff: Duration,
}

impl std::fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key here, ever.
        f.debug_struct("RemoteClient")
            .field("endpoint", &self.shown)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl RemoteClient {
    /// `base_url` is the server's OpenAI base (ending in `/v1`); `timeout`
    /// bounds each attempt.
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let endpoint = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        Ok(Self {
            http,
            shown: redact_endpoint(&endpoint),
            endpoint,
            api_key,
            model: model.to_string(),
            retries: 3,
            base_backoff: Duration::from_millis(250),
        })
    }

    /// Sets how many times a 429/5xx/network failure is retried.
    pub fn with_retries(mut self, retries: u32, base_backoff: Duration) -> Self {
        self.retries = retries;
        self.base_backoff = base_backoff;
        self
    }

    pub async fn complete(
        &self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        sink: Option<TokenSink>,
    ) -> Result<Completion, LlmError> {
        let body = self.body(messages, params, sink.is_some());
        let mut attempt = 0;
        loop {
            match self.attempt(&body, sink.as_ref()).await {
                Err(Failure::Retryable { message, wait }) if attempt < self.retries => {
                    attempt += 1;
                    let backoff = self.base_backoff * 2u32.pow(attempt - 1);
                    let wait = wait.unwrap_or(backoff).min(MAX_RETRY_AFTER);
                    tracing::debug!(model = %self.model, attempt, ?wait, %message, "retrying remote model");
                    tokio::time::sleep(wait).await;
                }
                Err(Failure::Retryable { message, .. }) => {
                    return Err(LlmError::Unavailable(message));
                }
                Err(Failure::Final(error)) => return Err(error),
                Ok(completion) => return Ok(completion),
            }
        }
    }

    fn body(&self, messages: &[ChatMessage], params: &GenerationParams, stream: bool) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "seed": params.seed,
            "stream": stream,
        });
        if let Some(p) = params.top_p {
            body["top_p"] = json!(p);
        }
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        let penalties = &params.penalties;
        if let Some(p) = penalties.frequency_penalty {
            body["frequency_penalty"] = json!(p);
        }
        if let Some(p) = penalties.presence_penalty {
            body["presence_penalty"] = json!(p);
        }
        // Not OpenAI's, but vLLM's and llama.cpp's servers read it.
        if let Some(p) = penalties.repetition_penalty {
            body["repetition_penalty"] = json!(p);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn attempt(&self, body: &Value, sink: Option<&TokenSink>) -> Result<Completion, Failure> {
        let mut request = self.http.post(&self.endpoint).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| Failure::Retryable {
            message: format!("{} unreachable: {}", self.shown, without_url(&e)),
            wait: None,
        })?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let wait = retry_after(response.headers());
            return Err(Failure::Retryable {
                message: format!("{} answered {status}", self.shown),
                wait,
            });
        }
        if !status.is_success() {
            return Err(Failure::Final(self.refused(status, response).await));
        }
        match sink {
            Some(sink) => self.read_stream(response, sink).await,
            None => self.read_whole(response).await,
        }
    }

    /// A final refusal: its body goes to the log under a reference, never
    /// to our caller (it can hold anything the upstream chose to say).
    /// Only a complaint about the request itself is the caller's problem;
    /// anything else (bad credentials, unknown model) is ours.
    async fn refused(&self, status: StatusCode, response: reqwest::Response) -> LlmError {
        let reference = uuid::Uuid::now_v7().simple().to_string();
        let body = read_capped(response, 4096).await.unwrap_or_default();
        tracing::warn!(
            endpoint = %self.shown,
            %status,
            reference = %reference,
            body = %String::from_utf8_lossy(&body),
            "model server refused a request"
        );
        let message = format!(
            "{} answered {status} (the server log has its answer under reference {reference})",
            self.shown
        );
        match status {
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => LlmError::Rejected(message),
            _ => LlmError::Unavailable(message),
        }
    }

    async fn read_whole(&self, response: reqwest::Response) -> Result<Completion, Failure> {
        // Content-Length may be absent (chunked) or lie: count as we read.
        let bytes = read_capped(response, MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => self.malformed("answer body too large"),
                ReadError::Broken(message) => Failure::Retryable {
                    message: format!("reading the answer: {message}"),
                    wait: None,
                },
            })?;
        let answer: WholeAnswer =
            serde_json::from_slice(&bytes).map_err(|e| self.malformed(&e.to_string()))?;
        let choice = answer
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| self.malformed("no choices"))?;
        let usage = answer.usage.unwrap_or_default();
        Ok(Completion {
            text: choice.message.content.unwrap_or_default(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            finish_reason: finish_reason(choice.finish_reason.as_deref()),
        })
    }

    async fn read_stream(
        &self,
        response: reqwest::Response,
        sink: &TokenSink,
    ) -> Result<Completion, Failure> {
        let mut events = SseLines::default();
        let mut stream = response.bytes_stream();
        let mut completion = Completion {
            text: String::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            finish_reason: FinishReason::Stop,
        };
        let mut chunks = 0u32;
        let mut usage_seen = false;
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(|e| Failure::Retryable {
                message: format!("stream broke: {}", without_url(&e)),
                wait: None,
            })?;
            for data in events.push(&bytes) {
                if data == "[DONE]" {
                    if !usage_seen {
                        completion.completion_tokens = chunks;
                    }
                    return Ok(completion);
                }
                let chunk: StreamChunk =
                    serde_json::from_str(&data).map_err(|e| self.malformed(&e.to_string()))?;
                if let Some(usage) = chunk.usage {
                    completion.prompt_tokens = usage.prompt_tokens;
                    completion.completion_tokens = usage.completion_tokens;
                    usage_seen = true;
                }
                for choice in chunk.choices {
                    if let Some(piece) = choice.delta.content.filter(|p| !p.is_empty()) {
                        if completion.text.len() + piece.len() > MAX_BODY_BYTES {
                            return Err(self.malformed("answer too large"));
                        }
                        chunks += 1;
                        completion.text.push_str(&piece);
                        let _ = sink.send(piece);
                    }
                    if let Some(reason) = choice.finish_reason {
                        completion.finish_reason = finish_reason(Some(&reason));
                    }
                }
            }
            if events.pending() > MAX_BODY_BYTES {
                return Err(self.malformed("stream event too large"));
            }
        }
        Err(Failure::Retryable {
            message: format!("{} ended the stream without [DONE]", self.shown),
            wait: None,
        })
    }

    fn malformed(&self, why: &str) -> Failure {
        Failure::Final(LlmError::Unavailable(format!(
            "{} sent a malformed answer: {why}",
            self.shown
        )))
    }
}

enum ReadError {
    TooLarge,
    Broken(String),
}

/// Reads a body, refusing it once it passes `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    if response.content_length().unwrap_or(0) as usize > cap {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReadError::Broken(without_url(&e)))?;
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `endpoint` without user info or query, for messages and logs.
pub fn redact_endpoint(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.to_string()
        }
        Err(_) => "<invalid URL>".into(),
    }
}

enum Failure {
    Retryable {
        message: String,
        wait: Option<Duration>,
    },
    Final(LlmError),
}

/// reqwest errors print the URL; ours never carries a key, but keep
/// messages short and uniform.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "");
    }
    if error.is_timeout() {
        return "timed out".into();
    }
    text.trim()
        .trim_start_matches("for url ()")
        .trim()
        .to_string()
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
}

fn finish_reason(raw: Option<&str>) -> FinishReason {
    match raw {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// Splits a server-sent event stream into `data:` payloads.
#[derive(Default)]
struct SseLines {
    buffer: String,
}

impl SseLines {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(data) = line.strip_prefix("data:") {
                out.push(data.trim_start().to_string());
            }
        }
        out
    }

    fn pending(&self) -> usize {
        self.buffer.len()
    }
}

#[derive(Deserialize)]
struct WholeAnswer {
    choices: Vec<WholeChoice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WholeChoice {
    message: AnswerMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<String>,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_survive_arbitrary_splits() {
        let text = "data: {\"a\":1}\n\n: comment\ndata: [DONE]\n\n";
        for cut in 0..text.len() {
            let mut lines = SseLines::default();
            let mut out = lines.push(&text.as_bytes()[..cut]);
            out.extend(lines.push(&text.as_bytes()[cut..]));
            assert_eq!(
                out,
                vec!["{\"a\":1}".to_string(), "[DONE]".to_string()],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn endpoints_are_shown_without_credentials() {
        assert_eq!(
            redact_endpoint("https://user:s3cret@llm.example/v1/chat/completions?key=abc"),
            "https://llm.example/v1/chat/completions"
        );
        assert_eq!(
            redact_endpoint("http://127.0.0.1:9/v1"),
            "http://127.0.0.1:9/v1"
        );
        assert_eq!(redact_endpoint("not a url"), "<invalid URL>");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
