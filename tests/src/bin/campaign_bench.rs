//! `orchestrator-campaign-bench`: campaign figures.
//!
//! - `corpus`: writes the extraction corpus: the generated pages, with the
//!   constructs where extruct and our extractor deliberately differ
//!   (`deploy/bench/campaigns/DIVERGENCES.md`) on every 20th page, and
//!   `DIR/divergences.json` naming the construct on each of those pages;
//! - `extract`: schema.org extraction pages/s over that corpus (one thread,
//!   then N), and, with `--extruct-summary`, a page-by-page comparison with
//!   extruct's output: every differing page is listed with its construct
//!   and what each side found; divergences a page's construct explains are
//!   counted apart from unexpected ones, which (like a missing or
//!   incomplete extruct output) fail the run;
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
    corpus::{BASE_URL, generate_page, summarize},
    extract::{SchemaItem, extract},
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
    /// Write the extraction corpus (pages and divergences.json) to --dir.
    Corpus {
        #[arg(long, default_value_t = 2_000)]
        pages: usize,
        #[arg(long, default_value = "target/bench-campaigns/corpus")]
        dir: PathBuf,
    },
    /// Extraction pages/s, and agreement with extruct.
    Extract {
        #[arg(long, default_value_t = 2_000)]
        pages: usize,
        #[arg(long, default_value = "target/bench-campaigns/corpus")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// extruct's per-page summaries (extruct_bench.py's output); the
        /// run fails if it is missing, unreadable or does not cover every
        /// page, or if any page differs other than its construct predicts.
        #[arg(long)]
        extruct_summary: Option<PathBuf>,
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
        Bench::Corpus { pages, dir } => {
            let constructs = write_corpus(&dir, pages)?;
            println!(
                "{}",
                json!({"bench": "corpus", "pages": pages, "divergence_pages": constructs,
                       "dir": dir.display().to_string()})
            );
            Ok(())
        }
        Bench::Extract {
            pages,
            dir,
            threads,
            extruct_summary,
        } => extract_bench(pages, &dir, threads, extruct_summary.as_deref()),
        Bench::Crawl { pages, workers } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(crawl_bench(pages, &workers)),
    }
}

fn extract_bench(
    pages: usize,
    dir: &std::path::Path,
    threads: usize,
    extruct_summary: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    // Deterministic: the same bytes extruct_bench.py read, if it ran.
    write_corpus(dir, pages)?;
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
    let comparison = match extruct_summary {
        Some(path) => Some(compare(path, &docs, &summaries)?),
        None => None,
    };
    let mut line = json!({
        "bench": "extract", "engine": "orchestrator", "pages": pages,
        "avg_kb": (bytes as f64 / pages.max(1) as f64 / 1e3 * 10.0).round() / 10.0,
        "pages_per_s_1_thread": per_s(single).round(),
        "ms_per_page_1_thread": (single.as_secs_f64() * 1e3 / pages.max(1) as f64 * 1e3).round() / 1e3,
        format!("pages_per_s_{threads}_threads"): per_s(multi).round(),
        "divergence_pages": (0..pages).filter(|&i| construct_at(i).is_some()).count(),
    });
    if let Some(c) = &comparison {
        line["compared_with_extruct"] = json!(c.compared);
        line["identical"] = json!(c.identical);
        line["expected_divergences"] = json!(c.expected);
        line["unexpected_divergences"] = json!(c.unexpected);
        line["by_construct"] = json!(c.by_construct);
    }
    println!("{line}");
    if let Some(c) = comparison {
        anyhow::ensure!(
            c.unexpected == 0,
            "{} of {} pages differ from extruct in ways DIVERGENCES.md does not list (see the \
             UNEXPECTED lines above)",
            c.unexpected,
            c.compared
        );
    }
    Ok(())
}

/// A construct where extruct 0.18 and our extractor deliberately differ,
/// one row of `deploy/bench/campaigns/DIVERGENCES.md` (same `id`).
struct Construct {
    id: &'static str,
    /// Inserted right after `<meta charset>` in `<head>`.
    head: &'static str,
    /// Inserted before `</main>`, outside every item of the page.
    body: &'static str,
    expect: Expect,
}

