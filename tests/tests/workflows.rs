//! LLM workflows over the real API and workers: the real SmolLM2 weights
//! end to end (tasks, websocket, OpenAI-compatible endpoint, the remote
//! provider against that endpoint), and fan-in, fallback, validation,
//! consensus and bad input with fast models behind a local
//! OpenAI-compatible server.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use orchestrator_tests::{Api, Backend, Setup, StatusCode, fake_llm::FakeLlm, free_port};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const LOCAL_WAIT: Duration = Duration::from_secs(240);
const FAKE_WAIT: Duration = Duration::from_secs(60);

/// A diamond: `left` and `right` run in parallel, `join` needs both.
const DIAMOND: &str = r#"
[[pattern]]
type = "general"
[[pattern.tasks]]
name = "left"
description = "Name one colour for: {request}"
max_tokens = 24
[[pattern.tasks]]
name = "right"
description = "Name one animal for: {request}"
max_tokens = 24
[[pattern.tasks]]
name = "join"
description = "Combine the colour and the animal above for: {request}"
depends_on = ["left", "right"]
max_tokens = 24

[[pattern]]
type = "extraction"
keywords = ["extract"]
[[pattern.tasks]]
name = "extract"
description = "Extract it: {request}"
validation_required = true
max_tokens = 24
"#;

fn config_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orch-wf-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const LOCAL_MODEL: &str = r#"
[[model]]
id = "smollm2"
provider = "local"
file = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
max_concurrency = 2
timeout_s = 300
"#;

fn remote(id: &str, base_url: &str, model: &str, capability: f64) -> String {
    format!(
        "[[model]]\nid = \"{id}\"\nprovider = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"{model}\"\nmax_concurrency = 64\ntimeout_s = 60\nspecialties = {{ general = {capability}, extraction = {capability} }}\n"
    )
}

/// A setup whose registry and patterns are `registry` and [`DIAMOND`].
fn setup(backend: Backend, registry: &str) -> Setup {
    let dir = config_dir();
    let models = write(&dir, "models.toml", registry);
    let patterns = write(&dir, "patterns.toml", DIAMOND);
    Setup::new(backend)
        .env("ORCH_MODELS_CONFIG", &models)
        .env("ORCH_WORKFLOW_PATTERNS", &patterns)
}

