//! Request signatures, Stripe-style:
//!
//! `X-Orchestrator-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//!
//! The timestamp is part of the signed text, so a captured request cannot be
//! replayed once it is older than the receiver's tolerance. A receiver
//! accepts the header if any `v1` entry matches (room for more than one
//! during a secret rotation) and ignores entries of other schemes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "X-Orchestrator-Signature";
/// The job the request is about (for a callback: the job that ended).
pub const JOB_ID_HEADER: &str = "X-Orchestrator-Job-Id";
/// Which delivery attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "X-Orchestrator-Attempt";

/// The signature header value for `body` sent at `t` (unix seconds).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let digest = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(digest))
}

fn mac(secret: &str, t: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is not t=<unix seconds>,v1=<hex>")]
    Malformed,
    #[error("the signature was made {age_s} s from now, beyond the {tolerance_s} s tolerance")]
    Stale { age_s: u64, tolerance_s: u64 },
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a signature header against the raw `body` received, at `now`
/// (unix seconds), accepting clocks `tolerance_s` seconds apart (300 is
/// usual). Comparison is constant-time.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", v)) => signatures.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let age_s = now.abs_diff(t);
    if age_s > tolerance_s {
        return Err(VerifyError::Stale { age_s, tolerance_s });
    }
    let matches = |s: &Vec<u8>| mac(secret, t, body).verify_slice(s).is_ok();
    if signatures.iter().any(matches) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"j1"}"#;

    #[test]
    fn matches_a_vector_computed_elsewhere() {
        // python3: hmac.new(b"whsec_test", b'1700000000.{"id":"j1"}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature("whsec_test", 1_700_000_000, BODY),
            "t=1700000000,v1=dc498648beb37ef9558bf34aa28aad5dd4ab1f611dbc1c741bf02cdd69d71603"
        );
    }

    #[test]
    fn a_signature_verifies_within_the_tolerance_only() {
        let header = signature("s", 1_000, BODY);
        assert_eq!(verify("s", &header, BODY, 1_200, 300), Ok(()));
        assert_eq!(verify("s", &header, BODY, 800, 300), Ok(()));
        assert_eq!(
            verify("s", &header, BODY, 1_301, 300),
            Err(VerifyError::Stale {
                age_s: 301,
                tolerance_s: 300
            })
        );
    }

    #[test]
    fn another_body_secret_or_time_is_refused() {
        let header = signature("s", 1_000, BODY);
        assert_eq!(
            verify("s", &header, b"{}", 1_000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("other", &header, BODY, 1_000, 300),
            Err(VerifyError::Mismatch)
        );
        let moved = header.replace("t=1000", "t=1001");
        assert_eq!(
            verify("s", &moved, BODY, 1_000, 300),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn any_v1_entry_may_match_and_other_schemes_are_ignored() {
        let good = signature("s", 1_000, BODY);
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t=1000,v0=abc,v1={},v1={v1}", "00".repeat(32));
        assert_eq!(verify("s", &header, BODY, 1_000, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "t=1000", "v1=00", "t=x,v1=00", "t=1000,v1=zz"] {
            assert_eq!(
                verify("s", header, BODY, 1_000, 300),
                Err(VerifyError::Malformed),
                "{header}"
            );
        }
    }
}
