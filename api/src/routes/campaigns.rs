//! Data-mining campaigns: create, watch, page through results, and steer
//! (pause, resume, stop, scale).

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use orchestrator_campaign::{
    CampaignError,
    model::{CampaignRequest, CampaignView, Status},
    store::{ResultFilter, ResultRow},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::{
    error::{ApiError, ApiResult, ErrorBody, shown},
    extract::ApiJson,
    state::AppState,
};

/// Campaigns listed at most by one `GET /api/v1/campaigns`.
const MAX_LISTED: u64 = 500;
/// Results per page at most.
const MAX_PAGE: u64 = 1_000;
/// Results read per store query while exporting JSONL.
const EXPORT_BATCH: u64 = 1_000;

impl From<CampaignError> for ApiError {
    fn from(err: CampaignError) -> Self {
        match err {
            CampaignError::Invalid(message) => ApiError::invalid(message),
            CampaignError::NotFound(id) => {
                ApiError::not_found("campaign_not_found", format!("no campaign {}", shown(&id)))
            }
            err @ CampaignError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "campaign_state", err.to_string())
            }
            CampaignError::Backend(err) => ApiError::backend(err),
        }
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })
}

/// A campaign id as the path gives it: unknown unless it is a UUID.
fn campaign_id(id: &str) -> ApiResult<&str> {
    uuid::Uuid::parse_str(id).map_err(|_| {
        ApiError::not_found("campaign_not_found", format!("no campaign {}", shown(id)))
    })?;
    Ok(id)
}

/// Start a campaign; workers pick it up (in-process in embedded mode).
#[utoipa::path(
    post, path = "/api/v1/campaigns", tag = "campaigns",
    request_body = CampaignRequest,
    responses(
        (status = 201, description = "Campaign created and queued", body = CampaignView),
        (status = 422, description = "Invalid campaign", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CampaignRequest>,
) -> ApiResult<(StatusCode, Json<CampaignView>)> {
    let row = state.campaigns.create(request).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.campaigns.view_of(row).await?),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only campaigns in this status.
    pub status: Option<String>,
    /// At most this many (1..=500, default 100), newest first.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct CampaignList {
    pub campaigns: Vec<CampaignView>,
}

/// Campaigns, newest first.
#[utoipa::path(
    get, path = "/api/v1/campaigns", tag = "campaigns", params(ListQuery),
    responses(
        (status = 200, description = "Campaigns", body = CampaignList),
        (status = 422, description = "Invalid query", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    raw: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<CampaignList>> {
    let q = query(raw)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "status: {:?} is not one of pending, running, paused, completed, failed, stopped",
                shown(s)
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: must be between 1 and {MAX_LISTED}"
        )));
    }
    let rows = state.campaigns.store().list(status, limit).await?;
    let mut campaigns = Vec::with_capacity(rows.len());
    for row in rows {
        campaigns.push(state.campaigns.view_of(row).await?);
    }
    Ok(Json(CampaignList { campaigns }))
}

/// One campaign: status, progress, goals, and the workers serving it.
#[utoipa::path(
    get, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        (status = 404, description = "No such campaign", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CampaignView>> {
    Ok(Json(state.campaigns.view(campaign_id(&id)?).await?))
}

macro_rules! lifecycle_route {
    ($name:ident, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(
            post, path = $path, tag = "campaigns",
            params(("id" = uuid::Uuid, Path, description = "Campaign id")),
            responses(
                (status = 200, description = "The campaign after the change", body = CampaignView),
                (status = 404, description = "No such campaign", body = ErrorBody),
                (status = 409, description = "Not possible in its current status", body = ErrorBody),
            ),
            security(("bearer" = []))
        )]
        pub async fn $name(
            State(state): State<AppState>,
            Path(id): Path<String>,
        ) -> ApiResult<Json<CampaignView>> {
            Ok(Json(state.campaigns.$name(campaign_id(&id)?).await?))
        }
    };
}

lifecycle_route!(
    pause,
    "/api/v1/campaigns/{id}/pause",
    "Stop handing out its work; the frontier is kept."
);
lifecycle_route!(
    resume,
    "/api/v1/campaigns/{id}/resume",
    "Hand out its work again."
);
lifecycle_route!(stop, "/api/v1/campaigns/{id}/stop", "End it for good.");

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Workers that may serve it across the fleet (1..=1000).
    pub workers: u32,
}

