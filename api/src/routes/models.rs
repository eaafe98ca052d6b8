//! The model registry, as the scheduler sees it.

use std::collections::BTreeMap;

use axum::{Json, extract::State};
use orchestrator_llm::{Kernels, Penalties, remote::redact_endpoint};
use orchestrator_models::{ModelSpec, ProviderKind};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ApiResult, state::AppState};

/// A registered model with its live load: the registry entry's fields
/// (`config/models.toml`) and `in_flight`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub id: String,
    pub provider: ProviderKind,
    /// Local: GGUF path relative to the models directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Remote: the endpoint, credentials redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Name of the environment variable holding the key (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    pub specialties: BTreeMap<String, f64>,
    pub cost_per_1k_input: f64,
    pub cost_per_1k_output: f64,
    pub context_window: u32,
    pub max_concurrency: u32,
    pub timeout_s: u64,
    /// Local: the matrix kernels, when not the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<Kernels>,
    /// Penalties every request gets unless it sets its own, when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Penalties>,
    /// Workflow tasks running on it now, across the fleet.
    pub in_flight: u32,
}

impl ModelEntry {
    /// A registry entry as the API shows it. The destructuring is
    /// exhaustive, so a field added to `ModelSpec` must be placed here.
    fn new(spec: ModelSpec, in_flight: u32) -> Self {
        let ModelSpec {
            id,
            provider,
            file,
            base_url,
            model,
            api_key_env,
            specialties,
            cost_per_1k_input,
            cost_per_1k_output,
            context_window,
            max_concurrency,
            timeout_s,
            kernels,
            sampling,
        } = spec;
        Self {
            id,
            provider,
            file,
            // A base URL may carry credentials (https://user:pass@host/v1).
            base_url: base_url.as_deref().map(redact_endpoint),
            model,
            api_key_env,
            specialties,
            cost_per_1k_input,
            cost_per_1k_output,
            context_window,
            max_concurrency,
            timeout_s,
            kernels: (kernels != Kernels::default()).then_some(kernels),
            sampling: (sampling != Penalties::default()).then_some(sampling),
            in_flight,
        }
    }
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
        .map(|spec| {
            let load = in_flight.get(&spec.id).copied().unwrap_or(0);
            ModelEntry::new(spec, load)
        })
        .collect();
    Ok(Json(ModelList { models }))
}

/// One model in OpenAI's `GET /v1/models` shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModel {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Always 0.
    pub created: u64,
    /// Always `orchestrator`.
    pub owned_by: &'static str,
}

/// OpenAI's `GET /v1/models` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<OpenAiModel>,
}

/// The registry's models in OpenAI's shape, for OpenAI clients.
#[utoipa::path(
    get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "Registered models", body = OpenAiModelList)),
    security(("bearer" = []))
)]
pub async fn list_openai(State(state): State<AppState>) -> Json<OpenAiModelList> {
    let data = state
        .workflows
        .models()
        .specs()
        .into_iter()
        .map(|m| OpenAiModel {
            id: m.id,
            object: "model",
            created: 0,
            owned_by: "orchestrator",
        })
        .collect();
    Json(OpenAiModelList {
        object: "list",
        data,
    })
}

#[cfg(test)]
mod tests {
    use utoipa::{
        PartialSchema,
        openapi::{RefOr, schema::Schema},
    };

    use super::*;

    /// Every field an entry is sent with is a property of its schema, and
    /// the schema allows no others.
    #[test]
    fn model_entries_match_their_schema() {
        // Every optional field set, so each is checked.
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "id": "remote", "provider": "openai", "file": "x.gguf",
            "base_url": "https://user:secret@example.invalid/v1", "model": "m",
            "api_key_env": "KEY", "specialties": {"general": 0.5},
            "kernels": "precise", "sampling": {"repetition_penalty": 1.1},
        }))
        .unwrap();
        let sent = serde_json::to_value(ModelEntry::new(spec, 3)).unwrap();
        let RefOr::T(Schema::Object(schema)) = ModelEntry::schema() else {
            panic!("ModelEntry's schema is not one object (allOf of a flattened struct?)")
        };
        for field in sent.as_object().unwrap().keys() {
            assert!(
                schema.properties.contains_key(field),
                "{field} is sent but not in ModelEntry's schema"
            );
        }
        for field in &schema.required {
            assert!(
                sent.get(field).is_some(),
                "{field} is required but not sent"
            );
        }
        assert!(!sent["base_url"].as_str().unwrap().contains("secret"));
    }
}
