//! `orchestrator-campaign-bench`: campaign figures.
//!
//! - `extract`: schema.org extraction pages/s over the generated corpus
//!   (one thread, then N), writing per-page summaries and comparing them
//!   with extruct's when `DIR/extruct_summary.json` exists;
//! - `crawl`: end-to-end pages/s of a `seo_mining` campaign over the same
//!   corpus served on loopback (fetch, robots, extract, store, queue), with
//!   1, 2 and 4 workers, in embedded mode (SQLite) in this process.
//!
//! `deploy/scripts/bench-campaigns.sh` runs both next to extruct.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use orchestrator_campaign::{
    Campaigns,
    corpus::{BASE_URL, generate_corpus, summarize},
    extract::extract,
    model::CampaignRequest,
};
use orchestrator_core::config::CommonConfig;
use orchestrator_tests::site::Site;
use rayon::prelude::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Per page and syntax: sorted "Types:property count" of each item.
type Summary = BTreeMap<String, Vec<String>>;

#[derive(Debug, Parser)]
#[command(name = "orchestrator-campaign-bench", about = "Campaign benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Extraction pages/s, and agreement with extruct.
    Extract {
        #[arg(long, default_value_t = 2_000)]
        pages: usize,
        #[arg(long, default_value = "target/bench-campaigns/corpus")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// End-to-end campaign pages/s over loopback.
    Crawl {
        #[arg(long, default_value_t = 2_000)]
        pages: usize,
        /// Worker counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        workers: Vec<u32>,
    },
}

/// The settings of the in-process campaign runs.
#[derive(Debug, Parser)]
struct Embedded {
    #[command(flatten)]
    common: CommonConfig,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Extract {
            pages,
            dir,
            threads,
        } => extract_bench(pages, &dir, threads),
        Bench::Crawl { pages, workers } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(crawl_bench(pages, &workers)),
    }
}

fn extract_bench(pages: usize, dir: &std::path::Path, threads: usize) -> anyhow::Result<()> {
    if !dir
        .join(format!("p/{}.html", pages.saturating_sub(1)))
        .exists()
    {
        generate_corpus(dir, pages).context("writing the corpus")?;
    }
    let docs: Vec<(String, Url)> = (0..pages)
        .map(|i| {
            let html = std::fs::read_to_string(dir.join(format!("p/{i}.html")))?;
            Ok((html, Url::parse(&format!("{BASE_URL}/p/{i}.html"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    let bytes: usize = docs.iter().map(|(h, _)| h.len()).sum();
    let single = best_of(|| docs.iter().map(|(h, b)| extract(h, b).items.len()).sum());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let multi = best_of(|| {
        pool.install(|| {
            docs.par_iter()
                .map(|(h, b)| extract(h, b).items.len())
                .sum()
        })
    });
    let per_s = |d: Duration| pages as f64 / d.as_secs_f64();
    let summaries: BTreeMap<String, Summary> = docs
        .iter()
        .enumerate()
        .map(|(i, (h, b))| {
            let summary = summarize(&extract(h, b).items)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            (i.to_string(), summary)
        })
        .collect();
    let (compared, mismatches) = compare(dir, &summaries)?;
    println!(
        "{}",
        json!({
            "bench": "extract", "engine": "orchestrator", "pages": pages,
            "avg_kb": (bytes as f64 / pages.max(1) as f64 / 1e3 * 10.0).round() / 10.0,
            "pages_per_s_1_thread": per_s(single).round(),
            format!("pages_per_s_{threads}_threads"): per_s(multi).round(),
            "compared_with_extruct": compared, "mismatches": mismatches,
        })
    );
    anyhow::ensure!(mismatches == 0, "{mismatches} pages differ from extruct");
    Ok(())
}

/// Compares with extruct's summaries, printing the first differences.
fn compare(
    dir: &std::path::Path,
    ours: &BTreeMap<String, Summary>,
) -> anyhow::Result<(usize, usize)> {
    let path = dir.join("extruct_summary.json");
    if !path.exists() {
        return Ok((0, 0));
    }
    #[derive(serde::Deserialize)]
    struct Theirs {
        pages: BTreeMap<String, Summary>,
    }
    let theirs: Theirs = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut compared = 0;
    let mut mismatches = 0;
    for (page, summary) in ours {
        let Some(their) = theirs.pages.get(page) else {
            continue;
        };
        compared += 1;
        if their != summary {
            mismatches += 1;
            if mismatches <= 5 {
                eprintln!("page {page}:\n  ours    {summary:?}\n  extruct {their:?}");
            }
        }
    }
    Ok((compared, mismatches))
}

fn best_of(mut run: impl FnMut() -> usize) -> Duration {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(run());
            started.elapsed()
        })
        .min()
        .expect("three rounds")
}

async fn crawl_bench(pages: usize, workers: &[u32]) -> anyhow::Result<()> {
    let site = Site::start_corpus(pages).await;
    for &count in workers {
        let data_dir = std::env::temp_dir().join(format!(
            "orch-campaign-bench-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let args = [
            "bench",
            "--data-dir",
            data_dir.to_str().context("temp dir")?,
            // The operator lets campaigns reach the loopback corpus site.
            "--campaign-allow",
            "127.0.0.1/32",
        ];
        let config = Embedded::parse_from(args).common;
        let services = orchestrator_bootstrap::open(&config).await?;
        let campaigns = services.campaigns.clone();
        let (elapsed, view) = crawl_once(&campaigns, &site, pages, count).await?;
        println!(
            "{}",
            json!({
                "bench": "crawl", "engine": "orchestrator", "workers": count,
                "pages": pages, "seconds": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
                "pages_per_s": (pages as f64 / elapsed.as_secs_f64()).round(),
                "ops": view["progress"]["ops_done"], "items": view["progress"]["items_found"],
                "errors": view["progress"]["errors"],
            })
        );
        drop(services);
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

/// One campaign over the corpus sitemap, served by `workers` in-process
/// workers; timed from creation to completion.
async fn crawl_once(
    campaigns: &Arc<Campaigns>,
    site: &Site,
    pages: usize,
    workers: u32,
) -> anyhow::Result<(Duration, serde_json::Value)> {
    let request: CampaignRequest = serde_json::from_value(json!({
        "name": "bench", "type": "seo_mining",
        "config": {"sitemaps": [site.url("/p/sitemap.xml")], "allow": ["127.0.0.1/32"], "max_depth": 0,
                   "max_pages": pages + 100, "concurrency": 8, "per_host_concurrency": 8,
                   "per_host_interval_ms": 0},
        "resources": {"max_workers": workers},
    }))?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let row = campaigns.create(request).await?;
    campaigns.supervise(false, stop.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..workers {
        let (campaigns, id, stop) = (campaigns.clone(), row.id.clone(), stop.clone());
        tasks.spawn(async move {
            campaigns
                .serve(&id, &format!("bench-{n}"), true, &stop)
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let view = serde_json::to_value(campaigns.view(&row.id).await?)?;
    anyhow::ensure!(
        view["status"] == "completed",
        "campaign ended {}",
        view["status"]
    );
    Ok((elapsed, view))
}
