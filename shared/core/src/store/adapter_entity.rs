//! The `adapters` table: published LoRA adapter versions of a base model.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "adapters")]
pub struct Model {
    /// `base@adapter-vN`, the name requests use.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub base_model: String,
    pub version: i32,
    pub status: String,
    pub run_id: String,
    /// JSON: eval losses, examples, tokens/s.
    pub metrics: String,
    /// Directory holding adapter_model.safetensors and adapter_config.json.
    pub location: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
