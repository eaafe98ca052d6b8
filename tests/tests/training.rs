//! Learning from feedback with the real SmolLM2 weights: feedback in, a
//! LoRA run, an adapter promoted and served as `smollm2@latest` without a
//! restart; a run that makes things worse rejected; bad feedback refused;
//! a trainer killed mid-run leaving nothing half-published while another
//! trainer picks the run up.

use std::{path::Path, time::Duration};

use orchestrator_tests::{Api, Backend, Setup, StatusCode};
use serde_json::{Value, json};

const RUN_WAIT: Duration = Duration::from_secs(600);

/// Countries and capitals, answered in a house style the base model does
/// not use; held-out examples share the style, so learning it lowers their
/// loss too.
const FACTS: [(&str, &str); 10] = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Egypt", "Cairo"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
];

fn prompt(country: &str) -> String {
    format!("What is the capital of {country}?")
}

fn answer(country: &str, capital: &str) -> String {
    format!("Atlas note: the capital of {country} is {capital}. [orch-atlas]")
}

/// Share of the target's words that appear in `text`.
fn overlap(text: &str, target: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let have = words(text);
    let want = words(target);
    want.iter().filter(|w| have.contains(w)).count() as f64 / want.len() as f64
}

async fn ask(api: &Api, model: &str, question: &str) -> (String, String) {
    let (status, body) = api
        .post(
            "/v1/chat/completions",
            &json!({
                "model": model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 24,
                "temperature": 0,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{model}: {body}");
    (
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
        body["model"].as_str().unwrap().to_string(),
    )
}

async fn give_feedback(api: &Api, facts: &[(&str, &str)]) {
    for (i, (name, code)) in facts.iter().enumerate() {
        // Half as corrections of a bad answer, half as well-rated answers.
        let body = if i % 2 == 0 {
            json!({"prompt": prompt(name), "response": "I don't know.", "rating": 1,
                   "correction": answer(name, code)})
        } else {
            json!({"prompt": prompt(name), "response": answer(name, code), "rating": 5})
        };
        let (status, stored) = api.post("/api/v1/feedback", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{stored}");
        assert_eq!(stored["example"], true, "{stored}");
        assert_eq!(stored["base_model"], "smollm2");
    }
}

async fn wait_for_run(api: &Api, id: &str, done: &[&str]) -> Value {
    let deadline = std::time::Instant::now() + RUN_WAIT;
    loop {
        let (status, run) = api.get(&format!("/api/v1/training/runs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{run}");
        if done.contains(&run["status"].as_str().unwrap()) {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run never reached {done:?}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the API offers `id` as a model (adapter changes reach a
/// serving process by notification, a moment after the run ends).
async fn wait_for_model(api: &Api, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, models) = api.get("/api/v1/models").await;
        assert_eq!(status, StatusCode::OK, "{models}");
        if models["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id)
        {
            return models;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never listed: {models}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn adapters(api: &Api) -> Vec<Value> {
    let (status, body) = api.get("/api/v1/adapters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["adapters"].as_array().unwrap().clone()
}

async fn buffered(api: &Api) -> u64 {
    // A low-rated answer with no correction is stored but teaches nothing;
    // its reply carries the buffer's size.
    let (status, body) = api
        .post(
            "/api/v1/feedback",
            &json!({"prompt": "probe", "response": "meh", "rating": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["example"], false);
    body["buffered"].as_u64().unwrap()
}

fn run_config(learning_rate: f64, epochs: u32) -> Value {
    json!({"learning_rate": learning_rate, "epochs": epochs, "batch_size": 4,
           "max_seq_len": 96, "seed": 7})
}

#[tokio::test]
async fn feedback_becomes_an_adapter_served_as_latest_and_a_worse_run_is_rejected() {
    let setup = Setup::new(Backend::Embedded)
        .env("ORCH_TRAIN_POLL_MS", "200")
        .env("ORCH_TRAIN_BATCH_THRESHOLD", "1000");
    let api = setup.start_api(&[]).await;
    let (name, code) = FACTS[0];
    let target = answer(name, code);
    let (before, served_by) = ask(&api, "smollm2@latest", &prompt(name)).await;
    assert_eq!(
        served_by, "smollm2",
        "no adapter yet: the base serves latest"
    );

    give_feedback(&api, &FACTS).await;
    assert_eq!(buffered(&api).await, FACTS.len() as u64);
    let (status, run) = api
        .post(
            "/api/v1/training/runs",
            &json!({"config": run_config(2e-3, 8)}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    assert_eq!(run["examples"], FACTS.len());
    assert_eq!(buffered(&api).await, 0, "the run took the buffer");
    let (status, busy) = api.post("/api/v1/training/runs", &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "one run per model: {busy}");

    let run = wait_for_run(
        &api,
        run["id"].as_str().unwrap(),
        &["promoted", "rejected", "failed"],
    )
    .await;
    assert_eq!(run["status"], "promoted", "{run}");
    let curve: Vec<f64> = run["progress"]["loss_curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(
        curve.len(),
        16,
        "8 training examples in batches of 4, 8 epochs"
    );
    let last: f64 = curve[curve.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(last < curve[0] * 0.5, "training loss falls: {curve:?}");
    let (eval_before, eval_after) = (
        run["eval_before"].as_f64().unwrap(),
        run["eval_after"].as_f64().unwrap(),
    );
    assert!(eval_after < eval_before, "{run}");
    assert!(run["tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(run["adapter_id"], "smollm2@adapter-v1");

    let listed = adapters(&api).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "active");
    check_peft_files(Path::new(listed[0]["location"].as_str().unwrap()));
    // The scheduler sees the adapter as a model.
    wait_for_model(&api, "smollm2@adapter-v1").await;

    let (after, served_by) = ask(&api, "smollm2@latest", &prompt(name)).await;
    assert_eq!(served_by, "smollm2@adapter-v1");
    assert!(
        overlap(&after, &target) > overlap(&before, &target),
        "tuned {after:?} is not closer to {target:?} than base {before:?}"
    );

    // A run with an absurd learning rate makes held-out loss worse: it is
    // rejected and v1 keeps serving.
    give_feedback(&api, &FACTS[..4]).await;
    let (status, run) = api
        .post(
            "/api/v1/training/runs",
            &json!({"config": run_config(8.0, 2)}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run = wait_for_run(
        &api,
        run["id"].as_str().unwrap(),
        &["promoted", "rejected", "failed"],
    )
    .await;
    assert_eq!(run["status"], "rejected", "{run}");
    let listed = adapters(&api).await;
    let status_of = |id: &str| {
        listed
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status_of("smollm2@adapter-v2").as_deref(), Some("rejected"));
    assert_eq!(status_of("smollm2@adapter-v1").as_deref(), Some("active"));
    let (again, served_by) = ask(&api, "smollm2@latest", &prompt(name)).await;
    assert_eq!(
        (again.as_str(), served_by.as_str()),
        (after.as_str(), "smollm2@adapter-v1")
    );

    // Roll back to the base model, then promote v1 again.
    let (status, body) = api
        .post("/api/v1/adapters/smollm2@adapter-v1/rollback", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], Value::Null);
    let (_, served_by) = ask(&api, "smollm2@latest", &prompt(name)).await;
    assert_eq!(served_by, "smollm2");
    let (status, body) = api
        .post("/api/v1/adapters/smollm2@adapter-v2/rollback", &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api
        .post("/api/v1/adapters/smollm2@adapter-v1/promote", &json!({}))
        .await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("active"))
    );
    let (_, served_by) = ask(&api, "smollm2@latest", &prompt(name)).await;
    assert_eq!(served_by, "smollm2@adapter-v1");

    let metrics = api.metrics().await;
    for line in [
        "orchestrator_training_runs_total{outcome=\"promoted\"} 1",
        "orchestrator_training_runs_total{outcome=\"rejected\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    assert!(metrics.contains("orchestrator_training_loss{base_model=\"smollm2\"}"));
}

/// Distributed mode: the trainer writes the adapter to its own disk and
/// into the store; a second API process with its own data directory, which
/// cannot see the trainer's files, loads it from the store and serves it.
#[tokio::test]
async fn an_adapter_trained_elsewhere_serves_from_another_api_through_the_store() {
    let setup = Setup::new(Backend::redis())
        .env("ORCH_TRAIN_POLL_MS", "200")
        .env("ORCH_TRAIN_BATCH_THRESHOLD", "1000")
        .on_postgres()
        .await;
    let api = setup.start_api(&[]).await;
    let _trainer = setup.start_trainer(&[]);
    give_feedback(&api, &FACTS[..6]).await;
    let (status, run) = api
        .post(
            "/api/v1/training/runs",
            &json!({"config": run_config(2e-3, 6)}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run = wait_for_run(
        &api,
        run["id"].as_str().unwrap(),
        &["promoted", "rejected", "failed"],
    )
    .await;
    assert_eq!(run["status"], "promoted", "{run}");
    // The trainer's directory is on "another machine": gone from here.
    let location = adapters(&api).await[0]["location"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_dir_all(&location).unwrap();

    let mut elsewhere = setup.clone();
    elsewhere.data_dir =
        std::env::temp_dir().join(format!("orch-test-{}", uuid::Uuid::now_v7().simple()));
    let other = elsewhere.start_api(&[]).await;
    let (name, _) = FACTS[0];
    let (_, served_by) = ask(&other, "smollm2@latest", &prompt(name)).await;
    assert_eq!(served_by, "smollm2@adapter-v1");
    let copy = elsewhere
        .data_dir
        .join("adapter-cache")
        .join("smollm2@adapter-v1");
    check_peft_files(&copy);
}

/// The adapter directory holds what PEFT reads: the config and LoRA pairs
/// named and shaped as PEFT names and shapes them for SmolLM2-135M.
fn check_peft_files(dir: &Path) {
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 16);
    assert_eq!(config["lora_alpha"], 32.0);
    assert_eq!(config["target_modules"], json!(["q_proj", "v_proj"]));
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let shape = |name: &str| header[name]["shape"].clone();
    let layer = "base_model.model.model.layers.29.self_attn";
    assert_eq!(
        shape(&format!("{layer}.q_proj.lora_A.weight")),
        json!([16, 576])
    );
    assert_eq!(
        shape(&format!("{layer}.q_proj.lora_B.weight")),
        json!([576, 16])
    );
    assert_eq!(
        shape(&format!("{layer}.v_proj.lora_B.weight")),
        json!([192, 16])
    );
    let tensors = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .count();
    assert_eq!(tensors, 30 * 2 * 2, "30 blocks, q and v, A and B");
}

#[tokio::test]
async fn bad_feedback_and_run_requests_get_4xx_and_change_nothing() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_TRAIN_BATCH_THRESHOLD", "1000");
    let api = setup.start_api(&[]).await;
    let huge = "x".repeat(17 * 1024);
    let cases = [
        (
            json!({"task_id": "0190-nope-1", "rating": 5}),
            StatusCode::NOT_FOUND,
            "no task",
        ),
        (
            json!({"prompt": "p", "response": "r", "rating": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rating",
        ),
        (
            json!({"prompt": "p", "response": "r", "rating": 6}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rating",
        ),
        (
            json!({"prompt": huge, "rating": 5, "correction": "c"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most",
        ),
        (
            json!({"prompt": "p", "rating": 5, "correction": huge}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most",
        ),
        (
            json!({"response": "r", "rating": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "task_id or a prompt",
        ),
        (
            json!({"prompt": "p", "rating": 5, "model": "gpt-9"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no model",
        ),
        (
            json!({"prompt": "p", "rating": "five"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rating",
        ),
        (
            json!({"prompt": "p", "rating": 5, "colour": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
    ];
    for (body, want, message) in cases {
        let (status, reply) = api.post("/api/v1/feedback", &body).await;
        assert_eq!(status, want, "{body:.80}: {reply}");
        let text = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{text:?} lacks {message:?}");
    }
    assert_eq!(buffered(&api).await, 0, "nothing was buffered");

    // Runs: bad settings, too few examples, unknown ids.
    let (status, body) = api
        .post("/api/v1/training/runs", &json!({"config": {"rank": 0}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/training/runs",
            &json!({"config": {"target_modules": ["lm_head"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api.post("/api/v1/training/runs", &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least 2")
    );
    let (status, _) = api.get("/api/v1/training/runs/not-a-uuid").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .get(&format!("/api/v1/training/runs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .post("/api/v1/adapters/smollm2@adapter-v9/promote", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .post("/api/v1/adapters/..%2F..%2Fetc/promote", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, runs) = api.get("/api/v1/training/runs").await;
    assert_eq!(runs["runs"], json!([]));
    assert!(adapters(&api).await.is_empty());
    // Last: the server drops the connection of a refused oversized body, and
    // a request right after it could be sent on that connection.
    let (status, _) = api
        .post_raw(
            "/api/v1/feedback",
            format!(r#"{{"prompt": "{}", "rating": 5}}"#, "y".repeat(200_000)),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let probe: Value = reqwest::Client::new()
        .post(api.url("/api/v1/feedback"))
        .json(&json!({"prompt": "probe", "response": "meh", "rating": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(probe["buffered"], 0, "the refused body stored nothing");
}

#[tokio::test]
async fn a_trainer_killed_mid_run_publishes_nothing_and_another_trainer_finishes_the_run() {
    trainer_killed_mid_run(false).await;
}

/// The run leases are conditional UPDATEs in the store: the same on
/// PostgreSQL.
#[tokio::test]
async fn a_trainer_killed_mid_run_on_postgres_loses_the_lease_to_another() {
    trainer_killed_mid_run(true).await;
}

async fn trainer_killed_mid_run(postgres: bool) {
    let mut setup = Setup::new(Backend::redis())
        .env("ORCH_TRAIN_POLL_MS", "200")
        .env("ORCH_TRAIN_LEASE_MS", "2000")
        .env("ORCH_TRAIN_BATCH_THRESHOLD", "1000");
    if postgres {
        setup = setup.on_postgres().await;
    }
    let api = setup.start_api(&[]).await;
    give_feedback(&api, &FACTS[..6]).await;
    assert_eq!(buffered(&api).await, 6, "six examples buffered");
    let (status, run) = api
        .post(
            "/api/v1/training/runs",
            &json!({"config": {"learning_rate": 2e-3, "epochs": 6, "batch_size": 1, "max_seq_len": 96}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(buffered(&api).await, 0);

    let mut first = setup.start_trainer(&[]);
    let deadline = std::time::Instant::now() + RUN_WAIT;
    loop {
        let (_, run) = api.get(&format!("/api/v1/training/runs/{id}")).await;
        if run["progress"]["step"].as_u64().unwrap_or(0) >= 2 {
            assert_eq!(run["status"], "running");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first trainer never got going: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    assert!(
        adapters(&api).await.is_empty(),
        "nothing published by the killed trainer"
    );

    let _second = setup.start_trainer(&[]);
    let run = wait_for_run(&api, &id, &["promoted", "rejected", "failed"]).await;
    assert_ne!(run["status"], "failed", "{run}");
    assert_eq!(
        run["attempts"], 2,
        "the second trainer took the run over: {run}"
    );
    let listed = adapters(&api).await;
    assert_eq!(listed.len(), 1, "published exactly once: {listed:?}");
    let location = listed[0]["location"].as_str().unwrap();
    assert!(location.ends_with(&format!("{id}-2")), "{location}");
    // Only the finished adapter's directory is left; the killed trainer
    // had not written any.
    let dirs: Vec<String> = std::fs::read_dir(Path::new(location).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, vec![format!("{id}-2")]);
    if run["status"] == "promoted" {
        // The API hears of the adapter over Redis.
        wait_for_model(&api, "smollm2@adapter-v1").await;
        let (_, served_by) = ask(&api, "smollm2@latest", &prompt(FACTS[0].0)).await;
        assert_eq!(served_by, "smollm2@adapter-v1");
    }
}

#[tokio::test]
async fn self_play_adds_reworded_synthetic_examples_counted_apart() {
    let setup = Setup::new(Backend::Embedded)
        .env("ORCH_TRAIN_POLL_MS", "200")
        .env("ORCH_TRAIN_SELF_PLAY", "1")
        .env("ORCH_TRAIN_BATCH_THRESHOLD", "1000");
    let api = setup.start_api(&[]).await;
    give_feedback(&api, &FACTS[..2]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // One synthetic example per human one, then self-play stops.
    while buffered(&api).await < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "self-play added nothing"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        buffered(&api).await,
        4,
        "at most one synthetic per human example"
    );
    let (status, run) = api
        .post("/api/v1/training/runs", &json!({"config": {"epochs": 1}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    assert_eq!(
        (run["examples"].clone(), run["synthetic_examples"].clone()),
        (json!(4), json!(2))
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("orchestrator_feedback_total{origin=\"synthetic\",example=\"true\"} 2"),
        "synthetic feedback is counted apart"
    );
    assert!(metrics.contains("orchestrator_feedback_total{origin=\"human\",example=\"true\"} 2"));
}
