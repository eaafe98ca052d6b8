//! Learning from feedback: feedback in, training runs, adapter versions.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchestrator_core::metrics::FEEDBACK;
use orchestrator_datagen::runs::Split;
use orchestrator_models::{
    ProviderKind,
    adapters::{self, AdapterView, ChangeError},
    registry::valid_id,
};
use orchestrator_training::{
    TrainingConfig,
    data::Example,
    feedback::{FeedbackRequest, NewFeedback, Stored},
    runs::{self, CreateError, RunView},
};
use orchestrator_workflow::state as workflow_state;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody, shown},
    extract::ApiJson,
    state::AppState,
};

/// Runs listed at most by `GET /api/v1/training/runs`.
const RUNS_LISTED: u64 = 100;

/// Rate an output; a correction or a good rating makes a training example.
#[utoipa::path(
    post, path = "/api/v1/feedback", tag = "training",
    request_body = FeedbackRequest,
    responses(
        (status = 201, description = "Feedback stored", body = Stored),
        (status = 404, description = "Unknown task", body = ErrorBody),
        (status = 422, description = "Invalid feedback", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn feedback(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<FeedbackRequest>,
) -> ApiResult<(StatusCode, Json<Stored>)> {
    request.check().map_err(ApiError::invalid)?;
    let task = match &request.task_id {
        Some(id) => Some(
            workflow_state::task(state.store.connection(), id)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found("task_not_found", format!("no task {}", shown(id)))
                })?,
        ),
        None => None,
    };
    let base_model = base_model(&state, request.model.as_deref(), task.as_ref())?;
    let prompt = request
        .prompt
        .or_else(|| task.as_ref().map(|t| t.description.clone()))
        .unwrap_or_default();
    let response = request
        .response
        .or_else(|| task.as_ref().and_then(|t| t.output.clone()));
    let stored = state
        .feedback
        .add(NewFeedback {
            task_id: request.task_id,
            base_model,
            prompt,
            response,
            rating: request.rating,
            correction: request.correction,
            synthetic: false,
        })
        .await?;
    metrics::counter!(FEEDBACK, "origin" => "human", "example" => stored.example.to_string())
        .increment(1);
    Ok((StatusCode::CREATED, Json(stored)))
}

/// The local model feedback trains: the one named, else the task's, else
/// the registry's first local model.
fn base_model(
    state: &AppState,
    named: Option<&str>,
    task: Option<&workflow_state::TaskRow>,
) -> ApiResult<String> {
    let models = state.workflows.models();
    let from_task = task.and_then(|t| t.model.as_deref());
    let chosen = named
        .or(from_task)
        .map(|id| id.split('@').next().unwrap_or(id).to_string());
    let spec = match &chosen {
        Some(id) => models.registry().get(id).ok_or_else(|| {
            ApiError::invalid(format!("model: no model {:?} in the registry", shown(id)))
        })?,
        None => *models
            .trainable()
            .first()
            .ok_or_else(|| ApiError::invalid("the registry has no local model to train"))?,
    };
    if spec.provider != ProviderKind::Local {
        return Err(ApiError::invalid(format!(
            "model {} is remote; only local models are fine-tuned here",
            spec.id
        )));
    }
    Ok(spec.id.clone())
}

/// `POST /api/v1/training/runs`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The local model to train (default: the registry's first local one).
    pub base_model: Option<String>,
    /// Training settings; missing fields take their defaults.
    pub config: Option<TrainingConfig>,
    /// Train on this completed dataset's train split (its first 10,000
    /// examples) and evaluate on its eval split (its first 1,000), instead
    /// of on the feedback buffer.
    pub dataset: Option<String>,
}

/// Most examples of a dataset's eval split a run evaluates on.
const MAX_HELD_OUT: usize = 1_000;

/// Start a run now on everything in the feedback buffer, or on a dataset.
#[utoipa::path(
    post, path = "/api/v1/training/runs", tag = "training",
    request_body = RunRequest,
    responses(
        (status = 202, description = "Run queued", body = RunView),
        (status = 409, description = "A run of this model is not finished, or the dataset is not complete", body = ErrorBody),
        (status = 422, description = "Invalid request or too few examples", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_run(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RunRequest>,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    let base = base_model(&state, request.base_model.as_deref(), None)?;
    let config = request
        .config
        .unwrap_or_else(|| state.training_defaults.as_ref().clone());
    config
        .check()
        .map_err(|e| ApiError::invalid(format!("config: {e}")))?;
    let created = match &request.dataset {
        Some(id) => {
            let examples = dataset_examples(&state, id).await?;
            runs::create_from(
                state.store.connection(),
                &base,
                &config,
                "dataset",
                &examples,
            )
            .await
        }
        None => runs::create(&state.feedback, &base, &config, "manual").await,
    };
    match created {
        Ok(run) => Ok((StatusCode::ACCEPTED, Json(run.into()))),
        Err(err @ CreateError::Busy(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_in_progress",
            err.to_string(),
        )),
        Err(err @ CreateError::TooFew(_)) => Err(ApiError::invalid(err.to_string())),
        Err(CreateError::Store(err)) => Err(ApiError::backend(err)),
    }
}

/// A completed dataset's train split (then its eval split, held out) as
/// training examples.
async fn dataset_examples(state: &AppState, id: &str) -> ApiResult<Vec<Example>> {
    let Some(view) = state.datasets.view(id).await? else {
        return Err(ApiError::invalid(format!(
            "dataset: no dataset {}",
            shown(id)
        )));
    };
    if view.status != "completed" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "dataset_not_ready",
            format!(
                "dataset {} is {} ({} of {} shards done); train on it once it is completed",
                view.id, view.status, view.shards_done, view.shards_total
            ),
        ));
    }
    let read = |split, limit| state.datasets.pairs(id, split, limit);
    let train = read(Split::Train, runs::MAX_RUN_EXAMPLES as usize)
        .await
        .map_err(ApiError::backend)?
        .unwrap_or_default();
    let eval = read(Split::Eval, MAX_HELD_OUT)
        .await
        .map_err(ApiError::backend)?
        .unwrap_or_default();
    if train.len() < runs::MIN_RUN_EXAMPLES {
        return Err(ApiError::invalid(format!(
            "dataset: {} has {} training examples; a run needs at least {}",
            view.id,
            train.len(),
            runs::MIN_RUN_EXAMPLES
        )));
    }
    let example = |(prompt, target): (String, String), held_out| Example {
        prompt,
        target,
        synthetic: false,
        held_out,
    };
    Ok(train
        .into_iter()
        .map(|pair| example(pair, false))
        .chain(eval.into_iter().map(|pair| example(pair, true)))
        .collect())
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
}

