//! HTTP targets and completion callbacks against real processes, in both
//! modes (embedded SQLite with in-process workers, and Redis with a worker
//! process). A receiver in this test process plays the user's service: it
//! checks every request's signature and answers per job, so retries,
//! `Retry-After` and refusals can be seen from the receiving end.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode as AxumStatus},
    response::{IntoResponse, Response},
    routing::post,
};
use orchestrator_delivery::{ATTEMPT_HEADER, JOB_ID_HEADER, SIGNATURE_HEADER, verify};
use orchestrator_tests::{Api, Backend, Process, Setup};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "test-signing-secret";
const JOBS: usize = 50;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    job_id: String,
    attempt: u32,
    body: Value,
    signed: Result<(), String>,
    json_content: bool,
    at: Instant,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves on 127.0.0.1; returns its base URL.
    async fn start(&self) -> String {
        let app = Router::new()
            .route("/target", post(target))
            .route("/cb", post(callback))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: &Bytes) -> Received {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let received = Received {
            path: path.to_string(),
            job_id: header(JOB_ID_HEADER),
            attempt: header(ATTEMPT_HEADER).parse().unwrap_or(0),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            signed: verify(SECRET, &header(SIGNATURE_HEADER), body, now, 300)
                .map_err(|e| e.to_string()),
            json_content: header("content-type") == "application/json",
            at: Instant::now(),
        };
        self.got.lock().unwrap().push(received.clone());
        received
    }

    fn at(&self, path: &str) -> Vec<Received> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits for a callback about job `id`.
    async fn callback_for(&self, id: &str) -> Received {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self.at("/cb").into_iter().find(|r| r.job_id == id) {
                return r;
            }
            assert!(Instant::now() < deadline, "no callback for job {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Answers by the job's `mode`: `ok`; `503-once` and `429-once` fail the
/// first attempt (the 429 with `Retry-After: 1`); `400` always refuses.
async fn target(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let got = rx.record("/target", &headers, &body);
    let mode = got.body["payload"]["mode"].as_str().unwrap_or("ok");
    match (mode, got.attempt) {
        ("503-once", 1) => AxumStatus::SERVICE_UNAVAILABLE.into_response(),
        ("429-once", 1) => (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response(),
        ("400", _) => (AxumStatus::BAD_REQUEST, "unknown customer").into_response(),
        _ => AxumStatus::OK.into_response(),
    }
}

async fn callback(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    rx.record("/cb", &headers, &body);
    AxumStatus::NO_CONTENT
}

fn mode_of(n: usize) -> &'static str {
    match n {
        7 => "429-once",
        13 => "400",
        n if n % 10 == 0 => "503-once",
        _ => "ok",
    }
}

fn setup(backend: Backend) -> Setup {
    Setup::new(backend)
        .env("ORCH_SIGNING_SECRET", SECRET)
        .env("ORCH_CAMPAIGN_ALLOW", "127.0.0.1")
}

/// Creates the `hooks` queue POSTing to the receiver: short backoff, so a
/// retry that ignored `Retry-After` would come well within a second.
async fn create_hooks(api: &Api, base: &str) {
    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "hooks", "handler": "http", "target_url": format!("{base}/target"),
                    "target_timeout_ms": 5_000, "max_attempts": 3, "backoff_ms": 200}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["handler"], "http");
    assert_eq!(body["target_url"], format!("{base}/target"));
}

