//! robots.txt rules (via `texting_robots`) and a per-origin cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

/// Product token matched against `User-agent:` lines.
pub const ROBOTS_TOKEN: &str = "MasterOrchestrator";
/// robots.txt bodies beyond this are truncated (RFC 9309 asks for at least 500 KiB).
pub const MAX_ROBOTS_BYTES: usize = 512 * 1024;
/// How long an "unreachable" (5xx, 429, timeout, network) verdict is kept before retrying,
/// so one transient outage does not block a host for the Fetcher's whole life.
pub const UNREACHABLE_TTL: Duration = Duration::from_secs(10 * 60);
/// Origins cached at most; beyond this, arbitrary entries are evicted.
const MAX_ORIGINS: usize = 10_000;

/// The verdict for one origin.
pub enum Rules {
    /// No usable robots.txt (4xx other than 429, too many redirects): everything allowed.
    AllowAll,
    /// robots.txt unreachable (5xx, 429, timeout, network, blocked): everything disallowed.
    DisallowAll,
    Parsed(texting_robots::Robot),
    /// The host itself is refused by the guard; the page fetch reports this reason.
    Blocked(String),
}

impl Rules {
    /// Parses a robots.txt body; an unparsable file allows everything.
    pub fn parse(body: &[u8]) -> Rules {
        match texting_robots::Robot::new(ROBOTS_TOKEN, body) {
            Ok(robot) => Rules::Parsed(robot),
            Err(err) => {
                tracing::debug!(%err, "unparsable robots.txt; allowing all");
                Rules::AllowAll
            }
        }
    }

    pub fn allows(&self, url: &Url) -> bool {
        match self {
            Rules::AllowAll => true,
            Rules::DisallowAll | Rules::Blocked(_) => false,
            Rules::Parsed(robot) => robot.allowed(url.as_str()),
        }
    }

    /// Sitemap URLs listed in the file, resolved against `base` (the robots.txt URL).
    pub fn sitemaps(&self, base: &Url) -> Vec<Url> {
        match self {
            Rules::Parsed(robot) => robot
                .sitemaps
                .iter()
                .filter_map(|s| base.join(s.trim()).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .collect(),
            _ => Vec::new(),
        }
    }
}

struct Cached {
    rules: Arc<Rules>,
    expires: Option<Instant>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Per-origin (scheme + host + port) cache. Each origin has an async mutex so
/// concurrent requests to a new host fetch robots.txt once and the rest wait.
#[derive(Default)]
pub struct RobotsCache {
    slots: Mutex<HashMap<String, Slot>>,
}

/// The cache key and robots.txt URL of `url`'s origin.
pub fn robots_url(url: &Url) -> Option<(String, Url)> {
    let origin = url.origin();
    if !origin.is_tuple() {
        return None;
    }
    let key = origin.ascii_serialization();
    let robots = Url::parse(&format!("{key}/robots.txt")).ok()?;
    Some((key, robots))
}

impl RobotsCache {
    /// Returns the cached rules for `key`, or runs `fetch` (once, even under concurrency).
    /// `fetch` returns the rules and how long to keep them (`None`: for the cache's life).
    pub async fn get_or_fetch<F, Fut>(&self, key: &str, fetch: F) -> Arc<Rules>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (Rules, Option<Duration>)>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if !slots.contains_key(key) && slots.len() >= MAX_ORIGINS {
                let victims: Vec<String> = slots.keys().take(MAX_ORIGINS / 10).cloned().collect();
                for v in victims {
                    slots.remove(&v);
                }
            }
            Arc::clone(slots.entry(key.to_string()).or_default())
        };
        let mut guard = slot.lock().await;
        if let Some(cached) = guard.as_ref()
            && cached.expires.is_none_or(|at| Instant::now() < at)
        {
            return Arc::clone(&cached.rules);
        }
        let (rules, ttl) = fetch().await;
        let rules = Arc::new(rules);
        *guard = Some(Cached {
            rules: Arc::clone(&rules),
            expires: ttl.map(|ttl| Instant::now() + ttl),
        });
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_token_and_sitemaps() {
        let txt = b"User-agent: *\nDisallow: /\n\nUser-agent: MasterOrchestrator\nDisallow: /private\n\nSitemap: https://example.com/sitemap.xml\nSitemap: /rel.xml\n";
        let rules = Rules::parse(txt);
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(rules.allows(&u("https://example.com/public")));
        assert!(!rules.allows(&u("https://example.com/private/x")));
        let base = u("https://example.com/robots.txt");
        assert_eq!(
            rules.sitemaps(&base),
            vec![
                u("https://example.com/sitemap.xml"),
                u("https://example.com/rel.xml")
            ]
        );
        assert!(!Rules::DisallowAll.allows(&u("https://example.com/")));
    }

    #[test]
    fn robots_url_keeps_port() {
        let (key, url) = robots_url(&Url::parse("http://h.example:8080/a/b?c").unwrap()).unwrap();
        assert_eq!(key, "http://h.example:8080");
        assert_eq!(url.as_str(), "http://h.example:8080/robots.txt");
    }
}
