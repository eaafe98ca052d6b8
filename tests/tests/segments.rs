//! Batches stored as segments on Redis (the payloads in one string and a
//! status byte per job): every job of a segment keeps its own payload and
//! its own fate through a worker killed mid-segment, mixed failures and
//! retries, cancellation, and a Redis restart between lease and
//! acknowledgement.

use std::time::{Duration, Instant};

use orchestrator_tests::{Api, Backend, PrivateRedis, Setup, StatusCode, unique_prefix};
use serde_json::{Value, json};

/// Pushes `jobs` in one batch; returns their ids, checking they share one
/// segment (the same first 31 characters: the index is in the last five).
async fn push_segment(api: &Api, jobs: Vec<Value>) -> Vec<String> {
    let (status, body) = api
        .post("/api/v1/jobs/batch", &json!({ "jobs": jobs }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "batch push: {body}");
    let ids: Vec<String> = body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.iter().all(|id| id[..31] == ids[0][..31]),
        "the batch was not stored as one segment: {ids:?}"
    );
    ids
}

async fn wait_for(api: &Api, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = api.queue("noop").await;
        if ok(&counts) {
            return counts;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {counts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_mid_segment_redelivers_exactly_its_unacknowledged_jobs() {
    let setup = Setup::new(Backend::redis()).env("ORCH_LEASE_MS", "1500");
    let api = setup.start_api(&[]).await;
    // Even jobs finish at once, odd ones run 4 s: the kill lands while the
    // odd half is still running under the segment's lease.
    let jobs = (0..40)
        .map(|i| {
            let sleep_ms = if i % 2 == 0 { 0 } else { 4_000 };
            json!({"queue": "noop", "payload": {"sleep_ms": sleep_ms}})
        })
        .collect();
    let ids = push_segment(&api, jobs).await;
    let mut victim = setup.start_worker(&["--queues", "noop", "--concurrency", "40"]);
    wait_for(&api, "20 done, 20 running", Duration::from_secs(10), |c| {
        c["done"] == 20 && c["running"] == 20
    })
    .await;
    victim.signal(libc::SIGKILL);
    victim.wait_exit(Duration::from_secs(5)).await;

    let _rescuer = setup.start_worker(&["--queues", "noop", "--concurrency", "40"]);
    let counts = api.wait_for_done("noop", 40, Duration::from_secs(30)).await;
    assert_eq!(counts["dead"], 0, "{counts}");
    assert_eq!(counts["running"], 0, "{counts}");
    assert_eq!(counts["pending"], 0, "{counts}");
    for (i, id) in ids.iter().enumerate() {
        let job = api.job(id).await;
        assert_eq!(job["status"], "done", "{job}");
        // The result says which attempt ran to the end: the acknowledged
        // half ran once, the other half exactly once more.
        let expected = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(job["result"]["attempt"], expected, "job {i}: {job}");
        assert_eq!(job["attempts"], expected, "job {i}: {job}");
    }
}

#[tokio::test]
async fn a_segment_of_successes_failures_and_retries_ends_with_each_job_right() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    // By index mod 3: succeeds, fails once then succeeds, always fails.
    let jobs = (0..30)
        .map(|i| {
            let fail_attempts = [0, 1, 5][i % 3];
            json!({"queue": "noop", "max_attempts": 2, "payload": {"fail_attempts": fail_attempts}})
        })
        .collect();
    let ids = push_segment(&api, jobs).await;
    let _worker = setup.start_worker(&["--queues", "noop", "--concurrency", "16"]);
    let counts = wait_for(&api, "20 done and 10 dead", Duration::from_secs(30), |c| {
        c["done"] == 20 && c["dead"] == 10
    })
    .await;
    assert_eq!(counts["failed"], 30, "10 retried + 10 x 2 dead: {counts}");
    assert_eq!(counts["pending"], 0, "{counts}");
    assert_eq!(counts["running"], 0, "{counts}");
    for (i, id) in ids.iter().enumerate() {
        let job = api.job(id).await;
        match i % 3 {
            0 => {
                assert_eq!(job["status"], "done", "{job}");
                assert_eq!(job["attempts"], 1, "{job}");
                assert_eq!(job["result"]["attempt"], 1, "{job}");
            }
            1 => {
                assert_eq!(job["status"], "done", "{job}");
                assert_eq!(job["attempts"], 2, "{job}");
                assert_eq!(job["result"]["attempt"], 2, "{job}");
            }
            _ => {
                assert_eq!(job["status"], "dead", "{job}");
                assert_eq!(job["attempts"], 2, "{job}");
                let error = job["error"].as_str().unwrap_or_default();
                assert!(error.contains("fail attempt 2"), "{job}");
            }
        }
    }
}

#[tokio::test]
async fn a_segment_jobs_status_by_id_is_right_at_every_stage() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let mut jobs: Vec<Value> = (0..20)
        .map(|_| json!({"queue": "noop", "payload": {"sleep_ms": 1_000}}))
        .collect();
    jobs[9] = json!({"queue": "noop", "payload": {"sleep_ms": 1_000, "report": true}});
    let ids = push_segment(&api, jobs).await;

    // Waiting: every job pending, a cancelled one cancelled at once.
    for id in &ids {
        let job = api.job(id).await;
        assert_eq!(job["status"], "pending", "{job}");
        assert_eq!(job["attempts"], 0, "{job}");
        assert_eq!(job["payload"]["sleep_ms"], 1_000, "{job}");
    }
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{}/cancel", ids[3]), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.job(&ids[3]).await["status"], "cancelled");
    assert_eq!(api.queue("noop").await["pending"], 19);

    // Running: leased with a deadline, counted once each.
    let _worker = setup.start_worker(&["--queues", "noop", "--concurrency", "20"]);
    wait_for(&api, "19 running", Duration::from_secs(10), |c| {
        c["running"] == 19
    })
    .await;
    let running = api.job(&ids[5]).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["attempts"], 1, "{running}");
    assert!(
        running["lease_expires_at_ms"].as_u64().is_some(),
        "{running}"
    );
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{}/cancel", ids[7]), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.job(&ids[7]).await["status"], "cancelled");

    // Done: results, the progress one reported, the cancelled ones unchanged.
    let counts = wait_for(&api, "18 done", Duration::from_secs(15), |c| {
        c["done"] == 18
    })
    .await;
    assert_eq!(counts["cancelled"], 2, "{counts}");
    assert_eq!(counts["running"], 0, "{counts}");
    assert_eq!(counts["pending"], 0, "{counts}");
    for (i, id) in ids.iter().enumerate() {
        let job = api.job(id).await;
        let expected = if i == 3 || i == 7 {
            "cancelled"
        } else {
            "done"
        };
        assert_eq!(job["status"], expected, "job {i}: {job}");
        if expected == "done" {
            assert_eq!(job["result"]["slept_ms"], 1_000, "{job}");
            assert!(
                job["updated_at_ms"].as_u64() >= job["created_at_ms"].as_u64(),
                "{job}"
            );
        }
    }
    let reported = api.job(&ids[9]).await;
    assert_eq!(reported["progress"]["fraction"], 1.0, "{reported}");
    assert_eq!(reported["logs"][1], "attempt 1 finished", "{reported}");
}

