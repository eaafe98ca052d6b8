//! `orchestrator-memory-bench`: memory figures, printed as JSON lines.
//!
//! - `texts`: writes benchmark texts, one per line: chunks of this
//!   repository's own sources and docs, cut by the project's chunker.
//! - `embed`: embeddings/s of the candle embedder over a texts file.
//! - `search`: queries/s of the embedded index, exact and HNSW, and
//!   HNSW's recall@10, on clustered unit vectors it generates; it also
//!   writes them as raw f32 files so faiss can search the same data.
//!
//! `deploy/scripts/bench-memory.sh` runs them next to sentence-transformers
//! and faiss.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use orchestrator_memory::{
    chunking::{self, DocKind},
    embedding::{self, Embedder},
    vector::{Filter, Index, SearchMode},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator-memory-bench",
    about = "Embedding and vector search benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Write N texts (chunks of the files under --root) to --out.
    Texts {
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long, default_value_t = 2_000)]
        count: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Embed every line of --texts and report embeddings/s.
    Embed {
        #[arg(long)]
        texts: PathBuf,
        #[arg(long, env = "ORCH_MODELS_DIR", default_value = "./models")]
        models_dir: PathBuf,
    },
    /// Exact and HNSW search over N generated vectors.
    Search {
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        #[arg(long, default_value_t = 1_000)]
        queries: usize,
        #[arg(long, default_value_t = 384)]
        dimension: usize,
        /// Directory for base.f32, queries.f32 and gt.u32 (exact top-10 ids).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Texts { root, count, out } => texts(&root, count, &out),
        Bench::Embed { texts, models_dir } => embed(&texts, &models_dir),
        Bench::Search {
            n,
            queries,
            dimension,
            out,
        } => search(n, queries, dimension, &out),
    }
}

fn texts(root: &Path, count: usize, out: &Path) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for entry in ignore::WalkBuilder::new(root).build().flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        if !entry.file_type().is_some_and(|t| t.is_file()) || path.extension().is_none() {
            continue;
        }
        let kind = DocKind::from_path(&path.to_string_lossy());
        for chunk in chunking::chunk(&text, kind) {
            lines.push(chunk.text.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    anyhow::ensure!(!lines.is_empty(), "no text files under {}", root.display());
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    for line in lines.iter().cycle().take(count) {
        writeln!(file, "{line}")?;
    }
    println!(
        "{}",
        json!({"bench": "texts", "written": count, "distinct": lines.len()})
    );
    Ok(())
}

fn embed(texts: &Path, models_dir: &Path) -> anyhow::Result<()> {
    let raw =
        std::fs::read_to_string(texts).with_context(|| format!("reading {}", texts.display()))?;
    let lines: Vec<&str> = raw.lines().collect();
    let loading = Instant::now();
    let embedder = Embedder::load(&embedding::model_path(models_dir))?;
    let load_s = loading.elapsed().as_secs_f64();
    embedder.embed(&lines[..lines.len().min(64)])?;
    let started = Instant::now();
    let vectors = embedder.embed(&lines)?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(vectors.len() == lines.len());
    // Word-pieces per text (special tokens included), as the model sees
    // them: truncated at the encoder's 256, and before truncation.
    let counts: Vec<usize> = lines.iter().map(|l| embedder.count_tokens(l)).collect();
    let mean = |f: &dyn Fn(usize) -> usize| {
        counts.iter().map(|&n| f(n)).sum::<usize>() as f64 / counts.len().max(1) as f64
    };
    println!(
        "{}",
        json!({
            "bench": "embed", "engine": "orchestrator", "texts": lines.len(),
            "avg_word_pieces": round(mean(&|n| n.min(256))),
            "avg_word_pieces_untruncated": round(mean(&|n| n)),
            "threads": rayon::current_num_threads(), "load_s": round(load_s),
            "seconds": round(seconds), "embeddings_per_s": round(lines.len() as f64 / seconds),
        })
    );
    Ok(())
}

/// Unit vectors around random centres, the way sentence embeddings cluster
/// by topic; uniform random vectors would make HNSW look worse than it is
/// on real data.
fn clustered(count: usize, rng: &mut StdRng, centres: &[Vec<f32>]) -> Vec<Vec<f32>> {
    (0..count)
        .map(|_| {
            let centre = &centres[rng.random_range(0..centres.len())];
            let mut v: Vec<f32> = centre
                .iter()
                .map(|c| c + rng.random_range(-0.08..0.08))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn write_f32(path: &Path, vectors: &[Vec<f32>]) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for v in vectors {
        for x in v {
            file.write_all(&x.to_le_bytes())?;
        }
    }
    Ok(())
}

fn search(n: usize, queries: usize, dimension: usize, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut rng = StdRng::seed_from_u64(7);
    let centres = clustered(n / 100 + 1, &mut rng, &[vec![0.0; dimension]]);
    let centres: Vec<Vec<f32>> = centres
        .into_iter()
        .map(|c| c.iter().map(|x| x * 0.5).collect())
        .collect();
    let base = clustered(n, &mut rng, &centres);
    let probes = clustered(queries, &mut rng, &centres);
    write_f32(&out.join("base.f32"), &base)?;
    write_f32(&out.join("queries.f32"), &probes)?;

    let mut index = Index::new(dimension);
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
    let building = Instant::now();
    // The way a store loads from disk: everything in, then one graph build.
    index.insert_many(
        ids.iter()
            .zip(&base)
            .map(|(id, v)| (*id, v.as_slice(), "bench", "bench", "text")),
    )?;
    let build_s = building.elapsed().as_secs_f64();
    let position: std::collections::HashMap<uuid::Uuid, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i as u32))
        .collect();

    let all = Filter::default();
    let started = Instant::now();
    let exact: Vec<Vec<u32>> = probes
        .iter()
        .map(|q| {
            let hits = index.search(q, 10, &all, SearchMode::Exact)?;
            Ok(hits.iter().map(|(id, _)| position[id]).collect())
        })
        .collect::<anyhow::Result<_>>()?;
    let exact_qps = queries as f64 / started.elapsed().as_secs_f64();
    let mut gt = std::io::BufWriter::new(std::fs::File::create(out.join("gt.u32"))?);
    for row in &exact {
        for id in row {
            gt.write_all(&id.to_le_bytes())?;
        }
    }
    drop(gt);

    let mut runs = Vec::new();
    // The same breadths as deploy/bench/memory/faiss_bench.py.
    for expansion in [16, 32, 64, 96, 128, 192, 256] {
        index.set_ann_expansion(expansion);
        let started = Instant::now();
        let mut found = 0;
        for (q, truth) in probes.iter().zip(&exact) {
            let hits = index.search(q, 10, &all, SearchMode::Auto)?;
            found += hits
                .iter()
                .filter(|(id, _)| truth.contains(&position[id]))
                .count();
        }
        let qps = queries as f64 / started.elapsed().as_secs_f64();
        runs.push(json!({"ef_search": expansion, "qps_single": round(qps),
            "recall_at_10": round(found as f64 / (queries * 10) as f64)}));
    }
    println!(
        "{}",
        json!({
            "bench": "search", "engine": "orchestrator", "n": n, "nq": queries,
            "threads": rayon::current_num_threads(),
            // What one exact query scans: every f32 vector.
            "exact": {"qps_single": round(exact_qps),
                      "scan_mb_per_query": round((n * dimension * 4) as f64 / 1e6)},
            "hnsw": {"build_s": round(build_s), "runs": runs},
        })
    );
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
