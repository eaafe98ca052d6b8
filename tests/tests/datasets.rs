//! Training-data generation runs end to end: the API queues shard jobs, the
//! fleet's `datagen` workers generate them, the export streams the dataset.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use orchestrator_tests::{Api, Backend, Setup, StatusCode};
use serde_json::{Value, json};

async fn wait_for_status(api: &Api, id: &str, status: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, run) = api.get(&format!("/api/v1/datasets/{id}")).await;
        assert_eq!(code, StatusCode::OK, "{run}");
        if run["status"] == status {
            return run;
        }
        assert!(Instant::now() < deadline, "never {status}: {run}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn export(api: &Api, id: &str, split: &str) -> String {
    let response = api
        .http
        .get(api.url(&format!("/api/v1/datasets/{id}/data.jsonl?split={split}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    response.text().await.unwrap()
}

async fn create(api: &Api, body: Value) -> Value {
    let (code, run) = api.post("/api/v1/datasets", &body).await;
    assert_eq!(code, StatusCode::CREATED, "{run}");
    run
}

#[tokio::test]
async fn a_run_is_generated_in_shards_and_exported_without_repeats() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let body = json!({"name": "arith", "count": 20_000, "shard_size": 5_000, "seed": 7,
                      "eval_fraction": 0.1});
    let run = create(&api, body.clone()).await;
    assert_eq!(run["shards_total"], 4);
    let id = run["id"].as_str().unwrap().to_string();
    let run = wait_for_status(&api, &id, "completed", Duration::from_secs(60)).await;
    assert_eq!(run["shards_done"], 4, "{run}");
    let dropped: u64 = run["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(run["kept"].as_u64().unwrap() + dropped, 20_000, "{run}");
    assert_eq!(run["families"].as_object().unwrap().len(), 8, "{run}");
    assert_eq!(run["sources"]["synthetic"], run["kept"], "{run}");

    let train = export(&api, &id, "train").await;
    let eval = export(&api, &id, "eval").await;
    let summary = &run["summary"];
    assert_eq!(
        train.lines().count() as u64,
        summary["train"].as_u64().unwrap()
    );
    assert_eq!(
        eval.lines().count() as u64,
        summary["eval"].as_u64().unwrap()
    );
    let share = summary["eval"].as_f64().unwrap() / run["kept"].as_f64().unwrap();
    assert!((0.07..0.13).contains(&share), "{share}");
    let mut seen = HashSet::new();
    for line in train.lines().chain(eval.lines()) {
        let example: Value = serde_json::from_str(line).unwrap();
        assert_eq!(example["messages"][0]["role"], "user", "{line}");
        assert!(
            !example["messages"][1]["content"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert!(seen.insert(line.to_string()), "repeated: {line}");
    }

    // Compressed on request, as one gzip stream (a single member: browsers
    // decode no further) of the same lines.
    let response = api
        .http
        .get(api.url(&format!("/api/v1/datasets/{id}/data.jsonl?split=train")))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    assert!(
        compressed.len() < train.len() / 3,
        "{} bytes",
        compressed.len()
    );
    let mut unpacked = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut unpacked,
    )
    .unwrap();
    assert!(unpacked == train, "the gzip export differs");

    // The same request gives the same dataset, byte for byte.
    let again = create(&api, body).await;
    let again_id = again["id"].as_str().unwrap().to_string();
    wait_for_status(&api, &again_id, "completed", Duration::from_secs(60)).await;
    assert_eq!(export(&api, &again_id, "train").await, train);

    // Another format.
    let alpaca = create(
        &api,
        json!({"name": "alpaca", "count": 500, "format": "alpaca", "shard_size": 250}),
    )
    .await;
    let alpaca_id = alpaca["id"].as_str().unwrap().to_string();
    wait_for_status(&api, &alpaca_id, "completed", Duration::from_secs(60)).await;
    let first: Value = serde_json::from_str(
        export(&api, &alpaca_id, "train")
            .await
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(first["instruction"].is_string() && first["output"].is_string());

    let metrics = api.metrics().await;
    assert!(
        metrics.contains(r#"orchestrator_datagen_shards_total{outcome="done"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"orchestrator_datagen_examples_total{source="synthetic"}"#),
        "{metrics}"
    );
    // Status counts the runs (its snapshot is up to a second old).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = api.get("/api/v1/status").await;
        if status["activity"]["datasets"]["completed"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The original orchestrator's route starts the same kind of run.
    let (code, aliased) = api
        .post(
            "/api/master/training",
            &json!({"name": "compat", "count": 100}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{aliased}");
    assert_eq!(aliased["plan"]["count"], 100);
    assert_eq!(
        api.delete(&format!("/api/v1/datasets/{alpaca_id}")).await,
        204
    );
    let (code, _) = api.get(&format!("/api/v1/datasets/{alpaca_id}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_name_the_field_and_create_nothing() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    for (body, field) in [
        (json!({"name": "x", "count": 0}), "count"),
        (json!({"name": "x", "count": 10_000_001}), "count"),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "oracle"}]}),
            "sources",
        ),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "synthetic", "weight": 0}]}),
            "sources",
        ),
        (
            json!({"name": "x", "count": 10, "eval_fraction": 0.9}),
            "eval_fraction",
        ),
        (
            json!({"name": "x", "count": 10, "shard_size": 0}),
            "shard_size",
        ),
        (json!({"name": " ", "count": 10}), "name"),
        (
            json!({"name": "x", "count": 10, "format": "yaml"}),
            "format",
        ),
        (
            json!({"name": "x", "count": 10, "filters": {"min_chars": 9, "max_chars": 3}}),
            "filters",
        ),
    ] {
        let (code, answer) = api.post("/api/v1/datasets", &body).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let (_, listed) = api.get("/api/v1/datasets").await;
    assert_eq!(listed["datasets"], json!([]));
    assert_eq!(api.queue("datagen").await["pending"], 0);
}

#[tokio::test]
async fn a_cancelled_run_generates_no_more_shards() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    let run = create(
        &api,
        json!({"name": "big", "count": 1_000_000, "shard_size": 1_000}),
    )
    .await;
    let id = run["id"].as_str().unwrap();
    assert_eq!(api.queue("datagen").await["pending"], 1_000);
    // Status (and so the live events) shows the run under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = api.get("/api/v1/status").await;
        let listed = status["datasets"].as_array().cloned().unwrap_or_default();
        if let Some(progress) = listed.iter().find(|d| d["id"] == id) {
            assert_eq!(progress["shards_total"], 1_000, "{progress}");
            assert_eq!(progress["shards_done"], 0, "{progress}");
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, cancelled) = api
        .post(&format!("/api/v1/datasets/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(code, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    // A worker now finds the run cancelled: every shard job ends, none is generated.
    let _worker = setup.start_worker(&["--queues", "datagen"]);
    api.wait_for_done("datagen", 1_000, Duration::from_secs(60))
        .await;
    let (_, after) = api.get(&format!("/api/v1/datasets/{id}")).await;
    assert_eq!(after["shards_done"], 0, "{after}");
    assert_eq!(after["status"], "cancelled");
}

#[tokio::test]
async fn a_worker_killed_mid_run_leaves_no_gap_and_no_repeat() {
    let setup = Setup::new(Backend::redis()).env("ORCH_LEASE_MS", "2000");
    let api = setup.start_api(&[]).await;
    let doomed = setup.start_worker(&["--queues", "datagen"]);
    let run = create(
        &api,
        json!({"name": "chaos", "count": 200_000, "shard_size": 10_000, "seed": 3}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, now) = api.get(&format!("/api/v1/datasets/{id}")).await;
        if now["shards_done"].as_u64().unwrap() >= 2 {
            // Killed with shards still to do, or nothing here is tested.
            assert!(now["shards_done"].as_u64().unwrap() < 20, "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.signal(libc::SIGKILL);
    let _survivor = setup.start_worker(&["--queues", "datagen"]);
    let run = wait_for_status(&api, &id, "completed", Duration::from_secs(120)).await;
    assert_eq!(run["shards_done"], 20, "{run}");
    let train = export(&api, &id, "train").await;
    let lines: Vec<&str> = train.lines().collect();
    assert_eq!(
        lines.len() as u64,
        run["summary"]["train"].as_u64().unwrap()
    );
    let unique: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(unique.len(), lines.len(), "a repeated line");

    // The same plan generated in one process gives the very same lines.
    let calm = Setup::new(Backend::Embedded);
    let reference = calm.start_api(&[]).await;
    let again = create(
        &reference,
        json!({"name": "calm", "count": 200_000, "shard_size": 10_000, "seed": 3}),
    )
    .await;
    let again_id = again["id"].as_str().unwrap().to_string();
    wait_for_status(&reference, &again_id, "completed", Duration::from_secs(120)).await;
    assert!(
        export(&reference, &again_id, "train").await == train,
        "the datasets differ"
    );
}
