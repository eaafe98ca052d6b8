//! Polite, SSRF-guarded HTTP fetcher for campaign crawlers.
//!
//! Every hop of every request goes through [`check_url`], the guarded DNS resolver,
//! robots.txt, per-host concurrency and pacing, a timeout and a body cap.

pub mod guard;
pub mod hosts;
pub mod robots;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use url::Url;

pub use self::guard::{Allow, check_url, is_restricted};
use self::guard::{BlockedAddress, GuardedResolver};
use self::hosts::HostLimiter;
use self::robots::{MAX_ROBOTS_BYTES, RobotsCache, Rules, UNREACHABLE_TTL};

pub const DEFAULT_USER_AGENT: &str =
    "MasterOrchestrator/0.1 (+https://github.com/master-orchestrator/master-orchestrator)";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects followed when fetching robots.txt (RFC 9309 asks for at least five).
const ROBOTS_MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Restricted hosts/addresses the operator explicitly permits.
    pub allow: Allow,
    pub user_agent: String,
    /// Per hop: sending the request and reading the whole body. Connect timeout is 5 s.
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub max_redirects: usize,
    pub per_host_concurrency: usize,
    /// Minimum gap between request starts to one host; `Duration::ZERO` disables pacing.
    pub per_host_interval: Duration,
    pub respect_robots: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            allow: Allow::none(),
            user_agent: DEFAULT_USER_AGENT.to_string(),
            timeout: Duration::from_secs(20),
            max_body_bytes: 5 * 1024 * 1024,
            max_redirects: 5,
            per_host_concurrency: 2,
            per_host_interval: Duration::from_millis(250),
            respect_robots: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Page {
    /// Final URL, after redirects.
    pub url: Url,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// URLs that answered with a redirect, in order; the first is the requested URL.
    pub redirects: Vec<Url>,
}

#[derive(thiserror::Error, Debug)]
pub enum FetchError {
    #[error("refused to fetch {url}: {reason}")]
    Blocked { url: Url, reason: String },
    #[error("invalid URL {0}")]
    InvalidUrl(String),
    #[error("{url} is disallowed by robots.txt")]
    DisallowedByRobots { url: Url },
    #[error("{url}: more than {max} redirects")]
    TooManyRedirects { url: Url, max: usize },
    #[error("{url}: response body exceeds the {limit}-byte limit")]
    TooLarge { url: Url, limit: usize },
    #[error("{url}: timed out after {after:?}")]
    Timeout { url: Url, after: Duration },
    #[error("{url}: HTTP status {status}")]
    Http { url: Url, status: u16 },
    #[error("network error: {0}")]
    Network(String),
}

impl FetchError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Blocked { .. } => "blocked",
            FetchError::InvalidUrl(_) => "invalid_url",
            FetchError::DisallowedByRobots { .. } => "robots",
            FetchError::TooManyRedirects { .. } => "redirects",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Http { .. } => "http",
            FetchError::Network(_) => "network",
        }
    }

    /// Timeouts, network errors, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Timeout { .. } | FetchError::Network(_) => true,
            FetchError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// How one logical fetch (all its hops) is carried out.
struct Mode {
    check_robots: bool,
    max_body: usize,
    /// Keep the first `max_body` bytes instead of failing with `TooLarge`.
    truncate: bool,
    max_redirects: usize,
}

enum Exchange {
    Redirect(Url),
    Done {
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
}

struct Inner {
    client: reqwest::Client,
    options: FetchOptions,
    allow: Arc<Allow>,
    hosts: HostLimiter,
    robots: RobotsCache,
    sent: AtomicU64,
}

/// Cheap to clone; clones share the connection pool, robots cache and host limits.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

impl Fetcher {
    pub fn new(options: FetchOptions) -> Result<Fetcher, String> {
        if options.per_host_concurrency == 0 {
            return Err("per_host_concurrency must be at least 1".into());
        }
        if options.max_body_bytes == 0 {
            return Err("max_body_bytes must be greater than 0".into());
        }
        if options.timeout.is_zero() {
            return Err("timeout must be greater than 0".into());
        }
        let allow = Arc::new(options.allow.clone());
        let client = reqwest::Client::builder()
            .user_agent(options.user_agent.as_str())
            // Redirects are followed by hand so every hop is re-checked.
            .redirect(reqwest::redirect::Policy::none())
            // An environment proxy would resolve names itself, bypassing the guard.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&allow))))
            .connect_timeout(CONNECT_TIMEOUT.min(options.timeout))
            .timeout(options.timeout)
            .pool_max_idle_per_host(options.per_host_concurrency)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("building HTTP client: {}", error_chain(&e)))?;
        Ok(Fetcher {
            inner: Arc::new(Inner {
                client,
                hosts: HostLimiter::new(options.per_host_concurrency, options.per_host_interval),
                robots: RobotsCache::default(),
                sent: AtomicU64::new(0),
                allow,
                options,
            }),
        })
    }

