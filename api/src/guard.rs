//! Browser-borne attacks on an API that may run without keys on loopback.
//!
//! - **DNS rebinding**: a page on `evil.example` re-points its name at
//!   127.0.0.1 and then talks to this API as "same origin". Its requests
//!   carry `Host: evil.example`, so only host names this API answers to are
//!   served: IP literals, `localhost`, and the operator's
//!   `ORCH_ALLOWED_HOSTS`.
//! - **Cross-site requests**: any page can POST to `127.0.0.1:8080` (a
//!   "simple" request needs no CORS preflight). A state-changing request
//!   whose `Origin` is another origin, or that the browser marks as
//!   `Sec-Fetch-Site: cross-site`/`same-site`, is refused; so is a
//!   websocket opened from another origin. Clients that are not browsers
//!   (curl, SDKs) send neither header and are not affected.
//!
//! No CORS headers are ever sent, so browsers keep other origins from
//! reading any answer.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// Host names the API answers to besides IP literals and `localhost`.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    names: Arc<Vec<String>>,
    /// `*` in `ORCH_ALLOWED_HOSTS`: the operator checks hosts elsewhere
    /// (a proxy in front), so every name is served.
    any: bool,
}

impl AllowedHosts {
    /// Parses `ORCH_ALLOWED_HOSTS` entries: host names without scheme, port
    /// or path, or `*`.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut names = Vec::new();
        let mut any = false;
        for raw in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if raw == "*" {
                any = true;
                continue;
            }
            let valid = raw.len() <= 253
                && raw
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
            if !valid {
                return Err(format!(
                    "ORCH_ALLOWED_HOSTS: {:?} is not a host name (no scheme, port or path; * for any)",
                    raw.chars().take(64).collect::<String>()
                ));
            }
            names.push(raw.trim_end_matches('.').to_ascii_lowercase());
        }
        Ok(Self {
            names: Arc::new(names),
            any,
        })
    }

    /// Whether a `Host` header value (host, optionally with a port) names
    /// this API.
    fn allows(&self, host_header: &str) -> bool {
        if self.any {
            return true;
        }
        let host = strip_port(host_header).trim_end_matches('.');
        if host.parse::<IpAddr>().is_ok() {
            return true;
        }
        let host = host.to_ascii_lowercase();
        host == "localhost" || self.names.contains(&host)
    }
}

/// The host part of `host[:port]` or `[v6]:port`.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The middleware: refuses foreign `Host`s, cross-site state changes and
/// cross-origin websockets and event streams.
pub async fn check(State(hosts): State<AllowedHosts>, request: Request, next: Next) -> Response {
    match refusal(&hosts, request.method(), request.headers()) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

fn refusal(hosts: &AllowedHosts, method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host
        && !hosts.allows(host)
    {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "this API does not answer to Host {:?}; add it to ORCH_ALLOWED_HOSTS",
                host.chars().take(64).collect::<String>()
            ),
        ));
    }
    // Websockets and event streams are read by pages that may not be ours.
    let upgrade = headers.contains_key(header::UPGRADE)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
    let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !(changes_state || upgrade) {
        return None;
    }
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    let cross_fetch = matches!(fetch_site, "cross-site" | "same-site");
    let foreign_origin = headers
        .get(header::ORIGIN)
        .is_some_and(|origin| !same_origin(origin.to_str().unwrap_or("null"), host));
    if cross_fetch || foreign_origin {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin_refused",
            "requests that change state, and websockets, are only accepted from this API's own origin",
        ));
    }
    None
}

/// Whether `origin` (`scheme://host[:port]`, or `null`) is the API's own:
/// same authority as the `Host` header.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    fn code(
        hosts: &AllowedHosts,
        method: Method,
        pairs: &[(&'static str, &'static str)],
    ) -> &'static str {
        refusal(hosts, &method, &headers(pairs)).map_or("ok", |e| e.code)
    }

    #[test]
    fn host_names_must_be_known() {
        let hosts = AllowedHosts::parse(&["orch.internal".into()]).unwrap();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.0.0.5",
            "orch.internal:443",
        ] {
            assert_eq!(code(&hosts, Method::GET, &[("host", ok)]), "ok", "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
        ] {
            assert_eq!(
                code(&hosts, Method::GET, &[("host", bad)]),
                "host_not_allowed",
                "{bad}"
            );
        }
        let any = AllowedHosts::parse(&["*".into()]).unwrap();
        assert_eq!(code(&any, Method::GET, &[("host", "evil.example")]), "ok");
        assert!(AllowedHosts::parse(&["http://x".into()]).is_err());
        assert!(AllowedHosts::parse(&["x:80".into()]).is_err());
    }

    #[test]
    fn cross_site_state_changes_are_refused() {
        let hosts = AllowedHosts::default();
        let host = ("host", "127.0.0.1:8080");
        // curl: no Origin, no Sec-Fetch-Site.
        assert_eq!(code(&hosts, Method::POST, &[host]), "ok");
        // The console on the API's own origin.
        assert_eq!(
            code(
                &hosts,
                Method::POST,
                &[
                    host,
                    ("origin", "http://127.0.0.1:8080"),
                    ("sec-fetch-site", "same-origin")
                ]
            ),
            "ok"
        );
        for (origin, site) in [
            ("https://evil.example", "cross-site"),
            ("http://localhost:3000", "same-site"),
            ("null", "cross-site"),
        ] {
            assert_eq!(
                code(&hosts, Method::POST, &[host, ("origin", origin)]),
                "cross_origin_refused",
                "{origin}"
            );
            assert_eq!(
                code(&hosts, Method::DELETE, &[host, ("sec-fetch-site", site)]),
                "cross_origin_refused",
                "{site}"
            );
        }
        // Reads are answered (browsers keep other origins from reading them).
        assert_eq!(
            code(
                &hosts,
                Method::GET,
                &[host, ("origin", "https://evil.example")]
            ),
            "ok"
        );
        // A websocket from another origin is refused.
        assert_eq!(
            code(
                &hosts,
                Method::GET,
                &[
                    host,
                    ("upgrade", "websocket"),
                    ("origin", "https://evil.example")
                ]
            ),
            "cross_origin_refused"
        );
    }
}
