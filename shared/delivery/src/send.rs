//! One signed POST, and what its answer means for the job: a 2xx is done;
//! 429, 5xx, timeouts and connection errors are retried (after the
//! receiver's `Retry-After` when it sends one, else the queue's backoff);
//! any other answer is the receiver refusing the job, which no retry fixes,
//! so the job is dead at once. Redirects are not followed: a receiver that
//! moved is registered again, never chased to wherever it points.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use orchestrator_campaign::fetch::guard::{Allow, BlockedAddress, GuardedResolver, check_url};
use orchestrator_core::metrics as m;
use orchestrator_queue::{JobError, MAX_BACKOFF_MS};
use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER},
};

use crate::sign::{ATTEMPT_HEADER, JOB_ID_HEADER, SIGNATURE_HEADER, signature};

/// Most bytes of a refusing receiver's answer kept in the job's error.
const ERROR_BODY_BYTES: usize = 200;
/// Longest a connection may take to open, whatever the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client every delivery of a process shares: guarded, signing,
/// never following redirects.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    allow: Arc<Allow>,
    secret: Option<Arc<str>>,
}

impl Client {
    /// Reaches public addresses and those `allow` lists (the operator's
    /// `ORCH_CAMPAIGN_ALLOW`); signs with `secret` (`ORCH_SIGNING_SECRET`).
    /// Without a secret every delivery fails at once, naming the setting:
    /// nothing is ever sent unsigned.
    pub fn new(allow: Allow, secret: Option<String>) -> anyhow::Result<Self> {
        let allow = Arc::new(allow);
        let http = reqwest::Client::builder()
            .user_agent(concat!("orchestrator-delivery/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            // An environment proxy would resolve names itself, bypassing the guard.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(allow.clone())))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the delivery HTTP client")?;
        let secret = secret.filter(|s| !s.is_empty()).map(Arc::from);
        Ok(Self {
            http,
            allow,
            secret,
        })
    }
}

/// A request body and the job it is about.
pub struct Delivery<'a> {
    /// Counted in `orchestrator_deliveries_total{queue}`.
    pub queue: &'a str,
    pub job_id: &'a str,
    pub attempt: u32,
    pub body: Vec<u8>,
}

/// POSTs `delivery` to `url`, returning the receiver's 2xx status, or the
/// failure the job records (with when, if ever, to try again).
pub async fn deliver(
    client: &Client,
    url: &str,
    delivery: &Delivery<'_>,
    timeout: Duration,
) -> Result<u16, JobError> {
    let result = post(client, url, delivery, timeout).await;
    let outcome = match &result {
        Ok(_) => "done",
        Err(e) if e.retry == orchestrator_queue::Retry::Never => "refused",
        Err(_) => "retry",
    };
    metrics::counter!(m::DELIVERIES, "queue" => delivery.queue.to_string(), "outcome" => outcome)
        .increment(1);
    result
}

async fn post(
    client: &Client,
    url: &str,
    delivery: &Delivery<'_>,
    timeout: Duration,
) -> Result<u16, JobError> {
    let Some(secret) = &client.secret else {
        return Err(JobError::permanent(
            "ORCH_SIGNING_SECRET is not set in the process that ran this job; \
             deliveries are never sent unsigned",
        ));
    };
    let parsed = url::Url::parse(url)
        .map_err(|e| JobError::permanent(format!("{url:?} is not a URL: {e}")))?;
    // The resolver guards host names; an IP literal never reaches it.
    check_url(&parsed, &client.allow).map_err(|e| JobError::permanent(e.to_string()))?;
    let sent = client
        .http
        .post(parsed)
        .header(CONTENT_TYPE, "application/json")
        .header(
            SIGNATURE_HEADER,
            signature(secret, unix_now(), &delivery.body),
        )
        .header(JOB_ID_HEADER, delivery.job_id)
        .header(ATTEMPT_HEADER, delivery.attempt.to_string())
        .timeout(timeout)
        .body(delivery.body.clone())
        .send()
        .await;
    let response = sent.map_err(|e| send_failed(url, &e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let message = format!("{url} answered {status}");
        return Err(match retry_after(response.headers(), SystemTime::now()) {
            Some(ms) => JobError::retry_after(message, ms),
            None => JobError::new(message),
        });
    }
    let head = body_head(response).await;
    Err(JobError::permanent(format!(
        "{url} answered {status} (not retried): {head}"
    )))
}

/// A request that got no answer: retried, unless the guard refused the
/// address (no retry changes what a name resolves to for long).
fn send_failed(url: &str, err: &reqwest::Error) -> JobError {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<BlockedAddress>() {
            return JobError::permanent(blocked.to_string());
        }
        let text = e.to_string();
        if !chain.iter().any(|c: &String| c.contains(&text)) {
            chain.push(text);
        }
        source = e.source();
    }
    let what = if err.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    JobError::new(format!("POST {url} {what}: {}", chain.join(": ")))
}

