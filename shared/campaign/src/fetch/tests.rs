//! Fetcher tests against loopback axum servers that count what they receive.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use url::Url;

use super::{Allow, DEFAULT_USER_AGENT, FetchError, FetchOptions, Fetcher};

enum Robots {
    NotFound,
    Status(u16),
    Body(&'static str),
}

struct Fixture {
    total: AtomicUsize,
    hits: Mutex<HashMap<String, usize>>,
    arrivals: Mutex<Vec<Instant>>,
    user_agents: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    robots: Mutex<Robots>,
    redirects: Mutex<HashMap<String, String>>,
}

impl Fixture {
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
    fn set_robots(&self, robots: Robots) {
        *self.robots.lock().unwrap() = robots;
    }
    fn redirect(&self, from: &str, to: &str) {
        self.redirects
            .lock()
            .unwrap()
            .insert(from.to_string(), to.to_string());
    }
}

struct Server {
    fixture: Arc<Fixture>,
    base: Url,
}

impl Server {
    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }
}

/// Starts a counting server on `ip`; `None` if that address cannot be bound here.
async fn serve(ip: &str) -> Option<Server> {
    let fixture = Arc::new(Fixture {
        total: AtomicUsize::new(0),
        hits: Mutex::default(),
        arrivals: Mutex::default(),
        user_agents: Mutex::default(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        robots: Mutex::new(Robots::NotFound),
        redirects: Mutex::default(),
    });
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&fixture));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let base = Url::parse(&format!("http://{addr}/")).unwrap();
    Some(Server { fixture, base })
}

async fn handle(State(f): State<Arc<Fixture>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    f.total.fetch_add(1, Ordering::SeqCst);
    *f.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    f.arrivals.lock().unwrap().push(Instant::now());
    if let Some(ua) = req.headers().get(header::USER_AGENT) {
        let ua = ua.to_str().unwrap_or_default().to_string();
        f.user_agents.lock().unwrap().push(ua);
    }
    let redirect = f.redirects.lock().unwrap().get(&path).cloned();
    if let Some(to) = redirect {
        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    }
    if let Some(n) = path.strip_prefix("/loop/") {
        let n: u32 = n.parse().unwrap_or(0);
        let to = format!("/loop/{}", n + 1);
        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    }
    match path.as_str() {
        "/robots.txt" => match &*f.robots.lock().unwrap() {
            Robots::NotFound => StatusCode::NOT_FOUND.into_response(),
            Robots::Status(code) => StatusCode::from_u16(*code).unwrap().into_response(),
            Robots::Body(text) => text.to_string().into_response(),
        },
        "/big" => vec![b'x'; 10_000_000].into_response(),
        "/big-chunked" => {
            let chunks = (0..160).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'x'; 64 * 1024])));
            Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "late".into_response()
        }
        "/busy" => {
            let now = f.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            f.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            f.in_flight.fetch_sub(1, Ordering::SeqCst);
            "done".into_response()
        }
        "/gone" => StatusCode::NOT_FOUND.into_response(),
        "/error" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => ([(header::CONTENT_TYPE, "text/plain")], "hello").into_response(),
    }
}

fn options(allow: &[&str]) -> FetchOptions {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    FetchOptions {
        allow: Allow::parse(&allow).unwrap(),
        per_host_interval: Duration::ZERO,
        ..FetchOptions::default()
    }
}

