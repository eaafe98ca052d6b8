//! `seo_mining`: crawls start URLs and sitemaps within their hosts, to a
//! depth and page limit, and records the schema.org items (JSON-LD,
//! microdata, RDFa) every page carries.

use std::collections::HashSet;

use async_trait::async_trait;

use super::{CampaignType, Found, Op, OpContext, OpKind, Outcome};
use crate::{
    extract::{self, SchemaItem, Syntax},
    fetch::FetchError,
    model::{Facts, Goals, Settings, key_of},
    sitemap::parse_sitemap,
};

/// Most items kept from one page, and most links followed from it.
const MAX_ITEMS_PER_PAGE: usize = 1_000;
const MAX_LINKS_PER_PAGE: usize = 1_000;

pub struct SeoMining;

impl SeoMining {
    pub const NAME: &'static str = "seo_mining";
}

#[async_trait]
impl CampaignType for SeoMining {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn check(&self, settings: &Settings, goals: &Goals) -> Result<(), String> {
        if settings.urls.is_empty() && settings.sitemaps.is_empty() {
            return Err("config: seo_mining needs at least one of urls or sitemaps".into());
        }
        if goals.min_components.is_some() {
            return Err("goals.min_components: only storybook_discovery has it".into());
        }
        if goals.schema_types.len() > 100 {
            return Err("goals.schema_types: at most 100 types".into());
        }
        for kind in &goals.schema_types {
            let valid = !kind.is_empty()
                && kind.len() <= 128
                && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "goals.schema_types: {kind:?} is not a schema.org type name (like Product)"
                ));
            }
        }
        if goals.min_sites == Some(0) {
            return Err("goals.min_sites: must be at least 1".into());
        }
        Ok(())
    }

    fn seeds(&self, settings: &Settings) -> Vec<Op> {
        let pages = settings.urls.iter().map(|url| Op {
            url: url.clone(),
            kind: OpKind::Page,
            depth: 0,
        });
        let sitemaps = settings.sitemaps.iter().map(|url| Op {
            url: url.clone(),
            kind: OpKind::Sitemap,
            depth: 0,
        });
        pages.chain(sitemaps).collect()
    }

    async fn run(&self, op: &Op, cx: &OpContext<'_>) -> Result<Outcome, FetchError> {
        match op.kind {
            OpKind::Page => page(op, cx).await,
            OpKind::Sitemap => sitemap(op, cx).await,
            OpKind::Storybook => Ok(Outcome::default()),
        }
    }

    fn goals_met(&self, goals: &Goals, facts: &Facts) -> bool {
        let sites = goals.min_sites.is_none_or(|n| facts.sites >= u64::from(n));
        let kinds = goals
            .schema_types
            .iter()
            .all(|kind| facts.kinds_found.contains(kind));
        sites && kinds
    }
}

/// The hosts a campaign crawls: those of its start URLs and sitemaps.
fn crawl_hosts(settings: &Settings) -> HashSet<String> {
    settings
        .urls
        .iter()
        .chain(&settings.sitemaps)
        .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
        .collect()
}

fn in_scope(url: &url::Url, hosts: &HashSet<String>) -> bool {
    url.host_str()
        .is_some_and(|h| hosts.contains(&h.to_ascii_lowercase()))
}

async fn page(op: &Op, cx: &OpContext<'_>) -> Result<Outcome, FetchError> {
    let page = cx.fetcher.get(&op.url).await?;
    let is_html = page.content_type.as_deref().is_none_or(|t| {
        let t = t.to_ascii_lowercase();
        t.contains("html") || t.contains("xml") || t.starts_with("text/")
    });
    if !is_html {
        return Ok(Outcome::default());
    }
    let html = String::from_utf8_lossy(&page.body);
    // Parsing is CPU work; keep it off the runtime's I/O threads.
    let base = page.url.clone();
    let html = html.into_owned();
    let extracted = tokio::task::spawn_blocking(move || extract::extract(&html, &base))
        .await
        .map_err(|e| FetchError::Network(format!("extraction panicked: {e}")))?;
    let items = extracted
        .items
        .into_iter()
        .take(MAX_ITEMS_PER_PAGE)
        .map(found)
        .collect();
    let mut discovered = Vec::new();
    let hosts = crawl_hosts(cx.settings);
    if op.depth < cx.settings.max_depth {
        discovered.extend(
            extracted
                .links
                .into_iter()
                .filter(|link| in_scope(link, &hosts))
                .take(MAX_LINKS_PER_PAGE)
                .map(|url| Op {
                    url,
                    kind: OpKind::Page,
                    depth: op.depth + 1,
                }),
        );
    }
    if op.depth == 0 {
        // A start page also brings the sitemaps its host's robots.txt names.
        discovered.extend(
            cx.fetcher
                .robots_sitemaps(&op.url)
                .await
                .into_iter()
                .filter(|url| in_scope(url, &hosts))
                .map(|url| Op {
                    url,
                    kind: OpKind::Sitemap,
                    depth: 0,
                }),
        );
    }
    Ok(Outcome { items, discovered })
}

async fn sitemap(op: &Op, cx: &OpContext<'_>) -> Result<Outcome, FetchError> {
    let page = cx.fetcher.get(&op.url).await?;
    let text = String::from_utf8_lossy(&page.body);
    let parsed = parse_sitemap(&text, &page.url)
        .map_err(|e| FetchError::Network(format!("{}: not a sitemap ({e})", op.url)))?;
    let hosts = crawl_hosts(cx.settings);
    let pages = parsed.pages.into_iter().map(|url| Op {
        url,
        kind: OpKind::Page,
        depth: 0,
    });
    let nested = parsed.sitemaps.into_iter().map(|url| Op {
        url,
        kind: OpKind::Sitemap,
        depth: 0,
    });
    Ok(Outcome {
        items: Vec::new(),
        discovered: pages
            .chain(nested)
            .filter(|o| in_scope(&o.url, &hosts))
            .collect(),
    })
}

/// One stored item: kind is its first type, key its content.
fn found(item: SchemaItem) -> Found {
    let data = serde_json::to_value(&item).unwrap_or_default();
    Found {
        kind: item
            .types
            .first()
            .cloned()
            .unwrap_or_else(|| "Thing".into()),
        syntax: match item.syntax {
            Syntax::JsonLd => "json-ld",
            Syntax::Microdata => "microdata",
            Syntax::Rdfa => "rdfa",
        },
        key: key_of(&data.to_string()),
        data,
    }
}
