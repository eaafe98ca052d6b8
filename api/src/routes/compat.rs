//! The original orchestrator's REST paths, served as thin aliases of the v1
//! routes so clients written against it keep working: each handler reshapes
//! the request or the answer where the original's differed, then calls the
//! v1 handler, so auth, body limits, validation and error bodies are the
//! v1 route's own.
//!
//! `POST /api/master/start` and `POST /api/master/stop`, the aliases of
//! `POST /api/v1/system/start` and `POST /api/v1/system/stop`, live in
//! `routes/system.rs` next to the routes they call.
//! `POST /api/master/training`, the alias of `POST /api/v1/datasets`, lives in
//! `routes/datasets.rs`.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection, ws::WebSocketUpgrade},
    http::StatusCode,
    response::Response,
};
use orchestrator_campaign::model::{CampaignRequest, CampaignView};
use orchestrator_models::OptimizationTarget;
use orchestrator_workflow::{Created, Decomposer, WorkflowRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, json_object},
    routes::{campaigns, status, workflows},
    state::AppState,
    status::SystemStatus,
};

/// `GET /api/master/status`: the original's envelope around the v1 snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct MasterStatus {
    /// Where the fleet is in its lifecycle: `running`, `stopping`,
    /// `stopped` or `starting` (`system.system.state`).
    pub status: String,
    /// Seconds since the API started.
    pub uptime: u64,
    pub version: String,
    /// When the snapshot was taken (ms since the Unix epoch).
    pub timestamp: u64,
    /// The `GET /api/v1/status` snapshot, unchanged.
    pub system: SystemStatus,
}

/// The v1 status snapshot in the original's envelope.
#[utoipa::path(
    get, path = "/api/master/status", tag = "compatibility",
    description = "Alias of `GET /api/v1/status`: the same snapshot under `system`, with the \
                   original's `status` (the lifecycle state), `uptime`, `version` and \
                   `timestamp` around it.",
    responses(
        (status = 200, description = "The latest snapshot", body = MasterStatus),
        (status = 503, description = "The first snapshot is still being taken", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_status(State(state): State<AppState>) -> ApiResult<Json<MasterStatus>> {
    let system = status::latest(&state)?;
    Ok(Json(envelope(SystemStatus::clone(&system))))
}

fn envelope(system: SystemStatus) -> MasterStatus {
    MasterStatus {
        status: system.system.state.as_str().to_string(),
        uptime: system.uptime_s,
        version: system.version.clone(),
        timestamp: system.taken_at,
        system,
    }
}

/// `GET /api/master/metrics`: the snapshot's numbers, summed.
#[derive(Debug, Serialize, ToSchema)]
pub struct MasterMetrics {
    /// When the snapshot was taken (ms since the Unix epoch).
    pub timestamp: u64,
    pub throughput: MetricsThroughput,
    pub queues: QueueTotals,
    pub fleet: FleetCounts,
}

/// Completed jobs per second, fleet-wide.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsThroughput {
    pub jobs_per_s_10s: f64,
    pub jobs_per_s_1m: f64,
    /// `ORCH_THROUGHPUT_TARGET`.
    pub target: u64,
    /// `jobs_per_s_1m / target`.
    pub ratio: f64,
}

/// Job counts summed over every queue.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct QueueTotals {
    /// Queues counted.
    pub count: usize,
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub dead: u64,
}

/// Live processes.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetCounts {
    pub total: usize,
    /// By kind (`api`, `worker`, `trainer`).
    pub by_kind: BTreeMap<String, usize>,
}

