//! Training runs in the store: created with the examples they took from the
//! buffer, leased by one trainer at a time (the lease and the run's state
//! are one row, so they change together), heartbeated with progress, and
//! finished only by the trainer that still holds the lease.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{TrainingConfig, backend::Progress, data::Example, feedback::Feedback};
use orchestrator_core::{now_ms, store::training_run_entity as runs};

pub use runs::Model as RunRow;

/// Run states.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    /// Finished; its adapter became the active one.
    pub const PROMOTED: &str = "promoted";
    /// Finished; its adapter did not beat the model it would replace.
    pub const REJECTED: &str = "rejected";
    pub const FAILED: &str = "failed";
}

/// Most examples one run takes from the buffer.
pub const MAX_RUN_EXAMPLES: u64 = 10_000;
/// Fewest examples a run trains on (one to train, one to hold out).
pub const MIN_RUN_EXAMPLES: usize = 2;

/// Why a run could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("run {0} of this base model is not finished yet")]
    Busy(String),
    #[error(
        "the feedback buffer holds {0} examples for this model; a run needs at least {MIN_RUN_EXAMPLES}"
    )]
    TooFew(usize),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub base_model: String,
    pub status: String,
    /// `manual` (POST /api/v1/training/runs), `dataset` (the same, on a
    /// generated dataset) or `threshold` (the buffer filled up).
    pub trigger: String,
    pub config: Value,
    pub examples: usize,
    pub synthetic_examples: i32,
    pub attempts: i32,
    pub progress: Value,
    pub eval_before: Option<f64>,
    pub eval_after: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    pub adapter_id: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl From<RunRow> for RunView {
    fn from(row: RunRow) -> Self {
        let examples = serde_json::from_str::<Vec<Value>>(&row.examples).map_or(0, |e| e.len());
        Self {
            examples,
            config: serde_json::from_str(&row.config).unwrap_or(Value::Null),
            progress: serde_json::from_str(&row.progress).unwrap_or(Value::Null),
            id: row.id,
            base_model: row.base_model,
            status: row.status,
            trigger: row.trigger,
            synthetic_examples: row.synthetic_examples,
            attempts: row.attempts,
            eval_before: row.eval_before,
            eval_after: row.eval_after,
            tokens_per_sec: row.tokens_per_sec,
            adapter_id: row.adapter_id,
            error: row.error,
            created_at_ms: row.created_at_ms,
            finished_at_ms: row.finished_at_ms,
        }
    }
}

