//! An OpenAI-compatible chat completions server on loopback, standing in for
//! paid remote models (the one thing tests may fake). Each model id behaves
//! by its name:
//!
//! - `fail500*`: answers 500 to everything;
//! - `unauthorized*`: answers 401 with a body the client must never see;
//! - `huge*`: streams an endless body without Content-Length;
//! - `slow*`: answers like any other model, after 300 ms;
//! - `sleepy*`: answers like any other model, after 3 s;
//! - any other: answers `answer from {model}: {step}` where step is the
//!   task's "Your step:" line; asked to judge (a prompt ending in
//!   "Verdict:"), it says FAIL for answers from models named `bad*` and
//!   PASS otherwise; asked to plan, it answers the configured plan text.
//!
//! Every request is recorded, so tests can count calls per task.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Call {
    pub model: String,
    pub user: String,
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<Call>>,
    plan: Mutex<String>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The base URL a registry entry points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// What a planning request gets back.
    pub fn set_plan(&self, text: &str) {
        *self.shared.plan.lock().unwrap() = text.to_string();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What an upstream's refusal said; tests check no client ever sees it.
pub const UPSTREAM_SECRET: &str = "upstream-detail-7f3a: key sk-live-0000 rejected";

async fn answer(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default();
    if model.starts_with("unauthorized") {
        let body = json!({"error": {"message": UPSTREAM_SECRET}});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    if model.starts_with("huge") {
        // 1 MiB chunks for ever: only a reader that counts stops.
        let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
        let endless = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
        return Response::new(Body::from_stream(endless));
    }
    if model.starts_with("sleepy") {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    let (status, body) = plain_answer(shared, body).await;
    (status, body).into_response()
}

async fn plain_answer(shared: Arc<Shared>, body: Value) -> (StatusCode, Json<Value>) {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    shared.calls.lock().unwrap().push(Call {
        model: model.clone(),
        user: user.clone(),
    });
    if model.starts_with("fail500") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "upstream exploded"}})),
        );
    }
    if model.starts_with("slow") {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let text = if user.trim_end().ends_with("Verdict:") {
        if user.contains("answer from bad") {
            "FAIL: the answer is made up".to_string()
        } else {
            "PASS: it does the step".to_string()
        }
    } else if user.contains("Break the request below") {
        shared.plan.lock().unwrap().clone()
    } else {
        let step = user
            .lines()
            .find_map(|l| l.strip_prefix("Your step: "))
            .unwrap_or("none");
        format!("answer from {model}: {step}")
    };
    let reply = json!({
        "id": "fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": user.len() / 4, "completion_tokens": text.len() / 4, "total_tokens": 0},
    });
    (StatusCode::OK, Json(reply))
}
