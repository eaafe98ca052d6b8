//! Liveness, readiness and metrics.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ErrorBody, state::AppState};

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// Whether `/api/*` routes need a key (`ORCH_API_KEYS`): the console
    /// asks for one before its first call instead of being refused.
    pub auth_required: bool,
}

/// `GET /ready`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// Each backend (`store`, and `redis` or `sqlite`): `ok` or
    /// `unreachable: ...`.
    pub checks: BTreeMap<String, String>,
}

/// A 503 of `GET /ready`: a backend is unreachable, or the limits in
/// front of every route refused the request.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // only its schema is used
pub enum NotReady {
    Checks(Readiness),
    Refused(ErrorBody),
}

/// The process is up.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Process up", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        auth_required: state.auth_required,
    })
}

/// Its backends answer: the store and the queue backend.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Every backend reachable", body = Readiness),
    (status = 503, description = "A backend is unreachable (or the request was refused as busy)", body = NotReady),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let store = state.store.ping().await;
    let queue = state.queue.ping().await;
    let show = |r: &anyhow::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("unreachable: {e}"),
    };
    let status = if store.is_ok() && queue.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let checks = BTreeMap::from([
        ("store".to_string(), show(&store)),
        (state.queue.kind().to_string(), show(&queue)),
    ]);
    let readiness = Readiness {
        status: if status == StatusCode::OK {
            "ready"
        } else {
            "unavailable"
        }
        .into(),
        checks,
    };
    (status, Json(readiness))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus metrics", body = String, content_type = "text/plain")))]
pub async fn metrics() -> String {
    orchestrator_core::metrics::render().await
}
