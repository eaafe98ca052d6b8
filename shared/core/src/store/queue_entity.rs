//! The `queues` table: the persisted queue registry.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "queues")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub paused: bool,
    pub max_attempts: i32,
    pub backoff_ms: i64,
    pub concurrency: i32,
    pub rate_limit_per_s: Option<i32>,
    /// Who runs the jobs: `builtin` (a handler in the fleet), `external`
    /// (workers anywhere, over the lease API) or `http` (POSTed to
    /// `target_url`).
    pub handler: String,
    pub target_url: Option<String>,
    pub target_timeout_ms: Option<i64>,
    /// Most jobs of one concurrency key running at once.
    pub max_per_key: Option<i32>,
    pub keep_done_ms: Option<i64>,
    pub keep_dead_ms: Option<i64>,
    pub remove_on_complete: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