/// Pushes the 50 jobs (the refused one with a callback) and checks what
/// the receiver saw and how each job ended.
async fn deliveries_are_signed_retried_and_refused(api: &Api, rx: &Receiver, base: &str) {
    let mut ids = Vec::new();
    for n in 0..JOBS {
        let mut job = json!({"queue": "hooks", "payload": {"n": n, "mode": mode_of(n)}});
        if mode_of(n) == "400" {
            job["callback_url"] = json!(format!("{base}/cb"));
        }
        ids.push(api.push(job).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let status = if mode_of(n) == "400" { "dead" } else { "done" };
        let job = api
            .wait_for_status(id, status, Duration::from_secs(60))
            .await;
        let attempts = match mode_of(n) {
            "503-once" | "429-once" => 2,
            _ => 1,
        };
        assert_eq!(job["attempts"], attempts, "job {n} ({}): {job}", mode_of(n));
        if status == "dead" {
            let error = job["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("400") && error.contains("unknown customer"),
                "{job}"
            );
        }
    }

    let got = rx.at("/target");
    for r in &got {
        assert_eq!(r.signed, Ok(()), "unsigned delivery {r:?}");
        assert!(r.json_content, "{r:?}");
        assert_eq!(r.body["id"], r.job_id.as_str(), "{r:?}");
        assert_eq!(r.body["queue"], "hooks");
        assert_eq!(r.body["attempt"], r.attempt);
    }
    let seen: HashSet<&str> = got.iter().map(|r| r.job_id.as_str()).collect();
    let pushed: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(seen, pushed, "every job delivered, and nothing else");
    let mut per_job: HashMap<&str, Vec<&Received>> = HashMap::new();
    for r in &got {
        per_job.entry(r.job_id.as_str()).or_default().push(r);
    }
    for (n, id) in ids.iter().enumerate() {
        let tries = &per_job[id.as_str()];
        let expected = if mode_of(n).ends_with("-once") { 2 } else { 1 };
        assert_eq!(
            tries.len(),
            expected,
            "job {n} ({}) delivered {tries:?}",
            mode_of(n)
        );
        assert_eq!(tries[0].body["payload"]["n"], n);
    }
    // Retry-After: 1 was honoured (the queue's backoff is 200 ms).
    let throttled = &per_job[ids[7].as_str()];
    let waited = throttled[1].at - throttled[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");

    // The refused job's callback: signed, and says it is dead.
    let cb = rx.callback_for(&ids[13]).await;
    assert_eq!(cb.signed, Ok(()), "{cb:?}");
    assert_eq!(cb.body["status"], "dead", "{cb:?}");
    assert_eq!(cb.body["queue"], "hooks");
    assert_eq!(cb.body["attempts"], 1);
    assert!(
        cb.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{cb:?}"
    );
}

/// A `noop` job's callback says it is done, with its result; a cancelled
/// job's says cancelled.
async fn callbacks_tell_how_jobs_ended(api: &Api, rx: &Receiver, base: &str) {
    let url = format!("{base}/cb");
    let done = api
        .push(json!({"queue": "noop", "payload": {}, "callback_url": url}))
        .await;
    api.wait_for_status(&done, "done", Duration::from_secs(30))
        .await;
    let cb = rx.callback_for(&done).await;
    assert_eq!(cb.signed, Ok(()), "{cb:?}");
    assert!(cb.json_content);
    assert_eq!(cb.body["id"], done.as_str());
    assert_eq!(cb.body["queue"], "noop");
    assert_eq!(cb.body["status"], "done");
    assert_eq!(cb.body["attempts"], 1);
    assert!(cb.body["result"].is_object(), "{cb:?}");
    assert_eq!(cb.attempt, 1);

    let later = api
        .push(json!({"queue": "noop", "payload": {}, "delay_ms": 600_000, "callback_url": url}))
        .await;
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{later}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cb = rx.callback_for(&later).await;
    assert_eq!(cb.signed, Ok(()), "{cb:?}");
    assert_eq!(cb.body["status"], "cancelled", "{cb:?}");

    // The callbacks queue is the orchestrator's own.
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"queue": "callbacks", "payload": {"url": url, "job": {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// Targets that are not http(s), private without the operator's
/// allowlist, or of an unknown handler kind are refused; nothing is made.
async fn bad_targets_are_refused(api: &Api) {
    for (name, target) in [
        ("ftp", "ftp://example.com/jobs"),
        ("private", "http://10.0.0.1/"),
        ("local", "http://localhost/"),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/queues",
                &json!({"name": name, "handler": "http", "target_url": target}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{target}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("target_url"), "{target}: {body}");
    }
    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "pigeon", "handler": "carrier-pigeon", "target_url": "https://example.com/"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("handler")
    );
    let (_, queues) = api.get("/api/v1/queues").await;
    let names: Vec<&str> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    for name in ["ftp", "private", "local", "pigeon"] {
        assert!(!names.contains(&name), "{name} was created: {names:?}");
    }
}

#[tokio::test]
async fn embedded_http_targets_and_callbacks() {
    let rx = Receiver::default();
    let base = rx.start().await;
    let setup = setup(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    bad_targets_are_refused(&api).await;
    // Created while the API runs: its in-process workers start at once.
    create_hooks(&api, &base).await;
    deliveries_are_signed_retried_and_refused(&api, &rx, &base).await;
    callbacks_tell_how_jobs_ended(&api, &rx, &base).await;

    // A workflow's callback says how it ended (cancelled here, unless it
    // finished first).
    let (status, created) = api
        .post(
            "/api/v1/workflows",
            &json!({"description": "tell me when it ends", "callback_url": format!("{base}/cb")}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let workflow = created["workflow_id"].as_str().unwrap();
    let (status, body) = api
        .post(&format!("/api/v1/workflows/{workflow}/cancel"), &json!({}))
        .await;
    let ended = if status == StatusCode::OK {
        "cancelled"
    } else {
        "completed"
    };
    let cb = rx.callback_for(workflow).await;
    assert_eq!(cb.signed, Ok(()), "{cb:?}");
    assert_eq!(cb.body["kind"], "workflow", "{cb:?}");
    assert_eq!(
        cb.body["status"], ended,
        "{cb:?} after cancel {status}: {body}"
    );
    let (status, body) = api
        .post(
            "/api/v1/workflows",
            &json!({"description": "x", "callback_url": "http://10.9.9.9/cb"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // After a restart the API serves the queue again from the registry.
    let mut api = api;
    api.process.signal(libc::SIGTERM);
    api.process.wait_exit(Duration::from_secs(30)).await;
    let api = setup.start_api(&[]).await;
    let id = api
        .push(json!({"queue": "hooks", "payload": {"mode": "ok"}}))
        .await;
    api.wait_for_status(&id, "done", Duration::from_secs(30))
        .await;
    assert!(rx.at("/target").iter().any(|r| r.job_id == id));
}

#[tokio::test]
async fn redis_http_targets_and_callbacks() {
    let rx = Receiver::default();
    let base = rx.start().await;
    let setup = setup(Backend::redis());
    let api = setup.start_api(&[]).await;
    bad_targets_are_refused(&api).await;
    create_hooks(&api, &base).await;
    let _worker: Process = setup.start_worker(&["--queues", "noop,callbacks,hooks"]);
    deliveries_are_signed_retried_and_refused(&api, &rx, &base).await;
    callbacks_tell_how_jobs_ended(&api, &rx, &base).await;

    // External queues are leased over HTTP, not served by this binary.
    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "ext", "handler": "external"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, stderr) = setup.run_worker_expecting_exit(&["--queues", "ext"]);
    assert!(!status.success());
    assert!(
        stderr.contains("external workers") && stderr.contains("lease"),
        "{stderr}"
    );
}

/// Without ORCH_SIGNING_SECRET nothing would be signed, so neither targets
/// nor callbacks are accepted; the error names the setting.
#[tokio::test]
async fn targets_and_callbacks_need_a_signing_secret() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_CAMPAIGN_ALLOW", "127.0.0.1");
    let api = setup.start_api(&[]).await;
    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "hooks", "handler": "http", "target_url": "http://127.0.0.1:9/"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "signing_secret_missing");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ORCH_SIGNING_SECRET")
    );
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"queue": "noop", "payload": {}, "callback_url": "http://127.0.0.1:9/"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "signing_secret_missing");
}

/// In production mode deliveries must be signed: an API whose registry
/// holds an http queue does not start without ORCH_SIGNING_SECRET.
#[tokio::test]
async fn production_refuses_http_queues_without_a_secret() {
    let setup = setup(Backend::Embedded);
    let mut api = setup.start_api(&[]).await;
    create_hooks(&api, "http://127.0.0.1:9").await;
    api.process.signal(libc::SIGTERM);
    api.process.wait_exit(Duration::from_secs(30)).await;

    let mut production = setup
        .clone()
        .env("ORCH_MODE", "production")
        .env("ORCH_ALLOW_EMBEDDED", "true")
        .env("ORCH_API_KEYS", "a-test-key-of-16-chars");
    production
        .extra_env
        .retain(|(key, _)| key != "ORCH_SIGNING_SECRET");
    let (status, stderr) = production.run_api_expecting_exit("127.0.0.1:0");
    assert!(!status.success());
    assert!(
        stderr.contains("ORCH_SIGNING_SECRET") && stderr.contains("hooks"),
        "{stderr}"
    );
}

/// A job whose worker dies during its last attempt is found dead when its
/// lease expires, with no acknowledgement: its callback still comes.
#[tokio::test]
async fn redis_a_job_dead_by_an_expired_lease_tells_its_callback() {
    let rx = Receiver::default();
    let base = rx.start().await;
    let setup = setup(Backend::redis()).env("ORCH_LEASE_MS", "1000");
    let api = setup.start_api(&[]).await;
    let mut doomed = setup.start_worker(&["--queues", "noop"]);
    let id = api
        .push(
            json!({"queue": "noop", "payload": {"sleep_ms": 60_000}, "max_attempts": 1,
                     "callback_url": format!("{base}/cb")}),
        )
        .await;
    api.wait_for_status(&id, "running", Duration::from_secs(10))
        .await;
    doomed.signal(libc::SIGKILL);
    doomed.wait_exit(Duration::from_secs(10)).await;
    let _survivor = setup.start_worker(&["--queues", "noop,callbacks"]);
    let job = api
        .wait_for_status(&id, "dead", Duration::from_secs(20))
        .await;
    assert!(
        job["error"].as_str().unwrap().contains("lease expired"),
        "{job}"
    );
    let cb = rx.callback_for(&id).await;
    assert_eq!(cb.signed, Ok(()), "{cb:?}");
    assert_eq!(cb.body["status"], "dead", "{cb:?}");
    assert!(
        cb.body["error"].as_str().unwrap().contains("lease expired"),
        "{cb:?}"
    );
}
