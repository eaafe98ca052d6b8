//! The ground floor of Master Orchestrator: what every other crate and
//! binary builds on.
//!
//! It owns the typed configuration every binary parses ([`config`]), the
//! Prometheus metric names and exporter ([`metrics`]), the event topics
//! processes talk over ([`events`]), the fleet registry every process
//! beats into ([`fleet`]), the system switch that stops and starts the
//! whole fleet ([`system`]), restarts of in-process loops ([`supervise`]),
//! the shutdown signal ([`shutdown`]),
//! logging ([`telemetry`]) and the persisted store with its entities and
//! the queue registry ([`store`]).
//!
//! It must not know any subsystem above it: no queue engine, model,
//! workflow, campaign or trainer. Subsystems hand it plain data (a queue's
//! name and defaults, an entity row), never their own types.

pub mod config;
pub mod connect;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod shutdown;
pub mod sqlite_file;
pub mod store;
pub mod supervise;
pub mod system;
pub mod telemetry;

/// Milliseconds since the Unix epoch, the time unit of every timestamp the
/// queues store.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
