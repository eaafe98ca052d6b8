//! Campaign types: each says what a campaign of its kind starts from, what
//! one operation does, and when its goals are met. One module per type;
//! adding a type is one line in [`by_name`].

mod seo_mining;
mod storybook;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

pub use seo_mining::SeoMining;
pub use storybook::StorybookDiscovery;

use super::{
    fetch::{FetchError, Fetcher},
    model::{Facts, Goals, Settings, key_of},
};

/// Names of the campaign types, for error messages.
pub const TYPES: [&str; 2] = [SeoMining::NAME, StorybookDiscovery::NAME];

/// The campaign type called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn CampaignType>> {
    match name {
        SeoMining::NAME => Some(Arc::new(SeoMining)),
        StorybookDiscovery::NAME => Some(Arc::new(StorybookDiscovery)),
        _ => None,
    }
}

/// What one operation fetches its URL as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// An HTML page: items and links.
    Page,
    /// A sitemap: page URLs and further sitemaps.
    Sitemap,
    /// A Storybook: its story index.
    Storybook,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Page => "page",
            OpKind::Sitemap => "sitemap",
            OpKind::Storybook => "storybook",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "page" => OpKind::Page,
            "sitemap" => OpKind::Sitemap,
            "storybook" => OpKind::Storybook,
            _ => return None,
        })
    }
}

/// One unit of campaign work: a job on the campaign's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub url: Url,
    pub kind: OpKind,
    /// Link distance from a start URL.
    pub depth: u32,
}

impl Op {
    /// The frontier key: one per URL and kind.
    pub fn key(&self) -> String {
        key_of(&format!("{} {}", self.kind.as_str(), self.url))
    }
}

/// An item an operation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// schema.org type (`Product`) or `component`.
    pub kind: String,
    /// `json-ld`, `microdata`, `rdfa` or `storybook`.
    pub syntax: &'static str,
    /// Deduplication key within the page.
    pub key: String,
    pub data: Value,
}

/// What one operation produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub items: Vec<Found>,
    /// Further operations it discovered (before deduplication).
    pub discovered: Vec<Op>,
}

/// What an operation runs with.
pub struct OpContext<'a> {
    pub fetcher: &'a Fetcher,
    pub settings: &'a Settings,
}

/// A kind of campaign.
#[async_trait]
pub trait CampaignType: Send + Sync + 'static {
    /// The name requests use in `type`.
    fn name(&self) -> &'static str;

    /// Checks the type-specific parts of settings and goals.
    fn check(&self, settings: &Settings, goals: &Goals) -> Result<(), String>;

    /// The operations a campaign starts with.
    fn seeds(&self, settings: &Settings) -> Vec<Op>;

    /// Runs one operation.
    async fn run(&self, op: &Op, cx: &OpContext<'_>) -> Result<Outcome, FetchError>;

    /// Whether `goals` (never empty here) are met.
    fn goals_met(&self, goals: &Goals, facts: &Facts) -> bool;
}
