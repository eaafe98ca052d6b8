//! The persisted store (sea-orm): SQLite by default, PostgreSQL when
//! `DATABASE_URL` says so. Migrations run on connect. This module owns the
//! queue registry; jobs themselves live in the queue backend.

pub mod adapter_entity;
pub mod adapter_file_entity;
pub mod campaign_entity;
pub mod campaign_result_entity;
pub mod campaign_url_entity;
pub mod dataset_entity;
pub mod dataset_material_entity;
pub mod dataset_shard_entity;
pub mod feedback_entity;
pub mod model_history_entity;
pub mod pack_entity;
pub mod pack_file_entity;
pub mod queue_entity;
pub mod schedule_entity;
pub mod training_run_entity;
pub mod workflow_entity;
pub mod workflow_task_entity;

use std::time::Duration;

use anyhow::Context;
use orchestrator_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, EntityTrait, QueryOrder,
};

use crate::{
    config::{CommonConfig, DatabaseKind, redact_url},
    now_ms,
};
pub use queue_entity::Model as QueueSettings;

/// What the store holds, counted by status (see [`Store::activity`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Activity {
    pub workflows: std::collections::BTreeMap<String, u64>,
    pub training_runs: std::collections::BTreeMap<String, u64>,
    pub campaigns: std::collections::BTreeMap<String, u64>,
    /// Training-data generation runs.
    pub datasets: std::collections::BTreeMap<String, u64>,
    /// Feedback examples waiting for a training run.
    pub feedback_buffered: u64,
}

/// Begins a transaction that will write. On SQLite it takes the write lock
/// at `BEGIN` (`BEGIN IMMEDIATE`): a deferred transaction that reads first
/// and writes later fails at once with "database is locked" when another
/// writer committed in between, where an immediate one waits its turn
/// under the busy timeout. PostgreSQL ignores the mode.
pub async fn begin_write<C: sea_orm::TransactionTrait>(
    db: &C,
) -> Result<C::Transaction, sea_orm::DbErr> {
    db.begin_with_options(sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}
use queue_entity::{ActiveModel as QueueActive, Entity as Queues};

/// Handle to the store database.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// Settings a queue is created with in the registry.
#[derive(Debug, Clone, Copy)]
pub struct QueueDefaults {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub concurrency: u32,
}

/// A change to a queue's settings; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct QueueUpdate {
    pub paused: Option<bool>,
    pub max_attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub concurrency: Option<u32>,
    pub rate_limit_per_s: Option<Option<u32>>,
    pub max_per_key: Option<Option<u32>>,
    pub keep_done_ms: Option<Option<u64>>,
    pub keep_dead_ms: Option<Option<u64>>,
    pub remove_on_complete: Option<bool>,
}

