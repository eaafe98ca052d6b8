//! Master Orchestrator's shared core: everything more than one binary needs.
//!
//! Start with [`queue`]: the job envelope, the [`queue::QueueBackend`] trait
//! with its Redis and embedded SQLite implementations, and the apalis-based
//! worker runtime that consumes them. [`jobs`] holds the handlers of the
//! built-in queues, [`store`] the persisted registry (sea-orm), [`config`]
//! the typed configuration every binary parses, and [`metrics`] the
//! Prometheus names and exporter.

pub mod bootstrap;
pub mod campaign;
pub mod config;
pub mod events;
pub mod jobs;
pub mod llm;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod queue;
pub mod shutdown;
mod sqlite_file;
pub mod store;
pub mod telemetry;
pub mod training;
pub mod workflow;

/// Milliseconds since the Unix epoch, the time unit of every timestamp the
/// queues store.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
