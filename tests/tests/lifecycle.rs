//! A job's life on each backend: push, run, retry, dead, delay, idempotency,
//! pause and priorities, through the real API and workers.

use std::time::Duration;

use orchestrator_tests::{Backend, Setup, StatusCode, fetch_text, free_port};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn push_then_done(backend: Backend) {
    let setup = Setup::new(backend.clone());
    let api = setup.start_api(&[]).await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let _worker = matches!(backend, Backend::Redis { .. }).then(|| {
        setup.start_worker_with_env(
            &["--queues", "noop"],
            &[("ORCH_METRICS_ADDR", &metrics_addr)],
        )
    });
    let id = api
        .push(json!({"queue": "noop", "payload": {"sleep_ms": 5}}))
        .await;
    let job = api.wait_for_status(&id, "done", WAIT).await;
    assert_eq!(job["queue"], "noop");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["result"]["slept_ms"], 5);
    let counts = api.queue("noop").await;
    assert_eq!(counts["done"], 1, "{counts}");
    assert_eq!(counts["pending"], 0, "{counts}");
    let metrics = api.metrics().await;
    assert!(
        metrics.contains(r#"orchestrator_jobs_enqueued_total{queue="noop"} 1"#),
        "{metrics}"
    );
    // Whoever ran the job counts it: the API in embedded mode, else the worker.
    let runner_metrics = match backend {
        Backend::Embedded => metrics,
        Backend::Redis { .. } => fetch_text(&format!("http://{metrics_addr}/metrics")).await,
    };
    let done = r#"orchestrator_jobs_completed_total{queue="noop",outcome="done"} 1"#;
    assert!(runner_metrics.contains(done), "{runner_metrics}");
    assert!(
        runner_metrics.contains("orchestrator_job_duration_seconds_bucket"),
        "{runner_metrics}"
    );
}

#[tokio::test]
async fn push_then_done_embedded() {
    push_then_done(Backend::Embedded).await;
}

#[tokio::test]
async fn push_then_done_redis() {
    push_then_done(Backend::redis()).await;
}

async fn retry_then_dead(backend: Backend) {
    let setup = Setup::new(backend.clone());
    let api = setup.start_api(&[]).await;
    let (status, _) = api
        .patch("/api/v1/queues/noop", &json!({"backoff_ms": 20}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let _worker = setup.start_noop_worker_unless_embedded();
    let recovers = api
        .push(json!({"queue": "noop", "payload": {"fail_attempts": 2}, "max_attempts": 3}))
        .await;
    let dies = api
        .push(json!({"queue": "noop", "payload": {"fail_attempts": 9}, "max_attempts": 2}))
        .await;
    let panics = api
        .push(json!({"queue": "noop", "payload": {"panic": true}, "max_attempts": 1}))
        .await;

    let job = api.wait_for_status(&recovers, "done", WAIT).await;
    assert_eq!(job["attempts"], 3, "{job}");
    let job = api.wait_for_status(&dies, "dead", WAIT).await;
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("fail attempt 2"),
        "{job}"
    );
    let job = api.wait_for_status(&panics, "dead", WAIT).await;
    assert!(job["error"].as_str().unwrap().contains("panicked"), "{job}");

    // The worker survived the panic and keeps serving.
    let after = api.push(json!({"queue": "noop"})).await;
    api.wait_for_status(&after, "done", WAIT).await;
    let counts = api.queue("noop").await;
    assert_eq!(counts["dead"], 2, "{counts}");
    assert_eq!(counts["failed"], 5, "{counts}");
}

#[tokio::test]
async fn retry_then_dead_embedded() {
    retry_then_dead(Backend::Embedded).await;
}

#[tokio::test]
async fn retry_then_dead_redis() {
    retry_then_dead(Backend::redis()).await;
}

async fn idempotency_key_pushes_once(backend: Backend) {
    let setup = Setup::new(backend);
    let api = setup.start_api(&["--no-workers"]).await;
    let job = json!({"queue": "noop", "idempotency_key": "order-42"});
    let (status, first) = api.post("/api/v1/jobs", &job).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(first["duplicate"], false);
    let (_, second) = api.post("/api/v1/jobs", &job).await;
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["duplicate"], true);
    // Within one batch too.
    let (_, batch) = api
        .post("/api/v1/jobs/batch", &json!({"jobs": [job, {"queue": "noop", "idempotency_key": "order-43"}, {"queue": "noop", "idempotency_key": "order-43"}]}))
        .await;
    assert_eq!(batch["ids"][0], first["id"], "{batch}");
    assert_eq!(batch["ids"][1], batch["ids"][2], "{batch}");
    assert_eq!(batch["duplicates"], 2, "{batch}");
    assert_eq!(api.queue("noop").await["pending"], 2);
}

#[tokio::test]
async fn idempotency_key_pushes_once_embedded() {
    idempotency_key_pushes_once(Backend::Embedded).await;
}

#[tokio::test]
async fn idempotency_key_pushes_once_redis() {
    idempotency_key_pushes_once(Backend::redis()).await;
}

async fn delayed_job_waits_until_due(backend: Backend) {
    let setup = Setup::new(backend.clone());
    let api = setup.start_api(&[]).await;
    let _worker = setup.start_noop_worker_unless_embedded();
    let id = api
        .push(json!({"queue": "noop", "payload": {}, "delay_ms": 1500}))
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(api.job(&id).await["status"], "pending");
    let job = api.wait_for_status(&id, "done", WAIT).await;
    let started_ms = job["result"]["started_us"].as_u64().unwrap() / 1000;
    let waited = started_ms - job["created_at_ms"].as_u64().unwrap();
    assert!(
        waited >= 1500,
        "started after {waited} ms, before it was due"
    );
    assert!(
        waited <= 1600,
        "started {} ms after it was due",
        waited - 1500
    );
}

