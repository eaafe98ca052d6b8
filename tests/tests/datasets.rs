//! Training-data generation runs end to end: the API queues shard jobs, the
//! fleet's `datagen` workers generate them, the export streams the dataset.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use orchestrator_tests::{Api, Backend, Setup, StatusCode, site::Site};
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

/// Examples a run has drawn: those kept and those each filter dropped.
fn examples_seen(run: &Value) -> u64 {
    let dropped: u64 = run["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    run["kept"].as_u64().unwrap() + dropped
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
    assert_eq!(examples_seen(&run), 20_000, "{run}");
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
        (
            json!({"name": "x", "count": 10_000_000, "shard_size": 999}),
            "at least 1000",
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
        (
            json!({"name": "x", "count": 10, "filters": {"near_duplicates": 0.2}}),
            "near_duplicates",
        ),
        (
            json!({"name": "x", "count": 10, "filters": {"languages": ["klingon"]}}),
            "language",
        ),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "context_pack"}]}),
            "pack",
        ),
        (
            json!({"name": "x", "count": 10,
                   "sources": [{"source": "context_pack", "pack": "0192d5e0-0000-7000-8000-000000000000"}]}),
            "no pack",
        ),
        (
            json!({"name": "x", "count": 10,
                   "sources": [{"source": "campaign", "campaign": "0192d5e0-0000-7000-8000-000000000000"}]}),
            "no campaign",
        ),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "synthetic", "pack": "p"}]}),
            "synthetic takes no",
        ),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "llm"}]}),
            "model",
        ),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "llm", "model": "oracle-9"}]}),
            "no model",
        ),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "workflows"}]}),
            "no workflow task",
        ),
        (
            json!({"name": "x", "count": 10, "sources": [{"source": "feedback"}]}),
            "feedback",
        ),
    ] {
        refused(&api, "/api/v1/datasets", body, field).await;
    }
    let (_, listed) = api.get("/api/v1/datasets").await;
    assert_eq!(listed["datasets"], json!([]));
    assert_eq!(api.queue("datagen").await["pending"], 0);

    // A local model whose weights are not on this machine cannot write.
    let empty = tempfile_dir("no-models");
    let bare = Setup::new(Backend::Embedded).env("ORCH_MODELS_DIR", empty.to_str().unwrap());
    let api = bare.start_api(&["--no-workers"]).await;
    refused(
        &api,
        "/api/v1/datasets",
        json!({"name": "x", "count": 10, "sources": [{"source": "llm", "model": "smollm2"}]}),
        "weights",
    )
    .await;
}

