//! Memory: embeddings ([`embedding`]), the vector store ([`vector`]),
//! context packs ([`packs`]) chunked by [`chunking`], and the memory
//! [`manager`] that feeds retrieved context to workflow tasks. It also owns
//! the `embed` queue's handler ([`Embed`]), which indexes a pack's files.
//!
//! It stands on the store and the queue engine and must not know workflows,
//! models or campaigns: the workflow crate asks it for context, not the
//! other way round.

mod bert;
pub mod chunking;
mod embed_job;
pub mod embedding;
pub mod manager;
pub mod packs;
mod service;
pub mod vector;

pub use embed_job::Embed;
pub use service::{DIMENSION, Memory};