impl Store {
    /// Connects to the configured database and applies pending migrations.
    pub async fn connect(config: &CommonConfig) -> anyhow::Result<Self> {
        let url = config.database_url();
        if config.database_kind()? == DatabaseKind::Sqlite {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("cannot create data directory {}", config.data_dir.display())
            })?;
        }
        Self::connect_url(&url).await
    }

    pub async fn connect_url(url: &str) -> anyhow::Result<Self> {
        let mut options = ConnectOptions::new(url.to_string());
        options
            .max_connections(8)
            .connect_timeout(Duration::from_secs(5))
            .sqlx_logging(false)
            // As the queue file: WAL so readers never wait for the writer,
            // one fsync per checkpoint instead of per commit (a crash can
            // lose the last commits, never corrupt), and writers from other
            // processes wait their turn instead of failing.
            .map_sqlx_sqlite_opts(|opts| {
                opts.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30))
            });
        // Processes opening a fresh SQLite file together race to switch it
        // to WAL, which needs the file to themselves for a moment: the
        // losers retry.
        let mut attempt = 1;
        let db = loop {
            match Database::connect(options.clone()).await {
                Ok(db) => break db,
                Err(err) if attempt < 10 && url.starts_with("sqlite:") => {
                    tracing::debug!("store connection attempt {attempt} failed ({err}); retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("cannot connect to the store at {}", redact_url(url))
                    });
                }
            }
        };
        migrate(&db).await?;
        Ok(Self { db })
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        self.db.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    /// Workflows, training runs, campaigns and dataset runs counted by
    /// status, and the feedback examples no run has taken yet: one round
    /// trip, for status.
    pub async fn activity(&self) -> anyhow::Result<Activity> {
        let sql = "SELECT 'workflows' AS kind, status, COUNT(*) AS n FROM workflows GROUP BY status \
             UNION ALL SELECT 'training_runs', status, COUNT(*) FROM training_runs GROUP BY status \
             UNION ALL SELECT 'campaigns', status, COUNT(*) FROM campaigns GROUP BY status \
             UNION ALL SELECT 'datasets', status, COUNT(*) FROM datasets GROUP BY status \
             UNION ALL SELECT 'feedback', 'buffered', COUNT(*) FROM feedback \
             WHERE target IS NOT NULL AND run_id IS NULL";
        let statement = sea_orm::Statement::from_string(self.db.get_database_backend(), sql);
        let mut activity = Activity::default();
        for row in self.db.query_all_raw(statement).await? {
            let kind: String = row.try_get("", "kind")?;
            let status: String = row.try_get("", "status")?;
            let count = row.try_get::<i64>("", "n")?.max(0) as u64;
            let table = match kind.as_str() {
                "workflows" => &mut activity.workflows,
                "training_runs" => &mut activity.training_runs,
                "campaigns" => &mut activity.campaigns,
                "datasets" => &mut activity.datasets,
                _ => {
                    activity.feedback_buffered = count;
                    continue;
                }
            };
            table.insert(status, count);
        }
        Ok(activity)
    }

    /// Makes sure every listed queue has a registry row with its defaults,
    /// leaving existing rows (and the user's changes to them) alone.
    pub async fn seed_queues(&self, queues: &[(&str, QueueDefaults)]) -> anyhow::Result<()> {
        for &(name, defaults) in queues {
            if self.queue(name).await?.is_some() {
                continue;
            }
            let now = now_ms() as i64;
            let inserted = QueueActive {
                name: Set(name.to_string()),
                paused: Set(false),
                max_attempts: Set(defaults.max_attempts as i32),
                backoff_ms: Set(defaults.backoff_ms as i64),
                concurrency: Set(defaults.concurrency as i32),
                rate_limit_per_s: Set(None),
                handler: Set("builtin".to_string()),
                target_url: Set(None),
                target_timeout_ms: Set(None),
                max_per_key: Set(None),
                keep_done_ms: Set(None),
                keep_dead_ms: Set(None),
                remove_on_complete: Set(false),
                created_at_ms: Set(now),
                updated_at_ms: Set(now),
            }
            .insert(&self.db)
            .await;
            // Another process starting at the same moment may have won.
            if let Err(err) = inserted
                && self.queue(name).await?.is_none()
            {
                return Err(err).with_context(|| format!("cannot register queue {name}"));
            }
        }
        Ok(())
    }

    /// Registers a queue the user defined; false when the name is taken.
    pub async fn create_queue(&self, queue: QueueSettings) -> anyhow::Result<bool> {
        let name = queue.name.clone();
        let row: QueueActive = queue.into();
        match Queues::insert(row.reset_all()).exec(&self.db).await {
            Ok(_) => Ok(true),
            // Unique name: the insert fails if it exists (or was just made).
            Err(_) if self.queue(&name).await?.is_some() => Ok(false),
            Err(err) => Err(err).with_context(|| format!("cannot register queue {name}")),
        }
    }

    pub async fn queues(&self) -> anyhow::Result<Vec<QueueSettings>> {
        Ok(Queues::find()
            .order_by_asc(queue_entity::Column::Name)
            .all(&self.db)
            .await?)
    }

    pub async fn queue(&self, name: &str) -> anyhow::Result<Option<QueueSettings>> {
        Ok(Queues::find_by_id(name.to_string()).one(&self.db).await?)
    }

    /// Applies `update` to a queue; `None` when no such queue exists.
    pub async fn update_queue(
        &self,
        name: &str,
        update: QueueUpdate,
    ) -> anyhow::Result<Option<QueueSettings>> {
        let Some(current) = self.queue(name).await? else {
            return Ok(None);
        };
        let mut row: QueueActive = current.into();
        if let Some(paused) = update.paused {
            row.paused = Set(paused);
        }
        if let Some(max_attempts) = update.max_attempts {
            row.max_attempts = Set(max_attempts as i32);
        }
        if let Some(backoff_ms) = update.backoff_ms {
            row.backoff_ms = Set(backoff_ms as i64);
        }
        if let Some(concurrency) = update.concurrency {
            row.concurrency = Set(concurrency as i32);
        }
        if let Some(rate) = update.rate_limit_per_s {
            row.rate_limit_per_s = Set(rate.map(|r| r as i32));
        }
        if let Some(max) = update.max_per_key {
            row.max_per_key = Set(max.map(|m| m as i32));
        }
        if let Some(keep) = update.keep_done_ms {
            row.keep_done_ms = Set(keep.map(|ms| ms as i64));
        }
        if let Some(keep) = update.keep_dead_ms {
            row.keep_dead_ms = Set(keep.map(|ms| ms as i64));
        }
        if let Some(remove) = update.remove_on_complete {
            row.remove_on_complete = Set(remove);
        }
        row.updated_at_ms = Set(now_ms() as i64);
        Ok(Some(row.update(&self.db).await?))
    }
}

