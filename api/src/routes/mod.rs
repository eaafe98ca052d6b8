//! HTTP handlers, one module per resource.

pub mod dead;
pub mod health;
pub mod jobs;
pub mod packs;
pub mod queues;
