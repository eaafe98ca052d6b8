//! Cancelling jobs at every stage, progress and log lines from a running
//! handler, and a queue's retention settings, against real processes in
//! both modes (embedded SQLite with in-process workers, and Redis with a
//! worker process).

use std::time::Duration;

use orchestrator_tests::{Api, Backend, Process, Setup};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start(backend: Backend) -> (Setup, Api, Option<Process>) {
    let setup = Setup::new(backend);
    let api = setup.start_api(&[]).await;
    let worker = setup.start_noop_worker_unless_embedded();
    (setup, api, worker)
}

async fn cancel(api: &Api, id: &str) -> (StatusCode, Value) {
    api.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}))
        .await
}

/// Waits until `id` shows `field` satisfying `check`.
async fn wait_for(api: &Api, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = api.job(id).await;
        if check(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never showed {what}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cancel_at_every_stage(backend: Backend) {
    let (_setup, api, _worker) = start(backend).await;

    // Delayed: it never starts, even after its due time.
    let delayed = api
        .push(json!({"queue": "noop", "payload": {}, "delay_ms": 1_000}))
        .await;
    let (status, job) = cancel(&api, &delayed).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled");

    // Running: a job sleeping 30 s is stopped and ends cancelled.
    let running = api
        .push(json!({"queue": "noop", "payload": {"sleep_ms": 30_000}}))
        .await;
    api.wait_for_status(&running, "running", Duration::from_secs(10))
        .await;
    let (status, job) = cancel(&api, &running).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled");
    // Its worker hears of it at its next heartbeat and frees the slot: the
    // queue's running count drops to zero long before the 30 s sleep ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let queue = api.queue("noop").await;
        if queue["running"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled job still runs: {queue}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Waiting behind a paused queue: cancelled, and never runs on resume.
    let (status, _) = api.post("/api/v1/queues/noop/pause", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let waiting = api.push(json!({"queue": "noop", "payload": {}})).await;
    let kept = api.push(json!({"queue": "noop", "payload": {}})).await;
    let (status, job) = cancel(&api, &waiting).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let (status, _) = api.post("/api/v1/queues/noop/resume", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    api.wait_for_status(&kept, "done", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for id in [&delayed, &running, &waiting] {
        let job = api.job(id).await;
        assert_eq!(job["status"], "cancelled", "{job}");
        assert!(job.get("result").is_none(), "a cancelled job ran: {job}");
    }

    // Finished jobs cannot be cancelled; unknown ones are 404.
    let (status, body) = cancel(&api, &kept).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "job_finished");
    let (status, body) = cancel(&api, &running).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, _) = cancel(&api, &unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cancel(&api, "not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let queue = api.queue("noop").await;
    assert_eq!(queue["cancelled"], 3, "{queue}");
}

async fn progress_and_logs(backend: Backend) {
    let (_setup, api, _worker) = start(backend).await;
    let id = api
        .push(json!({"queue": "noop", "payload": {"sleep_ms": 3_000, "report": true}}))
        .await;
    // Halfway through its sleep the handler has said so.
    let job = wait_for(&api, &id, "progress 0.5", |job| {
        job["progress"]["fraction"] == 0.5
    })
    .await;
    assert_eq!(job["status"], "running", "{job}");
    assert_eq!(job["progress"]["message"], "halfway");
    assert_eq!(job["logs"], json!(["attempt 1 started"]));
    let job = api
        .wait_for_status(&id, "done", Duration::from_secs(10))
        .await;
    assert_eq!(job["progress"]["fraction"], 1.0);
    assert_eq!(
        job["logs"],
        json!(["attempt 1 started", "attempt 1 finished"])
    );
}

async fn retention_and_purge(backend: Backend) {
    let (_setup, api, _worker) = start(backend).await;
    // A done job is readable by default.
    let kept = api.push(json!({"queue": "noop", "payload": {}})).await;
    api.wait_for_status(&kept, "done", Duration::from_secs(10))
        .await;
    // With remove_on_complete, a job is forgotten once done.
    let (status, body) = api
        .patch("/api/v1/queues/noop", &json!({"remove_on_complete": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["remove_on_complete"], true);
    let removed = api.push(json!({"queue": "noop", "payload": {}})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = api.get(&format!("/api/v1/jobs/{removed}")).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = api
        .patch("/api/v1/queues/noop", &json!({"remove_on_complete": false}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Purge forgets the done and dead jobs asked for, and only those.
    let dead = api
        .push(json!({"queue": "noop", "payload": {"fail_attempts": 9}, "max_attempts": 1}))
        .await;
    api.wait_for_status(&dead, "dead", Duration::from_secs(10))
        .await;
    let (status, body) = api
        .post("/api/v1/queues/noop/purge", &json!({"statuses": ["done"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["purged"].as_u64().unwrap() >= 1, "{body}");
    let (status, _) = api.get(&format!("/api/v1/jobs/{kept}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.job(&dead).await["status"], "dead");
    let (status, body) = api
        .post("/api/v1/queues/noop/purge", &json!({"statuses": ["dead"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["purged"], 1);
    let (status, _) = api.get(&format!("/api/v1/jobs/{dead}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad input changes nothing.
    for (path, body) in [
        (
            "/api/v1/queues/noop/purge",
            json!({"statuses": ["pending"]}),
        ),
        ("/api/v1/queues/noop/purge", json!({"statuses": []})),
        ("/api/v1/queues/noop/purge", json!({"status": ["done"]})),
    ] {
        let (status, reply) = api.post(path, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} {reply}");
    }
    let (status, _) = api
        .post("/api/v1/queues/nope/purge", &json!({"statuses": ["done"]}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for patch in [
        json!({"keep_done_ms": -1}),
        json!({"keep_dead_ms": 400_000_000_000u64}),
        json!({"max_per_key": 10_001}),
    ] {
        let (status, reply) = api.patch("/api/v1/queues/noop", &patch).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{patch} {reply}");
    }
}

/// With keep_done_ms and keep_dead_ms, finished jobs are readable for that
/// long, then forgotten (as later jobs of the queue are acknowledged).
async fn timed_retention(backend: Backend) {
    let (_setup, api, _worker) = start(backend).await;
    let (status, body) = api
        .patch(
            "/api/v1/queues/noop",
            &json!({"keep_done_ms": 1_000, "keep_dead_ms": 1_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = api.push(json!({"queue": "noop", "payload": {}})).await;
    api.wait_for_status(&done, "done", Duration::from_secs(10))
        .await;
    let dead = api
        .push(json!({"queue": "noop", "payload": {"fail_attempts": 9}, "max_attempts": 1}))
        .await;
    api.wait_for_status(&dead, "dead", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let later = loop {
        let later = api.push(json!({"queue": "noop", "payload": {}})).await;
        api.wait_for_status(&later, "done", Duration::from_secs(10))
            .await;
        let gone = |id: &str| {
            let api = &api;
            let path = format!("/api/v1/jobs/{id}");
            async move { api.get(&path).await.0 == StatusCode::NOT_FOUND }
        };
        if gone(&done).await && gone(&dead).await {
            break later;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "finished jobs outlived their retention: {} {}",
            api.job(&done).await,
            api.job(&dead).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The job just done is still within its retention.
    assert_eq!(api.job(&later).await["status"], "done");
}

async fn user_queues_are_checked(backend: Backend) {
    let (_setup, api, _worker) = start(backend).await;
    let before = api.get("/api/v1/queues").await.1["queues"]
        .as_array()
        .unwrap()
        .len();
    for body in [
        json!({"name": "q1", "handler": "python"}),
        json!({"name": "q1", "handler": "builtin"}),
        json!({"name": "Bad Name", "handler": "external"}),
        json!({"name": "", "handler": "external"}),
        json!({"name": "q1", "handler": "external", "target_url": "https://example.com/"}),
        json!({"name": "q1", "handler": "external", "max_attempts": 0}),
        json!({"name": "q1"}),
    ] {
        let (status, reply) = api.post("/api/v1/queues", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} {reply}");
    }
    let after = api.get("/api/v1/queues").await.1["queues"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "a refused queue was created");

    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "mine", "handler": "external"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["handler"], "external");
    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "mine", "handler": "external"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "noop", "handler": "external"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Built-in queues are not leased over HTTP.
    let (status, body) = api
        .post("/api/v1/queues/noop/lease", &json!({"max": 1}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "not_external_queue");
    // Jobs of the user's queue take any JSON payload and keep their key.
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"queue": "mine", "payload": {"to": "a@example.com"}, "concurrency_key": "tenant-a"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = api.job(body["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "pending");
    assert_eq!(job["concurrency_key"], "tenant-a");
    for bad in [
        json!({"queue": "mine", "payload": {}, "concurrency_key": ""}),
        json!({"queue": "mine", "payload": {}, "callback_url": "ftp://example.com/x"}),
        json!({"queue": "mine", "payload": {}, "callback_url": "http://10.1.2.3/x"}),
        json!({"queue": "mine", "payload": {}, "callback_url": "http://localhost/x"}),
    ] {
        let (status, reply) = api.post("/api/v1/jobs", &bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} {reply}");
    }
    assert_eq!(api.queue("mine").await["pending"], 1);
}

#[tokio::test]
async fn embedded_cancel_at_every_stage() {
    cancel_at_every_stage(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_cancel_at_every_stage() {
    cancel_at_every_stage(Backend::redis()).await;
}

#[tokio::test]
async fn embedded_progress_and_logs() {
    progress_and_logs(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_progress_and_logs() {
    progress_and_logs(Backend::redis()).await;
}

#[tokio::test]
async fn embedded_retention_and_purge() {
    retention_and_purge(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_retention_and_purge() {
    retention_and_purge(Backend::redis()).await;
}

#[tokio::test]
async fn embedded_timed_retention() {
    timed_retention(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_timed_retention() {
    timed_retention(Backend::redis()).await;
}

#[tokio::test]
async fn embedded_user_queues_are_checked() {
    user_queues_are_checked(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_user_queues_are_checked() {
    user_queues_are_checked(Backend::redis()).await;
}

/// The documented Rust example serves a queue of its own: jobs pushed
/// through the API run in it, report progress and logs, a payload it cannot
/// use ends dead without retries, and SIGTERM stops it cleanly.
#[tokio::test]
async fn redis_custom_rust_worker_runs_its_queue() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let (status, body) = api
        .post(
            "/api/v1/queues",
            &json!({"name": "word-count", "handler": "custom"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ids = api
        .push_many(
            json!({"queue": "word-count", "payload": {"text": "one two three"}}),
            20,
        )
        .await;
    let bad = api
        .push(json!({"queue": "word-count", "payload": {"text": 7}}))
        .await;
    let mut worker = setup.spawn_program(&orchestrator_tests::example("custom_worker"), &[]);
    for id in &ids {
        let job = api
            .wait_for_status(id, "done", Duration::from_secs(20))
            .await;
        assert_eq!(job["result"]["words"], 3, "{job}");
        assert_eq!(job["progress"]["message"], "counted", "{job}");
        assert_eq!(job["logs"], json!(["attempt 1: 13 bytes"]), "{job}");
    }
    let job = api
        .wait_for_status(&bad, "dead", Duration::from_secs(20))
        .await;
    assert_eq!(job["attempts"], 1, "a permanent failure was retried: {job}");
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}

/// One tenant's flood cannot starve another: 100,000 jobs of tenant A,
/// then 100 of tenant B; B's all finish within a second while A's are
/// still draining.
async fn fair_share_between_keys(backend: Backend) {
    let (_setup, api, _worker) = start(backend).await;
    let (status, body) = api
        .patch("/api/v1/queues/noop", &json!({"max_per_key": 50}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = |tenant: &str| json!({"queue": "noop", "payload": {"sleep_ms": 20}, "concurrency_key": tenant});
    for _ in 0..10 {
        let batch: Vec<Value> = (0..10_000).map(|_| job("tenant-a")).collect();
        let (status, body) = api
            .post("/api/v1/jobs/batch", &json!({"jobs": batch}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // A's are running, at most 50 at a time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.queue("noop").await["done"].as_u64().unwrap() < 100 {
        assert!(tokio::time::Instant::now() < deadline, "tenant A never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batch: Vec<Value> = (0..100).map(|_| job("tenant-b")).collect();
    let started = tokio::time::Instant::now();
    let (status, body) = api
        .post("/api/v1/jobs/batch", &json!({"jobs": batch}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let b_ids: Vec<String> = body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    for id in &b_ids {
        loop {
            if api.job(id).await["status"] == "done" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "tenant B's jobs waited behind tenant A's: {} after {:?}",
                api.job(id).await,
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let queue = api.queue("noop").await;
    assert!(
        queue["pending"].as_u64().unwrap() > 50_000,
        "tenant A was not still draining: {queue}"
    );
    // The cap held: never more than 50 of A plus 50 of B running.
    assert!(queue["running"].as_u64().unwrap() <= 100, "{queue}");
}

#[tokio::test]
async fn embedded_fair_share_between_keys() {
    fair_share_between_keys(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_fair_share_between_keys() {
    fair_share_between_keys(Backend::redis()).await;
}
