//! Bearer-token authentication of `/api/*` routes from `ORCH_API_KEYS`
//! (websockets and event streams may also pass the key as `token` or a
//! `bearer.<key>` subprotocol).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// Shortest key accepted: shorter ones are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// The accepted keys, kept as BLAKE3 digests; empty means authentication is
/// off. Comparing digests of equal length (in constant time, as
/// `blake3::Hash` does) tells a timing observer nothing about a key's
/// length or any prefix of it.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<blake3::Hash>>);

impl ApiKeys {
    /// Parses the comma-separated list, refusing empty or short keys.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let keys: Vec<String> = raw.split(',').map(|k| k.trim().to_string()).collect();
        if keys.iter().any(|k| k.len() < MIN_KEY_LEN) {
            return Err(format!(
                "ORCH_API_KEYS: every key must be at least {MIN_KEY_LEN} characters (comma-separated, no empty entries)"
            ));
        }
        if keys
            .iter()
            .any(|k| !k.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err("ORCH_API_KEYS: keys must be printable ASCII without spaces".into());
        }
        Ok(Self(Arc::new(
            keys.iter().map(|k| blake3::hash(k.as_bytes())).collect(),
        )))
    }

    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn accepts(&self, presented: &str) -> bool {
        let presented = blake3::hash(presented.as_bytes());
        // Every key is compared, so timing does not say which one matched.
        self.0
            .iter()
            .fold(false, |found, key| found | (*key == presented))
    }
}

pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.is_enabled() {
        return next.run(request).await;
    }
    match presented_key(&request) {
        Some(key) if keys.accepts(&key) => next.run(request).await,
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <key> with one of ORCH_API_KEYS",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The key a request presents: `Authorization: Bearer`, or, on websockets
/// and event streams (which browsers open without custom headers), a
/// `token` query parameter or a `bearer.<key>` websocket subprotocol.
fn presented_key(request: &Request) -> Option<String> {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(key) = bearer {
        return Some(key.to_string());
    }
    let path = request.uri().path();
    if !(path.starts_with("/ws/") || path == "/api/v1/events") {
        return None;
    }
    let from_query = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    });
    from_query.or_else(|| {
        headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())?
            .split(',')
            .find_map(|entry| entry.trim().strip_prefix("bearer."))
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn streams_take_the_key_from_the_query_or_the_subprotocol() {
        let key = "0123456789abcdef";
        let from_query = request("/ws/events?token=0123456789abcdef", &[]);
        assert_eq!(presented_key(&from_query).as_deref(), Some(key));
        let sse = request("/api/v1/events?a=1&token=0123456789abcdef", &[]);
        assert_eq!(presented_key(&sse).as_deref(), Some(key));
        let protocol = request(
            "/ws/events",
            &[(
                "sec-websocket-protocol",
                "orchestrator.v1, bearer.0123456789abcdef",
            )],
        );
        assert_eq!(presented_key(&protocol).as_deref(), Some(key));
        // Anywhere else a key in the URL would end up in logs: refused.
        let elsewhere = request("/api/v1/status?token=0123456789abcdef", &[]);
        assert_eq!(presented_key(&elsewhere), None);
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(ApiKeys::parse(Some("short")).is_err());
        assert!(ApiKeys::parse(Some("0123456789abcdef,")).is_err());
    }

    #[test]
    fn accepts_only_listed_keys() {
        let keys = ApiKeys::parse(Some("0123456789abcdef, fedcba9876543210")).unwrap();
        assert!(keys.accepts("fedcba9876543210"));
        assert!(!keys.accepts("0123456789abcdeX"));
        assert!(!keys.accepts(""));
        assert!(!keys.accepts("0123456789abcde"));
        assert!(!keys.accepts("0123456789abcdef0"));
    }
}
