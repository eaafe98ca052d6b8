//! The adapter registry: every adapter version a run published, with its
//! metrics and files, and which one a base model serves as `base@latest`.
//! At most one adapter per base model is `active`.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, sea_query::Expr,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use orchestrator_core::{now_ms, store::adapter_entity as adapters};

pub use adapters::Model as AdapterRow;

/// Adapter states.
pub mod status {
    /// Beat its base on held-out data; waits for a promotion.
    pub const CANDIDATE: &str = "candidate";
    /// Served as `base@latest` and offered to the scheduler.
    pub const ACTIVE: &str = "active";
    /// Did worse than the model it would have replaced.
    pub const REJECTED: &str = "rejected";
    /// Was active before another one (or a rollback) replaced it.
    pub const RETIRED: &str = "retired";
}

/// The name requests use for version `version` of `base_model`'s adapters.
pub fn adapter_id(base_model: &str, version: i32) -> String {
    format!("{base_model}@adapter-v{version}")
}

/// An adapter as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdapterView {
    pub id: String,
    pub base_model: String,
    pub version: i32,
    pub status: String,
    pub run_id: String,
    pub metrics: Value,
    pub location: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<AdapterRow> for AdapterView {
    fn from(row: AdapterRow) -> Self {
        Self {
            metrics: serde_json::from_str(&row.metrics).unwrap_or(Value::Null),
            id: row.id,
            base_model: row.base_model,
            version: row.version,
            status: row.status,
            run_id: row.run_id,
            location: row.location,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no adapter {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for ChangeError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Store(err.into())
    }
}

/// Records the next version of `base_model`'s adapters inside `txn`; with
/// `status::ACTIVE` the previously active one retires.
pub async fn publish(
    txn: &impl ConnectionTrait,
    base_model: &str,
    run_id: &str,
    location: &str,
    metrics: &Value,
    state: &str,
) -> anyhow::Result<AdapterRow> {
    let newest = adapters::Entity::find()
        .filter(adapters::Column::BaseModel.eq(base_model))
        .order_by_desc(adapters::Column::Version)
        .one(txn)
        .await?;
    let version = newest.map_or(1, |a| a.version + 1);
    if state == status::ACTIVE {
        retire_active(txn, base_model).await?;
    }
    let now = now_ms() as i64;
    let row = adapters::ActiveModel {
        id: Set(adapter_id(base_model, version)),
        base_model: Set(base_model.to_string()),
        version: Set(version),
        status: Set(state.to_string()),
        run_id: Set(run_id.to_string()),
        metrics: Set(metrics.to_string()),
        location: Set(location.to_string()),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
    };
    Ok(adapters::Entity::insert(row)
        .exec_with_returning(txn)
        .await?)
}

async fn retire_active(txn: &impl ConnectionTrait, base_model: &str) -> anyhow::Result<()> {
    set_status_where(txn, base_model, status::ACTIVE, status::RETIRED).await
}

async fn set_status_where(
    txn: &impl ConnectionTrait,
    base_model: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    adapters::Entity::update_many()
        .col_expr(adapters::Column::Status, Expr::value(to))
        .col_expr(adapters::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(adapters::Column::BaseModel.eq(base_model))
        .filter(adapters::Column::Status.eq(from))
        .exec(txn)
        .await?;
    Ok(())
}

async fn set_status(txn: &impl ConnectionTrait, id: &str, to: &str) -> anyhow::Result<()> {
    adapters::Entity::update_many()
        .col_expr(adapters::Column::Status, Expr::value(to))
        .col_expr(adapters::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(adapters::Column::Id.eq(id))
        .exec(txn)
        .await?;
    Ok(())
}

/// Every adapter, newest first.
pub async fn list(db: &impl ConnectionTrait) -> anyhow::Result<Vec<AdapterRow>> {
    Ok(adapters::Entity::find()
        .order_by_asc(adapters::Column::BaseModel)
        .order_by_desc(adapters::Column::Version)
        .all(db)
        .await?)
}

pub async fn get(db: &impl ConnectionTrait, id: &str) -> anyhow::Result<Option<AdapterRow>> {
    Ok(adapters::Entity::find_by_id(id.to_string()).one(db).await?)
}

/// Makes `id` its base model's active adapter; the active one retires.
pub async fn promote(db: &DatabaseConnection, id: &str) -> Result<AdapterRow, ChangeError> {
    let txn = orchestrator_core::store::begin_write(db).await?;
    let adapter = get(&txn, id)
        .await?
        .ok_or_else(|| ChangeError::NotFound(id.to_string()))?;
    if adapter.status != status::ACTIVE {
        retire_active(&txn, &adapter.base_model).await?;
        set_status(&txn, id, status::ACTIVE).await?;
    }
    txn.commit().await?;
    Ok(get(db, id).await?.expect("adapter exists"))
}

/// Retires the active adapter `id` and re-activates the newest earlier
/// version that was active before it (none: the base model serves again).
/// Returns the adapter now active, if any.
pub async fn rollback(
    db: &DatabaseConnection,
    id: &str,
) -> Result<Option<AdapterRow>, ChangeError> {
    let txn = orchestrator_core::store::begin_write(db).await?;
    let adapter = get(&txn, id)
        .await?
        .ok_or_else(|| ChangeError::NotFound(id.to_string()))?;
    if adapter.status != status::ACTIVE {
        return Err(ChangeError::Conflict(format!(
            "{id} is {}, not active; only the active adapter can be rolled back",
            adapter.status
        )));
    }
    set_status(&txn, id, status::RETIRED).await?;
    let previous = adapters::Entity::find()
        .filter(adapters::Column::BaseModel.eq(adapter.base_model.clone()))
        .filter(adapters::Column::Status.eq(status::RETIRED))
        .filter(adapters::Column::Version.lt(adapter.version))
        .order_by_desc(adapters::Column::Version)
        .one(&txn)
        .await?;
    if let Some(previous) = &previous {
        set_status(&txn, &previous.id, status::ACTIVE).await?;
    }
    txn.commit().await?;
    match previous {
        Some(p) => Ok(get(db, &p.id).await?),
        None => Ok(None),
    }
}
