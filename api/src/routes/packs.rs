//! Context packs: create from documents or a server directory, follow
//! indexing progress, search, re-index what changed, delete.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchestrator_memory::{
    chunking::DocKind,
    packs::{self, Document, IndexPlan, PackError, PackSummary},
    vector::{Filter, SearchMode},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    error::{ApiError, ApiResult, ErrorBody, in_range, shown},
    extract::{ApiBytes, ApiJson, json_object},
    state::AppState,
};

/// Most results one search returns.
const MAX_K: usize = 100;
/// Longest search query, in bytes.
const MAX_QUERY_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentIn {
    /// Name of the document inside the pack, e.g. `docs/install.md`.
    pub source: String,
    pub text: String,
    /// `text`, `markdown` or `code`; guessed from the source's extension
    /// when omitted.
    pub kind: Option<DocKind>,
}

/// Either `documents` or `path` (a directory under ORCH_INDEX_ROOTS).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePack {
    pub name: String,
    pub documents: Option<Vec<DocumentIn>>,
    pub path: Option<String>,
}

/// New documents for a document pack; path packs are read again from disk.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reindex {
    pub documents: Option<Vec<DocumentIn>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IndexingStarted {
    pub pack: PackSummary,
    pub plan: IndexPlan,
    /// Embed jobs queued.
    pub jobs: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PackList {
    pub packs: Vec<PackSummary>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    /// Results wanted, 1 to 100 (default 5).
    pub k: Option<usize>,
    /// Only chunks of this source.
    pub source: Option<String>,
    /// Only chunks of this kind (`text`, `markdown`, `code`).
    pub kind: Option<String>,
    /// Scan every chunk instead of using the ANN index.
    #[serde(default)]
    pub exact: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub score: f32,
    pub source: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub text: String,
    pub start_line: u32,
    pub end_line: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchResult>,
}

impl From<PackError> for ApiError {
    fn from(err: PackError) -> Self {
        match err {
            PackError::Invalid(message) => ApiError::invalid(message),
            PackError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "path_not_allowed", message)
            }
            PackError::NotFound(id) => pack_not_found(&id),
            PackError::Internal(err) => ApiError::backend(err),
        }
    }
}

fn pack_not_found(id: &str) -> ApiError {
    ApiError::not_found("pack_not_found", format!("no context pack {:?}", shown(id)))
}

/// A missing embedding model is the operator's to fix; say how.
fn model_error(state: &AppState, err: anyhow::Error) -> ApiError {
    if state.memory.model_present() {
        ApiError::backend(err)
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "the embedding model is not installed on this server \
             (run deploy/scripts/fetch-models.sh)",
        )
    }
}

fn documents(input: Vec<DocumentIn>) -> ApiResult<Vec<Document>> {
    if input.is_empty() || input.len() > packs::MAX_FILES {
        return Err(ApiError::invalid(format!(
            "documents must hold 1 to {} entries",
            packs::MAX_FILES
        )));
    }
    let docs: Vec<Document> = input
        .into_iter()
        .map(|d| Document {
            kind: d.kind.unwrap_or_else(|| DocKind::from_path(&d.source)),
            source: d.source,
            text: d.text,
        })
        .collect();
    packs::check_documents(&docs)?;
    Ok(docs)
}

/// Reads a server directory off the async runtime.
async fn read_root(state: &AppState, path: &str) -> ApiResult<(std::path::PathBuf, Vec<Document>)> {
    let root = packs::check_root(path, &state.index_roots)?;
    let walk_root = root.clone();
    let scan = tokio::task::spawn_blocking(move || packs::read_tree(&walk_root))
        .await
        .map_err(|e| ApiError::backend(e.into()))??;
    Ok((root, scan.documents))
}

/// Applies a plan: drop vectors of removed files, queue the embed jobs.
async fn start_indexing(state: &AppState, id: &str, plan: IndexPlan) -> ApiResult<IndexingStarted> {
    for source in &plan.removed_sources {
        state.memory.forget_source(id, source).await?;
    }
    let jobs = plan.jobs.len();
    state.queue.push(plan.jobs.clone()).await?;
    Ok(IndexingStarted {
        pack: state.memory.packs.summary(id).await?,
        plan,
        jobs,
    })
}

/// Indexes a server directory (`ORCH_AUTO_INDEX`): the pack read from it
/// is re-indexed (only changed files embed again), or created, named after
/// the directory.
pub async fn index_root(state: &AppState, root: &std::path::Path) -> ApiResult<IndexingStarted> {
    let (root, docs) = read_root(state, &root.to_string_lossy()).await?;
    let packs = &state.memory.packs;
    let shown_root = root.to_string_lossy().to_string();
    let existing = packs
        .list()
        .await?
        .into_iter()
        .find(|pack| pack.root.as_deref() == Some(shown_root.as_str()));
    let id = match existing {
        Some(pack) => pack.id,
        None => {
            let name = root
                .file_name()
                .map_or_else(|| shown_root.clone(), |n| n.to_string_lossy().to_string());
            packs.create(&name, Some(&root)).await?
        }
    };
    let plan = packs.sync(&id, docs).await?;
    start_indexing(state, &id, plan).await
}

