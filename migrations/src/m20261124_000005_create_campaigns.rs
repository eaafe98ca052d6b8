//! Data-mining campaigns: the campaign itself (settings, status, progress),
//! every URL it admitted to its frontier, and the items it found.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("campaigns")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_len("name", 200))
                    .col(string_len("kind", 32))
                    .col(string_len("status", 16))
                    .col(integer("priority"))
                    .col(text("config"))
                    .col(text("goals"))
                    .col(integer("max_workers"))
                    .col(integer_null("max_memory_mb"))
                    .col(big_integer("ops_done").default(0))
                    .col(big_integer("items_found").default(0))
                    .col(big_integer("errors").default(0))
                    // URLs admitted to the frontier: what max_pages bounds.
                    .col(big_integer("admitted").default(0))
                    .col(boolean("goals_met").default(false))
                    .col(text_null("reason"))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .col(big_integer_null("started_at_ms"))
                    .col(big_integer_null("finished_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("campaign_urls")
                    .if_not_exists()
                    .col(string_len("campaign_id", 36))
                    .col(string_len("url_key", 32))
                    .col(text("url"))
                    .col(string_len("kind", 16))
                    .col(integer("depth"))
                    // The URL whose page linked here: a page that runs again
                    // after a crash re-queues what it admitted.
                    .col(string_len_null("parent_key", 32))
                    .col(string_len("state", 16))
                    .col(big_integer("updated_at_ms"))
                    .primary_key(Index::create().col("campaign_id").col("url_key"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("campaign_urls_parent")
                    .table("campaign_urls")
                    .if_not_exists()
                    .col("campaign_id")
                    .col("parent_key")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("campaign_results")
                    .if_not_exists()
                    .col(big_integer("id").auto_increment().primary_key())
                    .col(string_len("campaign_id", 36))
                    .col(string_len("url_key", 32))
                    .col(text("url"))
                    // Counted by the min_sites goal.
                    .col(string_len("host", 255))
                    .col(string_len("item_key", 32))
                    .col(string_len("kind", 128))
                    .col(string_len("syntax", 16))
                    .col(text("data"))
                    .col(big_integer("found_at_ms"))
                    .to_owned(),
            )
            .await?;
        // Deduplication: an item found again (a page fetched twice after a
        // crash) is not stored twice.
        manager
            .create_index(
                Index::create()
                    .name("campaign_results_item")
                    .table("campaign_results")
                    .if_not_exists()
                    .col("campaign_id")
                    .col("url_key")
                    .col("item_key")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("campaign_results_kind")
                    .table("campaign_results")
                    .if_not_exists()
                    .col("campaign_id")
                    .col("kind")
                    .col("id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["campaign_results", "campaign_urls", "campaigns"] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
