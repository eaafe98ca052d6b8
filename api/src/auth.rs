//! Bearer-token authentication of `/api/*` routes from `ORCH_API_KEYS`.

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
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(key) if keys.accepts(key) => next.run(request).await,
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

#[cfg(test)]
mod tests {
    use super::*;

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
