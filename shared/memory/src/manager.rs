//! The memory manager: what a workflow task sees of the packs it was given,
//! and what a finished workflow leaves behind for later ones.
//!
//! Retrieval takes the nearest chunks and keeps them, best first, while
//! they fit the task's token budget. Finished outputs are stored in the
//! [`MEMORY_PACK`] pack, which every retrieval also searches, so a later
//! workflow on the same subject starts from what an earlier one found.

use serde::Serialize;

use super::{
    service::Memory,
    vector::{Filter, Hit, SearchMode},
};

/// The pack finished workflow outputs are remembered in.
pub const MEMORY_PACK: &str = "memory";
/// Chunks fetched before the budget is applied.
const CANDIDATES: usize = 32;

/// Context for one task.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub chunks: Vec<Hit>,
    pub tokens: usize,
}

impl Context {
    /// The chunks as one prompt section, each headed by its source.
    pub fn render(&self) -> String {
        self.chunks
            .iter()
            .map(|hit| {
                let p = &hit.payload;
                format!("[{}:{}-{}]\n{}", p.source, p.start_line, p.end_line, p.text)
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// The best chunks for `query` from `packs` and from remembered outputs,
/// at most `k`, whose tokens together stay within `token_budget`.
pub async fn context_for(
    memory: &Memory,
    query: &str,
    packs: &[String],
    k: usize,
    token_budget: usize,
) -> anyhow::Result<Context> {
    let mut searched: Vec<String> = packs.to_vec();
    searched.push(MEMORY_PACK.to_string());
    let filter = Filter {
        packs: Some(searched),
        ..Filter::default()
    };
    let hits = memory
        .search(query, CANDIDATES.max(k), &filter, SearchMode::Auto)
        .await?;
    let embedder = memory.embedder().await?;
    let mut context = Context {
        chunks: Vec::new(),
        tokens: 0,
    };
    for hit in hits {
        if context.chunks.len() == k {
            break;
        }
        let tokens = embedder.count_tokens(&hit.payload.text);
        // A chunk that does not fit is skipped, not cut: a smaller one
        // further down may still fit.
        if context.tokens + tokens <= token_budget {
            context.tokens += tokens;
            context.chunks.push(hit);
        }
    }
    Ok(context)
}

/// Stores a finished workflow's output so later workflows can retrieve it.
/// Storing the same workflow again replaces its earlier memory.
pub async fn remember(
    memory: &Memory,
    workflow_id: &str,
    description: &str,
    output: &str,
) -> anyhow::Result<usize> {
    let text = format!("# {description}\n\n{output}");
    memory
        .index_document(MEMORY_PACK, workflow_id, "markdown", &text)
        .await
}
