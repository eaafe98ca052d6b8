//! Nothing is lost: a backlog drains, SIGTERM drains in-flight jobs, and a
//! worker killed outright has its jobs taken over after the lease.

use std::time::Duration;

use orchestrator_tests::{Backend, Setup};
use serde_json::json;

#[tokio::test]
async fn backlog_of_50k_drains_after_worker_starts() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    api.push_many(json!({"queue": "noop"}), 50_000).await;
    assert_eq!(api.queue("noop").await["pending"], 50_000);
    wait_for_metric(&api, r#"orchestrator_queue_depth{queue="noop"} 50000"#).await;

    let mut worker = setup.start_worker(&["--queues", "noop"]);
    let counts = api
        .wait_for_done("noop", 50_000, Duration::from_secs(120))
        .await;
    assert_eq!(counts["pending"], 0, "{counts}");
    assert_eq!(counts["dead"], 0, "{counts}");
    assert!(
        worker.is_running(),
        "the worker stopped while draining the backlog"
    );
}

/// Waits for a line in the API's metrics (gauges are sampled every 2 s).
async fn wait_for_metric(api: &orchestrator_tests::Api, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = api.metrics().await;
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{line} never appeared in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sigterm_finishes_in_flight_jobs_and_loses_none() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let ids = api
        .push_many(json!({"queue": "noop", "payload": {"sleep_ms": 400}}), 300)
        .await;
    let mut worker = setup.start_worker(&["--queues", "noop", "--concurrency", "50"]);
    // Let it get busy, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(api.queue("noop").await["running"].as_u64().unwrap() > 0);
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "worker exited with {status}");

    let counts = api.queue("noop").await;
    assert_eq!(
        counts["running"], 0,
        "jobs left leased after a clean stop: {counts}"
    );
    assert_eq!(counts["dead"], 0, "{counts}");
    let done = counts["done"].as_u64().unwrap();
    assert!(done > 0 && done < 300, "{counts}");
    assert_eq!(counts["pending"].as_u64().unwrap() + done, 300, "{counts}");

    // A new worker finishes the rest, each job exactly once.
    let _next = setup.start_worker(&["--queues", "noop", "--concurrency", "100"]);
    api.wait_for_done("noop", 300, Duration::from_secs(30))
        .await;
    for id in ids.iter().step_by(17) {
        assert_eq!(api.job(id).await["attempts"], 1);
    }
}

#[tokio::test]
async fn killed_worker_jobs_run_again_after_lease() {
    let setup = Setup::new(Backend::redis()).env("ORCH_LEASE_MS", "1500");
    let api = setup.start_api(&[]).await;
    api.push_many(json!({"queue": "noop", "payload": {"sleep_ms": 2000}}), 40)
        .await;
    let mut victim = setup.start_worker(&["--queues", "noop", "--concurrency", "40"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(api.queue("noop").await["running"], 40);
    victim.signal(libc::SIGKILL);
    victim.wait_exit(Duration::from_secs(5)).await;

    let _rescuer = setup.start_worker(&["--queues", "noop", "--concurrency", "40"]);
    let counts = api.wait_for_done("noop", 40, Duration::from_secs(30)).await;
    assert_eq!(counts["dead"], 0, "{counts}");
}

#[tokio::test]
async fn workers_started_together_on_a_fresh_store_all_run() {
    let setup = Setup::new(Backend::redis());
    // No API yet: the store is brand new and every worker migrates it.
    let mut workers: Vec<_> = (0..4)
        .map(|_| setup.start_worker(&["--queues", "noop"]))
        .collect();
    let api = setup.start_api(&[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while api.queue("noop").await["workers"] != 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every worker registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for worker in &mut workers {
        assert!(worker.is_running(), "a worker exited at start");
    }
    let id = api.push(json!({"queue": "noop"})).await;
    api.wait_for_status(&id, "done", Duration::from_secs(10))
        .await;
}
