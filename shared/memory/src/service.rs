//! [`Memory`]: the embedder, the vector store and the pack store together,
//! opened lazily so a process that never touches memory never loads the
//! model or the vectors.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use tokio::sync::OnceCell;

use super::{
    chunking::{self, DocKind},
    embedding::{self, Embedder},
    packs::PackStore,
    vector::{self, ChunkPayload, Filter, Hit, Point, SearchMode, VectorStore},
};
use orchestrator_core::config::CommonConfig;

/// The embedding model's output size, known before it is loaded so the
/// vector store can be opened (Qdrant needs it to create the collection).
pub const DIMENSION: usize = 384;

pub struct Memory {
    pub packs: PackStore,
    models_dir: PathBuf,
    data_dir: PathBuf,
    qdrant_url: Option<String>,
    qdrant_collection: String,
    embedder: OnceCell<Arc<Embedder>>,
    vectors: OnceCell<Arc<dyn VectorStore>>,
}

impl Memory {
    pub fn new(config: &CommonConfig, packs: PackStore) -> Self {
        Self {
            packs,
            models_dir: config.models_dir.clone(),
            data_dir: config.data_dir.clone(),
            qdrant_url: config.qdrant_url.clone(),
            qdrant_collection: config.qdrant_collection.clone(),
            embedder: OnceCell::new(),
            vectors: OnceCell::new(),
        }
    }

    /// The embedding model, loaded on first use.
    pub async fn embedder(&self) -> anyhow::Result<Arc<Embedder>> {
        let dir = embedding::model_path(&self.models_dir);
        self.embedder
            .get_or_try_init(|| async move {
                let embedder = tokio::task::spawn_blocking(move || Embedder::load(&dir))
                    .await
                    .context("loading the embedder panicked")??;
                Ok(Arc::new(embedder))
            })
            .await
            .cloned()
    }

    /// The vector store, opened on first use.
    pub async fn vectors(&self) -> anyhow::Result<Arc<dyn VectorStore>> {
        self.vectors
            .get_or_try_init(|| {
                vector::open(
                    self.qdrant_url.as_deref(),
                    &self.qdrant_collection,
                    &self.data_dir,
                    DIMENSION,
                )
            })
            .await
            .cloned()
    }

    /// The vector store if something opened it already (status checks must
    /// not open an embedded store nobody uses).
    pub fn vectors_if_open(&self) -> Option<Arc<dyn VectorStore>> {
        self.vectors.get().cloned()
    }

    /// Whether vectors live in Qdrant (a remote service worth checking).
    pub fn is_remote(&self) -> bool {
        self.qdrant_url.is_some()
    }

    /// Whether the embedding model is on disk (for `/ready` and clear errors).
    pub fn model_present(&self) -> bool {
        embedding::model_path(&self.models_dir)
            .join("model.safetensors")
            .is_file()
    }

    /// Embeds texts off the async runtime.
    pub async fn embed(&self, texts: Vec<String>) -> anyhow::Result<Vec<Vec<f32>>> {
        let embedder = self.embedder().await?;
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .context("embedding panicked")?
    }

    /// The `k` chunks nearest to `query` among those `filter` matches.
    pub async fn search(
        &self,
        query: &str,
        k: usize,
        filter: &Filter,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>> {
        let vector = self
            .embed(vec![query.to_string()])
            .await?
            .pop()
            .context("the embedder returned nothing")?;
        self.vectors().await?.search(&vector, k, filter, mode).await
    }

    /// Chunks, embeds and stores one document of `pack`, replacing what
    /// the pack held for that source. Returns the number of chunks.
    pub async fn index_document(
        &self,
        pack: &str,
        source: &str,
        kind: &str,
        text: &str,
    ) -> anyhow::Result<usize> {
        let chunks = chunking::chunk(text, DocKind::from_name(kind));
        let inputs: Vec<String> = chunks
            .iter()
            .map(|c| match &c.title {
                // The heading or definition is context the chunk's own
                // words may lack ("Install" over "run cargo build").
                Some(title) if !c.text.starts_with(title.as_str()) => {
                    format!("{title}\n{}", c.text)
                }
                _ => c.text.clone(),
            })
            .collect();
        let vectors = self.embed(inputs).await?;
        let points = chunks
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(n, (chunk, vector))| Point {
                id: point_id(pack, source, n),
                vector,
                payload: ChunkPayload {
                    pack: pack.to_string(),
                    source: source.to_string(),
                    kind: kind.to_string(),
                    title: chunk.title,
                    text: chunk.text,
                    start_line: chunk.start_line,
                    end_line: chunk.end_line,
                },
            })
            .collect::<Vec<_>>();
        let count = points.len();
        let store = self.vectors().await?;
        store.delete(&source_filter(pack, source)).await?;
        store.upsert(points).await?;
        Ok(count)
    }

    /// Drops every vector of one source of a pack.
    pub async fn forget_source(&self, pack: &str, source: &str) -> anyhow::Result<()> {
        self.vectors()
            .await?
            .delete(&source_filter(pack, source))
            .await
    }

    /// Drops every vector of a pack.
    pub async fn forget_pack(&self, pack: &str) -> anyhow::Result<()> {
        self.vectors().await?.delete(&Filter::pack(pack)).await
    }
}

fn source_filter(pack: &str, source: &str) -> Filter {
    Filter {
        source: Some(source.to_string()),
        ..Filter::pack(pack)
    }
}

/// Deterministic ids, so a re-run of the same job overwrites rather than
/// duplicates.
fn point_id(pack: &str, source: &str, n: usize) -> uuid::Uuid {
    let hash = blake3::hash(format!("{pack}\0{source}\0{n}").as_bytes());
    uuid::Builder::from_random_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
        .into_uuid()
}
