//! The persisted store (sea-orm): SQLite by default, PostgreSQL when
//! `DATABASE_URL` says so. Migrations run on connect. This module owns the
//! queue registry; jobs themselves live in the queue backend.

pub mod queue_entity;

use std::time::Duration;

use anyhow::Context;
use orchestrator_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, EntityTrait, QueryOrder,
};

use crate::{
    config::{CommonConfig, DatabaseKind, redact_url},
    jobs::JobHandler,
    now_ms,
};
pub use queue_entity::Model as QueueSettings;
use queue_entity::{ActiveModel as QueueActive, Entity as Queues};

/// Handle to the store database.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// A change to a queue's settings; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct QueueUpdate {
    pub paused: Option<bool>,
    pub max_attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub concurrency: Option<u32>,
    pub rate_limit_per_s: Option<Option<u32>>,
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
            .sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .with_context(|| format!("cannot connect to the store at {}", redact_url(url)))?;
        Migrator::up(&db, None)
            .await
            .context("cannot apply store migrations")?;
        Ok(Self { db })
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        self.db.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    /// Makes sure every built-in queue has a registry row, leaving existing
    /// rows (and the user's changes to them) alone.
    pub async fn seed_queues(
        &self,
        handlers: &[std::sync::Arc<dyn JobHandler>],
    ) -> anyhow::Result<()> {
        for handler in handlers {
            if self.queue(handler.queue()).await?.is_some() {
                continue;
            }
            let defaults = handler.defaults();
            let now = now_ms() as i64;
            QueueActive {
                name: Set(handler.queue().to_string()),
                paused: Set(false),
                max_attempts: Set(defaults.max_attempts as i32),
                backoff_ms: Set(defaults.backoff_ms as i64),
                concurrency: Set(defaults.concurrency as i32),
                rate_limit_per_s: Set(None),
                created_at_ms: Set(now),
                updated_at_ms: Set(now),
            }
            .insert(&self.db)
            .await
            .with_context(|| format!("cannot register queue {}", handler.queue()))?;
        }
        Ok(())
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
        row.updated_at_ms = Set(now_ms() as i64);
        Ok(Some(row.update(&self.db).await?))
    }
}