/// Applies pending migrations. Processes starting together (several workers
/// on a fresh database) race to apply the same migration; the losers see a
/// conflict, wait, and find nothing left to do.
async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        match Migrator::up(db, None).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < 10 => {
                tracing::debug!("migration attempt {attempt} failed ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                attempt += 1;
            }
            Err(err) => return Err(err).context("cannot apply store migrations"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new directory and the URL of a store file in it.
    fn fresh_sqlite() -> (std::path::PathBuf, String) {
        let dir =
            std::env::temp_dir().join(format!("orch-store-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.join("orchestrator.db").display()
        );
        (dir, url)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_migrating_a_fresh_store_together_all_succeed() {
        // The race is timing-dependent: several fresh stores make it likely.
        for _ in 0..10 {
            let (dir, url) = fresh_sqlite();
            let connects = (0..8).map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::connect_url(&url).await })
            });
            for connect in futures::future::join_all(connects).await {
                connect
                    .unwrap()
                    .expect("every concurrent start migrates or finds it done");
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_transaction_that_reads_first_waits_for_other_writers() {
        let (dir, url) = fresh_sqlite();
        let store = Store::connect_url(&url).await.unwrap();
        let defaults = QueueDefaults {
            max_attempts: 3,
            backoff_ms: 1_000,
            concurrency: 1,
        };
        store
            .seed_queues(&[("a", defaults), ("b", defaults)])
            .await
            .unwrap();
        let set_paused = |name: &'static str| QueueActive {
            name: Set(name.to_string()),
            paused: Set(true),
            ..Default::default()
        };
        // Read, let another connection write, then write: with a deferred
        // transaction the last step fails with "database is locked".
        let txn = begin_write(store.connection()).await.unwrap();
        Queues::find().all(&txn).await.unwrap();
        let other = store.connection().clone();
        let writer = tokio::spawn(async move { set_paused("b").update(&other).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        set_paused("a")
            .update(&txn)
            .await
            .expect("the transaction's own write");
        txn.commit().await.expect("commit");
        writer
            .await
            .unwrap()
            .expect("the other writer waited its turn");
        assert!(store.queues().await.unwrap().iter().all(|q| q.paused));
        let _ = std::fs::remove_dir_all(dir);
    }
}
