//! The embedded backend: one SQLite file, no server to install. All queue
//! state changes go through one connection, so SQLite never has to arbitrate
//! between writers; a fetch or a batch of acknowledgements is one
//! transaction. Idle workers in the same process are woken by pushes
//! directly; workers in other processes poll.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;

use super::{
    Ack, Fetched, JobInfo, JobStatus, LeasedJob, NewJob, Pushed, QueueBackend, QueueCounts,
    WORKER_LIVENESS_MS, retry_delay_ms,
};
use orchestrator_core::now_ms;

/// Rows per multi-row INSERT (11 binds each, well under SQLite's limit).
const INSERT_CHUNK: usize = 500;
/// Acknowledgements per UPDATE statement.
const ACK_CHUNK: usize = 500;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    backoff_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    run_at INTEGER NOT NULL,
    lease_until INTEGER,
    worker TEXT,
    idempotency_key TEXT,
    result TEXT,
    error TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
-- Runnable jobs in fetch order: a fetch reads the first rows, never sorts.
CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs (queue, priority DESC, seq)
    WHERE status IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (queue, status, run_at);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (queue, status, lease_until);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_state (
    queue TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS queue_workers (
    queue TEXT NOT NULL,
    worker TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, worker)
);
"#;

pub struct SqliteBackend {
    pool: SqlitePool,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl SqliteBackend {
    /// Opens (creating if needed) the queue file at `path`.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        // One connection: writers never contend, and a fetch cannot
        // interleave with an acknowledgement.
        let pool = orchestrator_core::sqlite_file::open(path, 1, SCHEMA, "queue database").await?;
        Ok(Self {
            pool,
            wakers: Mutex::default(),
        })
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().expect("wakers lock");
        wakers.entry(queue.to_string()).or_default().clone()
    }

