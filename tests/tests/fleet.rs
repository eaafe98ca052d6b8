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

/// Pushes `count` noop jobs and waits until they are done.
async fn run_noop_jobs(api: &Api, count: usize) {
    let ids = api
        .push_many(json!({"queue": "noop", "payload": {}}), count)
        .await;
    api.wait_for_done("noop", ids.len() as u64, Duration::from_secs(30))
        .await;
}

/// The entry of queue `name` in a body's `queues` list.
fn queue_named(body: &Value, name: &str) -> Value {
    body["queues"]
        .as_array()
        .and_then(|queues| queues.iter().find(|q| q["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no queue {name} in {body}"))
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
    run_noop_jobs(&api, 200).await;
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

#[tokio::test]
async fn status_agrees_with_the_queues_and_the_fleet() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_THROUGHPUT_TARGET", "5000");
    let api = setup.start_api(&[]).await;
    // Rates count jobs finished between samples, and 500 no-op jobs can
    // all finish within a second: take the first sample before they start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.get("/api/v1/status").await.0 != 200 {
        assert!(Instant::now() < deadline, "no status within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run_noop_jobs(&api, 500).await;
    // The snapshot is at most a second old: wait for one that has them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let (code, status) = api.get("/api/v1/status").await;
        if code == 200 {
            let noop = queue_named(&status, "noop");
            if noop["done"] == 500 && status["throughput"]["jobs_per_s_1m"].as_f64().unwrap() > 0.0
            {
                break status;
            }
        }
        assert!(Instant::now() < deadline, "{code} {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["backend"], "embedded");
    assert_eq!(status["mode"], "development");
    assert_eq!(
        status["fleet"],
        json!({"api": 1, "trainer": 0, "worker": 0})
    );
    let subsystems = status["subsystems"].as_array().unwrap();
    for subsystem in subsystems {
        let name = subsystem["name"].as_str().unwrap();
        let healthy = match name.strip_prefix("model:") {
            Some(_) => ["loaded", "idle"].as_slice(),
            None => ["ok"].as_slice(),
        };
        assert!(
            healthy.contains(&subsystem["state"].as_str().unwrap()),
            "{subsystem}"
        );
    }
    let names: Vec<&str> = subsystems
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for expected in ["store", "queue", "fleet", "trainer", "vectors"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("model:")), "{names:?}");
    assert_eq!(status["system"]["state"], "running", "{status}");
    assert_eq!(status["activity"]["feedback_buffered"], 0, "{status}");
    let queues = api.get("/api/v1/queues").await.1;
    let listed = queue_named(&queues, "noop");
    let noop = queue_named(&status, "noop");
    for field in ["pending", "running", "done", "dead"] {
        assert_eq!(noop[field], listed[field], "{field}: {noop} vs {listed}");
    }
    let throughput = &status["throughput"];
    assert_eq!(throughput["target"], 5000);
    let ratio = throughput["jobs_per_s_1m"].as_f64().unwrap() / 5000.0;
    assert!(
        (throughput["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
        "{throughput}"
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("orchestrator_throughput_target 5000"),
        "{metrics}"
    );
}

#[test]
fn a_bad_throughput_target_is_refused_by_name() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_THROUGHPUT_TARGET", "fast");
    let (status, stderr) = setup.run_api_expecting_exit("127.0.0.1:0");
    assert!(!status.success());
    assert!(stderr.contains("ORCH_THROUGHPUT_TARGET"), "{stderr}");
}
