//! The `training_runs` table: one LoRA fine-tuning run, its lease, progress
//! and outcome.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "training_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub base_model: String,
    pub status: String,
    pub trigger: String,
    /// JSON: the run's `TrainingConfig`.
    pub config: String,
    /// JSON: the examples the run took from the buffer.
    pub examples: String,
    pub synthetic_examples: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_ms: Option<i64>,
    pub attempts: i32,
    /// JSON: `Progress` (step counts and loss curve).
    pub progress: String,
    pub eval_before: Option<f64>,
    pub eval_after: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    pub adapter_id: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
