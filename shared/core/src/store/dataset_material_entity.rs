//! The `dataset_materials` table: the records one source of a dataset
//! draws from, as they were when the run was created.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "dataset_materials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub dataset_id: String,
    /// Index of the run's `sources` entry.
    #[sea_orm(primary_key, auto_increment = false)]
    pub source: i32,
    pub records: i32,
    /// Gzipped JSON of the records.
    pub data: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