fn fetcher(allow: &[&str]) -> Fetcher {
    Fetcher::new(options(allow)).unwrap()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[test]
fn fetcher_is_send_sync_and_errors_classify() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Fetcher>();
    let u = url("http://example.com/");
    let http = |status| FetchError::Http {
        url: u.clone(),
        status,
    };
    assert!(http(503).is_retryable());
    assert!(http(429).is_retryable());
    assert!(!http(404).is_retryable());
    assert!(FetchError::Network("x".into()).is_retryable());
    assert!(!FetchError::DisallowedByRobots { url: u.clone() }.is_retryable());
    assert_eq!(http(500).kind(), "http");
    assert!(
        Fetcher::new(FetchOptions {
            per_host_concurrency: 0,
            ..Default::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn restricted_targets_refused_without_any_request() {
    let v4 = serve("127.0.0.1").await.unwrap();
    let v6 = serve("[::1]").await;
    let port = v4.base.port().unwrap();
    let f = fetcher(&[]);
    let mut targets = vec![
        format!("http://localhost:{port}/ok"),
        format!("http://127.0.0.1:{port}/ok"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
        format!("http://2130706433:{port}/ok"),
        "http://10.0.0.1/ok".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ];
    match &v6 {
        Some(s) => targets.push(s.url("/ok").to_string()),
        None => targets.push(format!("http://[::1]:{port}/ok")),
    }
    for target in &targets {
        let err = f.get(&url(target)).await.unwrap_err();
        assert_eq!(err.kind(), "blocked", "{target}: {err}");
        assert!(err.to_string().contains("ORCH_CAMPAIGN_ALLOW"), "{err}");
    }
    let err = f
        .get(&url(&format!("http://localhost:{port}/ok")))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("localhost resolves to") && msg.contains("a loopback address"),
        "{msg}"
    );
    assert_eq!(v4.fixture.total(), 0);
    if let Some(s) = &v6 {
        assert_eq!(s.fixture.total(), 0);
    }
    assert_eq!(f.requests_sent(), 0);
}

#[tokio::test]
async fn allowlisted_by_host_name_or_cidr() {
    let s = serve("127.0.0.1").await.unwrap();
    let port = s.base.port().unwrap();
    let by_name = fetcher(&["localhost"]);
    let page = by_name
        .get(&url(&format!("http://localhost:{port}/ok")))
        .await
        .unwrap();
    assert_eq!((page.status, &page.body[..]), (200, &b"hello"[..]));
    assert_eq!(page.content_type.as_deref(), Some("text/plain"));
    // A name allowlist does not open the IP literal.
    assert_eq!(
        by_name.get(&s.url("/ok")).await.unwrap_err().kind(),
        "blocked"
    );

    let by_cidr = fetcher(&["127.0.0.0/8"]);
    by_cidr.get(&s.url("/ok")).await.unwrap();
    by_cidr
        .get(&url(&format!("http://localhost:{port}/ok")))
        .await
        .unwrap();
    by_cidr
        .get(&url(&format!("http://[::ffff:127.0.0.1]:{port}/ok")))
        .await
        .unwrap();
    assert_eq!(s.fixture.hits("/ok"), 4);
}

#[tokio::test]
async fn redirects_are_checked_on_every_hop() {
    let a = serve("127.0.0.1").await.unwrap();
    let b = serve("127.0.0.2")
        .await
        .expect("127.0.0.2 is on lo on Linux");
    a.fixture
        .redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/");
    a.fixture.redirect("/to-b", b.url("/ok").as_str());
    a.fixture.redirect("/to-local", "/ok");
    let f = Fetcher::new(FetchOptions {
        max_redirects: 3,
        ..options(&["127.0.0.1/32"])
    })
    .unwrap();

    let err = f.get(&a.url("/to-metadata")).await.unwrap_err();
    assert!(
        matches!(&err, FetchError::Blocked { url, .. } if url.host_str() == Some("169.254.169.254")),
        "{err}"
    );
    let err = f.get(&a.url("/to-b")).await.unwrap_err();
    assert_eq!(err.kind(), "blocked", "{err}");
    assert!(err.to_string().contains("127.0.0.2"), "{err}");
    assert_eq!(b.fixture.total(), 0);

    let page = f.get(&a.url("/to-local")).await.unwrap();
    assert_eq!(page.url, a.url("/ok"));
    assert_eq!(page.redirects, vec![a.url("/to-local")]);
    assert_eq!(&page.body[..], b"hello");

    let err = f.get(&a.url("/loop/0")).await.unwrap_err();
    assert!(
        matches!(err, FetchError::TooManyRedirects { max: 3, .. }),
        "{err}"
    );
    let loop_hits: usize = (0..10).map(|i| a.fixture.hits(&format!("/loop/{i}"))).sum();
    assert_eq!(loop_hits, 4, "initial request plus three redirects");

    // Once allowed, the cross-host redirect is followed (and B's robots.txt consulted).
    let f2 = fetcher(&["127.0.0.1/32", "127.0.0.2/32"]);
    let page = f2.get(&a.url("/to-b")).await.unwrap();
    assert_eq!(page.url, b.url("/ok"));
    assert_eq!(b.fixture.hits("/robots.txt"), 1);
    assert_eq!(b.fixture.hits("/ok"), 1);
}

#[tokio::test]
async fn robots_rules_are_obeyed_and_cached() {
    let s = serve("127.0.0.1").await.unwrap();
    s.fixture.set_robots(Robots::Body(
        "User-agent: *\nDisallow: /private\n\nSitemap: /sitemap.xml\n",
    ));
    let f = fetcher(&["127.0.0.1"]);
    let err = f.get(&s.url("/private/x")).await.unwrap_err();
    assert!(
        matches!(err, FetchError::DisallowedByRobots { .. }),
        "{err}"
    );
    assert_eq!(err.kind(), "robots");
    assert_eq!(s.fixture.hits("/private/x"), 0);
    for i in 0..10 {
        f.get(&s.url(&format!("/page/{i}"))).await.unwrap();
    }
    let concurrent: Vec<_> = (0..5)
        .map(|i| {
            let f = f.clone();
            let u = s.url(&format!("/c/{i}"));
            async move { f.get(&u).await }
        })
        .collect();
    for r in futures::future::join_all(concurrent).await {
        r.unwrap();
    }
    assert_eq!(
        f.robots_sitemaps(&s.url("/")).await,
        vec![s.url("/sitemap.xml")]
    );
    assert_eq!(s.fixture.hits("/robots.txt"), 1);
    // robots.txt plus 15 pages went out.
    assert_eq!(f.requests_sent(), 16);
    assert_eq!(s.fixture.total(), 16);
}

#[tokio::test]
async fn robots_product_token_404_and_5xx() {
    let s = serve("127.0.0.1").await.unwrap();
    s.fixture.set_robots(Robots::Body(
        "User-agent: *\nAllow: /\n\nUser-agent: MasterOrchestrator\nDisallow: /\n",
    ));
    let f = fetcher(&["127.0.0.1"]);
    assert_eq!(f.get(&s.url("/ok")).await.unwrap_err().kind(), "robots");

    s.fixture.set_robots(Robots::NotFound);
    let f = fetcher(&["127.0.0.1"]);
    f.get(&s.url("/private/x")).await.unwrap();
    assert_eq!(s.fixture.hits("/private/x"), 1);

    s.fixture.set_robots(Robots::Status(503));
    let f = fetcher(&["127.0.0.1"]);
    assert_eq!(f.get(&s.url("/ok")).await.unwrap_err().kind(), "robots");
    assert_eq!(s.fixture.hits("/ok"), 0);

    let f = Fetcher::new(FetchOptions {
        respect_robots: false,
        ..options(&["127.0.0.1"])
    })
    .unwrap();
    let robots_before = s.fixture.hits("/robots.txt");
    f.get(&s.url("/ok")).await.unwrap();
    assert_eq!(s.fixture.hits("/robots.txt"), robots_before);
}

#[tokio::test]
async fn http_errors_are_typed() {
    let s = serve("127.0.0.1").await.unwrap();
    let f = fetcher(&["127.0.0.1"]);
    let err = f.get(&s.url("/gone")).await.unwrap_err();
    assert!(matches!(err, FetchError::Http { status: 404, .. }), "{err}");
    assert!(!err.is_retryable());
    let err = f.get(&s.url("/error")).await.unwrap_err();
    assert!(matches!(err, FetchError::Http { status: 503, .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn body_cap_with_and_without_content_length() {
    let s = serve("127.0.0.1").await.unwrap();
    let f = Fetcher::new(FetchOptions {
        max_body_bytes: 1_000_000,
        ..options(&["127.0.0.1"])
    })
    .unwrap();
    for path in ["/big", "/big-chunked"] {
        let err = f.get(&s.url(path)).await.unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::TooLarge {
                    limit: 1_000_000,
                    ..
                }
            ),
            "{path}: {err}"
        );
        assert!(!err.is_retryable());
    }
    assert_eq!(s.fixture.hits("/big-chunked"), 1);
}

#[tokio::test]
async fn slow_response_times_out() {
    let s = serve("127.0.0.1").await.unwrap();
    let f = Fetcher::new(FetchOptions {
        timeout: Duration::from_millis(400),
        ..options(&["127.0.0.1"])
    })
    .unwrap();
    let started = Instant::now();
    let err = f.get(&s.url("/slow")).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn per_host_concurrency_is_capped() {
    let s = serve("127.0.0.1").await.unwrap();
    let f = fetcher(&["127.0.0.1"]);
    let gets: Vec<_> = (0..10)
        .map(|_| {
            let f = f.clone();
            let u = s.url("/busy");
            tokio::spawn(async move { f.get(&u).await })
        })
        .collect();
    for g in gets {
        g.await.unwrap().unwrap();
    }
    assert_eq!(s.fixture.hits("/busy"), 10);
    assert_eq!(s.fixture.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn per_host_interval_paces_request_starts() {
    let s = serve("127.0.0.1").await.unwrap();
    let f = Fetcher::new(FetchOptions {
        per_host_concurrency: 4,
        per_host_interval: Duration::from_millis(100),
        ..options(&["127.0.0.1"])
    })
    .unwrap();
    let gets: Vec<_> = (0..4)
        .map(|i| {
            let f = f.clone();
            let u = s.url(&format!("/p/{i}"));
            async move { f.get(&u).await }
        })
        .collect();
    for r in futures::future::join_all(gets).await {
        r.unwrap();
    }
    let arrivals = s.fixture.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 5, "robots.txt + 4 pages");
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        // Starts are 100 ms apart; arrival times add loopback/scheduling jitter.
        assert!(gap >= Duration::from_millis(50), "gap {gap:?}");
    }
    let span = *arrivals.last().unwrap() - arrivals[0];
    assert!(span >= Duration::from_millis(350), "span {span:?}");
}

#[tokio::test]
async fn user_agent_is_sent() {
    let s = serve("127.0.0.1").await.unwrap();
    let f = fetcher(&["127.0.0.1"]);
    f.get(&s.url("/ok")).await.unwrap();
    let agents = s.fixture.user_agents.lock().unwrap().clone();
    assert_eq!(agents.len(), 2, "robots.txt and the page");
    assert!(agents.iter().all(|a| a == DEFAULT_USER_AGENT), "{agents:?}");
}

#[tokio::test]
async fn invalid_urls_are_rejected() {
    let f = fetcher(&[]);
    for u in ["ftp://example.com/x", "http://user:pw@example.com/"] {
        let err = f.get(&url(u)).await.unwrap_err();
        assert_eq!(err.kind(), "invalid_url", "{u}: {err}");
    }
    assert_eq!(f.requests_sent(), 0);
}

#[tokio::test]
async fn robots_fetched_once_under_concurrency_on_a_cold_cache() {
    let s = serve("127.0.0.1").await.unwrap();
    s.fixture
        .set_robots(Robots::Body("User-agent: *\nDisallow: /private\n"));
    let f = fetcher(&["127.0.0.1"]);
    let gets: Vec<_> = (0..8)
        .map(|i| {
            let f = f.clone();
            let u = s.url(&format!("/c/{i}"));
            tokio::spawn(async move { f.get(&u).await })
        })
        .collect();
    for g in gets {
        g.await.unwrap().unwrap();
    }
    assert_eq!(s.fixture.hits("/robots.txt"), 1);
}