/// Throughput, queue totals and fleet counts as one JSON summary.
#[utoipa::path(
    get, path = "/api/master/metrics", tag = "compatibility",
    description = "Derived from `GET /api/v1/status`: throughput, job counts summed over every \
                   queue, and live processes by kind. Prometheus text stays at `/metrics`.",
    responses(
        (status = 200, description = "The summary", body = MasterMetrics),
        (status = 503, description = "The first snapshot is still being taken", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_metrics(State(state): State<AppState>) -> ApiResult<Json<MasterMetrics>> {
    let system = status::latest(&state)?;
    Ok(Json(summary(&system)))
}

fn summary(system: &SystemStatus) -> MasterMetrics {
    let queues = system
        .queues
        .iter()
        .fold(QueueTotals::default(), |totals, q| QueueTotals {
            count: totals.count + 1,
            pending: totals.pending + q.pending,
            running: totals.running + q.running,
            done: totals.done + q.done,
            dead: totals.dead + q.dead,
        });
    let t = &system.throughput;
    MasterMetrics {
        timestamp: system.taken_at,
        throughput: MetricsThroughput {
            jobs_per_s_10s: t.jobs_per_s_10s,
            jobs_per_s_1m: t.jobs_per_s_1m,
            target: t.target,
            ratio: t.ratio,
        },
        queues,
        fleet: FleetCounts {
            total: system.fleet.values().sum(),
            by_kind: system.fleet.clone(),
        },
    }
}

/// Start a workflow.
#[utoipa::path(
    post, path = "/api/master/workflow", tag = "compatibility",
    description = "Alias of `POST /api/v1/workflows`: the same body and answer.",
    request_body = WorkflowRequest,
    responses(
        (status = 202, description = "Workflow started", body = Created),
        (status = 422, description = "Invalid request", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_workflow(
    state: State<AppState>,
    request: ApiJson<WorkflowRequest>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    workflows::create(state, request).await
}

/// The original's camelCase campaign fields: (its name, the section of
/// [`CampaignRequest`] holding it, the field's name there).
const CAMEL_FIELDS: [(&str, &str, &str); 5] = [
    ("minComponents", "goals", "min_components"),
    ("minSites", "goals", "min_sites"),
    ("schemaTypes", "goals", "schema_types"),
    ("maxWorkers", "resources", "max_workers"),
    ("maxMemoryMB", "resources", "max_memory_mb"),
];

/// Start a campaign; the original's camelCase fields are accepted too.
#[utoipa::path(
    post, path = "/api/master/campaign", tag = "compatibility",
    description = "Alias of `POST /api/v1/campaigns`. Besides the v1 body it takes the \
                   original's camelCase fields, at the top level or inside `goals` / \
                   `resources`: `minComponents`, `minSites` and `schemaTypes` become \
                   `goals.min_components`, `goals.min_sites` and `goals.schema_types`; \
                   `maxWorkers` and `maxMemoryMB` become `resources.max_workers` and \
                   `resources.max_memory_mb`. A field given both ways, or any other \
                   unknown field, is a 422.",
    request_body = CampaignRequest,
    responses(
        (status = 201, description = "Campaign created and queued", body = CampaignView),
        (status = 422, description = "Invalid campaign", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_campaign(
    state: State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<(StatusCode, Json<CampaignView>)> {
    let request = campaign_request(body)?;
    campaigns::create(state, ApiJson(request)).await
}

/// Reads a campaign body that may use the original's camelCase fields.
/// The rewritten body goes through the same reader as the v1 route, so
/// unknown fields and wrong types get the v1 route's errors.
fn campaign_request(mut body: Map<String, Value>) -> ApiResult<CampaignRequest> {
    for (camel, section, field) in CAMEL_FIELDS {
        if let Some(value) = body.remove(camel) {
            place(&mut body, section, field, value, camel)?;
        }
        let nested = body
            .get_mut(section)
            .and_then(Value::as_object_mut)
            .and_then(|s| s.remove(camel));
        if let Some(value) = nested {
            place(
                &mut body,
                section,
                field,
                value,
                &format!("{section}.{camel}"),
            )?;
        }
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
    json_object(&bytes)
}

/// Sets `body[section][field]` to `value`, which the client sent as `from`.
fn place(
    body: &mut Map<String, Value>,
    section: &str,
    field: &str,
    value: Value,
    from: &str,
) -> ApiResult<()> {
    let target = body
        .entry(section)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| ApiError::invalid(format!("{section}: must be an object")))?;
    if target.contains_key(field) {
        return Err(ApiError::invalid(format!(
            "{from} and {section}.{field} are the same field; send one"
        )));
    }
    target.insert(field.to_string(), value);
    Ok(())
}

/// Campaigns, newest first.
#[utoipa::path(
    get, path = "/api/master/campaigns", tag = "compatibility",
    description = "Alias of `GET /api/v1/campaigns`: the same query and answer.",
    params(campaigns::ListQuery),
    responses(
        (status = 200, description = "Campaigns", body = campaigns::CampaignList),
        (status = 422, description = "Invalid query", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_campaigns(
    state: State<AppState>,
    query: Result<Query<campaigns::ListQuery>, QueryRejection>,
) -> ApiResult<Json<campaigns::CampaignList>> {
    campaigns::list(state, query).await
}

/// The original's workflow submission: the v1 body, except that
/// `model_preferences` is an object.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    pub description: String,
    /// Task type; classified from the description when absent.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub context_packs: Vec<String>,
    #[serde(default)]
    pub model_preferences: ModelPreferences,
    #[serde(default)]
    pub optimization_target: Option<OptimizationTarget>,
    #[serde(default)]
    pub decomposer: Option<Decomposer>,
    #[serde(default)]
    pub consensus: Option<u32>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
}

/// The original's model preferences.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPreferences {
    /// Model ids to put first, best first: v1's `model_preferences`.
    #[serde(default)]
    pub preferred: Vec<String>,
    /// Model ids not to use. The scheduler has no exclusion, so these are
    /// accepted but not honoured; the answer lists them under `ignored`.
    #[serde(default)]
    pub avoid: Vec<String>,
}

impl ExecuteRequest {
    /// The v1 request, and the fields that have no v1 equivalent.
    fn into_v1(self) -> (WorkflowRequest, Vec<String>) {
        let mut ignored = Vec::new();
        if !self.model_preferences.avoid.is_empty() {
            ignored.push("model_preferences.avoid".to_string());
        }
        let request = WorkflowRequest {
            description: self.description,
            kind: self.kind,
            context_packs: self.context_packs,
            model_preferences: self.model_preferences.preferred,
            optimization_target: self.optimization_target,
            decomposer: self.decomposer,
            consensus: self.consensus,
            budget_usd: self.budget_usd,
            callback_url: None,
        };
        (request, ignored)
    }
}

/// The 202 answer of `POST /api/v1/workflow/execute`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    pub workflow_id: String,
    /// Always `started`.
    pub status: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Rough finish time, Unix milliseconds.
    pub estimated_completion: u64,
    /// Primary model per task name.
    pub assigned_models: std::collections::HashMap<String, String>,
    pub total_steps: usize,
    pub decomposer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Request fields accepted but not honoured (`model_preferences.avoid`
    /// when it is not empty).
    pub ignored: Vec<String>,
}

/// Start a workflow, the original's way.
#[utoipa::path(
    post, path = "/api/v1/workflow/execute", tag = "compatibility",
    description = "Alias of `POST /api/v1/workflows` for the original's body: \
                   `model_preferences` is an object whose `preferred` list is v1's \
                   `model_preferences` and whose `avoid` list is accepted but not honoured. \
                   The answer is v1's with `status: \"started\"` and `ignored` naming what \
                   was not honoured.",
    request_body = ExecuteRequest,
    responses(
        (status = 202, description = "Workflow started", body = Started),
        (status = 422, description = "Invalid request", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn execute_workflow(
    state: State<AppState>,
    ApiJson(request): ApiJson<ExecuteRequest>,
) -> ApiResult<(StatusCode, Json<Started>)> {
    let (request, ignored) = request.into_v1();
    let (status, Json(created)) = workflows::create(state, ApiJson(request)).await?;
    Ok((status, Json(started(created, ignored))))
}

fn started(created: Created, ignored: Vec<String>) -> Started {
    Started {
        workflow_id: created.workflow_id,
        status: "started".to_string(),
        kind: created.kind,
        estimated_completion: created.estimated_completion,
        assigned_models: created.assigned_models,
        total_steps: created.total_steps,
        decomposer: created.decomposer,
        note: created.note,
        ignored,
    }
}

/// Watch a workflow over a websocket, progress in percent.
#[utoipa::path(
    get, path = "/ws/workflow/{id}", tag = "compatibility",
    description = "Alias of `GET /ws/workflows/{id}`: the same messages, except that \
                   `progress` is a percentage (0 to 100, one decimal) where v1 sends a \
                   fraction (0 to 1).",
    params(("id" = uuid::Uuid, Path, description = "Workflow id")),
    responses(
        (status = 101, description = "Switching Protocols: the websocket is open"),
        (status = 400, description = "Not a websocket handshake (missing or wrong upgrade headers)", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
        (status = 426, description = "The connection cannot be upgraded (not HTTP/1.1)", body = ErrorBody),
        (status = 503, description = "Too many websockets open (ORCH_MAX_WEBSOCKETS), or a backend did not answer", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn watch_workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    workflows::watch_shaped(state, id, upgrade, progress_in_percent).await
}

/// Turns a message's `progress` fraction into a percentage.
fn progress_in_percent(mut body: Value) -> Value {
    if let Some(fraction) = body.get("progress").and_then(Value::as_f64) {
        body["progress"] = json!((fraction * 1_000.0).round() / 10.0);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    fn base() -> Value {
        json!({"name": "n", "type": "storybook_discovery",
               "config": {"urls": ["https://sb.example/"]}})
    }

    #[test]
    fn camel_case_fields_land_in_goals_and_resources() {
        let mut body = object(base());
        body.insert("minComponents".into(), json!(7));
        body.insert("schemaTypes".into(), json!(["Product"]));
        body.insert("minSites".into(), json!(2));
        body.insert("maxWorkers".into(), json!(3));
        body.insert("maxMemoryMB".into(), json!(64));
        let request = campaign_request(body).expect("mapped");
        assert_eq!(request.goals.min_components, Some(7));
        assert_eq!(request.goals.min_sites, Some(2));
        assert_eq!(request.goals.schema_types, vec!["Product".to_string()]);
        assert_eq!(request.resources.max_workers, 3);
        assert_eq!(request.resources.max_memory_mb, Some(64));
    }

    #[test]
    fn camel_case_fields_inside_their_sections_are_mapped_too() {
        let mut body = object(base());
        body.insert("goals".into(), json!({"minComponents": 4}));
        body.insert(
            "resources".into(),
            json!({"maxWorkers": 2, "max_memory_mb": 32}),
        );
        let request = campaign_request(body).expect("mapped");
        assert_eq!(request.goals.min_components, Some(4));
        assert_eq!(request.resources.max_workers, 2);
        assert_eq!(request.resources.max_memory_mb, Some(32));
    }

    #[test]
    fn snake_case_bodies_pass_unchanged() {
        let mut body = object(base());
        body.insert("goals".into(), json!({"min_components": 5}));
        body.insert("resources".into(), json!({"max_workers": 4}));
        let request = campaign_request(body).expect("v1 body");
        assert_eq!(request.goals.min_components, Some(5));
        assert_eq!(request.resources.max_workers, 4);
    }

    #[test]
    fn a_field_sent_both_ways_or_unknown_is_a_422() {
        let mut both = object(base());
        both.insert("maxWorkers".into(), json!(2));
        both.insert("resources".into(), json!({"max_workers": 3}));
        let err = campaign_request(both).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message.contains("maxWorkers"), "{}", err.message);

        let mut unknown = object(base());
        unknown.insert("maxCpus".into(), json!(2));
        let err = campaign_request(unknown).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message.contains("maxCpus"), "{}", err.message);

        let mut not_object = object(base());
        not_object.insert("goals".into(), json!(5));
        not_object.insert("minSites".into(), json!(1));
        let err = campaign_request(not_object).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn execute_maps_preferred_and_reports_avoid() {
        let request: ExecuteRequest = serde_json::from_value(json!({
            "description": "d",
            "model_preferences": {"preferred": ["a", "b"], "avoid": ["c"]},
        }))
        .unwrap();
        let (v1, ignored) = request.into_v1();
        assert_eq!(v1.model_preferences, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(ignored, vec!["model_preferences.avoid".to_string()]);
        assert!(
            serde_json::from_value::<ExecuteRequest>(json!({
                "description": "d", "model_preferences": {"fastest": true},
            }))
            .is_err()
        );
    }

    #[test]
    fn progress_becomes_a_percentage() {
        let shaped = progress_in_percent(json!({"type": "status_update", "progress": 1.0 / 3.0}));
        assert_eq!(shaped["progress"], json!(33.3));
        let done = json!({"type": "workflow_complete", "result": "r"});
        assert_eq!(progress_in_percent(done.clone()), done);
    }
}
