//! LLM workflows: create, read, and watch live over a websocket.

use axum::{
    Json,
    extract::{
        Path, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::Response,
};
use orchestrator_core::events::Event;
use orchestrator_workflow::{CreateError, Created, WorkflowRequest, WorkflowView};
use serde_json::Value;
use tokio::sync::broadcast::{Receiver, error::RecvError};

use crate::{
    error::{ApiError, ApiResult, ErrorBody, shown},
    extract::ApiJson,
    limits::{WEBSOCKET_IDLE, WEBSOCKET_MAX_MESSAGE},
    state::AppState,
};

fn check_id(id: &str) -> ApiResult<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| ApiError::invalid(format!("workflow id {:?} is not a UUID", shown(id))))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("workflow_not_found", format!("no workflow {}", shown(id)))
}

/// Decompose a request into tasks and start running them.
#[utoipa::path(
    post, path = "/api/v1/workflows", tag = "workflows",
    request_body = WorkflowRequest,
    responses(
        (status = 202, description = "Workflow started", body = Created),
        (status = 422, description = "Invalid request", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<WorkflowRequest>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    if let Some(url) = &request.callback_url {
        super::jobs::check_callback_url(&state, url).map_err(|e| ApiError {
            message: format!("callback_url: {}", e.message),
            ..e
        })?;
    }
    match state.workflows.create(request).await {
        Ok(created) => Ok((StatusCode::ACCEPTED, Json(created))),
        Err(CreateError::Invalid(message)) => Err(ApiError::invalid(message)),
        Err(CreateError::Internal(err)) => Err(ApiError::backend(err)),
    }
}

/// A workflow with every task's status, model, output, tokens and cost.
#[utoipa::path(
    get, path = "/api/v1/workflows/{id}", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowView),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkflowView>> {
    check_id(&id)?;
    let view = state
        .workflows
        .view(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view))
}

/// Cancel a running workflow: tasks not started never run, running ones
/// are stopped; the workflow and those tasks end `cancelled`.
#[utoipa::path(
    post, path = "/api/v1/workflows/{id}/cancel", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The cancelled workflow", body = WorkflowView),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 409, description = "The workflow has already ended", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkflowView>> {
    check_id(&id)?;
    match state.workflows.cancel(&id).await? {
        None => Err(not_found(&id)),
        Some(false) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "workflow_finished",
            format!("workflow {id} has already ended"),
        )),
        Some(true) => {
            let view = state.workflows.view(&id).await?;
            view.map(Json).ok_or_else(|| not_found(&id))
        }
    }
}

/// Watch a workflow over a websocket: a snapshot, then `status_update`
/// messages, then `workflow_complete` or `error`, then the socket closes.
///
/// Open it as a websocket (`Connection: Upgrade`, `Upgrade: websocket`,
/// `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`); from a browser, only
/// from this API's own origin.
#[utoipa::path(
    get, path = "/ws/workflows/{id}", tag = "workflows",
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
pub async fn watch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    watch_shaped(state, id, upgrade, |body| body).await
}

/// [`watch`], with every message passed through `shape` on its way out, so
/// another path can serve the same stream in another client's shape.
pub(crate) async fn watch_shaped(
    state: AppState,
    id: String,
    upgrade: WebSocketUpgrade,
    shape: fn(Value) -> Value,
) -> ApiResult<Response> {
    check_id(&id)?;
    let slot = state.limits.websocket()?;
    // Subscribe before reading the snapshot, so nothing falls in between.
    let events = state.workflows.events().subscribe().await?;
    let snapshot = state
        .workflows
        .snapshot(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(upgrade
        // A browser offering subprotocols (the key as `bearer.<key>`) closes
        // a websocket whose answer names none.
        .protocols([super::events::SUBPROTOCOL])
        .max_message_size(WEBSOCKET_MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            stream(socket, state, id, snapshot, events, shape).await;
            drop(slot);
        }))
}

async fn stream(
    mut socket: WebSocket,
    state: AppState,
    id: String,
    snapshot: Value,
    mut events: Receiver<Event>,
    shape: fn(Value) -> Value,
) {
    let mut watcher = Watcher::new(shape);
    if watcher.send(&mut socket, snapshot).await.is_err() || watcher.finished {
        return;
    }
    let mut idle_until = tokio::time::Instant::now() + WEBSOCKET_IDLE;
    loop {
        tokio::select! {
            // Nothing either way for this long: a forgotten tab or a dead peer.
            _ = tokio::time::sleep_until(idle_until) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            event = events.recv() => {
                let body = match event {
                    Ok(event) if event.subject == id => event.body,
                    Ok(_) => continue,
                    // Fell behind: the store has the truth.
                    Err(RecvError::Lagged(_)) => match state.workflows.snapshot(&id).await {
                        Ok(Some(snapshot)) => snapshot,
                        _ => return,
                    },
                    Err(RecvError::Closed) => return,
                };
                if watcher.send(&mut socket, body).await.is_err() || watcher.finished {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                idle_until = tokio::time::Instant::now() + WEBSOCKET_IDLE;
            }
            incoming = socket.recv() => {
                if matches!(incoming, None | Some(Ok(Message::Close(_))) | Some(Err(_))) {
                    return;
                }
                idle_until = tokio::time::Instant::now() + WEBSOCKET_IDLE;
            }
        }
    }
}

/// Keeps what a watcher sees in order: progress never goes backwards, and
/// nothing follows the final message.
struct Watcher {
    step: i64,
    finished: bool,
    shape: fn(Value) -> Value,
}

impl Watcher {
    fn new(shape: fn(Value) -> Value) -> Self {
        Self {
            step: 0,
            finished: false,
            shape,
        }
    }

    async fn send(&mut self, socket: &mut WebSocket, body: Value) -> Result<(), axum::Error> {
        let kind = body["type"].as_str().unwrap_or_default();
        if kind == "status_update" {
            let step = body["current_step"].as_i64().unwrap_or(0);
            if step < self.step {
                return Ok(());
            }
            self.step = step;
        }
        self.finished = matches!(kind, "workflow_complete" | "error");
        let body = (self.shape)(body);
        socket.send(Message::Text(body.to_string().into())).await
    }
}
