//! HTTP handlers, one module per resource.

pub mod campaigns;
pub mod chat;
pub mod compat;
pub mod datasets;
pub mod dead;
pub mod events;
pub mod external;
pub mod fleet;
pub mod health;
pub mod jobs;
pub mod models;
pub mod packs;
pub mod queues;
pub mod schedules;
pub mod status;
pub mod system;
pub mod training;
pub mod workflows;
