//! The router: a table of contents of the HTTP API.

use std::convert::Infallible;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request},
    handler::Handler,
    http::{Method, StatusCode, Uri},
    middleware,
    response::IntoResponse,
    routing::{MethodFilter, MethodRouter, Route, on},
};
use tower::{Layer, Service};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        ContentBuilder, Ref, Response, ResponseBuilder,
        path::ParameterIn,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    auth::{self, ApiKeys},
    error::{ApiError, ErrorBody, ErrorDetail, shown},
    guard::{self, AllowedHosts},
    limits::Limits,
    routes::{
        campaigns, chat, compat, datasets, dead, events, external, fleet, health, jobs, models,
        packs, queues, schedules, status, system, training, workflows,
    },
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
        health::health, health::ready, health::metrics, openapi_json,
        crate::console::index, crate::console::asset,
        jobs::push_job, jobs::push_batch, jobs::get_job, jobs::cancel_job,
        queues::list_queues, queues::create, queues::pause, queues::resume, queues::update,
        queues::purge,
        external::lease, external::heartbeat, external::ack, external::fail, external::progress,
        dead::list, dead::requeue, dead::requeue_job,
        schedules::create, schedules::list, schedules::get_schedule, schedules::pause,
        schedules::resume, schedules::delete,
        packs::create, packs::list, packs::get_pack, packs::reindex, packs::search, packs::delete,
        workflows::create, workflows::get_workflow, workflows::cancel, workflows::watch, models::list, fleet::list,
        status::get_status, system::stop, system::start, events::websocket, events::server_sent,
        models::list_openai, chat::complete,
        training::feedback, training::create_run, training::list_runs, training::get_run,
        training::list_adapters, training::promote, training::rollback,
        campaigns::create, campaigns::list, campaigns::get_campaign, campaigns::results,
        campaigns::pause, campaigns::resume, campaigns::stop, campaigns::scale,
        datasets::create, datasets::list, datasets::get_dataset, datasets::cancel,
        datasets::delete, datasets::export, datasets::master_training,
        // Compatibility aliases
        compat::master_status, compat::master_metrics, compat::master_workflow,
        compat::master_campaign, compat::master_campaigns, compat::execute_workflow,
        compat::watch_workflow, system::master_start, system::master_stop,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth, &CommonResponses)
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

/// The error statuses that do not depend on the handler, added to every
/// operation they can answer: the host/origin guard (403) and the limits
/// (503) stand in front of every route, keys (401) in front of the secured
/// ones, the JSON body extractor and the body limits (400, 413, 415, 422)
/// in front of every route with a body, and path decoding (400) in front of
/// every route with a path parameter. A status a handler documents itself
/// keeps its own description.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_body = operation.request_body.is_some();
                let has_path_parameter = operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.parameter_in == ParameterIn::Path);
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(description).into());
                };
                add(
                    "403",
                    "A Host this API does not answer to (ORCH_ALLOWED_HOSTS), or a state change \
                     or websocket from another origin",
                );
                add(
                    "503",
                    "Busy (ORCH_MAX_CONCURRENT_REQUESTS, with Retry-After), over \
                     ORCH_REQUEST_TIMEOUT_MS, or a backend did not answer",
                );
                if secured {
                    add(
                        "401",
                        "ORCH_API_KEYS is set and no `Authorization: Bearer` key of it was sent",
                    );
                }
                if has_body {
                    add("400", "Malformed JSON");
                    add("413", "Body over the route's size limit");
                    add("415", "Content-Type is not application/json");
                    add(
                        "422",
                        "A body field is missing, unknown or of the wrong type, or a value is out of range",
                    );
                }
                if has_path_parameter {
                    add("400", "A path segment that does not decode");
                }
            }
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)),
    security(("bearer" = [])))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// What the router enforces around every handler.
pub struct Guards {
    pub keys: ApiKeys,
    pub hosts: AllowedHosts,
}