/// Creates a queued run of `base_model` holding the buffered examples, in
/// one transaction with taking them from the buffer. At most one run per
/// base model is unfinished at a time.
pub async fn create(
    feedback: &Feedback,
    base_model: &str,
    config: &TrainingConfig,
    trigger: &str,
) -> Result<RunRow, CreateError> {
    let db = feedback.db();
    if let Some(open) = unfinished(db, base_model).await? {
        return Err(CreateError::Busy(open.id));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let txn = orchestrator_core::store::begin_write(db)
        .await
        .map_err(anyhow::Error::from)?;
    let (examples, entries) = feedback
        .take(&txn, base_model, &id, MAX_RUN_EXAMPLES)
        .await?;
    if examples.len() < MIN_RUN_EXAMPLES {
        return Err(CreateError::TooFew(examples.len()));
    }
    insert(&txn, &id, base_model, config, trigger, &examples).await?;
    txn.commit().await.map_err(anyhow::Error::from)?;
    // The examples are safe in the run; a failure here only leaves stream
    // entries whose rows already name a run, which the next take skips.
    if let Err(err) = feedback.forget(base_model, &entries).await {
        tracing::warn!(%err, "could not trim the feedback stream");
    }
    Ok(get(db, &id).await?.expect("the run was just stored"))
}

/// Creates a queued run of `base_model` on `examples` given by the caller
/// (a dataset's train split, with its eval split as held-out examples);
/// the feedback buffer is left as it is.
pub async fn create_from(
    db: &DatabaseConnection,
    base_model: &str,
    config: &TrainingConfig,
    trigger: &str,
    examples: &[Example],
) -> Result<RunRow, CreateError> {
    if let Some(open) = unfinished(db, base_model).await? {
        return Err(CreateError::Busy(open.id));
    }
    if examples.iter().filter(|e| !e.held_out).count() < MIN_RUN_EXAMPLES {
        return Err(CreateError::TooFew(examples.len()));
    }
    let id = uuid::Uuid::now_v7().to_string();
    insert(db, &id, base_model, config, trigger, examples).await?;
    Ok(get(db, &id).await?.expect("the run was just stored"))
}

/// Stores a queued run.
async fn insert(
    db: &impl ConnectionTrait,
    id: &str,
    base_model: &str,
    config: &TrainingConfig,
    trigger: &str,
    examples: &[Example],
) -> anyhow::Result<()> {
    let now = now_ms() as i64;
    let row = runs::ActiveModel {
        id: Set(id.to_string()),
        base_model: Set(base_model.to_string()),
        status: Set(status::QUEUED.into()),
        trigger: Set(trigger.into()),
        config: Set(serde_json::to_string(config)?),
        synthetic_examples: Set(examples.iter().filter(|e| e.synthetic).count() as i32),
        examples: Set(serde_json::to_string(&examples)?),
        lease_owner: Set(None),
        lease_expires_ms: Set(None),
        attempts: Set(0),
        progress: Set("{}".into()),
        eval_before: Set(None),
        eval_after: Set(None),
        tokens_per_sec: Set(None),
        adapter_id: Set(None),
        error: Set(None),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
        finished_at_ms: Set(None),
    };
    runs::Entity::insert(row).exec(db).await?;
    Ok(())
}

/// The queued or running run of `base_model`, if any.
pub async fn unfinished(
    db: &impl ConnectionTrait,
    base_model: &str,
) -> anyhow::Result<Option<RunRow>> {
    Ok(runs::Entity::find()
        .filter(runs::Column::BaseModel.eq(base_model))
        .filter(runs::Column::Status.is_in([status::QUEUED, status::RUNNING]))
        .one(db)
        .await?)
}

pub async fn get(db: &impl ConnectionTrait, id: &str) -> anyhow::Result<Option<RunRow>> {
    Ok(runs::Entity::find_by_id(id.to_string()).one(db).await?)
}

/// The newest runs first.
pub async fn list(db: &DatabaseConnection, limit: u64) -> anyhow::Result<Vec<RunRow>> {
    Ok(runs::Entity::find()
        .order_by_desc(runs::Column::CreatedAtMs)
        .limit(limit)
        .all(db)
        .await?)
}

/// Leases the oldest run that is queued, or running under an expired lease
/// (its trainer died), to `owner` for `lease_ms`.
pub async fn claim(
    db: &DatabaseConnection,
    owner: &str,
    lease_ms: u64,
) -> anyhow::Result<Option<RunRow>> {
    let now = now_ms() as i64;
    let candidates = runs::Entity::find()
        .filter(claimable(now))
        .order_by_asc(runs::Column::CreatedAtMs)
        .limit(8)
        .all(db)
        .await?;
    for candidate in candidates {
        let taken = runs::Entity::update_many()
            .col_expr(runs::Column::Status, Expr::value(status::RUNNING))
            .col_expr(runs::Column::LeaseOwner, Expr::value(owner))
            .col_expr(
                runs::Column::LeaseExpiresMs,
                Expr::value(now + lease_ms as i64),
            )
            .col_expr(
                runs::Column::Attempts,
                Expr::col(runs::Column::Attempts).add(1),
            )
            .col_expr(runs::Column::UpdatedAtMs, Expr::value(now))
            .filter(runs::Column::Id.eq(candidate.id.clone()))
            .filter(claimable(now))
            .exec(db)
            .await?;
        if taken.rows_affected == 1 {
            return get(db, &candidate.id).await;
        }
    }
    Ok(None)
}

fn claimable(now: i64) -> Condition {
    Condition::any()
        .add(runs::Column::Status.eq(status::QUEUED))
        .add(
            Condition::all()
                .add(runs::Column::Status.eq(status::RUNNING))
                .add(runs::Column::LeaseExpiresMs.lt(now)),
        )
}

/// Stores progress and extends the lease. False when `owner` no longer
/// holds the run (the lease expired and another trainer took it).
pub async fn heartbeat(
    db: &impl ConnectionTrait,
    id: &str,
    owner: &str,
    lease_ms: u64,
    progress: &Progress,
) -> anyhow::Result<bool> {
    let now = now_ms() as i64;
    let updated = runs::Entity::update_many()
        .col_expr(
            runs::Column::Progress,
            Expr::value(serde_json::to_string(progress)?),
        )
        .col_expr(runs::Column::EvalBefore, Expr::value(progress.eval_before))
        .col_expr(
            runs::Column::TokensPerSec,
            Expr::value(progress.tokens_per_sec),
        )
        .col_expr(
            runs::Column::LeaseExpiresMs,
            Expr::value(now + lease_ms as i64),
        )
        .col_expr(runs::Column::UpdatedAtMs, Expr::value(now))
        .filter(held_by(id, owner))
        .exec(db)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// A run still running under `owner`'s lease.
pub fn held_by(id: &str, owner: &str) -> Condition {
    Condition::all()
        .add(runs::Column::Id.eq(id))
        .add(runs::Column::Status.eq(status::RUNNING))
        .add(runs::Column::LeaseOwner.eq(owner))
}

/// How a run ended.
pub struct Outcome<'a> {
    pub status: &'a str,
    pub eval_after: Option<f64>,
    pub adapter_id: Option<String>,
    pub error: Option<String>,
}

/// Ends a run `owner` holds. False when the lease was lost.
pub async fn finish(
    db: &impl ConnectionTrait,
    id: &str,
    owner: &str,
    outcome: Outcome<'_>,
) -> anyhow::Result<bool> {
    let now = now_ms() as i64;
    let updated = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(outcome.status))
        .col_expr(runs::Column::EvalAfter, Expr::value(outcome.eval_after))
        .col_expr(runs::Column::AdapterId, Expr::value(outcome.adapter_id))
        .col_expr(runs::Column::Error, Expr::value(outcome.error))
        .col_expr(
            runs::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            runs::Column::LeaseExpiresMs,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(runs::Column::UpdatedAtMs, Expr::value(now))
        .col_expr(runs::Column::FinishedAtMs, Expr::value(now))
        .filter(held_by(id, owner))
        .exec(db)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// The examples a run holds.
pub fn examples(row: &RunRow) -> anyhow::Result<Vec<Example>> {
    Ok(serde_json::from_str(&row.examples)?)
}

/// The run's settings.
pub fn config(row: &RunRow) -> anyhow::Result<TrainingConfig> {
    Ok(serde_json::from_str(&row.config)?)
}
