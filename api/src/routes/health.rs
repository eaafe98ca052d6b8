//! Liveness, readiness and metrics.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Process up")))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Its backends answer: the store and the queue backend.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Every backend reachable"),
    (status = 503, description = "A backend is unreachable"),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = state.store.ping().await;
    let queue = state.queue.ping().await;
    let show = |r: &anyhow::Result<()>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(format!("unreachable: {e}")),
    };
    let status = if store.is_ok() && queue.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "checks": { "store": show(&store), state.queue.kind(): show(&queue) },
    });
    (status, Json(body))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics() -> String {
    orchestrator_core::metrics::render().await
}
