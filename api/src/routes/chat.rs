//! `POST /v1/chat/completions`: the registry's models behind the OpenAI
//! chat completions protocol (plain JSON or server-sent events), so any
//! OpenAI client can use the fleet.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::State,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use orchestrator_core::now_ms;
use orchestrator_llm::{self as llm, ChatMessage, GenerationParams, LlmError, Penalties};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody, shown},
    extract::ApiJson,
    state::AppState,
};

/// The OpenAI request fields this server honours. Other fields OpenAI
/// clients send (user, logit_bias, ...) are accepted and ignored, as other
/// compatible servers do.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// A registered model (`GET /v1/models`), or `base@latest`.
    pub model: String,
    #[schema(min_items = 1, max_items = 256)]
    pub messages: Vec<ChatMessage>,
    /// Tokens to generate at most, 1 to 4,096 (alias
    /// `max_completion_tokens`).
    #[serde(default, alias = "max_completion_tokens")]
    #[schema(minimum = 1, maximum = 4096)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Up to 4 strings of 1 to 64 bytes.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Any unsigned 64-bit integer.
    #[serde(default)]
    #[schema(format = "uint64")]
    pub seed: Option<u64>,
    /// Answer as server-sent events (`text/event-stream`).
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Only 1 is supported.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    /// llama.cpp's and vLLM's extension: divides the logits of seen tokens.
    #[serde(default)]
    #[schema(minimum = 0.5, maximum = 2)]
    pub repetition_penalty: Option<f32>,
    /// llama.cpp's: how many latest tokens the penalties look at.
    #[serde(default)]
    #[schema(maximum = 4096)]
    pub repeat_last_n: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// One server-sent event of a streamed answer (`stream: true`), as an
/// event-stream parser reads it: its `data` is a `chat.completion.chunk`
/// object as JSON, an `{"error": {...}}` object when the model fails after
/// the stream started, or `[DONE]`, last.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // only its schema is used: axum's `Sse` writes the events
pub struct ChatStreamEvent {
    /// `message` where given.
    pub event: Option<String>,
    pub data: String,
}

/// OpenAI's `chat.completion` object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered (an adapter's id for `base@latest`).
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: ChatMessage,
    /// `stop` (end of turn or a stop string) or `length` (`max_tokens`).
    #[schema(value_type = String)]
    pub finish_reason: llm::FinishReason,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

fn params(request: &ChatRequest) -> ApiResult<GenerationParams> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n = 1 is supported"));
    }
    let defaults = GenerationParams::default();
    let params = GenerationParams {
        max_tokens: request.max_tokens.unwrap_or(defaults.max_tokens),
        temperature: request.temperature.unwrap_or(defaults.temperature),
        top_p: request.top_p,
        stop: match &request.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
        seed: request.seed.unwrap_or(defaults.seed),
        ignore_eos: false,
        penalties: Penalties {
            repetition_penalty: request.repetition_penalty,
            frequency_penalty: request.frequency_penalty,
            presence_penalty: request.presence_penalty,
            repeat_last_n: request.repeat_last_n,
        },
    };
    llm::check_params(&params).map_err(ApiError::invalid)?;
    llm::check_messages(&request.messages).map_err(ApiError::invalid)?;
    Ok(params)
}

fn llm_error(err: LlmError) -> ApiError {
    match err {
        LlmError::Rejected(message) => ApiError::invalid(message),
        LlmError::Unavailable(message) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            message,
        ),
    }
}

/// OpenAI's chat completions: one answer as JSON, or streamed as
/// `chat.completion.chunk` server-sent events ending with `[DONE]`.
#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "openai",
    request_body(content = ChatRequest, examples(
        ("answer" = (summary = "One answer as JSON", value = json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
        }))),
        ("stream" = (summary = "Streamed as server-sent events", value = json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "stream": true,
            "stream_options": {"include_usage": true},
        }))),
    )),
    responses(
        (status = 200, description = "The answer (`stream`: server-sent events)", content(
            (ChatCompletion = "application/json"),
            (ChatStreamEvent = "text/event-stream"),
        )),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 422, description = "Invalid parameters or messages, or a prompt over the model's context", body = ErrorBody),
        (status = 503, description = "The model is not available (or the request was refused as busy)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn complete(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let models = state.workflows.models();
    if models.resolve(&request.model).is_none() {
        // An adapter published since this process last heard of one.
        models.refresh_adapters().await?;
    }
    // `base@latest` answers as the adapter (or base) serving it.
    let Some(served) = models.resolve(&request.model).map(|spec| spec.id) else {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("no model {:?} in the registry", shown(&request.model)),
        ));
    };
    let params = params(&request)?;
    if request.stream {
        return Ok(stream(state, request, served, params).into_response());
    }
    let answer = state
        .workflows
        .models()
        .complete(&served, &request.messages, &params, None)
        .await
        .map_err(llm_error)?;
    let c = answer.completion;
    Ok(Json(ChatCompletion {
        id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        object: "chat.completion",
        created: now_ms() / 1_000,
        model: answer.model,
        choices: vec![Choice {
            index: 0,
            message: ChatMessage::new("assistant", c.text),
            finish_reason: c.finish_reason,
        }],
        usage: Usage {
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            total_tokens: c.prompt_tokens + c.completion_tokens,
        },
    })
    .into_response())
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Streams the answer as `chat.completion.chunk` events, ending with
/// `[DONE]`. A failure after the stream started arrives as an `error`
/// event (the status line is already sent).
fn stream(
    state: AppState,
    request: ChatRequest,
    served: String,
    params: GenerationParams,
) -> Response {
    let (events, receiver) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
        let created = now_ms() / 1_000;
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": served,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let data = |value: Value| Event::default().data(value.to_string());
        let _ = events.send(data(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )));
        let (sink, mut pieces) = mpsc::unbounded_channel::<String>();
        let models = state.workflows.models().clone();
        let (model, messages) = (served.clone(), request.messages.clone());
        let call = tokio::spawn(async move {
            models
                .complete(&model, &messages, &params, Some(sink))
                .await
        });
        while let Some(piece) = pieces.recv().await {
            let _ = events.send(data(chunk(json!({"content": piece}), Value::Null)));
        }
        match call.await {
            Ok(Ok(answer)) => {
                let c = answer.completion;
                let _ = events.send(data(chunk(json!({}), json!(c.finish_reason))));
                if request.stream_options.is_some_and(|o| o.include_usage) {
                    let mut last = chunk(json!({}), Value::Null);
                    last["choices"] = json!([]);
                    last["usage"] = usage(c.prompt_tokens, c.completion_tokens);
                    let _ = events.send(data(last));
                }
            }
            Ok(Err(err)) => {
                let _ = events.send(data(
                    json!({"error": {"code": "model_unavailable", "message": err.to_string()}}),
                ));
            }
            Err(err) => {
                let _ = events.send(data(
                    json!({"error": {"code": "internal", "message": err.to_string()}}),
                ));
            }
        }
        let _ = events.send(Event::default().data("[DONE]"));
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