/// The newest training runs (up to 100).
#[utoipa::path(
    get, path = "/api/v1/training/runs", tag = "training",
    responses((status = 200, description = "Runs, newest first", body = RunList)),
    security(("bearer" = []))
)]
pub async fn list_runs(State(state): State<AppState>) -> ApiResult<Json<RunList>> {
    let rows = runs::list(state.store.connection(), RUNS_LISTED).await?;
    Ok(Json(RunList {
        runs: rows.into_iter().map(RunView::from).collect(),
    }))
}

/// One run: status, loss curve, eval before and after, tokens/s.
#[utoipa::path(
    get, path = "/api/v1/training/runs/{id}", tag = "training",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 404, description = "No such run", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let not_found = || ApiError::not_found("run_not_found", format!("no run {}", shown(&id)));
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(not_found());
    }
    let run = runs::get(state.store.connection(), &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(run.into()))
}

#[derive(Serialize, ToSchema)]
pub struct AdapterList {
    pub adapters: Vec<AdapterView>,
}

/// Every adapter version, by base model, newest first.
#[utoipa::path(
    get, path = "/api/v1/adapters", tag = "training",
    responses((status = 200, description = "Adapters", body = AdapterList)),
    security(("bearer" = []))
)]
pub async fn list_adapters(State(state): State<AppState>) -> ApiResult<Json<AdapterList>> {
    let rows = adapters::list(state.store.connection()).await?;
    Ok(Json(AdapterList {
        adapters: rows.into_iter().map(AdapterView::from).collect(),
    }))
}

/// Make an adapter its base model's active one (`base@latest`).
#[utoipa::path(
    post, path = "/api/v1/adapters/{id}/promote", tag = "training",
    params(("id" = String, Path, description = "Adapter id, e.g. smollm2@adapter-v2")),
    responses(
        (status = 200, description = "Now active", body = AdapterView),
        (status = 404, description = "No such adapter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn promote(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<AdapterView>> {
    check_adapter_id(&id)?;
    let adapter = adapters::promote(state.store.connection(), &id)
        .await
        .map_err(change_error)?;
    announce(&state, &adapter.base_model).await?;
    Ok(Json(adapter.into()))
}

/// Retire the active adapter; the version active before it serves again
/// (or the base model, when there was none).
#[utoipa::path(
    post, path = "/api/v1/adapters/{id}/rollback", tag = "training",
    params(("id" = String, Path, description = "The active adapter's id")),
    responses(
        (status = 200, description = "Rolled back; `active` is what serves now", body = RolledBack),
        (status = 404, description = "No such adapter", body = ErrorBody),
        (status = 409, description = "The adapter is not active", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RolledBack>> {
    check_adapter_id(&id)?;
    let base = id.split('@').next().unwrap_or_default().to_string();
    let active = adapters::rollback(state.store.connection(), &id)
        .await
        .map_err(change_error)?;
    announce(&state, &base).await?;
    Ok(Json(RolledBack {
        retired: id,
        active: active.map(AdapterView::from),
    }))
}

/// `POST /api/v1/adapters/{id}/rollback`.
#[derive(Serialize, ToSchema)]
pub struct RolledBack {
    /// The adapter retired.
    pub retired: String,
    /// The adapter serving now; null when the base model serves again.
    pub active: Option<AdapterView>,
}

/// `base@adapter-vN`, else 404 without a lookup.
fn check_adapter_id(id: &str) -> ApiResult<()> {
    let well_formed = id.split_once("@adapter-v").is_some_and(|(base, version)| {
        valid_id(base)
            && !version.is_empty()
            && version.len() <= 9
            && version.bytes().all(|b| b.is_ascii_digit())
    });
    if well_formed {
        return Ok(());
    }
    Err(ApiError::not_found(
        "adapter_not_found",
        format!("no adapter {}", shown(id)),
    ))
}

fn change_error(err: ChangeError) -> ApiError {
    match err {
        ChangeError::NotFound(id) => {
            ApiError::not_found("adapter_not_found", format!("no adapter {}", shown(&id)))
        }
        ChangeError::Conflict(message) => {
            ApiError::new(StatusCode::CONFLICT, "adapter_not_active", message)
        }
        ChangeError::Store(err) => ApiError::backend(err),
    }
}

/// Reloads this process's adapter table before answering (so its next
/// request sees the change) and tells every other serving process.
async fn announce(state: &AppState, base_model: &str) -> ApiResult<()> {
    state.workflows.models().refresh_adapters().await?;
    state
        .adapter_notices
        .publish(base_model, json!({"changed": true}))
        .await;
    Ok(())
}