#[tokio::test]
async fn delayed_job_waits_until_due_embedded() {
    delayed_job_waits_until_due(Backend::Embedded).await;
}

#[tokio::test]
async fn delayed_job_waits_until_due_redis() {
    delayed_job_waits_until_due(Backend::redis()).await;
}

async fn pause_holds_jobs_until_resume(backend: Backend) {
    let setup = Setup::new(backend.clone());
    let api = setup.start_api(&[]).await;
    let _worker = setup.start_noop_worker_unless_embedded();
    let (status, paused) = api.post("/api/v1/queues/noop/pause", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(paused["paused"], true);
    let id = api.push(json!({"queue": "noop"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api.job(&id).await["status"], "pending");
    let (status, resumed) = api.post("/api/v1/queues/noop/resume", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["paused"], false);
    api.wait_for_status(&id, "done", WAIT).await;
    let (status, body) = api.post("/api/v1/queues/nosuch/pause", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn pause_holds_jobs_until_resume_embedded() {
    pause_holds_jobs_until_resume(Backend::Embedded).await;
}

#[tokio::test]
async fn pause_holds_jobs_until_resume_redis() {
    pause_holds_jobs_until_resume(Backend::redis()).await;
}

#[tokio::test]
async fn higher_priority_starts_first() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    api.post("/api/v1/queues/noop/pause", &json!({})).await;
    // Each job sleeps, so finishing times are far enough apart to order.
    let low = api
        .push(json!({"queue": "noop", "priority": -5, "payload": {"sleep_ms": 50}}))
        .await;
    let normal = api
        .push(json!({"queue": "noop", "payload": {"sleep_ms": 50}}))
        .await;
    let high = api
        .push(json!({"queue": "noop", "priority": 7, "payload": {"sleep_ms": 50}}))
        .await;
    let _worker = setup.start_worker(&["--queues", "noop", "--concurrency", "1"]);
    api.post("/api/v1/queues/noop/resume", &json!({})).await;
    let mut finished = Vec::new();
    for (name, id) in [("low", &low), ("normal", &normal), ("high", &high)] {
        let job = api.wait_for_status(id, "done", WAIT).await;
        finished.push((job["updated_at_ms"].as_u64().unwrap(), name));
    }
    finished.sort();
    let order: Vec<&str> = finished.iter().map(|(_, name)| *name).collect();
    assert_eq!(order, ["high", "normal", "low"]);
}

#[tokio::test]
async fn rate_limit_spaces_out_job_starts() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let (status, queue) = api
        .patch("/api/v1/queues/noop", &json!({"rate_limit_per_s": 20}))
        .await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(queue["rate_limit_per_s"], 20);
    let ids = api.push_many(json!({"queue": "noop"}), 45).await;
    let _worker = setup.start_worker(&["--queues", "noop"]);
    api.wait_for_done("noop", 45, WAIT).await;
    let mut finished: Vec<u64> = Vec::new();
    for id in &ids {
        finished.push(api.job(id).await["updated_at_ms"].as_u64().unwrap());
    }
    let spread = finished.iter().max().unwrap() - finished.iter().min().unwrap();
    // 20 per second: 45 jobs need at least two full windows after the first.
    assert!(
        spread >= 1_800,
        "45 jobs at 20/s finished within {spread} ms"
    );
}

async fn poison_job_dies_alone_and_can_be_requeued(backend: Backend) {
    let setup = Setup::new(backend);
    let api = setup.start_api(&[]).await;
    api.patch("/api/v1/queues/noop", &json!({"backoff_ms": 400}))
        .await;
    let _worker = setup.start_noop_worker_unless_embedded();
    let poison = api
        .push(json!({"queue": "noop", "payload": {"fail_attempts": 100}, "max_attempts": 3}))
        .await;
    api.push_many(json!({"queue": "noop"}), 2_000).await;
    // The healthy jobs all finish while the poison job waits out its retries.
    let counts = api.wait_for_done("noop", 2_000, WAIT).await;
    assert_ne!(
        counts["dead"], 1,
        "poison job died before the others finished: {counts}"
    );
    let dead = api.wait_for_status(&poison, "dead", WAIT).await;
    assert_eq!(dead["attempts"], 3, "{dead}");

    let (status, listed) = api.get("/api/v1/queues/noop/dead?limit=10").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["jobs"][0]["id"], poison.as_str(), "{listed}");

    let (status, requeued) = api
        .post(&format!("/api/v1/jobs/{poison}/requeue"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{requeued}");
    assert_eq!(requeued["attempts"], 0, "{requeued}");
    // It runs again (and, still poisoned, dies again after three more attempts).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = api.wait_for_status(&poison, "dead", WAIT).await;
    assert_eq!(again["attempts"], 3, "{again}");
    assert_eq!(api.queue("noop").await["failed"], 6);

    let (status, bulk) = api
        .post("/api/v1/queues/noop/dead/requeue", &json!({"max": 10}))
        .await;
    assert_eq!(status, StatusCode::OK, "{bulk}");
    assert_eq!(bulk["requeued"], json!([poison]), "{bulk}");

    let healthy = api.push(json!({"queue": "noop"})).await;
    api.wait_for_status(&healthy, "done", WAIT).await;
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{healthy}/requeue"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api.get("/api/v1/queues/noop/dead?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn poison_job_dies_alone_and_can_be_requeued_embedded() {
    poison_job_dies_alone_and_can_be_requeued(Backend::Embedded).await;
}

#[tokio::test]
async fn poison_job_dies_alone_and_can_be_requeued_redis() {
    poison_job_dies_alone_and_can_be_requeued(Backend::redis()).await;
}
