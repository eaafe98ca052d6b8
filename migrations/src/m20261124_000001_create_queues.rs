//! The queue registry: one row per queue with its settings.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("queues")
                    .if_not_exists()
                    .col(string_len("name", 64).primary_key())
                    .col(boolean("paused").default(false))
                    .col(integer("max_attempts"))
                    .col(big_integer("backoff_ms"))
                    .col(integer("concurrency"))
                    .col(integer_null("rate_limit_per_s"))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("queues").to_owned())
            .await
    }
}
