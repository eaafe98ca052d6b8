//! Training-data generation runs and their shards. A shard's lines are kept
//! gzip-compressed in the store, where every process can read them; its
//! dedup keys beside them, so a run's export drops repeats across shards
//! without regenerating anything.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("datasets")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_len("name", 128))
                    .col(string_len("status", 16))
                    // JSON: the run's plan (count, seed, format, filters, sources).
                    .col(text("plan"))
                    .col(integer("shards_total"))
                    // JSON, once every shard is in: repeats found across shards.
                    .col(text_null("summary"))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .col(big_integer_null("finished_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("dataset_shards")
                    .if_not_exists()
                    .col(string_len("dataset_id", 36))
                    .col(integer("shard"))
                    .col(big_integer("kept"))
                    // JSON: counts dropped by filter, kept by source and family.
                    .col(text("counts"))
                    .col(blob("train"))
                    .col(blob("eval"))
                    // Little-endian u64 dedup keys of the kept lines, train first.
                    .col(blob("keys"))
                    .col(big_integer("created_at_ms"))
                    .primary_key(Index::create().col("dataset_id").col("shard"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("dataset_shards").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table("datasets").to_owned())
            .await
    }
}
