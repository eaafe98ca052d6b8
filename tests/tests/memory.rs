//! Memory with the real all-MiniLM-L6-v2 weights: embeddings equal
//! sentence-transformers', neighbours make sense, and the vector store
//! (embedded, or Qdrant when `QDRANT_URL` is set) filters, deletes and
//! persists the same way; the memory manager fits context to a budget and
//! remembers finished outputs.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use orchestrator_core::{config::CommonConfig, store::Store};
use orchestrator_memory::{
    DIMENSION, Memory,
    embedding::{self, Embedder},
    manager,
    packs::PackStore,
    vector::{self, ChunkPayload, Filter, Point, SearchMode, VectorStore},
};
use orchestrator_tests::{models_dir, qdrant_url};
use serde::Deserialize;

fn embedder() -> Embedder {
    Embedder::load(&embedding::model_path(&models_dir())).expect("load the embedder")
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("orch-memory-{}", uuid::Uuid::now_v7().simple()))
}

/// A fresh store: Qdrant (new collection) when configured, else embedded.
async fn open_store(data_dir: &std::path::Path, collection: &str) -> Arc<dyn VectorStore> {
    vector::open(qdrant_url().as_deref(), collection, data_dir, DIMENSION)
        .await
        .expect("open the vector store")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

#[test]
fn embeddings_match_sentence_transformers() {
    // Written by deploy/bench/memory/reference.sh with sentence-transformers
    // on the same weights; it covers truncation, non-ASCII text and code.
    let reference: Reference =
        serde_json::from_str(include_str!("../fixtures/minilm_reference.json"))
            .expect("parse the reference");
    let embedder = embedder();
    let texts: Vec<&str> = reference.texts.iter().map(String::as_str).collect();
    let ours = embedder.embed(&texts).unwrap();
    for ((text, mine), theirs) in texts.iter().zip(&ours).zip(&reference.embeddings) {
        assert_eq!(mine.len(), 384);
        let similarity = cosine(mine, theirs);
        assert!(similarity >= 0.999, "cosine {similarity} for {text:?}");
        let norm = mine.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
    // One at a time and in a batch give the same vector (padding is masked).
    let alone = embedder.embed(&texts[1..2]).unwrap();
    assert!(cosine(&alone[0], &ours[1]) > 0.99999);
}

const PARAPHRASES: [(&str, &str); 6] = [
    (
        "How do I reset my password?",
        "What are the steps to change my login password?",
    ),
    (
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
    ),
    (
        "Stock prices fell sharply today.",
        "The market dropped a lot this afternoon.",
    ),
    (
        "Preheat the oven to 200 degrees.",
        "Heat your oven up to 200°C before baking.",
    ),
    (
        "The train to Paris was delayed.",
        "Our Paris-bound train ran late.",
    ),
    (
        "Python lists are mutable.",
        "You can change a list in Python after creating it.",
    ),
];

fn point(vector: Vec<f32>, pack: &str, source: &str, kind: &str, text: &str) -> Point {
    Point {
        id: uuid::Uuid::now_v7(),
        vector,
        payload: ChunkPayload {
            pack: pack.into(),
            source: source.into(),
            kind: kind.into(),
            title: None,
            text: text.into(),
            start_line: 1,
            end_line: 1,
        },
    }
}

/// Stores every sentence of the labelled pairs; each one's nearest other
/// sentence must be its paraphrase.
#[tokio::test]
async fn paraphrases_are_nearest_neighbours() {
    let embedder = embedder();
    let dir = temp_dir();
    let store = open_store(&dir, &format!("t_{}", uuid::Uuid::now_v7().simple())).await;
    let sentences: Vec<&str> = PARAPHRASES.iter().flat_map(|(a, b)| [*a, *b]).collect();
    let vectors = embedder.embed(&sentences).unwrap();
    let points = sentences
        .iter()
        .zip(&vectors)
        .map(|(s, v)| point(v.clone(), "labelled", s, "text", s))
        .collect();
    store.upsert(points).await.unwrap();
    for (i, sentence) in sentences.iter().enumerate() {
        let hits = store
            .search(&vectors[i], 2, &Filter::pack("labelled"), SearchMode::Auto)
            .await
            .unwrap();
        assert_eq!(
            hits[0].payload.text, *sentence,
            "a sentence is nearest to itself"
        );
        let partner = sentences[i ^ 1];
        assert_eq!(
            hits[1].payload.text, partner,
            "nearest other to {sentence:?}"
        );
        assert!(hits[0].score > hits[1].score);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Filters on pack, source and kind, deletes by filter, counts, exact and
/// automatic search agree, and points survive reopening the store.
#[tokio::test]
async fn filters_deletes_and_persistence() {
    let embedder = embedder();
    let dir = temp_dir();
    let collection = format!("t_{}", uuid::Uuid::now_v7().simple());
    let store = open_store(&dir, &collection).await;
    let docs = [
        (
            "a",
            "guide.md",
            "markdown",
            "Install the package with cargo install.",
        ),
        (
            "a",
            "main.rs",
            "code",
            "fn main() { println!(\"install\"); }",
        ),
        (
            "b",
            "notes.txt",
            "text",
            "Install the package with cargo install.",
        ),
        (
            "b",
            "other.txt",
            "text",
            "Bananas are yellow and rich in potassium.",
        ),
    ];
    let texts: Vec<&str> = docs.iter().map(|d| d.3).collect();
    let vectors = embedder.embed(&texts).unwrap();
    let points = docs
        .iter()
        .zip(vectors)
        .map(|((pack, source, kind, text), v)| point(v, pack, source, kind, text))
        .collect();
    store.upsert(points).await.unwrap();
    let query = embedder.embed(&["how do I install it?"]).unwrap().remove(0);

    let in_a = store
        .search(&query, 10, &Filter::pack("a"), SearchMode::Auto)
        .await
        .unwrap();
    assert_eq!(in_a.len(), 2);
    assert!(in_a.iter().all(|h| h.payload.pack == "a"));
    let code_only = Filter {
        kind: Some("code".into()),
        ..Filter::default()
    };
    let code = store
        .search(&query, 10, &code_only, SearchMode::Auto)
        .await
        .unwrap();
    assert_eq!(code.len(), 1);
    assert_eq!(code[0].payload.source, "main.rs");
    let both = Filter {
        packs: Some(vec!["a".into(), "b".into()]),
        ..Filter::default()
    };
    let exact = store
        .search(&query, 3, &both, SearchMode::Exact)
        .await
        .unwrap();
    let auto = store
        .search(&query, 3, &both, SearchMode::Auto)
        .await
        .unwrap();
    let ids = |hits: &[vector::Hit]| hits.iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(&exact), ids(&auto));
    assert!(exact[0].payload.text.contains("Install"));
    assert_eq!(store.count(&Filter::pack("b")).await.unwrap(), 2);
    assert!(
        store
            .search(&query, 5, &Filter::pack("nope"), SearchMode::Auto)
            .await
            .unwrap()
            .is_empty()
    );

    let one_source = Filter {
        source: Some("other.txt".into()),
        ..Filter::pack("b")
    };
    store.delete(&one_source).await.unwrap();
    assert_eq!(store.count(&Filter::pack("b")).await.unwrap(), 1);
    let left = store
        .search(&query, 10, &Filter::pack("b"), SearchMode::Auto)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload.source, "notes.txt");

    drop(store);
    let reopened = open_store(&dir, &collection).await;
    assert_eq!(reopened.count(&Filter::default()).await.unwrap(), 3);
    let again = reopened
        .search(&query, 10, &both, SearchMode::Auto)
        .await
        .unwrap();
    assert_eq!(again.len(), 3, "points survive reopening");
    assert_eq!(again[0].id, exact[0].id);
    let _ = std::fs::remove_dir_all(dir);
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CommonConfig,
}

async fn memory_in(dir: &std::path::Path) -> Memory {
    let mut args = Args::parse_from(["test"]).common;
    args.data_dir = dir.to_path_buf();
    args.models_dir = models_dir();
    args.qdrant_url = qdrant_url();
    args.qdrant_collection = format!("t_{}", uuid::Uuid::now_v7().simple());
    let store = Store::connect(&args).await.unwrap();
    Memory::new(&args, PackStore::new(store.connection().clone()))
}

#[tokio::test]
async fn context_fits_the_budget_and_outputs_are_remembered() {
    let dir = temp_dir();
    let memory = memory_in(&dir).await;
    let long_tail = "Further notes on unrelated gardening topics.\n".repeat(25);
    memory
        .index_document("docs", "deploy.md", "markdown",
            &format!("# Deploying\nShip the release binary and restart the service with systemd.\n\n# Gardening\n{long_tail}"))
        .await
        .unwrap();
    memory
        .index_document(
            "docs",
            "db.md",
            "markdown",
            "# Database\nBack up PostgreSQL with pg_dump every night.",
        )
        .await
        .unwrap();

    let roomy = manager::context_for(
        &memory,
        "how do I deploy the service?",
        &["docs".into()],
        3,
        10_000,
    )
    .await
    .unwrap();
    assert_eq!(roomy.chunks.len(), 3);
    assert_eq!(roomy.chunks[0].payload.source, "deploy.md");
    assert!(roomy.render().contains("systemd"));

    let tight = manager::context_for(
        &memory,
        "how do I deploy the service?",
        &["docs".into()],
        3,
        40,
    )
    .await
    .unwrap();
    assert!(tight.tokens <= 40, "{} tokens", tight.tokens);
    assert!(
        !tight.chunks.is_empty() && tight.chunks.len() < 3,
        "the budget drops chunks"
    );

    let none = manager::context_for(&memory, "backups", &["docs".into()], 3, 0)
        .await
        .unwrap();
    assert!(none.chunks.is_empty());

    // A finished workflow's output is found by a later, related query,
    // even with no packs given.
    manager::remember(
        &memory,
        "wf-1",
        "Compare message brokers",
        "RabbitMQ suits complex routing; Kafka suits high-throughput event logs.",
    )
    .await
    .unwrap();
    let later = manager::context_for(&memory, "which broker for event streaming?", &[], 2, 1_000)
        .await
        .unwrap();
    assert_eq!(later.chunks[0].payload.pack, manager::MEMORY_PACK);
    assert!(later.chunks[0].payload.text.contains("Kafka"));
    let _ = std::fs::remove_dir_all(dir);
}
