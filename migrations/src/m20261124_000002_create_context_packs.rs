//! Context packs and their files. File contents are kept in the store so
//! a worker on any machine can embed them, and so re-indexing can compare
//! hashes without touching the vector store.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("context_packs")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_len("name", 128))
                    .col(text_null("root"))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("pack_files")
                    .if_not_exists()
                    .col(string_len("pack_id", 36))
                    .col(string_len("path", 1024))
                    .col(string_len("kind", 16))
                    .col(string_len("hash", 64))
                    .col(text("content"))
                    .col(string_len("status", 16))
                    .col(integer("chunks").default(0))
                    .col(text_null("error"))
                    .col(big_integer("updated_at_ms"))
                    .primary_key(Index::create().col("pack_id").col("path"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("pack_files_status")
                    .table("pack_files")
                    .if_not_exists()
                    .col("pack_id")
                    .col("status")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("pack_files").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table("context_packs").to_owned())
            .await
    }
}
