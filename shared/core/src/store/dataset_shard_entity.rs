//! The `dataset_shards` table: one generated shard of a dataset, its lines
//! gzip-compressed.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "dataset_shards")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub dataset_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub shard: i32,
    pub kept: i64,
    /// JSON: dropped by filter, kept by source and by family.
    pub counts: String,
    /// Gzipped JSON lines of the train split.
    pub train: Vec<u8>,
    /// Gzipped JSON lines of the eval split.
    pub eval: Vec<u8>,
    /// Little-endian u64 dedup keys of the kept lines, train lines first.
    pub keys: Vec<u8>,
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