/// What the construct does to the comparison.
enum Expect {
    /// The summaries differ by exactly these (syntax, "Types:count") entries.
    Items {
        ours_only: &'static [(&'static str, &'static str)],
        extruct_only: &'static [(&'static str, &'static str)],
    },
    /// extruct raises on the whole page (no item of any syntax); we skip
    /// the construct and extract the rest.
    ExtructFails,
    /// The summaries agree; the values of `probe` (syntax, type, property)
    /// differ as given.
    Value {
        probe: (&'static str, &'static str, &'static str),
        ours: &'static str,
        extruct: &'static str,
    },
    /// extruct's output shape differs and the bench's mapping normalises
    /// it: the summaries must agree.
    Same,
}

/// Every `DIVERGENCE_EVERY`th page (offset by half) carries one construct,
/// in turn.
const DIVERGENCE_EVERY: usize = 20;

const CONSTRUCTS: &[Construct] = &[
    Construct {
        id: "jsonld-script-type",
        head: "",
        body: "<script type=\" Application/LD+JSON \">{\"@context\": \"https://schema.org\", \
               \"@type\": \"Book\", \"name\": \"Divergent\", \"isbn\": \"978-0-00-000000-2\"}</script>\n",
        expect: Expect::Items {
            ours_only: &[("json-ld", "Book:2")],
            extruct_only: &[],
        },
    },
    Construct {
        id: "jsonld-invalid",
        head: "",
        body: "<script type=\"application/ld+json\">{\"@context\": \"https://schema.org\", \
               \"@type\": \"Book\", \"name\": \"Broken\" \"isbn\": \"1\"}</script>\n",
        expect: Expect::ExtructFails,
    },
    Construct {
        id: "jsonld-graph",
        head: "",
        body: "<script type=\"application/ld+json\">{\"@context\": \"https://schema.org\", \
               \"@type\": \"WebPage\", \"name\": \"Graph page\", \"@graph\": [\
               {\"@type\": \"Book\", \"name\": \"Graph book\", \"isbn\": \"2\"}, \
               {\"@type\": \"Person\", \"name\": \"Graph author\"}]}</script>\n",
        expect: Expect::Same,
    },
    Construct {
        id: "base-href",
        head: "<base href=\"https://cdn.example/assets/\">\n",
        body: "<div itemscope itemtype=\"https://schema.org/Movie\"><span itemprop=\"name\">Based</span> \
               <a itemprop=\"url\" href=\"movie/1\">trailer</a></div>\n",
        expect: Expect::Value {
            probe: ("microdata", "Movie", "url"),
            ours: "https://cdn.example/assets/movie/1",
            extruct: "https://shop.example/p/movie/1",
        },
    },
    Construct {
        id: "microdata-time-text",
        head: "",
        body: "<div itemscope itemtype=\"https://schema.org/Movie\"><span itemprop=\"name\">Timed</span> \
               <time itemprop=\"dateCreated\">2024</time></div>\n",
        expect: Expect::Value {
            probe: ("microdata", "Movie", "dateCreated"),
            ours: "2024",
            extruct: "",
        },
    },
    Construct {
        id: "microdata-no-properties",
        head: "",
        body: "<div itemscope itemtype=\"https://schema.org/Movie\">Just text</div>\n",
        expect: Expect::Items {
            ours_only: &[("microdata", "Movie:0")],
            extruct_only: &[("microdata", "Movie:1")],
        },
    },
    Construct {
        id: "microdata-orphan-itemprop",
        head: "",
        body: "<div itemprop=\"review\" itemscope itemtype=\"https://schema.org/Review\">\
               <span itemprop=\"reviewBody\">orphan review</span></div>\n",
        expect: Expect::Items {
            ours_only: &[],
            extruct_only: &[("microdata", "Review:1")],
        },
    },
    Construct {
        id: "rdfa-time-datetime",
        head: "",
        body: "<div vocab=\"https://schema.org/\" typeof=\"Movie\"><span property=\"name\">Dated</span> \
               <time property=\"dateCreated\" datetime=\"2024-05-01\">May</time></div>\n",
        expect: Expect::Value {
            probe: ("rdfa", "Movie", "dateCreated"),
            ours: "2024-05-01",
            extruct: "May",
        },
    },
    Construct {
        id: "rdfa-rel",
        head: "",
        body: "<div vocab=\"https://schema.org/\" typeof=\"Movie\"><span property=\"name\">Linked</span> \
               <a rel=\"nofollow\" href=\"/out\">elsewhere</a></div>\n",
        expect: Expect::Items {
            ours_only: &[("rdfa", "Movie:1")],
            extruct_only: &[("rdfa", "Movie:2")],
        },
    },
    Construct {
        id: "rdfa-whitespace",
        head: "",
        body: "<div vocab=\"https://schema.org/\" typeof=\"Movie\"><span property=\"name\">  Spaced\n   \
               out  </span></div>\n",
        expect: Expect::Value {
            probe: ("rdfa", "Movie", "name"),
            ours: "Spaced out",
            extruct: "  Spaced\n   out  ",
        },
    },
    Construct {
        id: "misnested-tags",
        head: "",
        // </b> inside the <p> it contains: the HTML parser's adoption
        // agency splits the <b> in two, cloning its attributes (two Movie
        // items, one property each); libxml2 closes the <b> at the <p>.
        body: "<div><b itemscope itemtype=\"https://schema.org/Movie\"><span itemprop=\"name\">Nested</span>\
               <p><span itemprop=\"genre\">drama</span></b> after</p></div>\n",
        expect: Expect::Items {
            ours_only: &[("microdata", "Movie:1")],
            extruct_only: &[],
        },
    },
];

/// The construct page `index` carries, if any.
fn construct_at(index: usize) -> Option<&'static Construct> {
    (index % DIVERGENCE_EVERY == DIVERGENCE_EVERY / 2)
        .then(|| &CONSTRUCTS[(index / DIVERGENCE_EVERY) % CONSTRUCTS.len()])
}

