//! Training-data generation runs: `/api/v1/datasets`. A run is generated in
//! shards by the fleet's `datagen` workers (see orchestrator-datagen).

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use flate2::write::GzEncoder;
use orchestrator_datagen::runs::{DatasetError, DatasetRequest, DatasetView, Split};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    error::{ApiError, ApiResult, ErrorBody, shown},
    extract::ApiJson,
    state::AppState,
};

impl From<DatasetError> for ApiError {
    fn from(err: DatasetError) -> Self {
        match err {
            DatasetError::Invalid(err) => ApiError::invalid(err.to_string()),
            DatasetError::Store(err) => ApiError::backend(err),
        }
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("dataset_not_found", format!("no dataset {}", shown(id)))
}

/// The run, or 404 naming `id`.
fn found(id: &str, view: Option<DatasetView>) -> ApiResult<Json<DatasetView>> {
    view.map(Json).ok_or_else(|| not_found(id))
}

/// A run id as the path gives it: unknown unless it is a UUID.
fn dataset_id(id: &str) -> ApiResult<&str> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| not_found(id))
}

/// Start a generation run: `count` examples from the `sources` mix, cut
/// into shards of `shard_size` that the fleet's `datagen` workers generate.
/// The same request with the same `seed` gives the same dataset.
#[utoipa::path(
    post, path = "/api/v1/datasets", tag = "datasets", request_body = DatasetRequest,
    responses(
        (status = 201, description = "The run, its shards queued", body = DatasetView),
        (status = 422, description = "A field out of range, an unknown source or format", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DatasetRequest>,
) -> ApiResult<(StatusCode, Json<DatasetView>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.datasets.create(request).await?),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetView>,
}

/// The latest 100 runs, newest first.
#[utoipa::path(
    get, path = "/api/v1/datasets", tag = "datasets",
    responses((status = 200, description = "Runs", body = DatasetList)),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<DatasetList>> {
    Ok(Json(DatasetList {
        datasets: state.datasets.list().await?,
    }))
}

/// One run: status, shards done, examples/s, what each filter dropped,
/// examples by source and by family.
#[utoipa::path(
    get, path = "/api/v1/datasets/{id}", tag = "datasets",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The run", body = DatasetView),
        (status = 404, description = "No such run", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_dataset(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DatasetView>> {
    let id = dataset_id(&id)?;
    found(id, state.datasets.view(id).await?)
}

/// Stop a run: no further shard is generated; those done stay.
#[utoipa::path(
    post, path = "/api/v1/datasets/{id}/cancel", tag = "datasets",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, description = "The run, cancelled (or already finished)", body = DatasetView),
        (status = 404, description = "No such run", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DatasetView>> {
    let id = dataset_id(&id)?;
    found(id, state.datasets.cancel(id).await?)
}

/// Remove a run and its data.
#[utoipa::path(
    delete, path = "/api/v1/datasets/{id}", tag = "datasets",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such run", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = dataset_id(&id)?;
    match state.datasets.delete(id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found(id)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `train` (default) or `eval`.
    pub split: Option<Split>,
}

/// The dataset as JSON lines, streamed shard by shard in order, repeats
/// across shards left out; gzip-compressed as it streams when the client
/// sends `Accept-Encoding: gzip`. A run still generating gives what is done.
#[utoipa::path(
    get, path = "/api/v1/datasets/{id}/data.jsonl", tag = "datasets",
    params(("id" = uuid::Uuid, Path), ExportQuery),
    responses(
        (status = 200, description = "One example per line", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 422, description = "Unknown split", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let gzip = accepts_gzip(&headers);
    let Query(query) = raw.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let id = dataset_id(&id)?.to_string();
    if !state.datasets.exists(&id).await? {
        return Err(not_found(&id));
    }
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let datasets = state.datasets.clone();
    let split = query.split.unwrap_or_default();
    tokio::spawn(async move {
        let failed = sender.clone();
        if let Err(err) = datasets.export(&id, split, sender).await {
            tracing::warn!("dataset export {id}: {err:#}");
            let _ = failed.send(Err(err)).await;
        }
    });
    let packer = Packer {
        receiver,
        gzip: gzip.then(|| GzEncoder::new(Vec::new(), flate2::Compression::fast())),
    };
    let stream = futures::stream::unfold(Some(packer), |packer| async move {
        let mut packer = packer?;
        let failed = |e: anyhow::Error| std::io::Error::other(format!("{e:#}"));
        match packer.receiver.recv().await {
            Some(Ok(lines)) => {
                let out = match &mut packer.gzip {
                    Some(encoder) => compress(encoder, &lines),
                    None => Ok(lines),
                };
                Some((out, Some(packer)))
            }
            Some(Err(err)) => Some((Err(failed(err)), None)),
            // The end: the gzip trailer, if compressing.
            None => packer.gzip.take().map(|encoder| (encoder.finish(), None)),
        }
    });
    let mut response = (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response();
    if gzip {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

/// Whether the client takes gzip (`Accept-Encoding: gzip`, not `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts.next() == Some("gzip") && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
}

/// The export's chunks on their way out, compressed into one gzip stream
/// when asked (one stream, not a member per chunk: browsers decode only the
/// first member).
struct Packer {
    receiver: tokio::sync::mpsc::Receiver<anyhow::Result<Vec<u8>>>,
    gzip: Option<GzEncoder<Vec<u8>>>,
}

/// Compresses `lines` and returns what the encoder has produced so far
/// (flushed, so a reader can decode up to here).
fn compress(encoder: &mut GzEncoder<Vec<u8>>, lines: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    encoder.write_all(lines)?;
    encoder.flush()?;
    Ok(std::mem::take(encoder.get_mut()))
}

/// The original orchestrator's `POST /api/master/training` (a
/// training-data generation run): [`create`], same body and answer.
#[utoipa::path(
    post, path = "/api/master/training", tag = "compatibility", request_body = DatasetRequest,
    responses(
        (status = 201, description = "As POST /api/v1/datasets", body = DatasetView),
        (status = 422, description = "A field out of range, an unknown source or format", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn master_training(
    state: State<AppState>,
    request: ApiJson<DatasetRequest>,
) -> ApiResult<(StatusCode, Json<DatasetView>)> {
    create(state, request).await
}
