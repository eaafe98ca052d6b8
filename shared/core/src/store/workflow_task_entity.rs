//! The `workflow_tasks` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow_tasks")]
pub struct Model {
    /// `{workflow_id}-{idx}`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub workflow_id: String,
    pub idx: i32,
    pub name: String,
    pub description: String,
    pub task_type: String,
    /// JSON array of the indexes this task needs.
    pub depends_on: String,
    /// Dependencies not finished yet; 0 means the task may run.
    pub pending_deps: i32,
    /// waiting, queued, running, done, failed.
    pub status: String,
    /// JSON object of requirements (free-form, from the pattern).
    pub requirements: String,
    pub context_needed: bool,
    pub validation_required: bool,
    pub priority: i32,
    /// JSON scheduler plan (primary, validator, fallbacks).
    pub plan: String,
    /// The model whose answer was kept.
    pub model: Option<String>,
    pub output: Option<String>,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cost: f64,
    pub latency_ms: i64,
    /// JSON array: one entry per model tried, with its outcome.
    pub attempts: String,
    pub validation: Option<String>,
    pub consensus: Option<String>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
