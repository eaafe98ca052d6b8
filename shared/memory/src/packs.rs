//! Context packs: named sets of documents (uploaded, or read from a
//! directory on the server's disk) that workflows retrieve context from.
//! A pack's files live in the store with their content hash; indexing a
//! pack compares hashes, so only new and changed files are embedded again.
//! Embedding itself happens in `embed` jobs (see [`crate::Embed`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Expr,
};
use serde::Serialize;
use serde_json::json;

use super::chunking::DocKind;
use orchestrator_core::{
    now_ms,
    store::{
        pack_entity::{self, Entity as Packs},
        pack_file_entity::{self, Column as FileCol, Entity as PackFiles},
    },
};
use orchestrator_queue::NewJob;

/// The queue that embeds a pack's files.
pub const EMBED_QUEUE: &str = "embed";

/// Largest single document: bigger files are skipped when walking a tree
/// and refused when uploaded.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Most documents in one pack.
pub const MAX_FILES: usize = 20_000;
/// Files per `embed` job: big packs become many jobs that many workers share.
const FILES_PER_JOB: usize = 8;

/// A document to index.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: String,
    pub text: String,
    pub kind: DocKind,
}

/// Why a pack request was refused; each maps to one 4xx.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("context pack {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for PackError {
    fn from(err: sea_orm::DbErr) -> Self {
        PackError::Internal(err.into())
    }
}

/// A pack with its indexing progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PackSummary {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// `indexing` while files wait for embedding, then `ready` (or `failed`
    /// when no file could be indexed).
    pub status: String,
    pub files: u64,
    pub files_indexed: u64,
    pub files_pending: u64,
    pub files_failed: u64,
    pub chunks: u64,
    /// Share of files done (indexed or failed), 0..=1.
    pub progress: f64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What an indexing pass did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct IndexPlan {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    pub unchanged: u64,
    /// Unchanged files queued again because their last embedding had not
    /// finished or had failed.
    pub retried: u64,
    /// Sources removed from the pack, whose vectors must be dropped.
    #[serde(skip)]
    pub removed_sources: Vec<String>,
    /// Embed jobs to enqueue for the added and changed files.
    #[serde(skip)]
    pub jobs: Vec<NewJob>,
}

/// Files found under a root: the text ones, and counts of what was skipped.
#[derive(Debug, Default)]
pub struct TreeScan {
    pub documents: Vec<Document>,
    pub skipped_binary: u64,
    pub skipped_large: u64,
}

/// Checks a document before anything is stored: a name, UTF-8 text with no
/// NUL bytes (binary content), and the size limit.
pub fn check_document(doc: &Document) -> Result<(), PackError> {
    if doc.source.trim().is_empty() || doc.source.len() > 1024 || doc.source.contains('\0') {
        return Err(PackError::Invalid(
            "every document needs a source of 1 to 1024 characters".into(),
        ));
    }
    if doc.text.len() > MAX_FILE_BYTES {
        return Err(PackError::Invalid(format!(
            "document {:?} is {} bytes; the limit is {MAX_FILE_BYTES}",
            doc.source,
            doc.text.len()
        )));
    }
    if looks_binary(doc.text.as_bytes()) {
        return Err(PackError::Invalid(format!(
            "document {:?} looks binary (it contains NUL bytes); only text can be indexed",
            doc.source
        )));
    }
    Ok(())
}

/// Checks every document and that no source appears twice, so a bad
/// upload is refused before anything is stored.
pub fn check_documents(docs: &[Document]) -> Result<(), PackError> {
    let mut seen = std::collections::HashSet::new();
    for doc in docs {
        check_document(doc)?;
        if !seen.insert(doc.source.as_str()) {
            return Err(PackError::Invalid(format!(
                "source {:?} appears twice",
                doc.source
            )));
        }
    }
    Ok(())
}

fn looks_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(8192)].contains(&0)
}

/// Resolves `requested` and checks it lies inside one of the allowed roots
/// (after resolving symlinks and `..`, so neither can escape them).
pub fn check_root(requested: &str, allowed: &[PathBuf]) -> Result<PathBuf, PackError> {
    if allowed.is_empty() {
        return Err(PackError::Forbidden(
            "indexing from the server's disk is disabled: set ORCH_INDEX_ROOTS to the \
             directories it may read"
                .into(),
        ));
    }
    let path = Path::new(requested)
        .canonicalize()
        .map_err(|e| PackError::Invalid(format!("path {requested:?}: {e}")))?;
    if !path.is_dir() {
        return Err(PackError::Invalid(format!(
            "path {requested:?} is not a directory"
        )));
    }
    let inside = allowed
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .any(|root| path.starts_with(root));
    if !inside {
        return Err(PackError::Forbidden(format!(
            "path {requested:?} is outside the directories this server may index \
             (ORCH_INDEX_ROOTS)"
        )));
    }
    Ok(path)
}