/// Corpus page `index`: the generated page, plus its construct if it has one.
fn corpus_page(index: usize) -> anyhow::Result<String> {
    let mut html = generate_page(index);
    if let Some(c) = construct_at(index) {
        let head = html
            .find("<meta charset=\"utf-8\">\n")
            .context("no <meta charset>")?
            + 23;
        html.insert_str(head, c.head);
        let main = html.rfind("</main>").context("no </main>")?;
        html.insert_str(main, c.body);
    }
    Ok(html)
}

/// Writes `DIR/p/{i}.html` for every page and `DIR/divergences.json`
/// (page -> construct id and the value probe extruct_bench.py reports);
/// returns the number of construct pages.
fn write_corpus(dir: &std::path::Path, pages: usize) -> anyhow::Result<usize> {
    let p = dir.join("p");
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    let mut manifest = serde_json::Map::new();
    for i in 0..pages {
        std::fs::write(p.join(format!("{i}.html")), corpus_page(i)?)?;
        if let Some(c) = construct_at(i) {
            let probe = match c.expect {
                Expect::Value { probe, .. } => json!([probe.0, probe.1, probe.2]),
                _ => serde_json::Value::Null,
            };
            manifest.insert(i.to_string(), json!({"construct": c.id, "probe": probe}));
        }
    }
    let count = manifest.len();
    std::fs::write(
        dir.join("divergences.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(manifest))?,
    )?;
    Ok(count)
}

/// The values of `property` on our top-level items of `syntax` and `type`,
/// sorted (strings as they are, anything else as JSON).
fn probe_values(items: &[SchemaItem], (syntax, ty, property): (&str, &str, &str)) -> Vec<String> {
    let mut values: Vec<String> = items
        .iter()
        .filter(|i| {
            serde_json::to_value(i.syntax)
                .ok()
                .as_ref()
                .and_then(|v| v.as_str())
                == Some(syntax)
                && i.types.iter().any(|t| t == ty)
        })
        .filter_map(|i| i.properties.get(property))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .collect();
    values.sort();
    values
}

/// extruct's summary of one page (extruct_bench.py).
#[derive(Debug, serde::Deserialize)]
struct TheirPage {
    #[serde(rename = "json-ld", default)]
    json_ld: Vec<String>,
    #[serde(default)]
    microdata: Vec<String>,
    #[serde(default)]
    rdfa: Vec<String>,
    /// The exception extruct raised on this page, if it did.
    #[serde(default)]
    error: Option<String>,
    /// The construct's probe values, on construct pages with a probe.
    #[serde(default)]
    probe: Option<Vec<String>>,
}

#[derive(Debug, Default, serde::Serialize)]
struct ConstructCount {
    pages: usize,
    expected: usize,
    unexpected: usize,
}

#[derive(Debug, Default)]
struct Comparison {
    compared: usize,
    identical: usize,
    expected: usize,
    unexpected: usize,
    by_construct: BTreeMap<&'static str, ConstructCount>,
}

/// Entries of `a` not matched in `b`, per syntax, as "syntax[Types:n]".
fn only_in(a: &Summary, b: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for (syntax, entries) in a {
        let mut rest: Vec<&String> = b
            .get(syntax)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        for e in entries {
            match rest.iter().position(|r| *r == e) {
                Some(k) => {
                    rest.remove(k);
                }
                None => out.push(format!("{syntax}[{e}]")),
            }
        }
    }
    out.sort();
    out
}

fn expected_entries(entries: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<String> = entries.iter().map(|(s, e)| format!("{s}[{e}]")).collect();
    out.sort();
    out
}

/// Compares every page with extruct's summary: prints each page that
/// differs (its construct, what each side found, expected or not) and
/// counts them. Fails if the summary is missing, unreadable or incomplete.
fn compare(
    path: &std::path::Path,
    docs: &[(String, Url)],
    ours: &BTreeMap<String, Summary>,
) -> anyhow::Result<Comparison> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "extruct's output {} is missing: extruct_bench.py did not run or crashed",
            path.display()
        )
    })?;
    #[derive(serde::Deserialize)]
    struct Theirs {
        pages: BTreeMap<String, TheirPage>,
    }
    let theirs: Theirs = serde_json::from_str(&text)
        .with_context(|| format!("extruct's output {} is unreadable", path.display()))?;
    let missing: Vec<&String> = ours
        .keys()
        .filter(|p| !theirs.pages.contains_key(*p))
        .collect();
    let extra: Vec<&String> = theirs
        .pages
        .keys()
        .filter(|p| !ours.contains_key(*p))
        .collect();
    anyhow::ensure!(
        missing.is_empty() && extra.is_empty(),
        "extruct's output {} is incomplete: it covers {} pages, the corpus has {}; missing {} \
         (first: {:?}), extra {} (first: {:?})",
        path.display(),
        theirs.pages.len(),
        ours.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );

    let mut c = Comparison::default();
    for (index, (html, base)) in docs.iter().enumerate() {
        let page = index.to_string();
        let summary = &ours[&page];
        let their = &theirs.pages[&page];
        let their_summary: Summary = [
            ("json-ld", &their.json_ld),
            ("microdata", &their.microdata),
            ("rdfa", &their.rdfa),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        c.compared += 1;
        let construct = construct_at(index);
        let ours_only = only_in(summary, &their_summary);
        let extruct_only = only_in(&their_summary, summary);
        let probe = construct.and_then(|k| match k.expect {
            Expect::Value { probe, .. } => Some(probe),
            _ => None,
        });
        let our_probe = probe.map(|p| probe_values(&extract(html, base).items, p));
        let differs = their.error.is_some()
            || !ours_only.is_empty()
            || !extruct_only.is_empty()
            || our_probe != their.probe;
        if let Some(k) = construct {
            c.by_construct.entry(k.id).or_default().pages += 1;
        }
        // A construct that should show and does not is unexpected too.
        if !differs && construct.is_none_or(|k| matches!(k.expect, Expect::Same)) {
            c.identical += 1;
            continue;
        }
        let expected = construct.is_some_and(|k| match &k.expect {
            Expect::Items {
                ours_only: o,
                extruct_only: t,
            } => {
                their.error.is_none()
                    && ours_only == expected_entries(o)
                    && extruct_only == expected_entries(t)
            }
            Expect::ExtructFails => {
                their.error.is_some()
                    && extruct_only.is_empty()
                    && their_summary.values().all(Vec::is_empty)
            }
            Expect::Value {
                ours: o,
                extruct: t,
                ..
            } => {
                their.error.is_none()
                    && ours_only.is_empty()
                    && extruct_only.is_empty()
                    && our_probe.as_deref() == Some(&[o.to_string()][..])
                    && their.probe.as_deref() == Some(&[t.to_string()][..])
            }
            Expect::Same => false,
        });
        if expected {
            c.expected += 1;
        } else {
            c.unexpected += 1;
        }
        if let Some(k) = construct {
            let n = c.by_construct.entry(k.id).or_default();
            if expected {
                n.expected += 1;
            } else {
                n.unexpected += 1;
            }
        }
        let mut found = format!("ours only {ours_only:?}, extruct only {extruct_only:?}");
        if let Some(e) = &their.error {
            found.push_str(&format!(", extruct raised {e:?}"));
        }
        if let Some(p) = probe {
            found.push_str(&format!(
                ", {}/{}/{}: ours {:?}, extruct {:?}",
                p.0,
                p.1,
                p.2,
                our_probe.as_deref().unwrap_or_default(),
                their.probe.as_deref().unwrap_or_default()
            ));
        }
        eprintln!(
            "page {page} [{}] {}: {found}",
            construct.map_or("no construct", |k| k.id),
            if expected { "expected" } else { "UNEXPECTED" },
        );
    }
    Ok(c)
}

/// User + system CPU seconds of this process so far (all threads).
fn cpu_time() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
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
        let cpu_start = cpu_time();
        let (elapsed, view) = crawl_once(&campaigns, &site, pages, count).await?;
        let cpu = cpu_time() - cpu_start;
        println!(
            "{}",
            json!({
                "bench": "crawl", "engine": "orchestrator", "workers": count,
                "pages": pages, "seconds": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
                "pages_per_s": (pages as f64 / elapsed.as_secs_f64()).round(),
                // CPU of the whole process (workers, store, queue and the
                // fixture server) per page.
                "cpu_ms_per_page": (cpu * 1e3 / pages as f64 * 100.0).round() / 100.0,
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
