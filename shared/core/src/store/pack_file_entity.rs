//! The `pack_files` table: one row per document of a context pack.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pack_files")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub pack_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub path: String,
    pub kind: String,
    /// blake3 of the content, hex: what re-indexing compares.
    pub hash: String,
    pub content: String,
    /// `pending`, `indexed` or `failed`.
    pub status: String,
    pub chunks: i32,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
