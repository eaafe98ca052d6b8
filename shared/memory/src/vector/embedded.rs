//! The embedded vector store: points persisted in a SQLite file (WAL, so
//! several processes on one machine can write), searched in an in-memory
//! [`Index`] that is loaded on the first search and then follows the file
//! through a change sequence: every write bumps `seq`, removals are logged,
//! and a search first applies whatever changed since it last looked.

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::Context;
use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{ChunkPayload, Filter, Hit, Point, SearchMode, VectorStore, index::Index};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS points (
    id      TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL,
    pack    TEXT NOT NULL,
    source  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    payload TEXT NOT NULL,
    vector  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS points_seq ON points(seq);
CREATE INDEX IF NOT EXISTS points_pack_source ON points(pack, source);
CREATE TABLE IF NOT EXISTS removals (seq INTEGER NOT NULL, id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS removals_seq ON removals(seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0);
";

/// Rows per INSERT statement (seven bound values each, far below SQLite's
/// limit on variables).
const INSERT_ROWS: usize = 256;

pub struct EmbeddedStore {
    pool: SqlitePool,
    dimension: usize,
    /// The loaded index and the change sequence it reflects; `None` until
    /// the first search, so processes that only write never hold vectors.
    loaded: Arc<RwLock<Option<Loaded>>>,
    /// One catch-up at a time.
    syncing: tokio::sync::Mutex<()>,
}

struct Loaded {
    index: Index,
    seq: i64,
}

impl EmbeddedStore {
    pub async fn open(path: &Path, dimension: usize) -> anyhow::Result<Self> {
        let pool = orchestrator_core::sqlite_file::open(path, 4, SCHEMA, "vector store").await?;
        Ok(Self {
            pool,
            dimension,
            loaded: Arc::default(),
            syncing: tokio::sync::Mutex::new(()),
        })
    }

    /// Loads the index, or applies the changes made since it was loaded.
    async fn sync(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.syncing.lock().await;
        let known = self
            .loaded
            .read()
            .expect("index lock")
            .as_ref()
            .map(|l| l.seq);
        let mut tx = self.pool.begin().await?;
        let current: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'seq'")
            .fetch_one(&mut *tx)
            .await?;
        if known == Some(current) {
            return Ok(());
        }
        let since = known.unwrap_or(-1);
        let removed: Vec<String> = sqlx::query_scalar("SELECT id FROM removals WHERE seq > ?")
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
        let rows = sqlx::query("SELECT id, pack, source, kind, vector FROM points WHERE seq > ?")
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;

        let loaded = self.loaded.clone();
        let dimension = self.dimension;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut guard = loaded.write().expect("index lock");
            let state = guard.get_or_insert_with(|| Loaded {
                index: Index::new(dimension),
                seq: -1,
            });
            // Removals first: a point removed and then added again is in
            // both lists, and must end up present.
            for id in removed {
                state.index.remove(&parse_id(&id)?);
            }
            let decoded = rows
                .iter()
                .map(|row| {
                    let id: String = row.get("id");
                    Ok((parse_id(&id)?, decode_vector(row.get::<&[u8], _>("vector"))))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            state
                .index
                .insert_many(decoded.iter().zip(&rows).map(|((id, vector), row)| {
                    (
                        *id,
                        vector.as_slice(),
                        row.get::<&str, _>("pack"),
                        row.get::<&str, _>("source"),
                        row.get::<&str, _>("kind"),
                    )
                }))?;
            state.seq = current;
            Ok(())
        })
        .await
        .context("index update panicked")?
    }

    /// Advances the change sequence inside `tx` and returns the new value.
    async fn next_seq(tx: &mut sqlx::Transaction<'_, Sqlite>) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
        )
        .fetch_one(&mut **tx)
        .await?)
    }

    async fn payloads(&self, ids: &[uuid::Uuid]) -> anyhow::Result<Vec<Option<ChunkPayload>>> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT id, payload FROM points WHERE id IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        query.push(")");
        let rows = query.build().fetch_all(&self.pool).await?;
        let mut found = std::collections::HashMap::new();
        for row in rows {
            let id: String = row.get("id");
            let payload: ChunkPayload = serde_json::from_str(row.get("payload"))?;
            found.insert(id, payload);
        }
        Ok(ids.iter().map(|id| found.remove(&id.to_string())).collect())
    }
}

