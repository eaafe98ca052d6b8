//! The `feedback` table: every rating users gave, and the training example
//! it makes (`target`), buffered until a run takes it (`run_id`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "feedback")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub task_id: Option<String>,
    pub base_model: String,
    pub prompt: String,
    pub response: Option<String>,
    pub rating: i32,
    pub correction: Option<String>,
    pub target: Option<String>,
    pub synthetic: bool,
    pub run_id: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
