//! The `adapter_files` table: each published adapter's files
//! (`adapter_model.safetensors`, `adapter_config.json`), so processes on
//! other machines can load it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "adapter_files")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub adapter_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub content: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
