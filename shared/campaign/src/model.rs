//! What a campaign is: the request that creates it, its checked settings,
//! its status and the view the API shows.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;
use utoipa::ToSchema;

use super::fetch::guard::{Allow, check_url};
use orchestrator_core::store::campaign_entity::Model as CampaignRow;

/// Longest campaign name.
pub const MAX_NAME_LEN: usize = 200;
/// Most start URLs (and, separately, sitemaps) a campaign may list.
pub const MAX_START_URLS: usize = 1_000;
/// Longest URL accepted anywhere in a campaign.
pub const MAX_URL_LEN: usize = 2_048;
/// Most workers a campaign may ask for across the fleet.
pub const MAX_WORKERS: u32 = 1_000;
/// Most pages one campaign may admit.
pub const MAX_PAGES_LIMIT: u32 = 10_000_000;
/// Deepest link distance from a start URL.
pub const MAX_DEPTH_LIMIT: u32 = 1_000;

/// `POST /api/v1/campaigns`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    /// `seo_mining` or `storybook_discovery`.
    #[serde(rename = "type")]
    pub kind: String,
    pub config: CampaignConfig,
    #[serde(default)]
    pub goals: Goals,
    #[serde(default)]
    pub resources: Resources,
    /// Higher runs first when workers serve `--campaigns all` (-1000..=1000).
    #[serde(default)]
    pub priority: i32,
}

/// Where a campaign starts and how politely it fetches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    /// Start URLs (pages for `seo_mining`, Storybook roots for
    /// `storybook_discovery`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Sitemaps to read (`seo_mining`).
    #[serde(default)]
    pub sitemaps: Vec<String>,
    /// Hosts (`example.test`, `*.example.test`) or CIDRs (`10.0.0.0/8`) the
    /// fetcher may reach despite the private-address guard: a subset of the
    /// operator's `ORCH_CAMPAIGN_ALLOW` (empty: the operator's whole list).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Link distance from a start URL (`seo_mining`; default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Most URLs admitted to the frontier (`seo_mining`; default 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pages: Option<u32>,
    /// Operations one worker runs at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Requests in flight to one host from one worker (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_host_concurrency: Option<u32>,
    /// Least time between two requests to one host from one worker, in
    /// milliseconds (default 250; 0 for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_host_interval_ms: Option<u64>,
}

/// When a campaign has done enough; it also completes when its frontier is
/// empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Goals {
    /// `seo_mining`: distinct hosts with at least one item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sites: Option<u32>,
    /// `seo_mining`: schema.org types that must all be found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_types: Vec<String>,
    /// `storybook_discovery`: components to record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_components: Option<u32>,
}

impl Goals {
    pub fn is_empty(&self) -> bool {
        self.min_sites.is_none() && self.schema_types.is_empty() && self.min_components.is_none()
    }
}

/// What a campaign may use.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Worker processes (or in-process workers) serving it across the whole
    /// fleet (default 1).
    #[serde(default = "one")]
    pub max_workers: u32,
    /// Memory one worker's fetched pages may hold at once, in MiB; it
    /// lowers the body size cap to fit.
    #[serde(default)]
    pub max_memory_mb: Option<u32>,
}

fn one() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            max_workers: 1,
            max_memory_mb: None,
        }
    }
}

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created; no worker has served it yet.
    Pending,
    Running,
    Paused,
    /// Goals met or frontier empty.
    Completed,
    /// Nothing could be fetched.
    Failed,
    /// Ended by a user.
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "stopped" => Status::Stopped,
            _ => return None,
        })
    }

    /// Workers may serve it (it may still produce work).
    pub fn is_active(self) -> bool {
        matches!(self, Status::Pending | Status::Running)
    }

    /// It has ended for good.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Stopped)
    }
}

/// Settings a campaign runs with, every default resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub urls: Vec<Url>,
    pub sitemaps: Vec<Url>,
    pub allow: Allow,
    pub max_depth: u32,
    pub max_pages: u32,
    pub concurrency: u32,
    pub per_host_concurrency: u32,
    pub per_host_interval_ms: u64,
}

impl CampaignConfig {
    /// Checks every field and resolves defaults. `operator` is the
    /// operator's allowlist (`ORCH_CAMPAIGN_ALLOW`): the campaign's
    /// `config.allow` may only narrow it, and without one the campaign gets
    /// the operator's. URLs whose host is a restricted address literal
    /// (`127.0.0.1`, `169.254.169.254`) are refused here unless allowed;
    /// host names are checked again after DNS resolution on every fetch.
    pub fn settings(&self, operator: &Allow) -> Result<Settings, String> {
        let allow = if self.allow.is_empty() {
            operator.clone()
        } else {
            let own = Allow::parse(&self.allow).map_err(|e| format!("config.allow: {e}"))?;
            own.within(operator)
                .map_err(|e| format!("config.allow: {e}"))?;
            own
        };
        let urls = check_urls("config.urls", &self.urls, &allow)?;
        let sitemaps = check_urls("config.sitemaps", &self.sitemaps, &allow)?;
        Ok(Settings {
            urls,
            sitemaps,
            allow,
            max_depth: bounded("config.max_depth", self.max_depth, 2, 0, MAX_DEPTH_LIMIT)?,
            max_pages: bounded(
                "config.max_pages",
                self.max_pages,
                1_000,
                1,
                MAX_PAGES_LIMIT,
            )?,
            concurrency: bounded("config.concurrency", self.concurrency, 4, 1, 256)?,
            per_host_concurrency: bounded(
                "config.per_host_concurrency",
                self.per_host_concurrency,
                2,
                1,
                64,
            )?,
            per_host_interval_ms: match self.per_host_interval_ms {
                None => 250,
                Some(ms) if ms <= 60_000 => ms,
                Some(ms) => return Err(format!("config.per_host_interval_ms: {ms} is over 60000")),
            },
        })
    }
}