/// Create a pack and queue its files for embedding.
#[utoipa::path(post, path = "/api/v1/context-packs", request_body = CreatePack, responses(
    (status = 202, body = IndexingStarted), (status = 403, body = ErrorBody),
    (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreatePack>,
) -> ApiResult<(StatusCode, Json<IndexingStarted>)> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::invalid("name must be 1 to 128 characters"));
    }
    let (root, docs) = match (body.documents, body.path) {
        (Some(docs), None) => (None, documents(docs)?),
        (None, Some(path)) => {
            let (root, docs) = read_root(&state, &path).await?;
            (Some(root), docs)
        }
        _ => return Err(ApiError::invalid("give either documents or path, not both")),
    };
    let packs = &state.memory.packs;
    let id = packs.create(name, root.as_deref()).await?;
    let plan = packs.sync(&id, docs).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(start_indexing(&state, &id, plan).await?),
    ))
}

/// Every pack with its counts and indexing progress.
#[utoipa::path(get, path = "/api/v1/context-packs", responses((status = 200, body = PackList)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<PackList>> {
    Ok(Json(PackList {
        packs: state.memory.packs.list().await?,
    }))
}

/// One pack with its counts and indexing progress.
#[utoipa::path(get, path = "/api/v1/context-packs/{id}", params(("id" = uuid::Uuid, Path)), responses(
    (status = 200, body = PackSummary), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_pack(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PackSummary>> {
    check_id(&id)?;
    Ok(Json(state.memory.packs.summary(&id).await?))
}

/// Index what changed: new and changed files are embedded again, removed
/// ones dropped, unchanged ones left alone.
#[utoipa::path(post, path = "/api/v1/context-packs/{id}/reindex", params(("id" = uuid::Uuid, Path)),
    request_body = Reindex, responses((status = 202, body = IndexingStarted),
    (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn reindex(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<IndexingStarted>)> {
    check_id(&id)?;
    // The body is optional: path packs are re-indexed with none.
    let body: Reindex = if body.iter().all(u8::is_ascii_whitespace) {
        Reindex::default()
    } else {
        json_object(&body)?
    };
    let pack = state.memory.packs.pack(&id).await?;
    let docs = match (pack.root, body.documents) {
        (Some(root), None) => read_root(&state, &root).await?.1,
        (None, Some(docs)) => documents(docs)?,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "this pack is read from the server's disk; re-index it without documents",
            ));
        }
        (None, None) => return Err(ApiError::invalid("documents are required for this pack")),
    };
    let plan = state.memory.packs.sync(&id, docs).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(start_indexing(&state, &id, plan).await?),
    ))
}

/// The chunks of a pack nearest to a query, with scores and sources.
#[utoipa::path(post, path = "/api/v1/context-packs/{id}/search", params(("id" = uuid::Uuid, Path)),
    request_body = SearchRequest, responses((status = 200, body = SearchResults),
    (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn search(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SearchRequest>,
) -> ApiResult<Json<SearchResults>> {
    check_id(&id)?;
    if body.query.trim().is_empty() {
        return Err(ApiError::invalid("query must not be empty"));
    }
    if body.query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::invalid(format!(
            "query must be at most {MAX_QUERY_BYTES} bytes"
        )));
    }
    in_range("k", body.k, 1..=MAX_K)?;
    state.memory.packs.pack(&id).await?;
    let filter = Filter {
        source: body.source,
        kind: body.kind,
        ..Filter::pack(&id)
    };
    let mode = if body.exact {
        SearchMode::Exact
    } else {
        SearchMode::Auto
    };
    let hits = state
        .memory
        .search(&body.query, body.k.unwrap_or(5), &filter, mode)
        .await
        .map_err(|e| model_error(&state, e))?;
    let results = hits
        .into_iter()
        .map(|hit| SearchResult {
            score: hit.score,
            source: hit.payload.source,
            kind: hit.payload.kind,
            title: hit.payload.title,
            text: hit.payload.text,
            start_line: hit.payload.start_line,
            end_line: hit.payload.end_line,
        })
        .collect();
    Ok(Json(SearchResults { results }))
}

/// Delete a pack, its files and its vectors.
#[utoipa::path(delete, path = "/api/v1/context-packs/{id}", params(("id" = uuid::Uuid, Path)), responses(
    (status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    state.memory.packs.delete(&id).await?;
    state.memory.forget_pack(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_id(id: &str) -> ApiResult<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| pack_not_found(id))
}
