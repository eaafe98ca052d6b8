//! The fleet registry: every process registers, beats, and leaves the
//! list by itself when it dies.

use std::time::{Duration, Instant};

use orchestrator_tests::{Api, Backend, Setup};
use serde_json::{Value, json};

/// Processes listed by the API, counted by kind.
async fn kinds(api: &Api) -> (Vec<Value>, [usize; 3]) {
    let (status, body) = api.get("/api/v1/fleet").await;
    assert_eq!(status, 200, "{body}");
    let processes = body["processes"].as_array().cloned().unwrap_or_default();
    let count = |kind: &str| processes.iter().filter(|p| p["kind"] == kind).count();
    let counts = [count("api"), count("worker"), count("trainer")];
    (processes, counts)
}

async fn wait_for_kinds(api: &Api, want: [usize; 3], within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (processes, counts) = kinds(api).await;
        if counts == want {
            return processes;
        }
        assert!(
            Instant::now() < deadline,
            "wanted [api, worker, trainer] = {want:?}, have {counts:?}: {processes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn redis_fleet_lists_every_process_and_forgets_a_killed_one() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let _noop = setup.start_worker(&["--queues", "noop"]);
    let doomed = setup.start_worker(&["--queues", "noop", "--concurrency", "4"]);
    let _trainer = setup.start_trainer(&[]);
    let processes = wait_for_kinds(&api, [1, 2, 1], Duration::from_secs(30)).await;
    let doomed_entry = processes
        .iter()
        .find(|p| p["pid"] == doomed.pid())
        .unwrap_or_else(|| panic!("pid {} is not listed: {processes:#?}", doomed.pid()));
    assert_eq!(doomed_entry["serves"], json!(["noop"]));
    let trainer = processes.iter().find(|p| p["kind"] == "trainer").unwrap();
    assert_eq!(trainer["serves"], json!(["trainer"]));
    for process in &processes {
        assert!(process["started_at"].as_u64().unwrap() <= process["last_beat"].as_u64().unwrap());
        assert!(!process["host"].as_str().unwrap().is_empty(), "{process}");
    }

    // Jobs done are counted by whoever ran them, at the next beat.
    let ids = api
        .push_many(json!({"queue": "noop", "payload": {}}), 200)
        .await;
    api.wait_for_done("noop", ids.len() as u64, Duration::from_secs(30))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (processes, _) = kinds(&api).await;
        let done: u64 = processes
            .iter()
            .filter(|p| p["kind"] == "worker")
            .map(|p| p["jobs_done"].as_u64().unwrap())
            .sum();
        if done == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers report {done} jobs done of 200"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGKILL: no goodbye, the entry expires after three missed beats.
    doomed.signal(libc::SIGKILL);
    let killed = Instant::now();
    let processes = wait_for_kinds(&api, [1, 1, 1], Duration::from_secs(10)).await;
    assert!(
        killed.elapsed() <= Duration::from_secs(8),
        "gone after {:?}",
        killed.elapsed()
    );
    assert!(processes.iter().all(|p| p["pid"] != doomed.pid()));
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let metrics = api.metrics().await;
        if metrics.contains(r#"orchestrator_fleet_processes{kind="worker"} 1"#)
            && metrics.contains(r#"orchestrator_fleet_processes{kind="api"} 1"#)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn embedded_fleet_is_the_api_with_its_queues() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let processes = wait_for_kinds(&api, [1, 0, 0], Duration::from_secs(5)).await;
    let serves = processes[0]["serves"].as_array().unwrap();
    assert!(serves.contains(&json!("noop")), "{serves:?}");
    assert_eq!(processes[0]["pid"], api.process.pid());
}