    pub fn options(&self) -> &FetchOptions {
        &self.inner.options
    }

    /// GET `url` with every rule applied. 4xx/5xx become [`FetchError::Http`].
    pub async fn get(&self, url: &Url) -> Result<Page, FetchError> {
        let mode = Mode {
            check_robots: self.inner.options.respect_robots,
            max_body: self.inner.options.max_body_bytes,
            truncate: false,
            max_redirects: self.inner.options.max_redirects,
        };
        self.follow(url, &mode).await
    }

    /// The `Sitemap:` lines of the host's robots.txt (fetched if not cached).
    pub async fn robots_sitemaps(&self, url: &Url) -> Vec<Url> {
        let Some((_, robots_url)) = robots::robots_url(url) else {
            return Vec::new();
        };
        self.robots_rules(url).await.sitemaps(&robots_url)
    }

    /// Requests that reached a server (connection established), robots.txt included.
    pub fn requests_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    async fn follow(&self, url: &Url, mode: &Mode) -> Result<Page, FetchError> {
        let inner = &*self.inner;
        let mut current = url.clone();
        let mut redirects = Vec::new();
        loop {
            check_url(&current, &inner.allow)?;
            if mode.check_robots {
                let rules = self.robots_rules(&current).await;
                if let Rules::Blocked(reason) = &*rules {
                    return Err(FetchError::Blocked {
                        url: current,
                        reason: reason.clone(),
                    });
                }
                if !rules.allows(&current) {
                    return Err(FetchError::DisallowedByRobots { url: current });
                }
            }
            let host = current.host_str().unwrap_or_default().to_ascii_lowercase();
            let permit = inner.hosts.acquire(&host).await;
            let timeout = inner.options.timeout;
            let exchange = tokio::time::timeout(timeout, self.exchange(&current, mode))
                .await
                .map_err(|_| FetchError::Timeout {
                    url: current.clone(),
                    after: timeout,
                })??;
            drop(permit);
            match exchange {
                Exchange::Redirect(next) => {
                    if redirects.len() >= mode.max_redirects {
                        return Err(FetchError::TooManyRedirects {
                            url: url.clone(),
                            max: mode.max_redirects,
                        });
                    }
                    tracing::debug!(from = %current, to = %next, "following redirect");
                    redirects.push(std::mem::replace(&mut current, next));
                }
                Exchange::Done {
                    status,
                    content_type,
                    body,
                } => {
                    return Ok(Page {
                        url: current,
                        status,
                        content_type,
                        body,
                        redirects,
                    });
                }
            }
        }
    }