/// A 422 whose message says `says`.
async fn refused(api: &Api, path: &str, body: Value, says: &str) {
    let (code, answer) = api.post(path, &body).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{body}: {message}");
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orch-{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every exported example of a run, train and eval, as (prompt, answer).
async fn examples(api: &Api, id: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for split in ["train", "eval"] {
        for line in export(api, id, split).await.lines() {
            let example: Value = serde_json::from_str(line).unwrap();
            out.push((
                example["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                example["messages"][1]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn packs_and_feedback_are_read_as_they_were_when_the_run_was_created() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    let (code, pack) = api
        .post(
            "/api/v1/context-packs",
            &json!({"name": "docs", "documents": [
                {"source": "queue.md", "text": "# Queues\nJobs wait in a queue until a worker leases them and runs them to the end.\n## Leases\nA lease expires unless the worker renews it in time, and then the job is delivered again."},
                {"source": "german.md", "text": "# Warteschlangen\nAufträge warten in einer Warteschlange, bis ein Arbeiter sie übernimmt und ausführt. Danach meldet der Arbeiter jeden erledigten Auftrag zurück an den Server."},
                {"source": "add.rs", "text": "/// Adds two numbers and returns their sum.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"}
            ]}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{pack}");
    let pack_id = pack["pack"]["id"].as_str().unwrap();
    let corrections = [
        "The capital of Peru is Lima.",
        "Water boils at 100 degrees Celsius at sea level.",
        "A byte holds eight bits.",
    ];
    for (n, correction) in corrections.iter().enumerate() {
        let (code, stored) = api
            .post(
                "/api/v1/feedback",
                &json!({"prompt": format!("Question {n}?"), "response": "No idea.", "rating": 1,
                        "correction": correction}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{stored}");
    }
    let run = create(
        &api,
        json!({"name": "docs", "count": 600, "shard_size": 150, "eval_fraction": 0.2,
               "sources": [{"source": "context_pack", "pack": pack_id, "weight": 2},
                           {"source": "feedback", "weight": 1}],
               "filters": {"languages": ["eng"], "near_duplicates": 0.8}}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    // Given after the run was created: not in its snapshot.
    let (code, _) = api
        .post(
            "/api/v1/feedback",
            &json!({"prompt": "Late?", "response": "No.", "rating": 1,
                    "correction": "LATE-ANSWER given after the run began."}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let _worker = setup.start_worker(&["--queues", "datagen"]);
    let run = wait_for_status(&api, &id, "completed", Duration::from_secs(60)).await;

    assert!(
        run["sources"]["context_pack"].as_u64().unwrap() > 0,
        "{run}"
    );
    assert!(run["sources"]["feedback"].as_u64().unwrap() > 0, "{run}");
    // The German section's answers are dropped, and so are the many
    // repeats of a handful of records.
    assert!(run["dropped"]["language"].as_u64().unwrap() > 0, "{run}");
    assert!(run["dropped"]["duplicate"].as_u64().unwrap() > 400, "{run}");
    assert_eq!(examples_seen(&run), 600, "{run}");

    let pairs = examples(&api, &id).await;
    assert!(!pairs.is_empty());
    let mut answers = HashSet::new();
    for (prompt, answer) in &pairs {
        assert!(
            !answer.contains("LATE-ANSWER"),
            "read after creation: {answer}"
        );
        assert!(
            !answer.contains("Warteschlange"),
            "a German answer kept: {answer}"
        );
        if prompt.starts_with("Question ") {
            assert!(corrections.contains(&answer.as_str()), "{prompt}: {answer}");
        }
        answers.insert(answer.clone());
    }
    // Code is explained by its own doc comment; a section titled by its heading.
    assert!(
        answers.contains("Adds two numbers and returns their sum."),
        "{answers:?}"
    );
    assert!(answers.contains("Leases"), "{answers:?}");
    assert!(
        pairs
            .iter()
            .any(|(prompt, answer)| prompt.contains("\"Leases\" of queue.md")
                && answer.contains("lease expires")),
        "{pairs:?}"
    );
    assert!(
        run["families"]["pack_explain"].as_u64().unwrap() > 0,
        "{run}"
    );
}

#[tokio::test]
async fn campaign_items_become_instruction_pairs_with_their_own_values() {
    let site = Site::start(0, Duration::ZERO).await;
    let setup = Setup::new(Backend::Embedded).env("ORCH_CAMPAIGN_ALLOW", "127.0.0.1/32");
    let api = setup.start_api(&[]).await;
    let (code, campaign) = api
        .post(
            "/api/v1/campaigns",
            &json!({"name": "shop", "type": "seo_mining",
                    "config": {"urls": [site.url("/")], "allow": ["127.0.0.1/32"], "max_depth": 2,
                               "per_host_interval_ms": 0}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{campaign}");
    let campaign_id = campaign["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, now) = api.get(&format!("/api/v1/campaigns/{campaign_id}")).await;
        if now["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = create(
        &api,
        json!({"name": "items", "count": 2_000, "shard_size": 500,
               "sources": [{"source": "campaign", "campaign": campaign_id}]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    let run = wait_for_status(&api, &id, "completed", Duration::from_secs(60)).await;
    for family in [
        "campaign_to_json",
        "campaign_extract",
        "campaign_describe",
        "campaign_compare",
    ] {
        assert!(
            run["families"][family].as_u64().unwrap_or(0) > 0,
            "{family}: {run}"
        );
    }
    let pairs = examples(&api, &id).await;
    let mut extracted = 0;
    for (prompt, answer) in &pairs {
        if prompt.starts_with("Write this ") {
            let object: Value = serde_json::from_str(answer).unwrap();
            // Every field of the JSON answer is stated in the prompt.
            for (key, value) in object.as_object().unwrap() {
                assert!(
                    prompt.contains(&format!("{key}: {}", value.as_str().unwrap())),
                    "{prompt} / {answer}"
                );
            }
        }
        if prompt.starts_with("What is the ") {
            assert!(prompt.contains(answer.as_str()), "{prompt} / {answer}");
            extracted += 1;
        }
    }
    assert!(extracted > 0);
    assert!(
        pairs.iter().any(|(prompt, _)| prompt.contains("Product")),
        "the shop's products: {pairs:?}"
    );
}

#[tokio::test]
async fn a_local_model_writes_and_checks_examples_within_its_token_budget() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let run = create(
        &api,
        json!({"name": "self-instruct", "count": 2, "shard_size": 1, "eval_fraction": 0,
               "sources": [{"source": "llm", "model": "smollm2", "validator": "smollm2",
                            "max_tokens_total": 20_000, "max_answer_tokens": 48,
                            "seed_prompts": ["Name three primary colours.",
                                             "Give the plural of mouse.",
                                             "What is 12 times 12?"]}]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    let run = wait_for_status(&api, &id, "completed", Duration::from_secs(300)).await;
    assert_eq!(examples_seen(&run), 2, "{run}");
    assert!(run["llm_tokens"].as_u64().unwrap() > 50, "{run}");
    assert!(run["llm_tokens"].as_u64().unwrap() <= 20_000, "{run}");
    assert!(run["llm_tokens_per_s"].as_f64().unwrap() > 0.0, "{run}");
    // Without the budget to finish even one call, nothing is written.
    let starved = create(
        &api,
        json!({"name": "starved", "count": 4, "shard_size": 2,
               "sources": [{"source": "llm", "model": "smollm2", "max_tokens_total": 2}]}),
    )
    .await;
    let starved_id = starved["id"].as_str().unwrap().to_string();
    let starved = wait_for_status(&api, &starved_id, "completed", Duration::from_secs(120)).await;
    assert_eq!(starved["kept"], 0, "{starved}");
    assert!(
        starved["dropped"]["budget"].as_u64().unwrap() >= 2,
        "{starved}"
    );
}

#[tokio::test]
async fn a_training_run_trains_on_a_datasets_train_split_and_evaluates_on_its_eval_split() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_TRAIN_POLL_MS", "200");
    let api = setup.start_api(&[]).await;
    let run = create(
        &api,
        json!({"name": "to-train", "count": 40, "shard_size": 20, "seed": 5,
               "eval_fraction": 0.25, "filters": {"max_chars": 160}}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    // A dataset that does not exist is named.
    refused(
        &api,
        "/api/v1/training/runs",
        json!({"dataset": "0192d5e0-0000-7000-8000-000000000000"}),
        "no dataset",
    )
    .await;
    // One that never completed is not trained on.
    let stopped = create(&api, json!({"name": "stopped", "count": 5_000_000})).await;
    let stopped_id = stopped["id"].as_str().unwrap();
    api.post(&format!("/api/v1/datasets/{stopped_id}/cancel"), &json!({}))
        .await;
    let (code, body) = api
        .post("/api/v1/training/runs", &json!({"dataset": stopped_id}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "dataset_not_ready", "{body}");
    let dataset = wait_for_status(&api, &id, "completed", Duration::from_secs(60)).await;
    let (train, eval) = (
        dataset["summary"]["train"].as_u64().unwrap(),
        dataset["summary"]["eval"].as_u64().unwrap(),
    );
    assert!(train >= 2 && eval >= 1, "{dataset}");
    let (code, training) = api
        .post(
            "/api/v1/training/runs",
            &json!({"dataset": id, "config": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 4,
                                              "max_seq_len": 192, "seed": 7}}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{training}");
    assert_eq!(training["trigger"], "dataset");
    assert_eq!(
        training["examples"].as_u64().unwrap(),
        train + eval,
        "{training}"
    );
    let run_id = training["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    let finished = loop {
        let (_, now) = api.get(&format!("/api/v1/training/runs/{run_id}")).await;
        if ["promoted", "rejected", "failed"].contains(&now["status"].as_str().unwrap()) {
            break now;
        }
        assert!(Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_ne!(finished["status"], "failed", "{finished}");
    // The dataset's own split, not one drawn by the trainer.
    assert_eq!(
        finished["progress"]["train_examples"].as_u64().unwrap(),
        train,
        "{finished}"
    );
    assert_eq!(
        finished["progress"]["eval_examples"].as_u64().unwrap(),
        eval,
        "{finished}"
    );
}

#[tokio::test]
async fn a_worker_on_a_terminal_draws_the_runs_progress() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&["--no-workers"]).await;
    let log = setup.data_dir.join("terminal.log");
    let _worker = setup.spawn_on_terminal("orchestrator-worker", &["--queues", "datagen"], &log);
    let run = create(
        &api,
        json!({"name": "bar-run", "count": 300_000, "shard_size": 10_000}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_string();
    let text = orchestrator_tests::wait_for_text(&log, "/30 shards", Duration::from_secs(60)).await;
    assert!(text.contains("bar-run"), "{text}");
    wait_for_status(&api, &id, "completed", Duration::from_secs(120)).await;
    // Piped (no terminal), the same worker draws nothing.
    let piped = setup.data_dir.join("piped.log");
    let _quiet = setup.spawn_logged("orchestrator-worker", &["--queues", "datagen"], &[], &piped);
    let again = create(
        &api,
        json!({"name": "quiet-run", "count": 100_000, "shard_size": 10_000}),
    )
    .await;
    wait_for_status(
        &api,
        again["id"].as_str().unwrap(),
        "completed",
        Duration::from_secs(120),
    )
    .await;
    let said = std::fs::read_to_string(&piped).unwrap();
    assert!(!said.contains("shards"), "{said}");
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