    /// A failed attempt: a retry after backoff, or `dead` when out of attempts.
    async fn record_failure(
        conn: &mut sqlx::SqliteConnection,
        worker: &str,
        id: &str,
        error: String,
        now: i64,
    ) -> anyhow::Result<()> {
        let row = sqlx::query(
            "SELECT queue, attempts, max_attempts, backoff_ms FROM jobs
             WHERE id = ? AND worker = ? AND status = 'running'",
        )
        .bind(id)
        .bind(worker)
        .fetch_optional(&mut *conn)
        .await?;
        // The lease was lost: the job runs again elsewhere.
        let Some(row) = row else { return Ok(()) };
        let attempts = row.get::<i64, _>("attempts") as u32;
        let max_attempts = row.get::<i64, _>("max_attempts") as u32;
        let backoff = row.get::<i64, _>("backoff_ms") as u64;
        let (status, run_at) = if attempts >= max_attempts {
            ("dead", now)
        } else {
            ("failed", now + retry_delay_ms(backoff, attempts) as i64)
        };
        sqlx::query(
            "UPDATE jobs SET status = ?, error = ?, run_at = ?, worker = NULL,
                    lease_until = NULL, updated_ms = ? WHERE id = ?",
        )
        .bind(status)
        .bind(error)
        .bind(run_at)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE queue_state SET failed = failed + 1 WHERE queue = ?")
            .bind(row.get::<String, _>("queue"))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn ensure_queue(conn: &mut sqlx::SqliteConnection, queue: &str) -> sqlx::Result<()> {
        sqlx::query("INSERT OR IGNORE INTO queue_state (queue) VALUES (?)")
            .bind(queue)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl QueueBackend for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn push(&self, jobs: Vec<NewJob>) -> anyhow::Result<Vec<Pushed>> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(jobs.len());
        let mut rows = Vec::with_capacity(jobs.len());
        // Keys first seen in this batch, so a repeat inside it is a duplicate too.
        let mut batch_keys: HashMap<(&str, &str), String> = HashMap::new();
        for job in &jobs {
            if let Some(key) = &job.idempotency_key {
                let prior = match batch_keys.get(&(job.queue.as_str(), key.as_str())) {
                    Some(id) => Some(id.clone()),
                    None => {
                        sqlx::query_scalar(
                            "SELECT id FROM jobs WHERE queue = ? AND idempotency_key = ?",
                        )
                        .bind(&job.queue)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                };
                if let Some(id) = prior {
                    out.push(Pushed {
                        id,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let id = uuid::Uuid::now_v7().to_string();
            if let Some(key) = &job.idempotency_key {
                batch_keys.insert((job.queue.as_str(), key.as_str()), id.clone());
            }
            rows.push((id.clone(), job));
            out.push(Pushed {
                id,
                duplicate: false,
            });
        }
        // Multi-row inserts: one statement per chunk instead of one per job.
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO jobs (id, queue, payload, priority, max_attempts, backoff_ms, status, \
                 run_at, idempotency_key, created_ms, updated_ms) ",
            );
            let mut payloads = Vec::with_capacity(chunk.len());
            for (_, job) in chunk {
                payloads.push(serde_json::to_string(&job.payload)?);
            }
            insert.push_values(
                chunk.iter().zip(payloads),
                |mut row, ((id, job), payload)| {
                    row.push_bind(id)
                        .push_bind(&job.queue)
                        .push_bind(payload)
                        .push_bind(job.priority)
                        .push_bind(job.max_attempts)
                        .push_bind(job.backoff_ms as i64)
                        .push_bind("pending")
                        .push_bind(now + job.delay_ms as i64)
                        .push_bind(&job.idempotency_key)
                        .push_bind(now)
                        .push_bind(now);
                },
            );
            insert.build().execute(&mut *tx).await?;
        }
        let mut queues: Vec<&str> = rows.iter().map(|(_, job)| job.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in &queues {
            Self::ensure_queue(&mut tx, queue).await?;
        }
        tx.commit().await?;
        for (_, job) in &rows {
            if job.delay_ms == 0 {
                self.waker(&job.queue).notify_one();
            }
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> anyhow::Result<Fetched> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        // Leases that expired: their worker died or stalled.
        sqlx::query(
            "UPDATE jobs SET
                status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
                error = CASE WHEN attempts >= max_attempts
                        THEN 'lease expired: the worker stopped during the last attempt'
                        ELSE error END,
                run_at = ?2, worker = NULL, lease_until = NULL, updated_ms = ?2
             WHERE queue = ?1 AND status = 'running' AND lease_until < ?2",
        )
        .bind(queue)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let paused: Option<i64> =
            sqlx::query_scalar("SELECT paused FROM queue_state WHERE queue = ?")
                .bind(queue)
                .fetch_optional(&mut *tx)
                .await?;
        if paused == Some(1) {
            tx.commit().await?;
            return Ok(Fetched {
                paused: true,
                ..Fetched::default()
            });
        }
        let rows = sqlx::query(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?3,
                             lease_until = ?4, updated_ms = ?2
             WHERE seq IN (
                SELECT seq FROM jobs
                WHERE queue = ?1 AND status IN ('pending', 'failed') AND run_at <= ?2
                ORDER BY priority DESC, seq
                LIMIT ?5)
             RETURNING id, payload, attempts, max_attempts, priority, seq",
        )
        .bind(queue)
        .bind(now)
        .bind(worker)
        .bind(now + lease.as_millis() as i64)
        .bind(max as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut leased = Vec::with_capacity(rows.len());
        for row in rows {
            let job = LeasedJob {
                id: row.get("id"),
                queue: queue.to_string(),
                payload: serde_json::from_str(row.get::<&str, _>("payload"))?,
                attempt: row.get::<i64, _>("attempts") as u32,
                max_attempts: row.get::<i64, _>("max_attempts") as u32,
            };
            leased.push((row.get::<i64, _>("priority"), row.get::<i64, _>("seq"), job));
        }
        // RETURNING has no order: restore priority, then FIFO.
        leased.sort_by_key(|(priority, seq, _)| (-priority, *seq));
        let next_due_ms = if leased.is_empty() {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MIN(run_at) FROM jobs WHERE queue = ? AND status IN ('pending', 'failed')",
            )
            .bind(queue)
            .fetch_one(&mut *tx)
            .await?
            .map(|ms| ms as u64)
        } else {
            None
        };
        tx.commit().await?;
        Ok(Fetched {
            jobs: leased.into_iter().map(|(_, _, job)| job).collect(),
            next_due_ms,
            paused: false,
        })
    }

    async fn wait_for_jobs(&self, queue: &str, timeout: Duration) {
        let waker = self.waker(queue);
        let _ = tokio::time::timeout(timeout, waker.notified()).await;
    }

    async fn ack(&self, _queue: &str, worker: &str, acks: Vec<Ack>) -> anyhow::Result<()> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        let mut successes = Vec::with_capacity(acks.len());
        for ack in acks {
            match ack.outcome {
                Ok(result) => successes.push((ack.id, serde_json::to_string(&result)?)),
                Err(error) => Self::record_failure(&mut tx, worker, &ack.id, error, now).await?,
            }
        }
        let mut done: HashMap<String, i64> = HashMap::new();
        for chunk in successes.chunks(ACK_CHUNK) {
            // One statement per chunk; jobs whose lease this worker lost are
            // left alone (they run again elsewhere).
            let mut update = sqlx::QueryBuilder::new("WITH acked(id, result) AS (");
            update.push_values(chunk, |mut row, (id, result)| {
                row.push_bind(id).push_bind(result);
            });
            update
                .push(
                    ") UPDATE jobs SET status = 'done', worker = NULL, lease_until = NULL, \
                     result = (SELECT result FROM acked WHERE acked.id = jobs.id), updated_ms = ",
                )
                .push_bind(now)
                .push(" WHERE id IN (SELECT id FROM acked) AND status = 'running' AND worker = ")
                .push_bind(worker)
                .push(" RETURNING queue");
            let queues: Vec<String> = update.build_query_scalar().fetch_all(&mut *tx).await?;
            for queue in queues {
                *done.entry(queue).or_default() += 1;
            }
        }
        for (queue, n) in done {
            sqlx::query("UPDATE queue_state SET done = done + ? WHERE queue = ?")
                .bind(n)
                .bind(queue)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn extend_leases(
        &self,
        _queue: &str,
        worker: &str,
        ids: &[String],
        lease: Duration,
    ) -> anyhow::Result<()> {
        let until = (now_ms() + lease.as_millis() as u64) as i64;
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ? AND status = 'running'",
            )
            .bind(until)
            .bind(id)
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release(&self, _queue: &str, worker: &str, ids: &[String]) -> anyhow::Result<()> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        let mut queues = Vec::new();
        for id in ids {
            let queue: Option<String> = sqlx::query_scalar(
                "UPDATE jobs SET status = 'pending', attempts = attempts - 1, worker = NULL,
                        lease_until = NULL, run_at = ?, updated_ms = ?
                 WHERE id = ? AND worker = ? AND status = 'running' RETURNING queue",
            )
            .bind(now)
            .bind(now)
            .bind(id)
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await?;
            queues.extend(queue);
        }
        tx.commit().await?;
        for queue in queues {
            self.waker(&queue).notify_one();
        }
        Ok(())
    }

    async fn job(&self, id: &str) -> anyhow::Result<Option<JobInfo>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| job_info(&row)).transpose()
    }

    async fn dead_jobs(&self, queue: &str, limit: usize) -> anyhow::Result<Vec<JobInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE queue = ? AND status = 'dead'
             ORDER BY updated_ms DESC, seq DESC LIMIT ?"
        )))
        .bind(queue)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_info).collect()
    }

    async fn requeue_dead(
        &self,
        queue: &str,
        ids: &[String],
        max: usize,
    ) -> anyhow::Result<Vec<String>> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = if ids.is_empty() {
            sqlx::query_scalar(
                "SELECT id FROM jobs WHERE queue = ? AND status = 'dead' ORDER BY updated_ms, seq LIMIT ?",
            )
            .bind(queue)
            .bind(max as i64)
            .fetch_all(&mut *tx)
            .await?
        } else {
            ids.to_vec()
        };
        let mut requeued = Vec::with_capacity(ids.len());
        for id in ids {
            let done = sqlx::query(
                "UPDATE jobs SET status = 'pending', attempts = 0, run_at = ?, updated_ms = ?
                 WHERE id = ? AND queue = ? AND status = 'dead'",
            )
            .bind(now)
            .bind(now)
            .bind(&id)
            .bind(queue)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                requeued.push(id);
            }
        }
        tx.commit().await?;
        if !requeued.is_empty() {
            self.waker(queue).notify_one();
        }
        Ok(requeued)
    }

    async fn counts(&self, queue: &str) -> anyhow::Result<QueueCounts> {
        let mut counts = QueueCounts::default();
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs WHERE queue = ? GROUP BY status")
                .bind(queue)
                .fetch_all(&self.pool)
                .await?;
        for row in rows {
            let n = row.get::<i64, _>("n") as u64;
            match row.get::<&str, _>("status") {
                "pending" | "failed" => counts.pending += n,
                "running" => counts.running += n,
                "dead" => counts.dead += n,
                _ => {}
            }
        }
        if let Some(row) = sqlx::query("SELECT done, failed FROM queue_state WHERE queue = ?")
            .bind(queue)
            .fetch_optional(&self.pool)
            .await?
        {
            counts.done = row.get::<i64, _>("done") as u64;
            counts.failed = row.get::<i64, _>("failed") as u64;
        }
        let live_since = now_ms().saturating_sub(WORKER_LIVENESS_MS) as i64;
        counts.workers = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM queue_workers WHERE queue = ? AND last_seen_ms >= ?",
        )
        .bind(queue)
        .bind(live_since)
        .fetch_one(&self.pool)
        .await? as u64;
        Ok(counts)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        Self::ensure_queue(&mut conn, queue).await?;
        sqlx::query("UPDATE queue_state SET paused = ? WHERE queue = ?")
            .bind(paused)
            .bind(queue)
            .execute(&mut *conn)
            .await?;
        if !paused {
            self.waker(queue).notify_one();
        }
        Ok(())
    }

    async fn register_worker(&self, queue: &str, worker: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO queue_workers (queue, worker, last_seen_ms) VALUES (?, ?, ?)
             ON CONFLICT (queue, worker) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
        )
        .bind(queue)
        .bind(worker)
        .bind(now_ms() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unregister_worker(&self, queue: &str, worker: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM queue_workers WHERE queue = ? AND worker = ?")
            .bind(queue)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

const JOB_COLUMNS: &str = "id, queue, status, attempts, max_attempts, priority, payload, result, \
                           error, created_ms, updated_ms";

fn job_info(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<JobInfo> {
    let id: String = row.get("id");
    let status: String = row.get("status");
    Ok(JobInfo {
        status: JobStatus::parse(&status)
            .with_context(|| format!("job {id} has unknown status {status:?}"))?,
        queue: row.get("queue"),
        attempts: row.get::<i64, _>("attempts") as u32,
        max_attempts: row.get::<i64, _>("max_attempts") as u32,
        priority: row.get::<i64, _>("priority") as i32,
        payload: serde_json::from_str(row.get::<&str, _>("payload"))?,
        result: row
            .get::<Option<&str>, _>("result")
            .map(serde_json::from_str)
            .transpose()?,
        error: row.get("error"),
        created_at_ms: row.get::<i64, _>("created_ms") as u64,
        updated_at_ms: row.get::<i64, _>("updated_ms") as u64,
        id,
    })
}