    /// One request/response on one URL, body included.
    async fn exchange(&self, url: &Url, mode: &Mode) -> Result<Exchange, FetchError> {
        let inner = &*self.inner;
        let mut resp = match inner.client.get(url.clone()).send().await {
            Ok(resp) => {
                inner.sent.fetch_add(1, Ordering::Relaxed);
                resp
            }
            Err(err) => {
                if !err.is_connect() {
                    inner.sent.fetch_add(1, Ordering::Relaxed);
                }
                return Err(map_reqwest_error(url, &err, inner.options.timeout));
            }
        };
        let status = resp.status();
        if matches!(
            status,
            StatusCode::MOVED_PERMANENTLY
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT
        ) && let Some(location) = resp.headers().get(reqwest::header::LOCATION)
        {
            let location = location.to_str().map_err(|_| {
                FetchError::InvalidUrl(format!("{url}: redirect Location is not valid text"))
            })?;
            let next = url.join(location).map_err(|e| {
                FetchError::InvalidUrl(format!("{url}: bad redirect Location {location:?}: {e}"))
            })?;
            return Ok(Exchange::Redirect(next));
        }
        if status.is_client_error() || status.is_server_error() {
            return Err(FetchError::Http {
                url: url.clone(),
                status: status.as_u16(),
            });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let too_large = || FetchError::TooLarge {
            url: url.clone(),
            limit: mode.max_body,
        };
        let declared = resp.content_length();
        if !mode.truncate && declared.is_some_and(|len| len > mode.max_body as u64) {
            return Err(too_large());
        }
        let capacity = declared.map_or(0, |n| n.min(mode.max_body as u64) as usize);
        let mut body = Vec::with_capacity(capacity.min(1024 * 1024));
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| map_reqwest_error(url, &e, inner.options.timeout))?
        {
            let room = mode.max_body - body.len();
            if chunk.len() > room {
                if mode.truncate {
                    body.extend_from_slice(&chunk[..room]);
                    break;
                }
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Exchange::Done {
            status: status.as_u16(),
            content_type,
            body: Bytes::from(body),
        })
    }

    async fn robots_rules(&self, url: &Url) -> Arc<Rules> {
        let Some((key, robots_url)) = robots::robots_url(url) else {
            return Arc::new(Rules::AllowAll);
        };
        self.inner
            .robots
            .get_or_fetch(&key, || self.fetch_robots(robots_url))
            .await
    }

    /// Fetches and interprets robots.txt; returns the rules and how long to cache them.
    ///
    /// Policy (RFC 9309 / Google): 2xx parsed; 4xx except 429 and too many redirects
    /// allow all; 5xx, 429, timeouts and network errors disallow all for
    /// [`UNREACHABLE_TTL`]; a guard refusal of the host itself is passed on, uncached.
    //
    // Returns a boxed `dyn` future: `follow` reaches this through `robots_rules`,
    // and the type erasure breaks that cycle (at run time robots.txt fetches never
    // check robots, so there is no real recursion).
    fn fetch_robots(
        &self,
        robots_url: Url,
    ) -> Pin<Box<dyn Future<Output = (Rules, Option<Duration>)> + Send + '_>> {
        Box::pin(async move {
            let mode = Mode {
                check_robots: false,
                max_body: MAX_ROBOTS_BYTES,
                truncate: true,
                max_redirects: ROBOTS_MAX_REDIRECTS,
            };
            match self.follow(&robots_url, &mode).await {
                Ok(page) if (200..300).contains(&page.status) => (Rules::parse(&page.body), None),
                Ok(_) => (Rules::AllowAll, None),
                Err(FetchError::Blocked { url, reason }) if url.origin() == robots_url.origin() => {
                    (Rules::Blocked(reason), Some(Duration::ZERO))
                }
                Err(FetchError::Http { status, .. }) if status == 429 || status >= 500 => {
                    tracing::info!(%robots_url, status, "robots.txt unreachable; disallowing host");
                    (Rules::DisallowAll, Some(UNREACHABLE_TTL))
                }
                Err(FetchError::Http { .. } | FetchError::TooManyRedirects { .. }) => {
                    (Rules::AllowAll, None)
                }
                Err(
                    err @ (FetchError::Timeout { .. }
                    | FetchError::Network(_)
                    | FetchError::Blocked { .. }),
                ) => {
                    tracing::info!(%robots_url, %err, "robots.txt unreachable; disallowing host");
                    (Rules::DisallowAll, Some(UNREACHABLE_TTL))
                }
                Err(err) => {
                    tracing::debug!(%robots_url, %err, "robots.txt unusable; allowing all");
                    (Rules::AllowAll, None)
                }
            }
        })
    }
}

fn map_reqwest_error(url: &Url, err: &reqwest::Error, timeout: Duration) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<BlockedAddress>() {
            return FetchError::Blocked {
                url: url.clone(),
                reason: blocked.to_string(),
            };
        }
        source = e.source();
    }
    if err.is_timeout() {
        return FetchError::Timeout {
            url: url.clone(),
            after: if err.is_connect() {
                CONNECT_TIMEOUT.min(timeout)
            } else {
                timeout
            },
        };
    }
    // reqwest's message names the URL when it knows it.
    match err.url() {
        Some(_) => FetchError::Network(error_chain(err)),
        None => FetchError::Network(format!("{url}: {}", error_chain(err))),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
