//! Recurring schedules: a job pushed to a queue on a cron expression or at
//! a fixed interval. `next_run_at_ms` is the claim every API process races
//! for: a due time is advanced with a compare-and-set, so exactly one of
//! them pushes it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("schedules")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_len_null("name", 128))
                    .col(string_len("queue", 128))
                    // JSON: the payload of every job pushed.
                    .col(text("payload"))
                    .col(integer_null("priority"))
                    .col(integer_null("max_attempts"))
                    // Either a cron expression (with its time zone) or an interval.
                    .col(string_len_null("cron", 256))
                    .col(string_len_null("timezone", 64))
                    .col(big_integer_null("every_ms"))
                    .col(big_integer_null("start_at_ms"))
                    .col(big_integer_null("end_at_ms"))
                    .col(boolean("paused"))
                    // `skip` or `run_once`: what a due time found late does.
                    .col(string_len("missed", 16))
                    // Null once finished (past end_at).
                    .col(big_integer_null("next_run_at_ms"))
                    .col(big_integer_null("last_run_at_ms"))
                    .col(big_integer("runs"))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .to_owned(),
            )
            .await?;
        // The schedulers' poll: due and not paused.
        manager
            .create_index(
                Index::create()
                    .name("schedules_due")
                    .table("schedules")
                    .col("next_run_at_ms")
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("schedules").to_owned())
            .await
    }
}
