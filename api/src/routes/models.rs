//! The model registry, as the scheduler sees it.

use axum::{Json, extract::State};
use orchestrator_llm::remote::redact_endpoint;
use orchestrator_models::ModelSpec;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{error::ApiResult, state::AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    #[serde(flatten)]
    pub spec: ModelSpec,
    /// Workflow tasks running on it now, across the fleet.
    pub in_flight: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelEntry>,
}

/// Every registered model with its live load.
#[utoipa::path(
    get, path = "/api/v1/models", tag = "models",
    responses((status = 200, description = "Registered models", body = ModelList)),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<ModelList>> {
    let models = state.workflows.models();
    let in_flight = models.in_flight().await?;
    let models = models
        .specs()
        .into_iter()
        .map(|mut spec| {
            // A base URL may carry credentials (https://user:pass@host/v1).
            spec.base_url = spec.base_url.as_deref().map(redact_endpoint);
            ModelEntry {
                in_flight: in_flight.get(&spec.id).copied().unwrap_or(0),
                spec,
            }
        })
        .collect();
    Ok(Json(ModelList { models }))
}

/// `GET /v1/models` in OpenAI's shape, for OpenAI clients.
pub async fn list_openai(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .workflows
        .models()
        .specs()
        .iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": 0, "owned_by": "orchestrator"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
