//! Learning from feedback: the feedback users give, the training runs the
//! trainer leases and runs, and the adapter versions they publish.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("feedback")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_len_null("task_id", 48))
                    .col(string_len("base_model", 64))
                    .col(text("prompt"))
                    .col(text_null("response"))
                    .col(integer("rating"))
                    .col(text_null("correction"))
                    // The example's target (correction or well-rated response);
                    // null when the feedback teaches nothing.
                    .col(text_null("target"))
                    .col(boolean("synthetic"))
                    // The run that took the example; null while it is buffered.
                    .col(string_len_null("run_id", 36))
                    .col(big_integer("created_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("feedback_buffered")
                    .table("feedback")
                    .if_not_exists()
                    .col("base_model")
                    .col("run_id")
                    .col("created_at_ms")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("training_runs")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_len("base_model", 64))
                    .col(string_len("status", 16))
                    .col(string_len("trigger", 16))
                    .col(text("config"))
                    .col(text("examples"))
                    .col(integer("synthetic_examples").default(0))
                    .col(string_len_null("lease_owner", 128))
                    .col(big_integer_null("lease_expires_ms"))
                    .col(integer("attempts").default(0))
                    .col(text("progress"))
                    .col(double_null("eval_before"))
                    .col(double_null("eval_after"))
                    .col(double_null("tokens_per_sec"))
                    .col(string_len_null("adapter_id", 96))
                    .col(text_null("error"))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .col(big_integer_null("finished_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("training_runs_base_status")
                    .table("training_runs")
                    .if_not_exists()
                    .col("base_model")
                    .col("status")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("adapters")
                    .if_not_exists()
                    .col(string_len("id", 96).primary_key())
                    .col(string_len("base_model", 64))
                    .col(integer("version"))
                    .col(string_len("status", 16))
                    .col(string_len("run_id", 36))
                    .col(text("metrics"))
                    .col(text("location"))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("adapters_base_version")
                    .table("adapters")
                    .if_not_exists()
                    .col("base_model")
                    .col("version")
                    .unique()
                    .to_owned(),
            )
            .await?;
        // One adapter per run, so a run finished twice (a trainer that lost
        // its lease racing the one that took it over) publishes once.
        manager
            .create_index(
                Index::create()
                    .name("adapters_run")
                    .table("adapters")
                    .if_not_exists()
                    .col("run_id")
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["adapters", "training_runs", "feedback"] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