#[async_trait]
impl VectorStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn upsert(&self, points: Vec<Point>) -> anyhow::Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        for point in &points {
            anyhow::ensure!(
                point.vector.len() == self.dimension,
                "vector has {} dimensions, the store {}",
                point.vector.len(),
                self.dimension
            );
        }
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx).await?;
        for rows in points.chunks(INSERT_ROWS) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO points (id, seq, pack, source, kind, payload, vector) ",
            );
            query.push_values(rows, |mut row, point| {
                row.push_bind(point.id.to_string())
                    .push_bind(seq)
                    .push_bind(&point.payload.pack)
                    .push_bind(&point.payload.source)
                    .push_bind(&point.payload.kind)
                    .push_bind(serde_json::to_string(&point.payload).expect("payload serialises"))
                    .push_bind(encode_vector(&point.vector));
            });
            query.push(
                " ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, pack = excluded.pack, \
                 source = excluded.source, kind = excluded.kind, payload = excluded.payload, \
                 vector = excluded.vector",
            );
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete(&self, filter: &Filter) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let seq = Self::next_seq(&mut tx).await?;
        let mut query = QueryBuilder::<Sqlite>::new("DELETE FROM points");
        push_where(&mut query, filter);
        query.push(" RETURNING id");
        let ids: Vec<String> = query.build_query_scalar().fetch_all(&mut *tx).await?;
        for chunk in ids.chunks(INSERT_ROWS) {
            let mut log = QueryBuilder::<Sqlite>::new("INSERT INTO removals (seq, id) ");
            log.push_values(chunk, |mut row, id| {
                row.push_bind(seq).push_bind(id);
            });
            log.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: &Filter,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<Hit>> {
        self.sync().await?;
        let loaded = self.loaded.clone();
        let (query, filter) = (vector.to_vec(), filter.clone());
        let nearest = tokio::task::spawn_blocking(move || {
            let guard = loaded.read().expect("index lock");
            let state = guard.as_ref().expect("synced above");
            state.index.search(&query, k, &filter, mode)
        })
        .await
        .context("search panicked")??;
        let ids: Vec<uuid::Uuid> = nearest.iter().map(|(id, _)| *id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let payloads = self.payloads(&ids).await?;
        // A point removed between the search and the payload read is skipped.
        Ok(nearest
            .into_iter()
            .zip(payloads)
            .filter_map(|((id, score), payload)| payload.map(|payload| Hit { id, score, payload }))
            .collect())
    }

    async fn count(&self, filter: &Filter) -> anyhow::Result<u64> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM points");
        push_where(&mut query, filter);
        let count: i64 = query.build_query_scalar().fetch_one(&self.pool).await?;
        Ok(count as u64)
    }
}

fn push_where(query: &mut QueryBuilder<Sqlite>, filter: &Filter) {
    query.push(" WHERE 1 = 1");
    if let Some(packs) = &filter.packs {
        query.push(" AND pack IN (");
        let mut list = query.separated(", ");
        for pack in packs {
            list.push_bind(pack.clone());
        }
        // An empty list must match nothing, and `IN ()` is not valid SQL.
        if packs.is_empty() {
            list.push("NULL");
        }
        query.push(")");
    }
    if let Some(source) = &filter.source {
        query.push(" AND source = ").push_bind(source.clone());
    }
    if let Some(kind) = &filter.kind {
        query.push(" AND kind = ").push_bind(kind.clone());
    }
}

fn parse_id(raw: &str) -> anyhow::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(raw).with_context(|| format!("corrupt point id {raw:?}"))
}

fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_vector(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
