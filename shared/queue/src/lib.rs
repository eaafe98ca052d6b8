//! The queue engine: the job envelope, the [`QueueBackend`] trait that every
//! storage implements, and the worker runtime that consumes it.
//!
//! Semantics shared by every backend:
//! - a pushed job is `pending` (possibly delayed until `run_at`);
//! - a fetch leases due jobs, highest priority first then FIFO, to one worker
//!   for a lease period and counts the attempt (`running`);
//! - an acknowledgement marks the job `done`, or on failure `failed` with a
//!   retry scheduled after exponential backoff, or `dead` once
//!   `max_attempts` attempts have failed;
//! - a lease that expires without acknowledgement (the worker died) puts the
//!   job back, so every job runs at least once;
//! - an `idempotency_key` makes a push idempotent within its queue.
//!
//! It knows no domain: no workflow, campaign, model or memory. A queue's
//! work comes from a [`JobHandler`] that the composing process registers;
//! the only handler it ships is [`Noop`], the probe queue benchmarks and
//! fault tests use.

mod backend;
pub mod callback;
mod coalesce;
pub mod fleet;
mod handler;
pub mod noop;
pub mod redis;
pub mod sqlite;
mod types;
pub mod worker;

pub use backend::{QueueBackend, connect};
pub use coalesce::PushCoalescer;
pub use handler::{JobContext, JobError, JobHandler, QueueDefaults, cut};
pub use noop::Noop;
pub use types::*;