#[tokio::test]
async fn a_redis_restart_between_lease_and_ack_loses_nothing() {
    let mut redis = PrivateRedis::start_with_aof().await;
    let setup = Setup::new(Backend::Redis {
        url: redis.url(),
        prefix: unique_prefix(),
    })
    .env("ORCH_LEASE_MS", "3000");
    let api = setup.start_api(&[]).await;
    let ids = push_segment(
        &api,
        (0..40)
            .map(|_| json!({"queue": "noop", "payload": {"sleep_ms": 1_500}}))
            .collect(),
    )
    .await;
    let _worker = setup.start_worker(&["--queues", "noop", "--concurrency", "40"]);
    wait_for(&api, "40 running", Duration::from_secs(10), |c| {
        c["running"] == 40
    })
    .await;

    // Every lease was written (appendfsync always); Redis dies and comes
    // back while the jobs run, so their acknowledgements meet the restarted
    // server.
    redis.crash_and_restart().await;
    let counts = api.wait_for_done("noop", 40, Duration::from_secs(60)).await;
    assert_eq!(counts["dead"], 0, "{counts}");
    assert_eq!(counts["running"], 0, "{counts}");
    assert_eq!(counts["pending"], 0, "{counts}");
    for id in &ids {
        let job = api.job(id).await;
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["result"]["attempt"], 1, "{job}");
    }
}

/// Payloads of every shape and size (null, scalars, multi-byte text, a
/// 100 KB string, nested objects) come back exactly from a segment, both
/// by id while waiting and in the leases a worker takes.
#[tokio::test]
async fn every_payload_of_a_segment_comes_back_exactly() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    api.create_external_queue("shapes", json!({})).await;
    let payloads: Vec<Value> = (0..40)
        .map(|i| match i % 8 {
            0 => Value::Null,
            1 => json!(i),
            2 => json!(format!("Grüße, 世界 {i} \"quoted\"")),
            3 => json!("x".repeat(100_000 + i)),
            4 => json!({"nested": {"list": [i, true, null], "text": "é"}}),
            5 => json!([]),
            6 => json!({}),
            _ => json!(-1.5e300),
        })
        .collect();
    let jobs = payloads
        .iter()
        .map(|payload| json!({"queue": "shapes", "payload": payload}))
        .collect();
    let ids = push_segment(&api, jobs).await;
    for (id, payload) in ids.iter().zip(&payloads) {
        let job = api.job(id).await;
        assert_eq!(job["status"], "pending", "{id}");
        assert_eq!(&job["payload"], payload, "{id} by id");
    }
    let mut leased = std::collections::HashMap::new();
    while leased.len() < ids.len() {
        let (status, body) = api
            .post("/api/v1/queues/shapes/lease", &json!({"max": 7}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let jobs = body["jobs"].as_array().expect("jobs").clone();
        assert!(!jobs.is_empty(), "leases stopped at {}", leased.len());
        for job in jobs {
            leased.insert(
                job["id"].as_str().unwrap().to_string(),
                job["payload"].clone(),
            );
        }
    }
    for (id, payload) in ids.iter().zip(&payloads) {
        assert_eq!(leased.get(id), Some(payload), "{id} leased");
        assert_eq!(api.job(id).await["status"], "running", "{id}");
    }
}
