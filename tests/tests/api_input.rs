//! The API's edges: authentication, refusal to listen unprotected, bad input
//! that must get a clear 4xx and change nothing, and the OpenAPI document.

use orchestrator_tests::{Backend, Setup, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "test-key-0123456789abcdef";

#[tokio::test]
async fn bad_input_gets_4xx_and_changes_nothing() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;

    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            r#"{"queue": "noop""#.into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "wrong type",
            r#"{"queue": 7}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "missing queue",
            r#"{"payload": {}}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "unknown field",
            r#"{"queue": "noop", "prio": 1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "unknown queue",
            r#"{"queue": "nosuch"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_queue",
        ),
        (
            "priority out of range",
            r#"{"queue": "noop", "priority": 5000}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "zero attempts",
            r#"{"queue": "noop", "max_attempts": 0}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "negative delay",
            r#"{"queue": "noop", "delay_ms": -1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "empty idempotency key",
            r#"{"queue": "noop", "idempotency_key": ""}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "bad payload",
            r#"{"queue": "noop", "payload": {"sleep_ms": "x"}}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_payload",
        ),
        (
            "oversized body",
            format!(
                r#"{{"queue": "noop", "payload": {{"data": "{}"}}}}"#,
                "x".repeat(1024 * 1024 + 10)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (name, body, expected, code) in cases {
        let (status, reply) = api.post_raw("/api/v1/jobs", body).await;
        assert_eq!(status, expected, "{name}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{name}: {reply}");
        assert!(
            !reply["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{name}: {reply}"
        );
    }

    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"queue": "noop"})).collect();
    let (status, reply) = api
        .post("/api/v1/jobs/batch", &json!({ "jobs": too_many }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_batch_size");
    let (status, reply) = api.post("/api/v1/jobs/batch", &json!({ "jobs": [] })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");

    // One bad job rejects the whole batch, naming it.
    let mixed = json!({"jobs": [{"queue": "noop"}, {"queue": "noop", "priority": 99999}]});
    let (status, reply) = api.post("/api/v1/jobs/batch", &mixed).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("jobs[1]:"),
        "{reply}"
    );

    let (status, reply) = api
        .get("/api/v1/jobs/01a20b50-faec-71d6-97d7-7e8d9f7cb6df")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert_eq!(reply["error"]["code"], "job_not_found");
    let (status, reply) = api.get("/api/v1/jobs/not-a-job-id").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");

    let (status, reply) = api
        .patch("/api/v1/queues/noop", &json!({"max_attempts": 0}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let (status, reply) = api
        .patch("/api/v1/queues/nosuch", &json!({"max_attempts": 2}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");

    // Nothing was enqueued or changed by any of it.
    let counts = api.queue("noop").await;
    assert_eq!(counts["pending"], 0, "{counts}");
    assert_eq!(counts["max_attempts"], 3, "{counts}");
    assert!(
        !api.metrics()
            .await
            .contains("orchestrator_jobs_enqueued_total{")
    );
}

#[tokio::test]
async fn api_keys_are_required_when_set() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_API_KEYS", KEY);
    let mut api = setup.start_api(&["--no-workers"]).await;
    let job = json!({"queue": "noop"});

    let (status, reply) = api.post("/api/v1/jobs", &job).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
    assert_eq!(reply["error"]["code"], "unauthorized");
    api.key = Some("wrong-key-0123456789abcdef".into());
    let (status, _) = api.get("/api/v1/queues").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    api.key = Some(KEY.into());
    let (status, _) = api.post("/api/v1/jobs", &job).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(api.queue("noop").await["pending"], 1);

    // Probes stay open for load balancers and Prometheus.
    api.key = None;
    let (status, _) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.get("/ready").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn refuses_public_address_without_keys() {
    let setup = Setup::new(Backend::Embedded);
    let (status, stderr) = setup.run_api_expecting_exit("0.0.0.0:0");
    assert!(!status.success());
    assert!(
        stderr.contains("refusing to listen on non-loopback"),
        "{stderr}"
    );
    let setup = Setup::new(Backend::Embedded).env("ORCH_API_KEYS", "short");
    let (status, stderr) = setup.run_api_expecting_exit("127.0.0.1:0");
    assert!(!status.success());
    assert!(stderr.contains("ORCH_API_KEYS"), "{stderr}");
    let setup = Setup::new(Backend::Embedded).env("ORCH_REDIS_URL", "http://nope");
    let (status, stderr) = setup.run_api_expecting_exit("127.0.0.1:0");
    assert!(!status.success());
    assert!(
        stderr.contains("ORCH_REDIS_URL: scheme must be redis://"),
        "{stderr}"
    );
    let setup = Setup::new(Backend::Embedded);
    let (status, stderr) = setup.run_worker_expecting_exit(&["--queues", "noop,nosuch"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--queues: unknown queue \"nosuch\""),
        "{stderr}"
    );
    let (status, stderr) =
        setup.run_worker_expecting_exit(&["--queues", "noop", "--concurrency", "0"]);
    assert!(!status.success());
    assert!(stderr.contains("--concurrency"), "{stderr}");
}

#[tokio::test]
async fn openapi_document_describes_the_routes() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/batch",
        "/api/v1/jobs/{id}",
        "/api/v1/queues",
        "/api/v1/feedback",
        "/api/v1/training/runs",
        "/api/v1/training/runs/{id}",
        "/api/v1/adapters",
        "/api/v1/adapters/{id}/promote",
        "/api/v1/adapters/{id}/rollback",
        "/api/v1/campaigns",
        "/api/v1/campaigns/{id}",
        "/api/v1/campaigns/{id}/results",
        "/api/v1/campaigns/{id}/pause",
        "/api/v1/campaigns/{id}/resume",
        "/api/v1/campaigns/{id}/stop",
        "/api/v1/campaigns/{id}/scale",
        "/ready",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("JobRequest").is_some());
}

/// serde reads a JSON array into a struct field by field, so `[null, null]`
/// was a requeue of the oldest 1,000 dead jobs (found by the OpenAPI fuzz):
/// every JSON body must be an object.
#[tokio::test]
async fn json_bodies_that_are_not_objects_are_refused() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    let pack = uuid::Uuid::now_v7();
    for (path, body) in [
        ("/api/v1/queues/noop/dead/requeue", "[null, null]"),
        ("/api/v1/jobs", r#"["noop", {}]"#),
        ("/api/v1/queues/noop/dead/requeue", "7"),
        (&format!("/api/v1/context-packs/{pack}/reindex"), "[[]]"),
    ] {
        let (status, reply) = api.post_raw(path, body.to_string()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {reply}"
        );
        assert_eq!(
            reply["error"]["code"], "invalid_body",
            "{path} {body}: {reply}"
        );
    }
    let (status, reply) = api
        .post_raw("/api/v1/queues/noop/dead/requeue", "[nul".to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "malformed_json", "{reply}");
}
