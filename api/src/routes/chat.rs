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
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    error::{ApiError, ApiResult, shown},
    extract::ApiJson,
    state::AppState,
};

/// The OpenAI request fields this server honours. Other fields OpenAI
/// clients send (user, logit_bias, ...) are accepted and ignored, as other
/// compatible servers do.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// llama.cpp's and vLLM's extension: divides the logits of seen tokens.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// llama.cpp's: how many latest tokens the penalties look at.
    #[serde(default)]
    pub repeat_last_n: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
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
    let c = &answer.completion;
    Ok(Json(json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "created": now_ms() / 1_000,
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
        }],
        "usage": usage(c.prompt_tokens, c.completion_tokens),
    }))
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
