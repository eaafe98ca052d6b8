//! Workflow and task rows: inserts, reads, and the state changes that must
//! be atomic (a task finishing releases its dependents exactly once).

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use serde_json::Value;

use orchestrator_core::{
    now_ms,
    store::{workflow_entity as workflows, workflow_task_entity as tasks},
};

pub use tasks::Model as TaskRow;
pub use workflows::Model as WorkflowRow;

/// Task states.
pub mod status {
    pub const WAITING: &str = "waiting";
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// Workflow states.
pub mod workflow_status {
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// What a finished task stores.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub model: String,
    pub output: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost: f64,
    pub latency_ms: u64,
    pub attempts: Value,
    pub validation: Option<Value>,
    pub consensus: Option<Value>,
}

pub async fn insert(
    db: &DatabaseConnection,
    workflow: workflows::ActiveModel,
    rows: Vec<tasks::ActiveModel>,
) -> anyhow::Result<()> {
    let txn = orchestrator_core::store::begin_write(db).await?;
    workflows::Entity::insert(workflow).exec(&txn).await?;
    tasks::Entity::insert_many(rows).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

pub async fn workflow(db: &impl ConnectionTrait, id: &str) -> anyhow::Result<Option<WorkflowRow>> {
    Ok(workflows::Entity::find_by_id(id.to_string())
        .one(db)
        .await?)
}

pub async fn task(db: &impl ConnectionTrait, id: &str) -> anyhow::Result<Option<TaskRow>> {
    Ok(tasks::Entity::find_by_id(id.to_string()).one(db).await?)
}

pub async fn tasks_of(
    db: &impl ConnectionTrait,
    workflow_id: &str,
) -> anyhow::Result<Vec<TaskRow>> {
    Ok(tasks::Entity::find()
        .filter(tasks::Column::WorkflowId.eq(workflow_id))
        .order_by_asc(tasks::Column::Idx)
        .all(db)
        .await?)
}

/// Running workflows that have tasks ready to run.
pub async fn with_queued_tasks(db: &DatabaseConnection) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = tasks::Entity::find()
        .select_only()
        .column(tasks::Column::WorkflowId)
        .filter(tasks::Column::Status.eq(status::QUEUED))
        .distinct()
        .into_tuple()
        .all(db)
        .await?;
    ids.sort();
    Ok(ids)
}

/// Marks a queued (or re-delivered running) task as running on `model`.
/// False when the task is already finished.
pub async fn claim(db: &DatabaseConnection, task_id: &str, model: &str) -> anyhow::Result<bool> {
    let claimed = tasks::Entity::update_many()
        .col_expr(tasks::Column::Status, Expr::value(status::RUNNING))
        .col_expr(tasks::Column::Model, Expr::value(model))
        .col_expr(tasks::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(tasks::Column::Id.eq(task_id))
        .filter(tasks::Column::Status.is_in([status::QUEUED, status::RUNNING]))
        .exec(db)
        .await?;
    Ok(claimed.rows_affected == 1)
}

/// Puts a running task back to queued (its job will be retried).
pub async fn requeue(
    db: &DatabaseConnection,
    task_id: &str,
    attempts: &Value,
) -> anyhow::Result<()> {
    tasks::Entity::update_many()
        .col_expr(tasks::Column::Status, Expr::value(status::QUEUED))
        .col_expr(tasks::Column::Attempts, Expr::value(attempts.to_string()))
        .col_expr(tasks::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(tasks::Column::Id.eq(task_id))
        .filter(tasks::Column::Status.eq(status::RUNNING))
        .exec(db)
        .await?;
    Ok(())
}

/// Stores a task's result and releases the dependents whose every input is
/// now ready, in one transaction. Only the first completion of a task
/// counts, so a re-delivered job cannot release anything twice. Returns
/// whether this call was that first completion.
pub async fn complete(
    db: &DatabaseConnection,
    task: &TaskRow,
    result: &TaskResult,
) -> anyhow::Result<bool> {
    let txn = orchestrator_core::store::begin_write(db).await?;
    // The write comes first so SQLite takes its write lock up front (a
    // read-then-write transaction could fail to upgrade under contention).
    let stored = tasks::Entity::update_many()
        .col_expr(tasks::Column::Status, Expr::value(status::DONE))
        .col_expr(tasks::Column::Model, Expr::value(&result.model))
        .col_expr(tasks::Column::Output, Expr::value(&result.output))
        .col_expr(
            tasks::Column::PromptTokens,
            Expr::value(result.prompt_tokens as i32),
        )
        .col_expr(
            tasks::Column::CompletionTokens,
            Expr::value(result.completion_tokens as i32),
        )
        .col_expr(tasks::Column::Cost, Expr::value(result.cost))
        .col_expr(
            tasks::Column::LatencyMs,
            Expr::value(result.latency_ms as i64),
        )
        .col_expr(
            tasks::Column::Attempts,
            Expr::value(result.attempts.to_string()),
        )
        .col_expr(
            tasks::Column::Validation,
            Expr::value(result.validation.as_ref().map(Value::to_string)),
        )
        .col_expr(
            tasks::Column::Consensus,
            Expr::value(result.consensus.as_ref().map(Value::to_string)),
        )
        .col_expr(tasks::Column::Error, Expr::value(Option::<String>::None))
        .col_expr(tasks::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(tasks::Column::Id.eq(&task.id))
        .filter(tasks::Column::Status.ne(status::DONE))
        .exec(&txn)
        .await?;
    if stored.rows_affected == 0 {
        txn.rollback().await?;
        return Ok(false);
    }
    for child in tasks_of(&txn, &task.workflow_id).await? {
        if depends_on(&child).contains(&task.idx) {
            tasks::Entity::update_many()
                .col_expr(
                    tasks::Column::PendingDeps,
                    Expr::col(tasks::Column::PendingDeps).sub(1),
                )
                .filter(tasks::Column::Id.eq(&child.id))
                .exec(&txn)
                .await?;
        }
    }
    tasks::Entity::update_many()
        .col_expr(tasks::Column::Status, Expr::value(status::QUEUED))
        .filter(tasks::Column::WorkflowId.eq(&task.workflow_id))
        .filter(tasks::Column::Status.eq(status::WAITING))
        .filter(tasks::Column::PendingDeps.lte(0))
        .exec(&txn)
        .await?;
    workflows::Entity::update_many()
        .col_expr(
            workflows::Column::DoneSteps,
            Expr::col(workflows::Column::DoneSteps).add(1),
        )
        .col_expr(
            workflows::Column::Cost,
            Expr::col(workflows::Column::Cost).add(result.cost),
        )
        .col_expr(workflows::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(workflows::Column::Id.eq(&task.workflow_id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(true)
}

/// Marks a task and its workflow failed.
pub async fn fail(
    db: &DatabaseConnection,
    task: &TaskRow,
    error: &str,
    attempts: &Value,
) -> anyhow::Result<()> {
    let txn = orchestrator_core::store::begin_write(db).await?;
    tasks::Entity::update_many()
        .col_expr(tasks::Column::Status, Expr::value(status::FAILED))
        .col_expr(tasks::Column::Error, Expr::value(error))
        .col_expr(tasks::Column::Attempts, Expr::value(attempts.to_string()))
        .col_expr(tasks::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(tasks::Column::Id.eq(&task.id))
        .exec(&txn)
        .await?;
    finish(
        &txn,
        &task.workflow_id,
        workflow_status::FAILED,
        None,
        Some(error),
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Marks a workflow finished, once: false if it already was.
pub async fn finish(
    db: &impl ConnectionTrait,
    workflow_id: &str,
    outcome: &str,
    result: Option<&str>,
    error: Option<&str>,
) -> anyhow::Result<bool> {
    let updated = workflows::Entity::update_many()
        .col_expr(workflows::Column::Status, Expr::value(outcome))
        .col_expr(workflows::Column::Result, Expr::value(result))
        .col_expr(workflows::Column::Error, Expr::value(error))
        .col_expr(workflows::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(workflows::Column::Id.eq(workflow_id))
        .filter(workflows::Column::Status.eq(workflow_status::RUNNING))
        .exec(db)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// Cancels a running workflow and its unfinished tasks, once: the tasks
/// that were unfinished, or `None` if the workflow was not running.
pub async fn cancel(
    db: &DatabaseConnection,
    workflow_id: &str,
) -> anyhow::Result<Option<Vec<TaskRow>>> {
    let txn = orchestrator_core::store::begin_write(db).await?;
    if !finish(
        &txn,
        workflow_id,
        workflow_status::CANCELLED,
        None,
        Some("cancelled"),
    )
    .await?
    {
        return Ok(None);
    }
    let unfinished: Vec<TaskRow> = tasks_of(&txn, workflow_id)
        .await?
        .into_iter()
        .filter(|t| ![status::DONE, status::FAILED].contains(&t.status.as_str()))
        .collect();
    tasks::Entity::update_many()
        .col_expr(tasks::Column::Status, Expr::value(status::CANCELLED))
        .col_expr(tasks::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
        .filter(tasks::Column::WorkflowId.eq(workflow_id))
        .filter(tasks::Column::Status.is_in([status::WAITING, status::QUEUED, status::RUNNING]))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(Some(unfinished))
}

/// The indexes a task depends on.
pub fn depends_on(task: &TaskRow) -> Vec<i32> {
    serde_json::from_str(&task.depends_on).unwrap_or_default()
}

/// A new workflow row.
pub fn new_workflow(
    id: &str,
    description: &str,
    kind: &str,
    target: &str,
    options: &Value,
    total_steps: usize,
) -> workflows::ActiveModel {
    let now = now_ms() as i64;
    workflows::ActiveModel {
        id: Set(id.to_string()),
        description: Set(description.to_string()),
        kind: Set(kind.to_string()),
        status: Set(workflow_status::RUNNING.to_string()),
        optimization_target: Set(target.to_string()),
        options: Set(options.to_string()),
        total_steps: Set(total_steps as i32),
        done_steps: Set(0),
        result: Set(None),
        error: Set(None),
        cost: Set(0.0),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
    }
}
