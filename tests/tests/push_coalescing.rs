//! Single-job pushes arriving together share backend calls, and every
//! caller still gets exactly its own answer: checked in both modes against
//! a real API process, with 64 clients pushing at once.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use orchestrator_tests::{Api, Backend, Setup};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CLIENTS: usize = 64;
const PUSHES_PER_CLIENT: usize = 100;

/// A queue nobody consumes, so every pushed job stays pending.
async fn start(backend: Backend) -> (Setup, Api) {
    let setup = Setup::new(backend);
    let api = setup.start_api(&[]).await;
    api.create_external_queue("held", json!({})).await;
    (setup, api)
}

/// The value of an unlabelled counter in the API's metrics, 0 if absent.
async fn counter(api: &Api, name: &str) -> f64 {
    api.metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn every_caller_gets_its_own_job(backend: Backend) {
    let (_setup, api) = start(backend).await;
    let calls_before = counter(&api, "orchestrator_push_calls_total").await;
    // 64 clients push 100 jobs each, one request per job, each job naming
    // its client and its number.
    let clients = (0..CLIENTS).map(|client| {
        let api = &api;
        async move {
            let mut ids = Vec::with_capacity(PUSHES_PER_CLIENT);
            for n in 0..PUSHES_PER_CLIENT {
                let job = json!({"queue": "held", "payload": {"client": client, "n": n}});
                ids.push(((client, n), api.push(job).await));
            }
            ids
        }
    });
    let pushed: HashMap<(usize, usize), String> =
        join_all(clients).await.into_iter().flatten().collect();
    let total = CLIENTS * PUSHES_PER_CLIENT;
    let distinct: HashSet<&String> = pushed.values().collect();
    assert_eq!(distinct.len(), total, "every push got an id of its own");

    // Each id leads to the job its caller pushed, and all of them landed.
    for ((client, n), id) in &pushed {
        let job = api.job(id).await;
        assert_eq!(job["status"], "pending", "{job}");
        assert_eq!(job["payload"], json!({"client": client, "n": n}), "{job}");
    }
    assert_eq!(api.queue("held").await["pending"], total as u64);

    // And they shared backend calls: far fewer calls than pushes.
    let calls = counter(&api, "orchestrator_push_calls_total").await - calls_before;
    assert!(calls >= 1.0, "push calls not counted");
    assert!(
        calls < (total / 2) as f64,
        "{total} concurrent pushes took {calls} backend calls: they were not batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_caller_gets_its_own_job_embedded() {
    every_caller_gets_its_own_job(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_caller_gets_its_own_job_redis() {
    every_caller_gets_its_own_job(Backend::redis()).await;
}

/// Concurrent pushes with one idempotency key, some in the same shared
/// call: one job is created and every caller is told its id.
async fn one_key_one_job(backend: Backend) {
    let (_setup, api) = start(backend).await;
    for round in 0..5 {
        let key = format!("order-{round}");
        let pushes = (0..CLIENTS).map(|client| {
            let api = &api;
            let key = key.clone();
            async move {
                let job = json!({"queue": "held", "payload": {"client": client},
                                 "idempotency_key": key});
                let (status, body) = api.post("/api/v1/jobs", &job).await;
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                body
            }
        });
        let answers: Vec<Value> = join_all(pushes).await;
        let ids: HashSet<&str> = answers.iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 1, "one key, one job: {answers:?}");
        let created = answers.iter().filter(|a| a["duplicate"] == false).count();
        assert_eq!(created, 1, "exactly one push created it: {answers:?}");
    }
    assert_eq!(api.queue("held").await["pending"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_one_job_embedded() {
    one_key_one_job(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_one_job_redis() {
    one_key_one_job(Backend::redis()).await;
}

/// Bad pushes mixed into a burst of good ones are refused on their own;
/// the good ones all land.
async fn bad_pushes_change_nothing(backend: Backend) {
    let (_setup, api) = start(backend).await;
    let pushes = (0..CLIENTS * 4).map(|n| {
        let api = &api;
        async move {
            let job = match n % 4 {
                0 => json!({"queue": "held", "payload": {"n": n}, "priority": 5000}),
                1 => json!({"queue": "nowhere", "payload": {"n": n}}),
                _ => json!({"queue": "held", "payload": {"n": n}}),
            };
            let (status, body) = api.post("/api/v1/jobs", &job).await;
            (n, status, body)
        }
    });
    let mut landed = 0;
    for (n, status, body) in join_all(pushes).await {
        if n % 4 < 2 {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "push {n}: {body}");
        } else {
            assert_eq!(status, StatusCode::ACCEPTED, "push {n}: {body}");
            let job = api.job(body["id"].as_str().unwrap()).await;
            assert_eq!(job["payload"]["n"], n, "{job}");
            landed += 1;
        }
    }
    assert_eq!(api.queue("held").await["pending"], landed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_pushes_change_nothing_embedded() {
    bad_pushes_change_nothing(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_pushes_change_nothing_redis() {
    bad_pushes_change_nothing(Backend::redis()).await;
}

/// A queue's new defaults apply to the next push through the same process
/// at once, although pushes read the settings from a short-lived copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_defaults_apply_at_once() {
    let (_setup, api) = start(Backend::Embedded).await;
    let before = api.push(json!({"queue": "held", "payload": {}})).await;
    assert_eq!(api.job(&before).await["max_attempts"], 3);
    let (status, body) = api
        .patch("/api/v1/queues/held", &json!({"max_attempts": 7}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = api.push(json!({"queue": "held", "payload": {}})).await;
    assert_eq!(api.job(&after).await["max_attempts"], 7);
}