/// The routes being assembled, each recorded with its method and path as it
/// is added: the method router is built here from the recorded method, so
/// the record is what is served (the test below holds it against the
/// OpenAPI document). Add routes only through it.
#[derive(Default)]
struct Routes {
    router: Router<AppState>,
    served: Vec<(Method, &'static str)>,
}

impl Routes {
    /// Serves `handler` for `method` at `path`.
    fn add<H, T>(self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add_with(method, path, handler, |route| route)
    }

    /// Serves `handler` for `method` at `path`, wrapped by `wrap` (layers of
    /// this route alone: a body limit, an upload slot).
    fn add_with<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        handler: H,
        wrap: impl FnOnce(MethodRouter<AppState>) -> MethodRouter<AppState>,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        self.router = self.router.route(path, wrap(on(filter, handler)));
        self.served.push((method, path));
        self
    }

    fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }
}

/// Every route, without the guards around all of them.
fn routes(keys: ApiKeys, limits: Limits) -> Routes {
    let pack_writes = middleware::from_fn_with_state(limits, crate::limits::pack_writes);
    let limit = |bytes: usize| {
        move |route: MethodRouter<AppState>| route.layer(DefaultBodyLimit::max(bytes))
    };
    let pack_upload = move |route: MethodRouter<AppState>| {
        intake(
            route
                .layer(DefaultBodyLimit::max(PACK_BODY_LIMIT))
                .layer(pack_writes.clone()),
        )
    };
    let limited_intake = move |bytes: usize| move |route| intake(limit(bytes)(route));
    let secured = Routes::default()
        .add_with(
            Method::POST,
            "/api/v1/jobs",
            jobs::push_job,
            limited_intake(JOB_BODY_LIMIT),
        )
        .add_with(
            Method::POST,
            "/api/v1/jobs/batch",
            jobs::push_batch,
            limited_intake(BATCH_BODY_LIMIT),
        )
        .add(Method::GET, "/api/v1/jobs/{id}", jobs::get_job)
        .add(Method::POST, "/api/v1/jobs/{id}/cancel", jobs::cancel_job)
        // Ending and renewing leases goes on while the system stops (held
        // jobs finish); only new leases are refused then.
        .add(
            Method::POST,
            "/api/v1/jobs/{id}/heartbeat",
            external::heartbeat,
        )
        .add(Method::POST, "/api/v1/jobs/{id}/ack", external::ack)
        .add(Method::POST, "/api/v1/jobs/{id}/fail", external::fail)
        .add(
            Method::POST,
            "/api/v1/jobs/{id}/progress",
            external::progress,
        )
        .add_with(
            Method::POST,
            "/api/v1/jobs/{id}/requeue",
            dead::requeue_job,
            intake,
        )
        .add(Method::GET, "/api/v1/queues", queues::list_queues)
        .add(Method::POST, "/api/v1/queues", queues::create)
        .add_with(
            Method::POST,
            "/api/v1/queues/{name}/lease",
            external::lease,
            intake,
        )
        .add(Method::POST, "/api/v1/queues/{name}/purge", queues::purge)
        .add(Method::PATCH, "/api/v1/queues/{name}", queues::update)
        .add(Method::POST, "/api/v1/queues/{name}/pause", queues::pause)
        .add(Method::POST, "/api/v1/queues/{name}/resume", queues::resume)
        .add(Method::GET, "/api/v1/queues/{name}/dead", dead::list)
        .add(Method::POST, "/api/v1/schedules", schedules::create)
        .add(Method::GET, "/api/v1/schedules", schedules::list)
        .add(
            Method::GET,
            "/api/v1/schedules/{id}",
            schedules::get_schedule,
        )
        .add(Method::DELETE, "/api/v1/schedules/{id}", schedules::delete)
        .add(
            Method::POST,
            "/api/v1/schedules/{id}/pause",
            schedules::pause,
        )
        .add(
            Method::POST,
            "/api/v1/schedules/{id}/resume",
            schedules::resume,
        )
        .add_with(
            Method::POST,
            "/api/v1/queues/{name}/dead/requeue",
            dead::requeue,
            intake,
        )
        .add_with(
            Method::POST,
            "/api/v1/context-packs",
            packs::create,
            pack_upload.clone(),
        )
        .add(Method::GET, "/api/v1/context-packs", packs::list)
        .add(Method::GET, "/api/v1/context-packs/{id}", packs::get_pack)
        .add(Method::DELETE, "/api/v1/context-packs/{id}", packs::delete)
        .add_with(
            Method::POST,
            "/api/v1/context-packs/{id}/reindex",
            packs::reindex,
            pack_upload,
        )
        .add(
            Method::POST,
            "/api/v1/context-packs/{id}/search",
            packs::search,
        )
        .add_with(Method::POST, "/api/v1/workflows", workflows::create, intake)
        .add(
            Method::GET,
            "/api/v1/workflows/{id}",
            workflows::get_workflow,
        )
        .add(
            Method::POST,
            "/api/v1/workflows/{id}/cancel",
            workflows::cancel,
        )
        .add(Method::GET, "/api/v1/models", models::list)
        .add(Method::GET, "/api/v1/fleet", fleet::list)
        .add(Method::GET, "/api/v1/status", status::get_status)
        .add(Method::POST, "/api/v1/system/stop", system::stop)
        .add(Method::POST, "/api/v1/system/start", system::start)
        .add(Method::GET, "/api/v1/events", events::server_sent)
        .add(Method::POST, "/api/v1/feedback", training::feedback)
        .add_with(
            Method::POST,
            "/api/v1/training/runs",
            training::create_run,
            intake,
        )
        .add(Method::GET, "/api/v1/training/runs", training::list_runs)
        .add(Method::GET, "/api/v1/training/runs/{id}", training::get_run)
        .add(Method::GET, "/api/v1/adapters", training::list_adapters)
        .add(
            Method::POST,
            "/api/v1/adapters/{id}/promote",
            training::promote,
        )
        .add(
            Method::POST,
            "/api/v1/adapters/{id}/rollback",
            training::rollback,
        )
        .add_with(Method::POST, "/api/v1/campaigns", campaigns::create, intake)
        .add(Method::GET, "/api/v1/campaigns", campaigns::list)
        .add(
            Method::GET,
            "/api/v1/campaigns/{id}",
            campaigns::get_campaign,
        )
        .add(
            Method::GET,
            "/api/v1/campaigns/{id}/results",
            campaigns::results,
        )
        .add(
            Method::POST,
            "/api/v1/campaigns/{id}/pause",
            campaigns::pause,
        )
        .add(
            Method::POST,
            "/api/v1/campaigns/{id}/resume",
            campaigns::resume,
        )
        .add(Method::POST, "/api/v1/campaigns/{id}/stop", campaigns::stop)
        .add(
            Method::POST,
            "/api/v1/campaigns/{id}/scale",
            campaigns::scale,
        )
        .add_with(Method::POST, "/api/v1/datasets", datasets::create, intake)
        .add(Method::GET, "/api/v1/datasets", datasets::list)
        .add(Method::GET, "/api/v1/datasets/{id}", datasets::get_dataset)
        .add(Method::DELETE, "/api/v1/datasets/{id}", datasets::delete)
        .add(
            Method::POST,
            "/api/v1/datasets/{id}/cancel",
            datasets::cancel,
        )
        .add(
            Method::GET,
            "/api/v1/datasets/{id}/data.jsonl",
            datasets::export,
        )
        .add(Method::GET, "/api/openapi.json", openapi_json)
        // OpenAI-compatible routes and the websocket sit outside /api (their
        // paths are fixed by the protocols) behind the same keys.
        .add_with(
            Method::POST,
            "/v1/chat/completions",
            chat::complete,
            limited_intake(CHAT_BODY_LIMIT),
        )
        .add(Method::GET, "/v1/models", models::list_openai)
        .add(Method::GET, "/ws/workflows/{id}", workflows::watch)
        .add(Method::GET, "/ws/events", events::websocket)
        // Compatibility aliases: the original orchestrator's paths, same
        // keys and limits as the v1 routes they call (routes/compat.rs).
        .add(Method::GET, "/api/master/status", compat::master_status)
        .add(Method::GET, "/api/master/metrics", compat::master_metrics)
        .add_with(
            Method::POST,
            "/api/master/workflow",
            compat::master_workflow,
            intake,
        )
        .add_with(
            Method::POST,
            "/api/master/campaign",
            compat::master_campaign,
            intake,
        )
        .add(
            Method::GET,
            "/api/master/campaigns",
            compat::master_campaigns,
        )
        .add(Method::POST, "/api/master/start", system::master_start)
        .add(Method::POST, "/api/master/stop", system::master_stop)
        .add_with(
            Method::POST,
            "/api/master/training",
            datasets::master_training,
            intake,
        )
        .add_with(
            Method::POST,
            "/api/v1/workflow/execute",
            compat::execute_workflow,
            intake,
        )
        .add(Method::GET, "/ws/workflow/{id}", compat::watch_workflow)
        .layer(middleware::from_fn_with_state(keys, auth::require_key));
    Routes::default()
        .add(Method::GET, "/", crate::console::index)
        .add(Method::GET, "/console/{asset}", crate::console::asset)
        .add(Method::GET, "/health", health::health)
        .add(Method::GET, "/ready", health::ready)
        .add(Method::GET, "/metrics", health::metrics)
        .merge(secured)
}

