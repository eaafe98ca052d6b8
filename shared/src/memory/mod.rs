//! Memory: embeddings ([`embedding`]), the vector store ([`vector`]),
//! context packs ([`packs`]) chunked by [`chunking`], and the memory
//! [`manager`] that feeds retrieved context to workflow tasks.

mod bert;
pub mod chunking;
pub mod embedding;
pub mod manager;
pub mod packs;
mod service;
pub mod vector;

pub use service::{DIMENSION, Memory};
