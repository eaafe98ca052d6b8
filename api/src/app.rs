//! The router: a table of contents of the HTTP API.

use axum::{
    Json, Router,
    extract::DefaultBodyLimit,
    http::{Method, StatusCode, Uri},
    middleware,
    routing::{get, patch, post},
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{
    auth::{self, ApiKeys},
    error::{ApiError, ErrorBody, ErrorDetail, shown},
    guard::{self, AllowedHosts},
    routes::{campaigns, chat, dead, health, jobs, models, packs, queues, training, workflows},
    state::AppState,
};

/// Largest body of a single job push.
pub const JOB_BODY_LIMIT: usize = 1024 * 1024;
/// Largest body of a batch push.
pub const BATCH_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Largest body of a context pack upload or re-index.
pub const PACK_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Largest body of an OpenAI chat completions request.
pub const CHAT_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Largest body of any other request.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "Master Orchestrator", description = "Job queue and worker fleet for AI work."),
    paths(
        health::health, health::ready, health::metrics,
        jobs::push_job, jobs::push_batch, jobs::get_job,
        queues::list_queues, queues::pause, queues::resume, queues::update,
        dead::list, dead::requeue, dead::requeue_job,
        packs::create, packs::list, packs::get_pack, packs::reindex, packs::search, packs::delete,
        workflows::create, workflows::get_workflow, models::list,
        training::feedback, training::create_run, training::list_runs, training::get_run,
        training::list_adapters, training::promote, training::rollback,
        campaigns::create, campaigns::list, campaigns::get_campaign, campaigns::results,
        campaigns::pause, campaigns::resume, campaigns::stop, campaigns::scale,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What the router enforces around every handler.
pub struct Guards {
    pub keys: ApiKeys,
    pub hosts: AllowedHosts,
}

pub fn router(state: AppState, guards: Guards) -> Router {
    let Guards { keys, hosts } = guards;
    let limits = state.limits.clone();
    let pack_writes = middleware::from_fn_with_state(limits.clone(), crate::limits::pack_writes);
    let api = Router::new()
        .route(
            "/v1/jobs",
            post(jobs::push_job).layer(DefaultBodyLimit::max(JOB_BODY_LIMIT)),
        )
        .route(
            "/v1/jobs/batch",
            post(jobs::push_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/requeue", post(dead::requeue_job))
        .route("/v1/queues", get(queues::list_queues))
        .route("/v1/queues/{name}", patch(queues::update))
        .route("/v1/queues/{name}/pause", post(queues::pause))
        .route("/v1/queues/{name}/resume", post(queues::resume))
        .route("/v1/queues/{name}/dead", get(dead::list))
        .route("/v1/queues/{name}/dead/requeue", post(dead::requeue))
        .route(
            "/v1/context-packs",
            post(packs::create)
                .layer(DefaultBodyLimit::max(PACK_BODY_LIMIT))
                .layer(pack_writes.clone())
                .get(packs::list),
        )
        .route(
            "/v1/context-packs/{id}",
            get(packs::get_pack).delete(packs::delete),
        )
        .route(
            "/v1/context-packs/{id}/reindex",
            post(packs::reindex)
                .layer(DefaultBodyLimit::max(PACK_BODY_LIMIT))
                .layer(pack_writes),
        )
        .route("/v1/context-packs/{id}/search", post(packs::search))
        .route("/v1/workflows", post(workflows::create))
        .route("/v1/workflows/{id}", get(workflows::get_workflow))
        .route("/v1/models", get(models::list))
        .route("/v1/feedback", post(training::feedback))
        .route(
            "/v1/training/runs",
            post(training::create_run).get(training::list_runs),
        )
        .route("/v1/training/runs/{id}", get(training::get_run))
        .route("/v1/adapters", get(training::list_adapters))
        .route("/v1/adapters/{id}/promote", post(training::promote))
        .route("/v1/adapters/{id}/rollback", post(training::rollback))
        .route(
            "/v1/campaigns",
            post(campaigns::create).get(campaigns::list),
        )
        .route("/v1/campaigns/{id}", get(campaigns::get_campaign))
        .route("/v1/campaigns/{id}/results", get(campaigns::results))
        .route("/v1/campaigns/{id}/pause", post(campaigns::pause))
        .route("/v1/campaigns/{id}/resume", post(campaigns::resume))
        .route("/v1/campaigns/{id}/stop", post(campaigns::stop))
        .route("/v1/campaigns/{id}/scale", post(campaigns::scale))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .layer(middleware::from_fn_with_state(
            keys.clone(),
            auth::require_key,
        ));
    // OpenAI-compatible routes and the websocket sit outside /api (their
    // paths are fixed by the protocols) behind the same keys.
    let open_ai = Router::new()
        .route(
            "/v1/chat/completions",
            post(chat::complete).layer(DefaultBodyLimit::max(CHAT_BODY_LIMIT)),
        )
        .route("/v1/models", get(models::list_openai))
        .route("/ws/workflows/{id}", get(workflows::watch))
        .layer(middleware::from_fn_with_state(keys, auth::require_key));
    Router::new()
        .merge(open_ai)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .nest("/api", api)
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(middleware::from_fn(crate::error::json_errors))
        .layer(middleware::from_fn_with_state(
            limits,
            crate::limits::enforce,
        ))
        .layer(middleware::from_fn_with_state(hosts, guard::check))
        .with_state(state)
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::not_found("route_not_found", format!("no route {}", shown(uri.path())))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served at {}", shown(uri.path())),
    )
}
