//! Workers in any language: queues served to external workers over HTTP
//! (lease, heartbeat, progress, ack, fail), against the real API in both
//! modes (embedded SQLite, and Redis). The Python client in
//! `clients/python` drains a backlog while one of its processes is killed
//! mid-lease; raw HTTP checks the protocol's edges.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use orchestrator_tests::{Api, Backend, Process, Setup, StatusCode};
use serde_json::{Value, json};

const JOBS: usize = 1_000;
/// The killed worker's lease batch and concurrency: it holds at most
/// `BATCH + CONCURRENCY` jobs at once.
const BATCH: usize = 20;
const CONCURRENCY: usize = 4;

/// `clients/python/example_worker.py`, after checking python3 runs.
fn example_worker() -> PathBuf {
    let version = Command::new("python3").arg("--version").output().expect(
        "python3 is needed by the external worker tests: install it (apt-get install python3)",
    );
    assert!(
        version.status.success(),
        "python3 --version failed: {version:?}"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/example_worker.py");
    assert!(script.is_file(), "{} is missing", script.display());
    script
}

fn start_python_worker(
    setup: &Setup,
    api: &Api,
    queue: &str,
    record: &Path,
    name: &str,
) -> Process {
    let script = example_worker();
    let (concurrency, batch) = (CONCURRENCY.to_string(), BATCH.to_string());
    setup.spawn_program(
        Path::new("python3"),
        &[
            script.to_str().unwrap(),
            "--url",
            &api.base,
            "--queue",
            queue,
            "--concurrency",
            &concurrency,
            "--batch",
            &batch,
            "--lease-ms",
            "2000",
            "--wait-ms",
            "500",
            "--sleep-ms",
            "5",
            "--fail-rate",
            "0.1",
            "--name",
            name,
            "--record",
            record.to_str().unwrap(),
        ],
    )
}

/// Pushes one job per payload and returns the ids in order.
async fn push_all(api: &Api, queue: &str, payloads: impl Iterator<Item = Value>) -> Vec<String> {
    let jobs: Vec<Value> = payloads
        .map(|payload| json!({"queue": queue, "payload": payload}))
        .collect();
    let (status, body) = api
        .post("/api/v1/jobs/batch", &json!({ "jobs": jobs }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "batch push: {body}");
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

/// `(job id, attempt)` per complete line of a worker's record file.
fn records(path: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|line| {
            let (id, attempt) = line.split_once(' ').expect("'<id> <attempt>'");
            (id.to_string(), attempt.parse().expect("attempt"))
        })
        .collect()
}

async fn wait_for_records(path: &Path, at_least: usize, worker: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while records(path).len() < at_least {
        assert!(worker.is_running(), "the Python worker exited early");
        assert!(
            Instant::now() < deadline,
            "the Python worker recorded only {} jobs in 60 s",
            records(path).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1,000 jobs, a tenth failing their first attempt, drained by Python
/// workers while the first one is SIGKILLed holding leased jobs: every job
/// ends done, and the only repeats are the planned failures and the jobs
/// the killed worker held.
async fn python_workers_survive_a_kill(backend: Backend) {
    // No __pycache__ left in the source tree.
    let setup = Setup::new(backend).env("PYTHONDONTWRITEBYTECODE", "1");
    let api = setup.start_api(&[]).await;
    api.create_external_queue("emails", json!({"max_attempts": 3, "backoff_ms": 50}))
        .await;
    let ids = push_all(&api, "emails", (0..JOBS).map(|n| json!({ "n": n }))).await;
    assert_eq!(ids.len(), JOBS);

    let first_record = setup.data_dir.join("first.txt");
    let second_record = setup.data_dir.join("second.txt");
    let mut first = start_python_worker(&setup, &api, "emails", &first_record, "first");
    wait_for_records(&first_record, 300, &mut first).await;
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    // Killed mid-lease: it held jobs that are still leased to it.
    let queue = api.queue("emails").await;
    assert!(
        queue["running"].as_u64().unwrap() > 0,
        "the killed worker held no job: {queue}"
    );
    let killed_ran = records(&first_record);
    assert!(
        killed_ran.len() < JOBS,
        "the first worker finished everything before the kill"
    );

    let mut second = start_python_worker(&setup, &api, "emails", &second_record, "second");
    let queue = api
        .wait_for_done("emails", JOBS as u64, Duration::from_secs(120))
        .await;
    for count in ["pending", "running", "dead", "cancelled"] {
        assert_eq!(queue[count], 0, "{count}: {queue}");
    }
    second.signal(libc::SIGTERM);
    let status = second.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "the second worker did not stop cleanly: {status:?}"
    );

    let ran_later = records(&second_record);
    let first_runs = runs_per_job(&killed_ran);
    let second_runs = runs_per_job(&ran_later);
    let mut repeated_after_kill = 0;
    for (n, id) in ids.iter().enumerate() {
        let job = api.job(id).await;
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["result"], json!({"n": n, "square": n * n}), "{job}");
        let attempts = job["attempts"].as_u64().unwrap();
        let by_first = first_runs.get(id.as_str()).cloned().unwrap_or_default();
        let by_second = second_runs.get(id.as_str()).cloned().unwrap_or_default();
        let ran: Vec<u64> = by_first.iter().chain(&by_second).copied().collect();
        assert!(!ran.is_empty(), "job {n} never ran");
        // One handler call per lease: an attempt never runs twice, and the
        // last one run is the one that ended the job.
        let distinct: HashSet<&u64> = ran.iter().collect();
        assert_eq!(
            distinct.len(),
            ran.len(),
            "job {n} ran one attempt twice: {ran:?}"
        );
        assert_eq!(
            ran.iter().max(),
            Some(&attempts),
            "job {n}: runs {ran:?}, {job}"
        );
        // Planned runs: a tenth fail their first attempt and run again.
        let planned = if n % 10 == 0 {
            assert!(attempts >= 2, "job {n} was planned to fail once: {job}");
            2
        } else {
            1
        };
        // Neither worker ran a job more often than planned: repeats come
        // only from jobs the killed worker ran without reporting.
        assert!(
            by_first.len() <= planned,
            "job {n}: first worker ran {by_first:?}"
        );
        assert!(
            by_second.len() <= planned,
            "job {n}: second worker ran {by_second:?}"
        );
        if ran.len() > planned {
            repeated_after_kill += 1;
        }
    }
    let total = killed_ran.len() + ran_later.len();
    eprintln!(
        "{total} handler calls ({} before the kill), {repeated_after_kill} jobs ran again",
        killed_ran.len()
    );
    let held = BATCH + CONCURRENCY;
    let (least, most) = (JOBS + JOBS / 10 - held, JOBS + JOBS / 10 + 2 * BATCH);
    assert!(
        total >= least,
        "{total} handler calls for {JOBS} jobs, fewer than {least}"
    );
    assert!(total <= most, "{total} handler calls, more than {most}");
    assert!(
        repeated_after_kill <= held,
        "{repeated_after_kill} jobs ran again, more than the killed worker could hold"
    );
}

fn runs_per_job(records: &[(String, u64)]) -> HashMap<&str, Vec<u64>> {
    let mut runs: HashMap<&str, Vec<u64>> = HashMap::new();
    for (id, attempt) in records {
        runs.entry(id.as_str()).or_default().push(*attempt);
    }
    runs
}

#[tokio::test]
async fn embedded_python_workers_survive_a_kill() {
    python_workers_survive_a_kill(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_python_workers_survive_a_kill() {
    python_workers_survive_a_kill(Backend::redis()).await;
}

// -- the protocol over raw HTTP ---------------------------------------------

/// One leased job as the API shows it.
struct Leased {
    id: String,
    token: String,
    attempt: u64,
}

async fn lease(api: &Api, queue: &str, body: Value) -> Vec<Leased> {
    let (status, answer) = api
        .post(&format!("/api/v1/queues/{queue}/lease"), &body)
        .await;
    assert_eq!(status, StatusCode::OK, "lease {queue} {body}: {answer}");
    answer["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| Leased {
            id: job["id"].as_str().unwrap().to_string(),
            token: job["lease_token"].as_str().unwrap().to_string(),
            attempt: job["attempt"].as_u64().unwrap(),
        })
        .collect()
}

async fn lease_one(api: &Api, queue: &str, lease_ms: u64) -> Leased {
    let mut jobs = lease(api, queue, json!({"lease_ms": lease_ms, "wait_ms": 5_000})).await;
    assert_eq!(jobs.len(), 1, "one job expected on {queue}");
    jobs.pop().unwrap()
}

/// POSTs `/api/v1/jobs/{id}/{action}` with `body` plus the lease token.
async fn on_job(
    api: &Api,
    id: &str,
    action: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut body = body;
    body["lease_token"] = json!(token);
    api.post(&format!("/api/v1/jobs/{id}/{action}"), &body)
        .await
}

fn assert_conflict(answer: (StatusCode, Value), code: &str, what: &str) {
    let (status, body) = answer;
    assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
}

fn assert_invalid(answer: (StatusCode, Value), what: &str) {
    let (status, body) = answer;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
}

/// A lease that expired and was taken over is dead for its old token.
async fn expired_leases_are_lost(api: &Api) {
    api.create_external_queue("expiry", json!({"max_attempts": 5, "backoff_ms": 0}))
        .await;
    let id = push_all(api, "expiry", [json!({})].into_iter())
        .await
        .remove(0);
    let old = lease_one(api, "expiry", 1_000).await;
    assert_eq!((old.id.as_str(), old.attempt), (id.as_str(), 1));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // Expired, even before anyone else took it.
    let renew = on_job(api, &id, "heartbeat", &old.token, json!({})).await;
    assert_conflict(renew, "lease_lost", "heartbeat after expiry");
    let new = lease_one(api, "expiry", 30_000).await;
    assert_eq!((new.id.as_str(), new.attempt), (id.as_str(), 2));
    assert_ne!(new.token, old.token);
    for action in ["ack", "heartbeat", "progress"] {
        let answer = on_job(api, &id, action, &old.token, json!({})).await;
        assert_conflict(answer, "lease_lost", action);
    }
    let answer = on_job(api, &id, "fail", &old.token, json!({"error": "late"})).await;
    assert_conflict(answer, "lease_lost", "fail");
    // The new holder is unaffected.
    let (status, body) = on_job(
        api,
        &id,
        "heartbeat",
        &new.token,
        json!({"lease_ms": 5_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["lease_expires_at_ms"].as_u64().unwrap() > 0, "{body}");
    let (status, body) = on_job(api, &id, "ack", &new.token, json!({"result": {"ok": true}})).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("done")),
        "{body}"
    );
    let job = api.job(&id).await;
    assert_eq!(
        (&job["status"], &job["attempts"]),
        (&json!("done"), &json!(2)),
        "{job}"
    );
    assert_eq!(job["result"], json!({"ok": true}));
    // Ended: its own token is spent too.
    let answer = on_job(api, &id, "ack", &new.token, json!({})).await;
    assert_conflict(answer, "lease_lost", "ack after done");
}

/// A token only holds the job it was leased with.
async fn tokens_belong_to_their_job(api: &Api) {
    api.create_external_queue("pairs", json!({})).await;
    push_all(api, "pairs", [json!({"k": 1}), json!({"k": 2})].into_iter()).await;
    let one = lease_one(api, "pairs", 30_000).await;
    let two = lease_one(api, "pairs", 30_000).await;
    assert_ne!(one.id, two.id);
    for action in ["ack", "heartbeat", "progress"] {
        let answer = on_job(api, &one.id, action, &two.token, json!({})).await;
        assert_conflict(
            answer,
            "lease_lost",
            &format!("{action} with another job's token"),
        );
    }
    let job = api.job(&one.id).await;
    assert_eq!(job["status"], "running", "{job}");
    assert!(job.get("progress").is_none(), "{job}");
    for job in [&one, &two] {
        let (status, body) = on_job(api, &job.id, "ack", &job.token, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// `retryable: false` ends the job; `retry_after_ms` holds it back.
async fn failures(api: &Api) {
    api.create_external_queue("fails", json!({"max_attempts": 5, "backoff_ms": 0}))
        .await;
    let ids = push_all(api, "fails", [json!({"k": "dead"})].into_iter()).await;
    let job = lease_one(api, "fails", 30_000).await;
    let body = json!({"error": "bad address", "retryable": false});
    let (status, body) = on_job(api, &job.id, "fail", &job.token, body).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("dead")),
        "{body}"
    );
    let dead = api.job(&ids[0]).await;
    assert_eq!(
        (&dead["status"], &dead["attempts"]),
        (&json!("dead"), &json!(1)),
        "{dead}"
    );
    assert!(
        dead["error"]
            .as_str()
            .unwrap_or_default()
            .contains("bad address"),
        "{dead}"
    );

    let ids = push_all(api, "fails", [json!({"k": "later"})].into_iter()).await;
    let job = lease_one(api, "fails", 30_000).await;
    assert_eq!(job.id, ids[0]);
    let body = json!({"error": "busy", "retry_after_ms": 1_500});
    let (status, body) = on_job(api, &job.id, "fail", &job.token, body).await;
    let failed_at = Instant::now();
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("failed")),
        "{body}"
    );
    // The queue's backoff is 0, yet nothing is leasable for 1.5 s.
    let early = lease(api, "fails", json!({"wait_ms": 1_000})).await;
    assert!(
        early.is_empty(),
        "leased {:?} ms after the failure",
        failed_at.elapsed()
    );
    let again = lease(api, "fails", json!({"wait_ms": 5_000})).await;
    let waited = failed_at.elapsed();
    assert_eq!(again.len(), 1, "the job never came back");
    assert_eq!(
        (again[0].id.as_str(), again[0].attempt),
        (job.id.as_str(), 2)
    );
    assert!(
        waited >= Duration::from_millis(1_400),
        "came back after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(3_000),
        "came back after {waited:?}"
    );
    let (status, _) = on_job(api, &job.id, "ack", &again[0].token, json!({})).await;
    assert_eq!(status, StatusCode::OK);
}

/// Progress and log lines show on the job; it keeps the last 100 lines.
async fn progress_and_logs(api: &Api) {
    api.create_external_queue("reports", json!({})).await;
    let ids = push_all(api, "reports", [json!({})].into_iter()).await;
    let job = lease_one(api, "reports", 30_000).await;
    let body = json!({"progress": 0.25, "message": "a quarter", "logs": ["line 0", "line 1"]});
    let (status, body) = on_job(api, &job.id, "progress", &job.token, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let shown = api.job(&ids[0]).await;
    assert_eq!(shown["progress"]["fraction"], 0.25, "{shown}");
    assert_eq!(shown["progress"]["message"], "a quarter", "{shown}");
    assert_eq!(shown["logs"], json!(["line 0", "line 1"]), "{shown}");

    for range in [2..102, 102..152] {
        let lines: Vec<String> = range.map(|i| format!("line {i}")).collect();
        let (status, body) =
            on_job(api, &job.id, "progress", &job.token, json!({"logs": lines})).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let shown = api.job(&ids[0]).await;
    let logs = shown["logs"].as_array().expect("logs");
    assert_eq!(logs.len(), 100, "{shown}");
    assert_eq!(logs[0], "line 52");
    assert_eq!(logs[99], "line 151");
    // Lines alone leave the progress as it was.
    assert_eq!(shown["progress"]["fraction"], 0.25, "{shown}");

    let too_far = on_job(
        api,
        &job.id,
        "progress",
        &job.token,
        json!({"progress": 1.5}),
    )
    .await;
    assert_invalid(too_far, "progress 1.5");
    let lines: Vec<String> = (0..101).map(|i| format!("x {i}")).collect();
    let too_many = on_job(api, &job.id, "progress", &job.token, json!({"logs": lines})).await;
    assert_invalid(too_many, "101 lines");
    let shown = api.job(&ids[0]).await;
    assert_eq!(shown["logs"].as_array().unwrap()[99], "line 151", "{shown}");
    let (status, _) = on_job(api, &job.id, "ack", &job.token, json!({})).await;
    assert_eq!(status, StatusCode::OK);
}

/// Cancelled jobs: a holder hears of it; a pending one is never leased.
async fn cancelling(api: &Api) {
    api.create_external_queue("stops", json!({})).await;
    let ids = push_all(api, "stops", [json!({})].into_iter()).await;
    let job = lease_one(api, "stops", 30_000).await;
    let cancel = format!("/api/v1/jobs/{}/cancel", ids[0]);
    let (status, body) = api.post(&cancel, &json!({})).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("cancelled")),
        "{body}"
    );
    for action in ["heartbeat", "progress", "ack"] {
        let answer = on_job(api, &job.id, action, &job.token, json!({})).await;
        assert_conflict(answer, "job_cancelled", action);
    }
    let answer = on_job(
        api,
        &job.id,
        "fail",
        &job.token,
        json!({"error": "stopped"}),
    )
    .await;
    assert_conflict(answer, "job_cancelled", "fail");
    assert_eq!(api.job(&ids[0]).await["status"], "cancelled");
    let (status, body) = api.post(&cancel, &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "cancel twice: {body}");

    let ids = push_all(api, "stops", [json!({})].into_iter()).await;
    let (status, body) = api
        .post(&format!("/api/v1/jobs/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let leased = lease(api, "stops", json!({"wait_ms": 1_000})).await;
    assert!(leased.is_empty(), "a cancelled job was leased");
    let job = api.job(&ids[0]).await;
    assert_eq!(
        (&job["status"], &job["attempts"]),
        (&json!("cancelled"), &json!(0)),
        "{job}"
    );
}

/// A lease call waiting on an empty queue answers as soon as a job lands.
async fn long_poll(api: &Api) {
    api.create_external_queue("polls", json!({})).await;
    let started = Instant::now();
    let (leased, pushed) = tokio::join!(lease(api, "polls", json!({"wait_ms": 2_000})), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        push_all(api, "polls", [json!({"late": true})].into_iter()).await
    });
    let took = started.elapsed();
    assert_eq!(
        leased.len(),
        1,
        "the long poll returned nothing after {took:?}"
    );
    assert_eq!(leased[0].id, pushed[0]);
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}, before the push"
    );
    assert!(
        took < Duration::from_millis(1_000),
        "answered after {took:?}"
    );
    // Nothing lands: it answers empty once the wait is over.
    let started = Instant::now();
    let empty = lease(api, "polls", json!({"wait_ms": 700})).await;
    let took = started.elapsed();
    assert!(empty.is_empty());
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_millis(2_000),
        "{took:?}"
    );
}

/// Refused requests change nothing.
async fn bad_inputs(api: &Api) {
    api.create_external_queue("strict", json!({})).await;
    let ids = push_all(api, "strict", [json!({})].into_iter()).await;
    for body in [
        json!({"max": 0}),
        json!({"max": 1_001}),
        json!({"lease_ms": 10}),
        json!({"lease_ms": 3_600_001}),
        json!({"wait_ms": 30_001}),
        json!({"worker": "has spaces"}),
        json!({"worker": ""}),
        json!({"max": 1, "surprise": true}),
    ] {
        let answer = api.post("/api/v1/queues/strict/lease", &body).await;
        assert_invalid(answer, &format!("lease {body}"));
    }
    let job = api.job(&ids[0]).await;
    assert_eq!(
        (&job["status"], &job["attempts"]),
        (&json!("pending"), &json!(0)),
        "{job}"
    );

    // Builtin queues are not handed out; unknown queues are 404.
    let (status, body) = api.post("/api/v1/queues/noop/lease", &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "not_external_queue", "{body}");
    let (status, body) = api.post("/api/v1/queues/nowhere/lease", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let held = lease_one(api, "strict", 30_000).await;
    for token in ["", "garbage", "ext.x:y", "ext.a b:1", "worker:1"] {
        for action in ["ack", "heartbeat", "progress"] {
            let answer = on_job(api, &held.id, action, token, json!({})).await;
            assert_invalid(answer, &format!("{action} with token {token:?}"));
        }
    }
    let short = on_job(
        api,
        &held.id,
        "heartbeat",
        &held.token,
        json!({"lease_ms": 10}),
    )
    .await;
    assert_invalid(short, "heartbeat lease_ms 10");
    let long_error = "x".repeat(5_000);
    let answer = on_job(
        api,
        &held.id,
        "fail",
        &held.token,
        json!({"error": long_error}),
    )
    .await;
    assert_invalid(answer, "a 5,000-byte error");
    let job = api.job(&ids[0]).await;
    assert_eq!(
        (&job["status"], &job["attempts"]),
        (&json!("running"), &json!(1)),
        "{job}"
    );
    let (status, body) = on_job(api, &held.id, "ack", &held.token, json!({"result": 7})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.job(&ids[0]).await["result"], 7);
}

async fn protocol(backend: Backend) {
    let setup = Setup::new(backend);
    let api = setup.start_api(&[]).await;
    expired_leases_are_lost(&api).await;
    tokens_belong_to_their_job(&api).await;
    failures(&api).await;
    progress_and_logs(&api).await;
    cancelling(&api).await;
    long_poll(&api).await;
    bad_inputs(&api).await;
}

#[tokio::test]
async fn embedded_lease_protocol() {
    protocol(Backend::Embedded).await;
}

#[tokio::test]
async fn redis_lease_protocol() {
    protocol(Backend::redis()).await;
}

// -- the Python client's own calls --------------------------------------------

const KEY: &str = "test-key-0123456789abcdef";

/// The client's calls against an API that wants a key: each outcome maps to
/// the answer, lost leases raise `LeaseLost`, and `Worker` turns
/// `Permanent` into a dead job.
const CLIENT_CHECKS: &str = r#"
import sys, threading, time
sys.path.insert(0, sys.argv[1])
from orchestrator_client import Client, LeaseLost, OrchestratorError, Permanent, Worker
base, key = sys.argv[2], sys.argv[3]

try:
    Client(base).queues()
    raise SystemExit("a call without the key was answered")
except OrchestratorError as err:
    assert err.status == 401, err

client = Client(base, api_key=key)
client.create_queue("keyed", max_attempts=2, backoff_ms=0)
ids = client.push_batch("keyed", [{"n": n} for n in range(5)])
jobs = client.lease("keyed", max=5, wait_ms=2000, lease_ms=5000, worker="checks")
assert sorted(job.id for job in jobs) == sorted(ids), jobs
done, dead, cancelled, retried, logged = jobs

assert client.ack(done, {"ok": 1}) == "done"
assert client.job(done.id)["result"] == {"ok": 1}
try:
    client.ack(done, None)
    raise SystemExit("a second ack was accepted")
except LeaseLost as err:
    assert (err.status, err.code) == (409, "lease_lost"), err

assert client.fail(dead, "x" * 10_000, retryable=False) == "dead"
assert len(client.job(dead.id)["error"]) <= 4096

client.cancel(cancelled.id)
assert not cancelled.progress(0.5, "late") and cancelled.cancelled
assert not cancelled.heartbeat()

before = retried.lease_expires_at_ms
time.sleep(0.01)
assert retried.heartbeat() and retried.lease_expires_at_ms > before
assert client.fail(retried, "try again") == "failed"

assert logged.log("one", "two") and logged.progress(0.75, "most")
shown = client.job(logged.id)
assert shown["logs"] == ["one", "two"] and shown["progress"]["fraction"] == 0.75, shown
assert client.ack(logged, [1, 2]) == "done"

# The retried job comes back on attempt 2, to a worker that gives up on it.
seen = []
def handle(job):
    seen.append(job.attempt)
    raise Permanent("no such mailbox")
worker = Worker(client, "keyed", handle, concurrency=2, batch=4, wait_ms=200)
def stop_when_drained():
    while client.queue("keyed")["dead"] < 2:
        time.sleep(0.05)
    worker.stop()
threading.Thread(target=stop_when_drained, daemon=True).start()
stats = worker.run(handle_signals=False)
assert seen == [2] and stats.dead == 1, (seen, stats)
ended = client.job(retried.id)
assert ended["status"] == "dead" and "Permanent: no such mailbox" in ended["error"], ended
print("client checks passed")
"#;

#[tokio::test]
async fn python_client_calls_with_an_api_key() {
    let script = example_worker();
    let setup = Setup::new(Backend::Embedded).env("ORCH_API_KEYS", KEY);
    let mut api = setup.start_api(&[]).await;
    let dir = script.parent().unwrap().to_str().unwrap().to_string();
    let base = api.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", CLIENT_CHECKS, &dir, &base, KEY])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("client checks passed"),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    api.key = Some(KEY.into());
    let queue = api.queue("keyed").await;
    assert_eq!(
        (&queue["done"], &queue["dead"]),
        (&json!(2), &json!(2)),
        "{queue}"
    );
    assert_eq!(queue["cancelled"], 1, "{queue}");
}
