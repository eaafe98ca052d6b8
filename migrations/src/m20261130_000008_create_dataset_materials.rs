//! What a generation run's sources read from the rest of the store (a
//! campaign's items, a pack's files, finished tasks, rated answers), taken
//! when the run is created: every shard, generated whenever and however
//! often, draws from the same records.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("dataset_materials")
                    .if_not_exists()
                    .col(string_len("dataset_id", 36))
                    // Index of the run's `sources` entry.
                    .col(integer("source"))
                    .col(integer("records"))
                    // Gzipped JSON: the records.
                    .col(blob("data"))
                    .primary_key(Index::create().col("dataset_id").col("source"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("dataset_materials").to_owned())
            .await
    }
}