fn bounded(
    field: &str,
    value: Option<u32>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, String> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(format!("{field}: {v} is outside {min}..={max}")),
    }
}

fn check_urls(field: &str, raw: &[String], allow: &Allow) -> Result<Vec<Url>, String> {
    if raw.len() > MAX_START_URLS {
        return Err(format!(
            "{field}: {} URLs; at most {MAX_START_URLS}",
            raw.len()
        ));
    }
    let mut urls = Vec::with_capacity(raw.len());
    for text in raw {
        let shown: String = text.chars().take(80).collect();
        if text.len() > MAX_URL_LEN {
            return Err(format!(
                "{field}: URL {shown:?}... is over {MAX_URL_LEN} bytes"
            ));
        }
        let mut url =
            Url::parse(text).map_err(|e| format!("{field}: {shown:?} is not a URL ({e})"))?;
        check_url(&url, allow).map_err(|e| format!("{field}: {e}"))?;
        url.set_fragment(None);
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

impl CampaignRequest {
    /// Checks what every campaign type shares; the type checks the rest.
    pub fn check_common(&self) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err("name: must not be blank".into());
        }
        if self.name.len() > MAX_NAME_LEN || self.name.chars().any(char::is_control) {
            return Err(format!(
                "name: at most {MAX_NAME_LEN} bytes, no control characters"
            ));
        }
        if !(1..=MAX_WORKERS).contains(&self.resources.max_workers) {
            return Err(format!(
                "resources.max_workers: {} is outside 1..={MAX_WORKERS}",
                self.resources.max_workers
            ));
        }
        if let Some(mb) = self.resources.max_memory_mb
            && !(16..=1_048_576).contains(&mb)
        {
            return Err(format!(
                "resources.max_memory_mb: {mb} is outside 16..=1048576"
            ));
        }
        if !(-1_000..=1_000).contains(&self.priority) {
            return Err(format!(
                "priority: {} is outside -1000..=1000",
                self.priority
            ));
        }
        Ok(())
    }
}

/// Counters of a campaign's work.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    /// Operations finished (pages, sitemaps, Storybook indexes), failed
    /// ones included.
    pub ops_done: i64,
    /// Distinct items stored.
    pub items_found: i64,
    /// Operations that failed.
    pub errors: i64,
    /// URLs admitted to the frontier.
    pub admitted: i64,
    /// Admitted URLs not yet done.
    pub frontier: i64,
    /// Operations per second since the campaign started.
    pub rate: f64,
    pub goals_met: bool,
}

/// A worker serving a campaign.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub since_ms: u64,
}

/// A campaign as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: Status,
    pub priority: i32,
    #[schema(value_type = Object)]
    pub config: Value,
    #[schema(value_type = Object)]
    pub goals: Value,
    pub resources: ResourcesView,
    pub progress: Progress,
    /// Workers holding one of its slots right now.
    pub workers: Vec<WorkerView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResourcesView {
    pub max_workers: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<i32>,
}

impl CampaignView {
    pub fn new(row: CampaignRow, frontier: i64, workers: Vec<WorkerView>) -> Self {
        let now = orchestrator_core::now_ms() as i64;
        let elapsed_s = row.started_at_ms.map_or(0.0, |start| {
            (row.finished_at_ms.unwrap_or(now) - start).max(1) as f64 / 1_000.0
        });
        let rate = if elapsed_s > 0.0 {
            row.ops_done as f64 / elapsed_s
        } else {
            0.0
        };
        Self {
            status: Status::parse(&row.status).unwrap_or(Status::Failed),
            config: serde_json::from_str(&row.config).unwrap_or(Value::Null),
            goals: serde_json::from_str(&row.goals).unwrap_or(Value::Null),
            resources: ResourcesView {
                max_workers: row.max_workers,
                max_memory_mb: row.max_memory_mb,
            },
            progress: Progress {
                ops_done: row.ops_done,
                items_found: row.items_found,
                errors: row.errors,
                admitted: row.admitted,
                frontier,
                rate: (rate * 100.0).round() / 100.0,
                goals_met: row.goals_met,
            },
            workers,
            id: row.id,
            name: row.name,
            kind: row.kind,
            priority: row.priority,
            reason: row.reason,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            started_at_ms: row.started_at_ms,
            finished_at_ms: row.finished_at_ms,
        }
    }
}

/// What the goals are measured against.
#[derive(Debug, Default)]
pub struct Facts {
    /// Distinct hosts with at least one item.
    pub sites: u64,
    /// Goal types found at least once.
    pub kinds_found: HashSet<String>,
    /// Items stored.
    pub items: u64,
}

/// blake3 of `text`, 32 hex digits: the key URLs and items are deduplicated by.
pub fn key_of(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}
