//! Vector stores behind one trait: the embedded default (persisted in
//! SQLite under `ORCH_DATA_DIR`, searched in memory, exact or HNSW) and
//! Qdrant when `QDRANT_URL` is set. Both store the same payload and apply
//! the same filters, so everything above them is backend-agnostic.

mod embedded;
mod hnsw;
pub mod index;
mod qdrant;
mod simd;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedStore;
pub use index::Index;
pub use qdrant::QdrantStore;

/// What is stored with each vector: the chunk itself and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkPayload {
    /// The context pack (or memory space) the chunk belongs to.
    pub pack: String,
    /// The document or file path inside the pack.
    pub source: String,
    /// `text`, `markdown`, `code` or `memory`.
    pub kind: String,
    /// Heading path or function name the chunk sits under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub text: String,
    /// 1-based inclusive line range of the chunk in its source.
    pub start_line: u32,
    pub end_line: u32,
}

/// One vector with its payload. Ids are UUIDs, which Qdrant accepts as is.
#[derive(Debug, Clone)]
pub struct Point {
    pub id: uuid::Uuid,
    pub vector: Vec<f32>,
    pub payload: ChunkPayload,
}

/// Equality filters on payload fields; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub packs: Option<Vec<String>>,
    pub source: Option<String>,
    pub kind: Option<String>,
}

impl Filter {
    pub fn pack(pack: impl Into<String>) -> Self {
        Self {
            packs: Some(vec![pack.into()]),
            ..Default::default()
        }
    }
}

/// How to search: `Auto` lets the store pick (exact while that is fast,
/// the ANN index on large sets), `Exact` always scans every candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchMode {
    #[default]
    Auto,
    Exact,
}

/// One search result; `score` is cosine similarity (vectors are unit length).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Hit {
    pub id: uuid::Uuid,
    pub score: f32,
    pub payload: ChunkPayload,
}

/// A store of unit-length vectors with chunk payloads.
#[async_trait]
pub trait VectorStore: Send + Sync + 'static {
    /// Backend name for logs and `/api/v1/status`: `embedded` or `qdrant`.
    fn backend(&self) -> &'static str;

    /// Inserts or replaces points by id.
    async fn upsert(&self, points: Vec<Point>) -> anyhow::Result<()>;

    /// Removes every point the filter matches.
    async fn delete(&self, filter: &Filter) -> anyhow::Result<()>;

    /// The `k` nearest points the filter matches, best first.
    async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: &Filter,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>>;

    /// How many points the filter matches.
    async fn count(&self, filter: &Filter) -> anyhow::Result<u64>;
}

/// Opens the configured store: Qdrant when `qdrant_url` is set, otherwise
/// the embedded store in `data_dir`.
pub async fn open(
    qdrant_url: Option<&str>,
    qdrant_collection: &str,
    data_dir: &std::path::Path,
    dimension: usize,
) -> anyhow::Result<Arc<dyn VectorStore>> {
    Ok(match qdrant_url {
        Some(url) => Arc::new(QdrantStore::connect(url, qdrant_collection, dimension).await?),
        None => Arc::new(EmbeddedStore::open(&data_dir.join("vectors.db"), dimension).await?),
    })
}

/// Deterministic pseudo-random unit vectors for the index and graph tests.
#[cfg(test)]
pub(crate) mod test_vectors {
    pub fn unit(seed: u64, dimension: usize) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut v: Vec<f32> = (0..dimension)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}