/// Walks `root` the way git sees it (.gitignore, .ignore and hidden files
/// respected, even outside a git repository) and reads its text files.
pub fn read_tree(root: &Path) -> Result<TreeScan, PackError> {
    let mut scan = TreeScan::default();
    let walker = ignore::WalkBuilder::new(root)
        .require_git(false)
        .follow_links(false)
        .build();
    for entry in walker {
        let entry =
            entry.map_err(|e| PackError::Invalid(format!("walking {}: {e}", root.display())))?;
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if size > MAX_FILE_BYTES as u64 {
            scan.skipped_large += 1;
            continue;
        }
        let bytes = std::fs::read(entry.path())
            .map_err(|e| PackError::Invalid(format!("reading {}: {e}", entry.path().display())))?;
        let text = match String::from_utf8(bytes) {
            Ok(text) if !looks_binary(text.as_bytes()) => text,
            _ => {
                scan.skipped_binary += 1;
                continue;
            }
        };
        let source = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .replace('\\', "/");
        scan.documents.push(Document {
            kind: DocKind::from_path(&source),
            source,
            text,
        });
        if scan.documents.len() > MAX_FILES {
            return Err(PackError::Invalid(format!(
                "{} holds more than {MAX_FILES} text files; index a narrower directory",
                root.display()
            )));
        }
    }
    if scan.documents.is_empty() {
        return Err(PackError::Invalid(format!(
            "no text files to index under {} ({} binary and {} oversized files skipped)",
            root.display(),
            scan.skipped_binary,
            scan.skipped_large
        )));
    }
    Ok(scan)
}

/// Context packs in the store.
#[derive(Clone)]
pub struct PackStore {
    db: DatabaseConnection,
}