/// `Retry-After` in milliseconds from `now`: seconds or an HTTP date,
/// capped at the engine's longest backoff.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let ms = match raw.parse::<u64>() {
        Ok(seconds) => seconds.saturating_mul(1_000),
        Err(_) => {
            let at = httpdate::parse_http_date(raw).ok()?;
            at.duration_since(now).unwrap_or_default().as_millis() as u64
        }
    };
    Some(ms.min(MAX_BACKOFF_MS))
}

/// The first bytes of an answer, for the job's error.
async fn body_head(mut response: reqwest::Response) -> String {
    let mut head = Vec::new();
    while head.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            _ => break,
        }
    }
    head.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&head).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{Router, http::HeaderValue, response::IntoResponse, routing::post as route};
    use orchestrator_queue::Retry;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after(&headers("3"), now), Some(3_000));
        // 10 s after `now`.
        let date = "Wed, 21 Oct 2015 07:28:10 GMT";
        assert_eq!(retry_after(&headers(date), now), Some(10_000));
        let past = "Wed, 21 Oct 2015 07:00:00 GMT";
        assert_eq!(retry_after(&headers(past), now), Some(0));
        assert_eq!(retry_after(&headers("99999999"), now), Some(MAX_BACKOFF_MS));
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    async fn receiver() -> String {
        let app = Router::new()
            .route("/ok", route(|| async { "fine" }))
            .route(
                "/busy",
                route(|| async { (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, "2")]) }),
            )
            .route("/flaky", route(|| async { StatusCode::BAD_GATEWAY }))
            .route(
                "/bad",
                route(|| async { (StatusCode::BAD_REQUEST, "x".repeat(500)).into_response() }),
            )
            .route(
                "/moved",
                route(|| async { (StatusCode::FOUND, [("location", "http://10.0.0.1/")]) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("127.0.0.1:{}", addr.port())
    }

    fn client(allow: &[&str]) -> Client {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Client::new(Allow::parse(&allow).unwrap(), Some("s".into())).unwrap()
    }

    async fn send(client: &Client, url: &str) -> Result<u16, JobError> {
        let delivery = Delivery {
            queue: "q",
            job_id: "j",
            attempt: 1,
            body: b"{}".to_vec(),
        };
        deliver(client, url, &delivery, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn answers_decide_done_retry_or_dead() {
        let host = receiver().await;
        let allowed = client(&["127.0.0.1"]);
        assert_eq!(
            send(&allowed, &format!("http://{host}/ok")).await.unwrap(),
            200
        );
        let busy = send(&allowed, &format!("http://{host}/busy"))
            .await
            .unwrap_err();
        assert_eq!(busy.retry, Retry::After(2_000), "{busy}");
        let flaky = send(&allowed, &format!("http://{host}/flaky"))
            .await
            .unwrap_err();
        assert_eq!(flaky.retry, Retry::Backoff, "{flaky}");
        let bad = send(&allowed, &format!("http://{host}/bad"))
            .await
            .unwrap_err();
        assert_eq!(bad.retry, Retry::Never);
        assert!(bad.message.contains("400") && bad.message.ends_with(&"x".repeat(200)));
        assert!(!bad.message.contains(&"x".repeat(201)), "{}", bad.message);
        let moved = send(&allowed, &format!("http://{host}/moved"))
            .await
            .unwrap_err();
        assert_eq!(moved.retry, Retry::Never, "{moved}");
        assert!(moved.message.contains("302"), "{moved}");
    }

    #[tokio::test]
    async fn private_addresses_need_the_operators_allowlist() {
        let host = receiver().await;
        let port = host.rsplit(':').next().unwrap();
        let none = client(&[]);
        for url in [
            format!("http://{host}/ok"),
            format!("http://localhost:{port}/ok"),
        ] {
            let err = send(&none, &url).await.unwrap_err();
            assert_eq!(err.retry, Retry::Never, "{url}: {err}");
            assert!(err.message.contains("ORCH_CAMPAIGN_ALLOW"), "{err}");
        }
    }

    #[tokio::test]
    async fn nothing_is_sent_without_a_secret() {
        let host = receiver().await;
        let unsigned = Client::new(Allow::parse(&["127.0.0.1".into()]).unwrap(), None).unwrap();
        let err = send(&unsigned, &format!("http://{host}/ok"))
            .await
            .unwrap_err();
        assert_eq!(err.retry, Retry::Never);
        assert!(err.message.contains("ORCH_SIGNING_SECRET"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_receiver_is_retried() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = send(
            &client(&["127.0.0.1"]),
            &format!("http://127.0.0.1:{port}/"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.retry, Retry::Backoff, "{err}");
    }
}
