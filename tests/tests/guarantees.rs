//! The queue engine's promises under stress, over real processes and a real
//! Redis: nothing acknowledged is lost across a Redis crash (AOF), a backlog
//! of a million drains, a wave of 100,000 delayed jobs does not delay the
//! scheduler, and SIGTERM under full load loses nothing.

use std::time::{Duration, Instant};

use orchestrator_tests::{Api, Backend, PrivateRedis, Setup, StatusCode, unique_prefix};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn wait_ready(api: &Api) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = api.get("/ready").await;
        if status == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "API never became ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_crash_with_aof_loses_no_acknowledged_push() {
    let mut redis = PrivateRedis::start_with_aof().await;
    let setup = Setup::new(Backend::Redis {
        url: redis.url(),
        prefix: unique_prefix(),
    });
    let api = setup.start_api(&[]).await;
    // Every push below got its 202 before the crash.
    let ids = api.push_many(json!({"queue": "noop"}), 5_000).await;
    let single = api
        .push(json!({"queue": "noop", "priority": 3, "delay_ms": 200}))
        .await;

    redis.crash_and_restart().await;
    wait_ready(&api).await;
    assert_eq!(api.queue("noop").await["pending"], 5_001);

    let _worker = setup.start_worker(&["--queues", "noop"]);
    api.wait_for_done("noop", 5_001, Duration::from_secs(60))
        .await;
    api.wait_for_status(&single, "done", Duration::from_secs(5))
        .await;
    assert_eq!(api.job(&ids[4_321]).await["status"], "done");
}

#[tokio::test]
async fn backlog_of_1m_drains_completely() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    api.push_many(json!({"queue": "noop"}), 1_000_000).await;
    assert_eq!(api.queue("noop").await["pending"], 1_000_000);

    let mut worker = setup.start_worker(&["--queues", "noop", "--concurrency", "512"]);
    let counts = api
        .wait_for_done("noop", 1_000_000, Duration::from_secs(600))
        .await;
    assert_eq!(counts["pending"], 0, "{counts}");
    assert_eq!(counts["dead"], 0, "{counts}");
    assert!(worker.is_running(), "the worker stopped while draining");
}

#[tokio::test]
async fn wave_of_100k_due_jobs_does_not_delay_the_scheduler() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let _worker = setup.start_worker(&["--queues", "noop", "--concurrency", "512"]);
    let due_at = now_ms() + 6_000;
    for _ in 0..10 {
        let delay = due_at - now_ms();
        let jobs: Vec<Value> = (0..10_000)
            .map(|_| json!({"queue": "noop", "delay_ms": delay}))
            .collect();
        let (status, body) = api
            .post("/api/v1/jobs/batch", &json!({ "jobs": jobs }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // Due with the wave, but urgent: it must start as soon as it is due
    // (an object payload: its result records when it started).
    let probe = api
        .push(
            json!({"queue": "noop", "payload": {}, "priority": 10, "delay_ms": due_at - now_ms()}),
        )
        .await;
    assert!(
        now_ms() < due_at - 500,
        "pushing took too long for the test to mean anything"
    );
    assert_eq!(api.queue("noop").await["done"], 0);

    let job = api
        .wait_for_status(&probe, "done", Duration::from_secs(60))
        .await;
    let started_ms = job["result"]["started_us"].as_u64().unwrap() / 1000;
    assert!(
        started_ms >= due_at,
        "probe started {} ms early",
        due_at - started_ms
    );
    assert!(
        started_ms <= due_at + 100,
        "probe started {} ms after it was due",
        started_ms - due_at
    );
    api.wait_for_done("noop", 100_001, Duration::from_secs(120))
        .await;
}

#[tokio::test]
async fn sigterm_under_full_load_loses_nothing() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let ids = api.push_many(json!({"queue": "noop"}), 50_000).await;
    let mut worker = setup.start_worker(&["--queues", "noop", "--concurrency", "512"]);
    // Stop it mid-stream, while it runs flat out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.queue("noop").await["done"].as_u64().unwrap() < 2_000 {
        assert!(Instant::now() < deadline, "the worker never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "worker exited with {status}");

    let counts = api.queue("noop").await;
    assert_eq!(counts["running"], 0, "leases left behind: {counts}");
    let done = counts["done"].as_u64().unwrap();
    assert!(done < 50_000, "stopped too late to test anything: {counts}");
    assert_eq!(
        counts["pending"].as_u64().unwrap() + done,
        50_000,
        "{counts}"
    );

    let _next = setup.start_worker(&["--queues", "noop", "--concurrency", "512"]);
    api.wait_for_done("noop", 50_000, Duration::from_secs(120))
        .await;
    for id in ids.iter().step_by(997) {
        assert_eq!(
            api.job(id).await["attempts"],
            1,
            "job {id} ran more than once"
        );
    }
}