impl PackStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Creates an empty pack.
    pub async fn create(&self, name: &str, root: Option<&Path>) -> Result<String, PackError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms() as i64;
        Packs::insert(pack_entity::ActiveModel {
            id: Set(id.clone()),
            name: Set(name.to_string()),
            root: Set(root.map(|r| r.display().to_string())),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
        })
        .exec(&self.db)
        .await?;
        Ok(id)
    }

    pub async fn pack(&self, id: &str) -> Result<pack_entity::Model, PackError> {
        Packs::find_by_id(id.to_string())
            .one(&self.db)
            .await?
            .ok_or_else(|| PackError::NotFound(id.to_string()))
    }

    /// Makes the pack's files equal `documents`: new and changed files are
    /// stored as pending (with their embed jobs in the plan), removed ones
    /// deleted, unchanged ones left alone. One transaction: a failure
    /// changes nothing.
    pub async fn sync(
        &self,
        pack_id: &str,
        documents: Vec<Document>,
    ) -> Result<IndexPlan, PackError> {
        let existing: HashMap<String, (String, String)> = PackFiles::find()
            .select_only()
            .column(FileCol::Path)
            .column(FileCol::Hash)
            .column(FileCol::Status)
            .filter(FileCol::PackId.eq(pack_id))
            .into_tuple::<(String, String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|(path, hash, status)| (path, (hash, status)))
            .collect();
        let mut plan = IndexPlan::default();
        let mut pending = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let tx = orchestrator_core::store::begin_write(&self.db).await?;
        let now = now_ms() as i64;
        for doc in documents {
            if !seen.insert(doc.source.clone()) {
                return Err(PackError::Invalid(format!(
                    "source {:?} appears twice",
                    doc.source
                )));
            }
            let hash = blake3::hash(doc.text.as_bytes()).to_hex().to_string();
            match existing.get(&doc.source) {
                Some((old, status)) if *old == hash && status == "indexed" => {
                    plan.unchanged += 1;
                    continue;
                }
                Some((old, _)) if *old == hash => plan.retried += 1,
                Some(_) => plan.changed += 1,
                None => plan.added += 1,
            }
            let row = pack_file_entity::ActiveModel {
                pack_id: Set(pack_id.to_string()),
                path: Set(doc.source.clone()),
                kind: Set(doc.kind.as_str().to_string()),
                hash: Set(hash.clone()),
                content: Set(doc.text),
                status: Set("pending".into()),
                chunks: Set(0),
                error: Set(None),
                updated_at_ms: Set(now),
            };
            PackFiles::delete_many()
                .filter(FileCol::PackId.eq(pack_id))
                .filter(FileCol::Path.eq(doc.source.as_str()))
                .exec(&tx)
                .await?;
            PackFiles::insert(row).exec(&tx).await?;
            pending.push(json!({"path": doc.source, "hash": hash}));
        }
        for path in existing.keys().filter(|p| !seen.contains(*p)) {
            PackFiles::delete_many()
                .filter(FileCol::PackId.eq(pack_id))
                .filter(FileCol::Path.eq(path.as_str()))
                .exec(&tx)
                .await?;
            plan.removed += 1;
            plan.removed_sources.push(path.clone());
        }
        Packs::update_many()
            .col_expr(pack_entity::Column::UpdatedAtMs, Expr::value(now))
            .filter(pack_entity::Column::Id.eq(pack_id))
            .exec(&tx)
            .await?;
        tx.commit().await?;
        plan.jobs = pending
            .chunks(FILES_PER_JOB)
            .map(|files| embed_job(pack_id, files))
            .collect();
        Ok(plan)
    }

    /// A file as an embed job sees it, if it still has this content.
    pub async fn file(
        &self,
        pack_id: &str,
        path: &str,
    ) -> Result<Option<pack_file_entity::Model>, PackError> {
        Ok(
            PackFiles::find_by_id((pack_id.to_string(), path.to_string()))
                .one(&self.db)
                .await?,
        )
    }

    /// Records the outcome of embedding one file version; a newer version
    /// stored meanwhile (different hash) is left alone.
    pub async fn finish_file(
        &self,
        pack_id: &str,
        path: &str,
        hash: &str,
        outcome: Result<usize, String>,
    ) -> Result<(), PackError> {
        let (status, chunks, error) = match outcome {
            Ok(chunks) => ("indexed", chunks as i32, None),
            Err(message) => ("failed", 0, Some(message)),
        };
        PackFiles::update_many()
            .col_expr(FileCol::Status, Expr::value(status))
            .col_expr(FileCol::Chunks, Expr::value(chunks))
            .col_expr(FileCol::Error, Expr::value(error))
            .col_expr(FileCol::UpdatedAtMs, Expr::value(now_ms() as i64))
            .filter(FileCol::PackId.eq(pack_id))
            .filter(FileCol::Path.eq(path))
            .filter(FileCol::Hash.eq(hash))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn summary(&self, id: &str) -> Result<PackSummary, PackError> {
        let pack = self.pack(id).await?;
        self.summarise(pack).await
    }

    pub async fn list(&self) -> Result<Vec<PackSummary>, PackError> {
        let packs = Packs::find()
            .order_by_asc(pack_entity::Column::CreatedAtMs)
            .all(&self.db)
            .await?;
        let mut out = Vec::with_capacity(packs.len());
        for pack in packs {
            out.push(self.summarise(pack).await?);
        }
        Ok(out)
    }

    /// Deletes a pack and its files (its vectors are the caller's to drop).
    pub async fn delete(&self, id: &str) -> Result<(), PackError> {
        self.pack(id).await?;
        let tx = orchestrator_core::store::begin_write(&self.db).await?;
        PackFiles::delete_many()
            .filter(FileCol::PackId.eq(id))
            .exec(&tx)
            .await?;
        Packs::delete_by_id(id.to_string()).exec(&tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn summarise(&self, pack: pack_entity::Model) -> Result<PackSummary, PackError> {
        let rows: Vec<(String, i64, Option<i64>)> = PackFiles::find()
            .select_only()
            .column(FileCol::Status)
            .column_as(FileCol::Path.count(), "files")
            .column_as(FileCol::Chunks.sum(), "chunks")
            .filter(FileCol::PackId.eq(pack.id.as_str()))
            .group_by(FileCol::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        let count = |status: &str| {
            rows.iter()
                .filter(|(s, _, _)| s == status)
                .map(|(_, n, _)| *n as u64)
                .sum::<u64>()
        };
        let (indexed, pending, failed) = (count("indexed"), count("pending"), count("failed"));
        let files = indexed + pending + failed;
        let chunks = rows.iter().map(|(_, _, c)| c.unwrap_or(0) as u64).sum();
        let status = if pending > 0 {
            "indexing"
        } else if failed > 0 && indexed == 0 {
            "failed"
        } else {
            "ready"
        };
        Ok(PackSummary {
            id: pack.id,
            name: pack.name,
            root: pack.root,
            status: status.into(),
            files,
            files_indexed: indexed,
            files_pending: pending,
            files_failed: failed,
            chunks,
            progress: if files == 0 {
                1.0
            } else {
                (indexed + failed) as f64 / files as f64
            },
            created_at_ms: pack.created_at_ms,
            updated_at_ms: pack.updated_at_ms,
        })
    }
}

fn embed_job(pack_id: &str, files: &[serde_json::Value]) -> NewJob {
    NewJob::new(EMBED_QUEUE, json!({"pack_id": pack_id, "files": files}))
}
