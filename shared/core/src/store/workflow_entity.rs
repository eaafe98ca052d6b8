//! The `workflows` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflows")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub description: String,
    /// Task type of the request (research, coding, ...).
    pub kind: String,
    /// pending, running, completed, failed.
    pub status: String,
    pub optimization_target: String,
    /// The request's options as JSON (context packs, preferences, ...).
    pub options: String,
    pub total_steps: i32,
    pub done_steps: i32,
    pub result: Option<String>,
    pub error: Option<String>,
    pub cost: f64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
