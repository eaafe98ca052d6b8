//! Schema migrations of the Master Orchestrator store, for SQLite (the
//! embedded default) and PostgreSQL. Each migration is one module; the
//! [`Migrator`] lists them in order and runs the pending ones at start.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_queues;
mod m20261124_000002_create_context_packs;
mod m20261124_000003_create_workflows;
mod m20261124_000004_create_training;
mod m20261124_000005_create_campaigns;
mod m20261130_000006_create_adapter_files;
mod m20261130_000007_create_datasets;
mod m20261130_000008_create_dataset_materials;
mod m20261130_000009_queue_kinds;
mod m20261130_000010_create_schedules;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_queues::Migration),
            Box::new(m20261124_000002_create_context_packs::Migration),
            Box::new(m20261124_000003_create_workflows::Migration),
            Box::new(m20261124_000004_create_training::Migration),
            Box::new(m20261124_000005_create_campaigns::Migration),
            Box::new(m20261130_000006_create_adapter_files::Migration),
            Box::new(m20261130_000007_create_datasets::Migration),
            Box::new(m20261130_000008_create_dataset_materials::Migration),
            Box::new(m20261130_000009_queue_kinds::Migration),
            Box::new(m20261130_000010_create_schedules::Migration),
        ]
    }
}