/// Wraps a route that takes in work: refused while the system is stopped.
fn intake(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(middleware::from_fn(crate::lifecycle::refuse_when_stopped))
}

pub fn router(state: AppState, guards: Guards) -> Router {
    let Guards { keys, hosts } = guards;
    let limits = state.limits.clone();
    routes(keys, limits.clone())
        .router
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use utoipa::openapi::RefOr;

    use super::*;

    /// The (method, path) pairs the OpenAPI document lists.
    fn documented(doc: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
                ("TRACE", &item.trace),
            ] {
                if operation.is_some() {
                    found.insert((method.to_string(), path.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn the_document_lists_exactly_the_served_routes() {
        let limits = Limits::new(1, Duration::from_secs(1), 1);
        let served: BTreeSet<(String, String)> = routes(ApiKeys::default(), limits)
            .served
            .into_iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        let documented = documented(&ApiDoc::openapi());
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let not_served: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served but missing from the OpenAPI document: {undocumented:?}"
        );
        assert!(
            not_served.is_empty(),
            "in the OpenAPI document but not served: {not_served:?}"
        );
    }

    /// A parameter documented "in path" that the path does not hold is a
    /// query parameter documented in the wrong place (clients and fuzzers
    /// would never send it).
    #[test]
    fn path_parameters_are_in_their_paths() {
        let doc = ApiDoc::openapi();
        for (path, item) in &doc.paths.paths {
            for operation in [&item.get, &item.post, &item.delete, &item.patch]
                .into_iter()
                .flatten()
            {
                for parameter in operation.parameters.iter().flatten() {
                    if parameter.parameter_in == ParameterIn::Path {
                        assert!(
                            path.contains(&format!("{{{}}}", parameter.name)),
                            "{path}: {} is documented as a path parameter",
                            parameter.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_error_status_is_documented_with_the_error_body() {
        let doc = ApiDoc::openapi();
        for (path, item) in &doc.paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                let Some(operation) = operation else { continue };
                let responses = &operation.responses.responses;
                let mut expected = vec!["403", "503"];
                if operation.security.is_some() {
                    expected.push("401");
                }
                if operation.request_body.is_some() {
                    expected.extend(["400", "413", "415", "422"]);
                }
                for status in expected {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} does not document {status}"
                    );
                }
                for (status, response) in responses {
                    if !(status.starts_with('4') || status.starts_with('5')) || path == "/ready" {
                        continue;
                    }
                    let RefOr::T(response) = response else {
                        panic!("{method} {path} {status}: a reference")
                    };
                    let schema = response
                        .content
                        .get("application/json")
                        .and_then(|c| c.schema.as_ref());
                    assert!(
                        matches!(schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/ErrorBody")),
                        "{method} {path} {status} is not documented with ErrorBody"
                    );
                }
            }
        }
    }
}
