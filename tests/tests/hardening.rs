//! The API read as an attacker would, over real HTTP on loopback: foreign
//! Host names (DNS rebinding) and cross-site requests are refused,
//! internal queues and fault payloads cannot be pushed, limits answer 503
//! instead of piling up, upstream model servers' secrets and failures do
//! not leak through, and every error is JSON.

use std::{path::PathBuf, time::Duration};

use orchestrator_tests::{
    Api, Backend, Setup, StatusCode,
    fake_llm::{FakeLlm, UPSTREAM_SECRET},
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

#[tokio::test]
async fn foreign_hosts_and_cross_site_requests_are_refused() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_ALLOWED_HOSTS", "orch.internal");
    let api = setup.start_api(&["--no-workers"]).await;
    let job = json!({"queue": "noop"});
    // A rebound name: refused on every route, reads included.
    for path in ["/health", "/api/v1/queues", "/metrics"] {
        let (status, body, _) = send(
            api.http
                .get(api.url(path))
                .header("host", "evil.example:8080"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "host_not_allowed");
    }
    // Names the operator listed, localhost and IP literals are served.
    for host in ["orch.internal", "localhost:8080", "127.0.0.1"] {
        let (status, _, _) = send(api.http.get(api.url("/health")).header("host", host)).await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
    // A page on another origin posting a job: refused, nothing queued.
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let request = api
            .http
            .post(api.url("/api/v1/jobs"))
            .json(&job)
            .header(name, value);
        let (status, body, headers) = send(request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {value}: {body}");
        assert_eq!(body["error"]["code"], "cross_origin_refused");
        assert!(headers.get("access-control-allow-origin").is_none());
    }
    assert_eq!(api.queue("noop").await["pending"], 0, "nothing was queued");
    // The API's own origin (the console) and curl (no headers) may.
    let own = api.base.clone();
    let request = api
        .http
        .post(api.url("/api/v1/jobs"))
        .json(&job)
        .header("origin", own.as_str())
        .header("sec-fetch-site", "same-origin");
    assert_eq!(send(request).await.0, StatusCode::ACCEPTED);
    assert_eq!(
        send(api.http.post(api.url("/api/v1/jobs")).json(&job))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    // No permissive CORS: a preflight gets no allow-origin.
    let preflight = api
        .http
        .request(reqwest::Method::OPTIONS, api.url("/api/v1/jobs"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST");
    let (_, _, headers) = send(preflight).await;
    assert!(headers.get("access-control-allow-origin").is_none());
    // A websocket opened from another origin is refused before it opens;
    // from the API's own origin it reaches the route (404: no such workflow).
    let ws_url = format!(
        "{}/ws/workflows/{}",
        api.base.replace("http://", "ws://"),
        uuid::Uuid::now_v7()
    );
    for (origin, expected) in [("https://evil.example", 403), (own.as_str(), 404)] {
        let mut request = ws_url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), expected, "{origin}")
            }
            other => panic!("{origin}: the websocket opened: {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    let (status, body) = api.get("/api/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "route_not_found", "{body}");
    let (status, body) = api.get("/api/v1/jobs/batch").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    // axum's own rejections: a path that does not decode, a query string
    // of the wrong type, a websocket route asked without upgrade headers.
    let websocket = format!("/ws/workflows/{}", uuid::Uuid::now_v7());
    for (path, status) in [
        ("/api/v1/jobs/%FF%FE", Some(StatusCode::BAD_REQUEST)),
        (
            "/api/v1/queues/noop/dead?limit=many",
            Some(StatusCode::UNPROCESSABLE_ENTITY),
        ),
        (websocket.as_str(), None),
    ] {
        let response = api.http.get(api.url(path)).send().await.unwrap();
        assert!(
            response.status().is_client_error(),
            "{path}: {}",
            response.status()
        );
        if let Some(status) = status {
            assert_eq!(response.status(), status, "{path}");
        }
        let body: Value = response.json().await.expect("a JSON body");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn internal_queues_and_fault_payloads_cannot_be_pushed() {
    // Without the operator's ORCH_NOOP_FAULTS.
    let setup = Setup::new(Backend::Embedded).env("ORCH_NOOP_FAULTS", "false");
    let api = setup.start_api(&["--no-workers"]).await;
    for queue in ["embed", "inference"] {
        let (status, body) = api
            .post("/api/v1/jobs", &json!({"queue": queue, "payload": {}}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{queue}: {body}");
        assert_eq!(body["error"]["code"], "internal_queue");
        let (status, _) = api
            .post(
                "/api/v1/jobs/batch",
                &json!({"jobs": [{"queue": "noop"}, {"queue": queue}]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let (status, _) = api
        .post("/api/v1/jobs", &json!({"queue": "campaign-x"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for payload in [
        json!({"panic": true}),
        json!({"fail_attempts": 2}),
        json!({"sleep_ms": 60_000}),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/jobs",
                &json!({"queue": "noop", "payload": payload}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{payload}: {body}"
        );
        assert!(body.to_string().contains("ORCH_NOOP_FAULTS"), "{body}");
    }
    for queue in ["noop", "embed", "inference"] {
        assert_eq!(api.queue(queue).await["pending"], 0, "{queue}");
    }
    let (status, _) = api
        .post(
            "/api/v1/jobs",
            &json!({"queue": "noop", "payload": {"sleep_ms": 20}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "a short probe is fine");
}

fn registry(fake: &FakeLlm) -> PathBuf {
    let base = fake.base_url();
    let with_credentials = base.replace("http://", "http://probe:hunter2@");
    let mut text = String::new();
    for (id, url) in [
        ("unauthorized", base.as_str()),
        ("huge", base.as_str()),
        ("sleepy", base.as_str()),
        ("plain", with_credentials.as_str()),
    ] {
        text.push_str(&format!(
            "[[model]]\nid = \"{id}\"\nprovider = \"openai\"\nbase_url = \"{url}\"\nmodel = \"{id}\"\ntimeout_s = 60\n"
        ));
    }
    let path =
        std::env::temp_dir().join(format!("orch-hard-{}.toml", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, text).unwrap();
    path
}

async fn chat(api: &Api, model: &str) -> (StatusCode, Value) {
    api.post(
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

#[tokio::test]
async fn upstream_secrets_and_failures_stay_upstream() {
    let fake = FakeLlm::start().await;
    let models = registry(&fake);
    let setup = Setup::new(Backend::Embedded).env("ORCH_MODELS_CONFIG", models.to_str().unwrap());
    let api = setup.start_api(&["--no-workers"]).await;
    // An upstream refusing our key is our problem (503), and what it said
    // stays in the server log.
    let (status, body) = chat(&api, "unauthorized").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("upstream-detail") && !text.contains(UPSTREAM_SECRET),
        "{text}"
    );
    assert!(text.contains("reference"), "{text}");
    // An endless answer without Content-Length is cut at the cap.
    let started = std::time::Instant::now();
    let (status, body) = chat(&api, "huge").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.to_string().contains("too large"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Credentials in a base URL are never shown.
    let (status, listed) = api.get("/api/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let text = listed.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("probe:"),
        "{text}"
    );
    assert!(
        text.contains(&fake.addr.to_string()),
        "the URL itself is shown: {text}"
    );
}

#[tokio::test]
async fn slow_requests_time_out_and_a_flood_gets_503() {
    let fake = FakeLlm::start().await;
    let models = registry(&fake);
    let setup = Setup::new(Backend::Embedded)
        .env("ORCH_MODELS_CONFIG", models.to_str().unwrap())
        .env("ORCH_REQUEST_TIMEOUT_MS", "1000")
        .env("ORCH_MAX_CONCURRENT_REQUESTS", "2");
    let api = setup.start_api(&["--no-workers"]).await;
    // Two slow requests hold both slots...
    let slow = |api: &Api| {
        let request = api
            .http
            .post(api.url("/v1/chat/completions"))
            .json(&json!({"model": "sleepy", "messages": [{"role": "user", "content": "hi"}]}));
        tokio::spawn(send(request))
    };
    let (first, second) = (slow(&api), slow(&api));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a third is turned away at once, with a hint when to retry.
    let (status, body, headers) = send(api.http.get(api.url("/api/v1/queues"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    // The slow ones end at the timeout (the upstream takes 3 s).
    for slow in [first, second] {
        let (status, body, _) = slow.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "request_timeout");
    }
    let (status, _) = api.get("/api/v1/queues").await;
    assert_eq!(status, StatusCode::OK, "slots are free again");
}

#[tokio::test]
async fn pack_uploads_are_bounded_before_their_bodies_are_read() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    // Four uploads whose bodies trickle in hold every upload slot.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let (sender, body) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        sender
            .send(Ok(b"{\"name\": \"slow\", ".to_vec()))
            .await
            .unwrap();
        let stream = tokio_stream_from(body);
        let request = api
            .http
            .post(api.url("/api/v1/context-packs"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream));
        stalled.push((sender, tokio::spawn(send(request))));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = api
        .post(
            "/api/v1/context-packs",
            &json!({"name": "x", "documents": [{"name": "a.md", "text": "# A"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "too_many_uploads");
    // Reads are not held up meanwhile.
    let (status, _) = api.get("/api/v1/context-packs").await;
    assert_eq!(status, StatusCode::OK);
    for (sender, upload) in stalled {
        drop(sender);
        let (status, _, _) = upload.await.unwrap();
        assert!(
            status.is_client_error(),
            "a cut-off body is refused: {status}"
        );
    }
}

/// A byte stream fed from a channel.
fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn workers_that_need_the_shared_store_refuse_to_start_without_it() {
    let mut setup = Setup::new(Backend::redis());
    setup.no_database_url = true;
    for args in [
        &["--queues", "inference"][..],
        &["--queues", "noop,embed"],
        &["--campaigns", "all"],
    ] {
        let (status, stderr) = setup.run_worker_expecting_exit(args);
        assert!(!status.success(), "{args:?}");
        assert!(
            stderr.contains("DATABASE_URL is not set"),
            "{args:?}: {stderr}"
        );
    }
}
