//! The files of every published adapter, kept in the store so any serving
//! process (on any machine) can load an adapter the trainer wrote on its
//! own disk.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("adapter_files")
                    .if_not_exists()
                    .col(string_len("adapter_id", 96))
                    .col(string_len("name", 128))
                    .col(blob("content"))
                    .primary_key(Index::create().col("adapter_id").col("name"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("adapter_files").to_owned())
            .await
    }
}