/// Change how many workers may serve it, live.
#[utoipa::path(
    post, path = "/api/v1/campaigns/{id}/scale", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    request_body = ScaleRequest,
    responses(
        (status = 200, description = "The campaign with its new limit", body = CampaignView),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 409, description = "It has ended", body = ErrorBody),
        (status = 422, description = "Invalid worker count", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn scale(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ScaleRequest>,
) -> ApiResult<Json<CampaignView>> {
    Ok(Json(
        state
            .campaigns
            .scale(campaign_id(&id)?, request.workers)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    /// Only items of this type (`Product`, `component`).
    pub kind: Option<String>,
    /// Only items in this syntax (`json-ld`, `microdata`, `rdfa`, `storybook`).
    pub syntax: Option<String>,
    /// Only items found on URLs starting with this.
    pub url_prefix: Option<String>,
    /// Results after this cursor (the previous page's `next`).
    pub after: Option<i64>,
    /// Page size (1..=1000, default 100); ignored by the JSONL export.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// `json` (default, one page) or `jsonl` (every match, one per line).
    pub format: Option<String>,
}

/// One stored item.
#[derive(Serialize, ToSchema)]
pub struct ResultView {
    pub id: i64,
    pub url: String,
    pub kind: String,
    pub syntax: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub found_at_ms: i64,
}

impl From<ResultRow> for ResultView {
    fn from(row: ResultRow) -> Self {
        Self {
            data: serde_json::from_str(&row.data).unwrap_or(Value::Null),
            id: row.id,
            url: row.url,
            kind: row.kind,
            syntax: row.syntax,
            found_at_ms: row.found_at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ResultPage {
    pub results: Vec<ResultView>,
    /// Cursor of the next page (`after`), absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

/// The items a campaign found, deduplicated: a page at a time, or all of
/// them as JSON lines (`format=jsonl`).
#[utoipa::path(
    get, path = "/api/v1/campaigns/{id}/results", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id"), ResultsQuery),
    responses(
        (status = 200, description = "A page of results, or with `format=jsonl` every match as JSON lines", content(
            (ResultPage = "application/json"),
            (String = "application/x-ndjson"),
        )),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 422, description = "Invalid query", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn results(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Result<Query<ResultsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let id = campaign_id(&id)?.to_string();
    let q = query(raw)?;
    // Unknown campaigns are a 404, not an empty list.
    state.campaigns.view(&id).await?;
    for (field, value) in [
        ("kind", &q.kind),
        ("syntax", &q.syntax),
        ("url_prefix", &q.url_prefix),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 2_048)
        {
            return Err(ApiError::invalid(format!("{field}: 1 to 2048 bytes")));
        }
    }
    let filter = ResultFilter {
        kind: q.kind,
        syntax: q.syntax,
        url_prefix: q.url_prefix,
    };
    let after = q.after.unwrap_or(0);
    match q.format.as_deref().unwrap_or("json") {
        "json" => {
            let limit = q.limit.unwrap_or(100);
            if !(1..=MAX_PAGE).contains(&limit) {
                return Err(ApiError::invalid(format!(
                    "limit: must be between 1 and {MAX_PAGE}"
                )));
            }
            let rows = state
                .campaigns
                .store()
                .results(&id, &filter, after, limit)
                .await?;
            let next = (rows.len() as u64 == limit)
                .then(|| rows.last().map(|r| r.id))
                .flatten();
            let page = ResultPage {
                results: rows.into_iter().map(ResultView::from).collect(),
                next,
            };
            Ok(Json(page).into_response())
        }
        "jsonl" => Ok(export(state, id, filter, after)),
        other => Err(ApiError::invalid(format!(
            "format: {:?} is not json or jsonl",
            shown(other)
        ))),
    }
}

/// Streams every matching result as one JSON object per line, reading the
/// store a batch at a time so an export of millions holds one batch.
fn export(state: AppState, id: String, filter: ResultFilter, after: i64) -> Response {
    let batches = futures::stream::unfold(Some(after), move |cursor| {
        let (state, id, filter) = (state.clone(), id.clone(), filter.clone());
        async move {
            let after = cursor?;
            match state
                .campaigns
                .store()
                .results(&id, &filter, after, EXPORT_BATCH)
                .await
            {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = (rows.len() as u64 == EXPORT_BATCH)
                        .then(|| rows.last().map(|r| r.id))
                        .flatten();
                    let mut text = String::new();
                    for row in rows {
                        if let Ok(line) = serde_json::to_string(&ResultView::from(row)) {
                            text.push_str(&line);
                            text.push('\n');
                        }
                    }
                    Some((Ok::<_, std::io::Error>(text), next))
                }
                Err(err) => {
                    tracing::error!("campaign export: {err:#}");
                    Some((Err(std::io::Error::other("store unavailable")), None))
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(batches.boxed()),
    )
        .into_response()
}
