//! LLM workflows, their tasks, and the scheduler's per-model history.
//! A task counts the dependencies it still waits for (`pending_deps`), so
//! the parent that finishes last is the one that releases it, atomically.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("workflows")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(text("description"))
                    .col(string_len("kind", 32))
                    .col(string_len("status", 16))
                    .col(string_len("optimization_target", 16))
                    .col(text("options"))
                    .col(integer("total_steps"))
                    .col(integer("done_steps").default(0))
                    .col(text_null("result"))
                    .col(text_null("error"))
                    .col(double("cost").default(0.0))
                    .col(big_integer("created_at_ms"))
                    .col(big_integer("updated_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("workflow_tasks")
                    .if_not_exists()
                    .col(string_len("id", 48).primary_key())
                    .col(string_len("workflow_id", 36))
                    .col(integer("idx"))
                    .col(string_len("name", 64))
                    .col(text("description"))
                    .col(string_len("task_type", 32))
                    .col(text("depends_on"))
                    .col(integer("pending_deps"))
                    .col(string_len("status", 16))
                    .col(text("requirements"))
                    .col(boolean("context_needed"))
                    .col(boolean("validation_required"))
                    .col(integer("priority"))
                    .col(text("plan"))
                    .col(string_len_null("model", 64))
                    .col(text_null("output"))
                    .col(integer("prompt_tokens").default(0))
                    .col(integer("completion_tokens").default(0))
                    .col(double("cost").default(0.0))
                    .col(big_integer("latency_ms").default(0))
                    .col(text("attempts"))
                    .col(text_null("validation"))
                    .col(text_null("consensus"))
                    .col(text_null("error"))
                    .col(big_integer("updated_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("workflow_tasks_workflow")
                    .table("workflow_tasks")
                    .if_not_exists()
                    .col("workflow_id")
                    .col("idx")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("workflow_tasks_status_model")
                    .table("workflow_tasks")
                    .if_not_exists()
                    .col("status")
                    .col("model")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("model_history")
                    .if_not_exists()
                    .col(string_len("model_id", 64))
                    .col(string_len("task_type", 32))
                    .col(integer("samples"))
                    .col(double("success"))
                    .col(double("validation"))
                    .col(double("latency_ms"))
                    .col(big_integer("updated_at_ms"))
                    .primary_key(Index::create().col("model_id").col("task_type"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["model_history", "workflow_tasks", "workflows"] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