async fn create(api: &Api, body: Value) -> String {
    let (status, created) = api.post("/api/v1/workflows", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    created["workflow_id"].as_str().unwrap().to_string()
}

async fn wait_finished(api: &Api, id: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, workflow) = api.get(&format!("/api/v1/workflows/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{workflow}");
        if workflow["status"] != "running" {
            return workflow;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workflow {id} still running: {workflow}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message the websocket sends until it closes.
async fn watch(api: &Api, id: &str) -> tokio::task::JoinHandle<Vec<Value>> {
    let url = api
        .url(&format!("/ws/workflows/{id}"))
        .replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) => seen.push(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        seen
    })
}

/// Progress only moves forward and the last message is the final one.
fn assert_ordered(events: &[Value]) {
    assert!(!events.is_empty(), "no events");
    let mut step = -1;
    for event in &events[..events.len() - 1] {
        assert_eq!(event["type"], "status_update", "{events:#?}");
        let current = event["current_step"].as_i64().unwrap();
        assert!(current >= step, "progress went back: {events:#?}");
        step = current;
    }
    let last = events.last().unwrap();
    assert_eq!(last["type"], "workflow_complete", "{events:#?}");
}

#[tokio::test]
async fn local_model_workflow_completes_and_the_websocket_sees_it() {
    let setup = setup(Backend::Embedded, LOCAL_MODEL);
    let api = setup.start_api(&[]).await;
    let id = create(
        &api,
        json!({"description": "a logo for a bakery", "type": "general"}),
    )
    .await;
    let events = watch(&api, &id).await;
    let workflow = wait_finished(&api, &id, LOCAL_WAIT).await;
    assert_eq!(workflow["status"], "completed", "{workflow:#}");
    let tasks = workflow["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    for task in tasks {
        assert_eq!(task["status"], "done", "{task:#}");
        assert_eq!(task["model"], "smollm2");
        assert!(
            !task["output"].as_str().unwrap().trim().is_empty(),
            "{task:#}"
        );
        assert!(task["completion_tokens"].as_i64().unwrap() > 0);
        assert!(task["prompt_tokens"].as_i64().unwrap() > 0);
    }
    // The join task saw both parents' outputs in its prompt.
    assert!(tasks[2]["prompt_tokens"].as_i64() > tasks[0]["prompt_tokens"].as_i64());
    assert_eq!(workflow["result"], tasks[2]["output"]);

    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("websocket closes after the final message")
        .unwrap();
    assert_ordered(&events);
    assert_eq!(events.last().unwrap()["result"], workflow["result"]);

    let metrics = api.metrics().await;
    assert!(
        metrics.contains("orchestrator_llm_tokens_total{model=\"smollm2\",direction=\"output\"}"),
        "{metrics}"
    );
}

/// Collects the text of an SSE chat completion stream.
async fn stream_text(api: &Api, body: &Value) -> (String, Value) {
    let response = api
        .http
        .post(api.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let raw = response.text().await.unwrap();
    let mut text = String::new();
    let mut usage = Value::Null;
    let mut done = false;
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    assert!(done, "stream ended without [DONE]: {raw}");
    (text, usage)
}

#[tokio::test]
async fn chat_completions_serve_the_fleet_and_the_remote_provider_speaks_to_them() {
    let port = free_port();
    let registry = format!(
        "{LOCAL_MODEL}\n{}",
        remote(
            "smollm2-remote",
            &format!("http://127.0.0.1:{port}/v1"),
            "smollm2",
            0.1
        )
    );
    let setup = setup(Backend::Embedded, &registry);
    let api = setup.start_api_at(port, &[]).await;
    let ask = |model: &str, stream: bool| {
        json!({
            "model": model, "stream": stream, "max_tokens": 24,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        })
    };

    let (status, direct) = api
        .post("/v1/chat/completions", &ask("smollm2", false))
        .await;
    assert_eq!(status, StatusCode::OK, "{direct}");
    let text = direct["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("Paris"), "{text}");
    assert!(direct["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Greedy decoding: streaming gives the same text, piece by piece.
    let (streamed, usage) = stream_text(&api, &ask("smollm2", true)).await;
    assert_eq!(streamed, text);
    assert_eq!(
        usage["completion_tokens"],
        direct["usage"]["completion_tokens"]
    );

    // The remote provider, pointed at this server, gets the same answer
    // through HTTP, plain and streamed.
    let (status, remote) = api
        .post("/v1/chat/completions", &ask("smollm2-remote", false))
        .await;
    assert_eq!(status, StatusCode::OK, "{remote}");
    assert_eq!(remote["choices"][0]["message"]["content"], text);
    assert_eq!(
        remote["usage"]["completion_tokens"],
        direct["usage"]["completion_tokens"]
    );
    let (streamed, _) = stream_text(&api, &ask("smollm2-remote", true)).await;
    assert_eq!(streamed, text);

    let (status, models) = api.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"].as_array().unwrap().len(), 2);

    let mut bad_requests = vec![
        (ask("no-such-model", false), StatusCode::NOT_FOUND),
        (
            json!({"model": "smollm2", "messages": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"model": "smollm2", "messages": [{"role": "wizard", "content": "x"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (field, value) in [
        ("max_tokens", json!(0)),
        ("max_tokens", json!(100_000)),
        ("temperature", json!(9)),
        ("n", json!(3)),
    ] {
        let mut body = ask("smollm2", false);
        body[field] = value;
        bad_requests.push((body, StatusCode::UNPROCESSABLE_ENTITY));
    }
    // A prompt longer than the context window is refused, not truncated.
    let long = "word ".repeat(6_000);
    bad_requests.push((
        json!({"model": "smollm2", "messages": [{"role": "user", "content": long}]}),
        StatusCode::UNPROCESSABLE_ENTITY,
    ));
    for (body, want) in bad_requests {
        let (status, answer) = api.post("/v1/chat/completions", &body).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some(), "{answer}");
    }
}

/// Calls the fake received per (model, request step).
fn calls_per_step(fake: &FakeLlm) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for call in fake.calls() {
        *counts.entry(call.user).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn concurrent_fan_in_workflows_run_every_task_exactly_once_across_worker_processes() {
    fan_in_across_workers(false).await;
}

#[tokio::test]
async fn concurrent_fan_in_workflows_run_every_task_exactly_once_on_postgres() {
    fan_in_across_workers(true).await;
}

async fn fan_in_across_workers(postgres: bool) {
    let fake = FakeLlm::start().await;
    let mut setup = setup(
        Backend::redis(),
        &remote("fast", &fake.base_url(), "fast", 0.9),
    );
    if postgres {
        setup = setup.on_postgres().await;
    }
    let api = setup.start_api(&[]).await;
    let _workers: Vec<_> = (0..2)
        .map(|_| setup.start_worker(&["--queues", "inference", "--concurrency", "16"]))
        .collect();
    let count = 40;
    let creates = (0..count).map(|i| {
        let api = &api;
        async move {
            create(
                api,
                json!({"description": format!("job number {i}"), "type": "general"}),
            )
            .await
        }
    });
    let ids = futures::future::join_all(creates).await;
    let events = watch(&api, &ids[0]).await;
    for id in &ids {
        let workflow = wait_finished(&api, id, FAKE_WAIT).await;
        assert_eq!(workflow["status"], "completed", "{workflow:#}");
        let join = &workflow["tasks"][2];
        // The join saw both parents' answers.
        assert_eq!(join["status"], "done");
    }
    let counts = calls_per_step(&fake);
    assert_eq!(fake.calls().len(), count * 3, "each task runs once");
    assert!(
        counts.values().all(|&n| n == 1),
        "a task ran twice: {counts:?}"
    );
    let joins = fake
        .calls()
        .into_iter()
        .filter(|c| c.user.contains("Combine"))
        .collect::<Vec<_>>();
    assert_eq!(joins.len(), count);
    for join in joins {
        assert!(
            join.user.contains("Result of step \"left\"")
                && join.user.contains("Result of step \"right\""),
            "{}",
            join.user
        );
    }
    // Events from worker processes reach the API's websocket through Redis.
    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .unwrap()
        .unwrap();
    assert_ordered(&events);
}

#[tokio::test]
async fn a_failing_primary_falls_back_and_validation_failures_move_on() {
    let fake = FakeLlm::start().await;
    let registry = [
        remote("fail500-big", &fake.base_url(), "fail500-big", 0.99),
        remote("bad-guesser", &fake.base_url(), "bad-guesser", 0.95),
        remote("judge", &fake.base_url(), "judge", 0.9),
        remote("steady", &fake.base_url(), "steady", 0.5),
    ]
    .join("\n");
    let setup = setup(Backend::Embedded, &registry);
    let api = setup.start_api(&[]).await;

    // Fallback: the best-scored model answers 500 (retried, then given up).
    let id = create(&api, json!({"description": "a sunset", "type": "general"})).await;
    let workflow = wait_finished(&api, &id, FAKE_WAIT).await;
    assert_eq!(workflow["status"], "completed", "{workflow:#}");
    for task in workflow["tasks"].as_array().unwrap() {
        assert_eq!(task["plan"]["primary"], "fail500-big");
        assert_ne!(task["model"], "fail500-big");
        let first = &task["attempts"][0];
        assert_eq!(first["model"], "fail500-big", "{task:#}");
        assert_eq!(first["outcome"], "error");
        assert!(first["error"].as_str().unwrap().contains("500"), "{first}");
    }
    let retries = fake
        .calls()
        .iter()
        .filter(|c| c.model == "fail500-big")
        .count();
    assert_eq!(retries, 3 * 4, "each task: one call and three retries");

    // Validation: the primary's answer is judged wrong, the next model's
    // answer passes.
    let prefs = json!(["bad-guesser", "judge", "steady"]);
    let id = create(
        &api,
        json!({"description": "extract the dates", "model_preferences": prefs}),
    )
    .await;
    let workflow = wait_finished(&api, &id, FAKE_WAIT).await;
    assert_eq!(workflow["type"], "extraction");
    let task = &workflow["tasks"][0];
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(task["attempts"][0]["model"], "bad-guesser");
    assert_eq!(task["attempts"][1]["outcome"], "rejected", "{task:#}");
    assert_eq!(task["model"], "judge");
    assert_eq!(task["validation"]["verdict"]["pass"], true, "{task:#}");
    assert_ne!(task["validation"]["validator"], "judge");

    // Consensus: three models answer, the most agreed answer is kept.
    let id = create(&api, json!({"description": "a river", "type": "general", "consensus": 3, "model_preferences": ["steady", "judge", "bad-guesser"]})).await;
    let workflow = wait_finished(&api, &id, FAKE_WAIT).await;
    assert_eq!(workflow["status"], "completed", "{workflow:#}");
    let consensus = &workflow["tasks"][0]["consensus"];
    assert_eq!(consensus["asked"], 3, "{consensus}");
    assert_eq!(consensus["answered"], 3, "{consensus}");
    assert!(
        consensus["agreement"].as_f64().unwrap() > 0.5,
        "{consensus}"
    );
    assert_eq!(workflow["tasks"][0]["model"], consensus["winner"]);

    // The registry lists every model.
    let (_, models) = api.get("/api/v1/models").await;
    assert_eq!(models["models"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn bad_workflow_requests_are_refused_and_bad_model_plans_fall_back() {
    let fake = FakeLlm::start().await;
    let setup = setup(
        Backend::Embedded,
        &remote("planner", &fake.base_url(), "planner", 0.9),
    );
    let api = setup.start_api(&[]).await;
    let huge = "x".repeat(20_000);
    let cases = [
        json!({"description": ""}),
        json!({"description": "   "}),
        json!({"description": huge}),
        json!({"description": "ok", "optimization_target": "fastest"}),
        json!({"description": "ok", "model_preferences": ["gpt-17"]}),
        json!({"description": "ok", "type": "poetry-slam"}),
        json!({"description": "ok", "consensus": 9}),
        json!({"description": "ok", "budget_usd": -1}),
        json!({"description": "ok", "context_packs": ["not-a-uuid"]}),
        json!({"description": "ok", "colour": "blue"}),
        json!({"descr": "missing"}),
    ];
    for body in cases {
        let (status, answer) = api.post("/api/v1/workflows", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some());
    }
    let (status, _) = api.post_raw("/api/v1/workflows", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .get(&format!("/api/v1/workflows/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get("/api/v1/workflows/not-an-id").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Nothing was queued or asked.
    let inference = api.queue("inference").await;
    assert_eq!(inference["pending"], 0, "{inference}");
    assert_eq!(inference["done"], 0, "{inference}");
    assert!(fake.calls().is_empty());

    // A cyclic plan from the model is dropped for the patterns.
    fake.set_plan(r#"{"tasks": [{"name": "a", "description": "x", "depends_on": ["b"]}, {"name": "b", "description": "y", "depends_on": ["a"]}]}"#);
    let (status, created) = api
        .post(
            "/api/v1/workflows",
            &json!({"description": "plan me", "decomposer": "model"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["decomposer"], "patterns");
    assert!(
        created["note"].as_str().unwrap().contains("cycle"),
        "{created}"
    );
    assert_eq!(created["total_steps"], 3);
    let id = created["workflow_id"].as_str().unwrap();
    assert_eq!(
        wait_finished(&api, id, FAKE_WAIT).await["status"],
        "completed"
    );

    // A good plan is used as written.
    fake.set_plan(r#"Here: {"tasks": [{"name": "look", "description": "look around"}, {"name": "tell", "description": "tell what you saw", "depends_on": ["look"]}]}"#);
    let (status, created) = api
        .post(
            "/api/v1/workflows",
            &json!({"description": "plan me again", "decomposer": "model"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["decomposer"], "model");
    assert_eq!(created["total_steps"], 2);
    let workflow = wait_finished(&api, created["workflow_id"].as_str().unwrap(), FAKE_WAIT).await;
    assert_eq!(workflow["tasks"][1]["description"], "tell what you saw");
    assert_eq!(workflow["status"], "completed");
}

#[tokio::test]
async fn a_worker_killed_mid_workflow_loses_nothing_and_counts_nothing_twice() {
    let fake = FakeLlm::start().await;
    let setup = setup(
        Backend::redis(),
        &remote("slow", &fake.base_url(), "slow", 0.9),
    )
    .env("ORCH_LEASE_MS", "2000");
    let api = setup.start_api(&[]).await;
    let mut doomed = setup.start_worker(&["--queues", "inference", "--concurrency", "8"]);
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            create(
                &api,
                json!({"description": format!("crash case {i}"), "type": "general"}),
            )
            .await,
        );
    }
    // Kill it while model calls are in flight and some tasks are done.
    let deadline = tokio::time::Instant::now() + FAKE_WAIT;
    while fake.calls().len() < 12 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker made no calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.signal(libc::SIGKILL);
    doomed.wait_exit(Duration::from_secs(10)).await;
    let _survivor = setup.start_worker(&["--queues", "inference", "--concurrency", "8"]);
    for id in &ids {
        let workflow = wait_finished(&api, id, FAKE_WAIT).await;
        assert_eq!(workflow["status"], "completed", "{workflow:#}");
        // A completion stored twice would count a step twice.
        assert_eq!(workflow["done_steps"], 3, "{workflow:#}");
        for task in workflow["tasks"].as_array().unwrap() {
            assert_eq!(task["status"], "done");
            assert!(
                task["output"]
                    .as_str()
                    .unwrap()
                    .starts_with("answer from slow")
            );
        }
    }
    // Calls in flight at the kill ran again; nothing else did.
    let joins = fake
        .calls()
        .iter()
        .filter(|c| c.user.contains("Combine"))
        .count();
    assert!(joins >= 12, "every join ran: {joins}");
}

#[tokio::test]
async fn ready_tasks_whose_push_was_lost_are_queued_at_the_next_start() {
    let fake = FakeLlm::start().await;
    let setup = setup(
        Backend::redis(),
        &remote("fast", &fake.base_url(), "fast", 0.9),
    );
    let Backend::Redis { url, prefix } = setup.backend.clone() else {
        unreachable!()
    };
    let api = setup.start_api(&[]).await;
    // No worker runs yet, so the first tasks wait in Redis...
    let id = create(
        &api,
        json!({"description": "lost and found", "type": "general"}),
    )
    .await;
    drop(api);
    // ...and are lost, as if the API died between storing the workflow and
    // pushing its first tasks.
    let keys = std::process::Command::new("redis-cli")
        .args(["-u", &url, "--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .expect("redis-cli (installed with redis-server)");
    for key in String::from_utf8(keys.stdout).unwrap().lines() {
        let deleted = std::process::Command::new("redis-cli")
            .args(["-u", &url, "DEL", key])
            .status()
            .unwrap();
        assert!(deleted.success());
    }
    let api = setup.start_api(&[]).await;
    let _worker = setup.start_worker(&["--queues", "inference"]);
    let workflow = wait_finished(&api, &id, FAKE_WAIT).await;
    assert_eq!(workflow["status"], "completed", "{workflow:#}");
    assert_eq!(fake.calls().len(), 3);
}

#[tokio::test]
async fn cancelling_a_workflow_stops_its_running_tasks_and_skips_the_rest() {
    let fake = FakeLlm::start().await;
    let setup = setup(
        Backend::Embedded,
        &remote("sleepy", &fake.base_url(), "sleepy", 0.9),
    );
    let api = setup.start_api(&[]).await;
    let id = create(&api, json!({"description": "cancel me", "type": "general"})).await;
    // The two first steps are calling the model (3 s each).
    let deadline = tokio::time::Instant::now() + FAKE_WAIT;
    loop {
        let (_, workflow) = api.get(&format!("/api/v1/workflows/{id}")).await;
        let running = workflow["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"] == "running")
            .count();
        if running == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{workflow:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, workflow) = api
        .post(&format!("/api/v1/workflows/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{workflow}");
    assert_eq!(workflow["status"], "cancelled", "{workflow:#}");
    // A step whose answer came back first may be done; the join (which
    // needs both) and every unfinished step are cancelled.
    let tasks = workflow["tasks"].as_array().unwrap();
    for task in tasks {
        let status = task["status"].as_str().unwrap();
        assert!(["cancelled", "done"].contains(&status), "{workflow:#}");
    }
    let join = tasks.iter().find(|t| t["name"] == "join").unwrap();
    assert_eq!(join["status"], "cancelled", "{workflow:#}");
    let running_then = tasks
        .iter()
        .filter(|t| t["name"] != "join" && t["status"] == "cancelled")
        .count();
    assert!(
        running_then >= 1,
        "no running step was stopped: {workflow:#}"
    );
    // Long after the model would have answered, the join never ran and
    // nothing came back to life.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let combines = fake
        .calls()
        .iter()
        .filter(|c| c.user.contains("Combine"))
        .count();
    assert_eq!(combines, 0, "a task of the cancelled workflow ran");
    let (_, workflow) = api.get(&format!("/api/v1/workflows/{id}")).await;
    assert_eq!(workflow["status"], "cancelled", "{workflow:#}");
    let queue = api.queue("inference").await;
    assert_eq!(queue["running"], 0, "{queue}");
    assert!(
        queue["cancelled"].as_u64().unwrap() >= running_then as u64,
        "{queue}"
    );
    let (status, body) = api
        .post(&format!("/api/v1/workflows/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = api
        .post(
            &format!("/api/v1/workflows/{}/cancel", uuid::Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
