//! Queues the user defines: who runs their jobs (`builtin` handlers in the
//! fleet, `external` workers over HTTP, or an HTTP `target` the fleet POSTs
//! each job to), how keys share the queue, and how long finished jobs stay.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// One column per statement: SQLite's ALTER TABLE adds one at a time.
fn columns() -> Vec<ColumnDef> {
    vec![
        string_len("handler", 16).default("builtin").to_owned(),
        text_null("target_url").to_owned(),
        big_integer_null("target_timeout_ms").to_owned(),
        integer_null("max_per_key").to_owned(),
        big_integer_null("keep_done_ms").to_owned(),
        big_integer_null("keep_dead_ms").to_owned(),
        boolean("remove_on_complete").default(false).to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for mut column in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table("queues")
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table("queues")
                        .drop_column(column.get_column_name())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
