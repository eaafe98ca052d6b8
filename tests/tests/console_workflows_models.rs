//! Mission Control's workflows and models pages in a real browser
//! (tests/console/scenarios-workflows-models.mjs) against the real API with
//! an API key: a workflow built in the form runs on a fake remote model slow
//! enough to watch (3 s a task) and its DAG turns done live over the
//! workflow's websocket; the registry lists the models; the chat streams an
//! answer from the real SmolLM2 and a thumbs-up stores it as feedback.

use std::path::Path;

use orchestrator_tests::{
    Backend, Setup, StatusCode,
    console::{self, Scenarios},
    fake_llm::FakeLlm,
};

const KEY: &str = "console-wf-key-0123456789abcdef";

/// Two tasks side by side, then one that needs both.
const PATTERNS: &str = r#"
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
"#;

/// The local SmolLM2 (the chat) and two fake remote models that answer
/// after 3 s (the workflow).
fn registry(base_url: &str) -> String {
    let mut models = String::from(
        r#"
[[model]]
id = "smollm2"
provider = "local"
file = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
max_concurrency = 2
timeout_s = 300
specialties = { general = 0.3 }
"#,
    );
    for id in ["sleepy-a", "sleepy-b"] {
        models.push_str(&format!(
            "\n[[model]]\nid = \"{id}\"\nprovider = \"openai\"\nbase_url = \"{base_url}\"\n\
             model = \"{id}\"\nmax_concurrency = 8\ntimeout_s = 60\n\
             cost_per_1k_input = 0.01\ncost_per_1k_output = 0.02\n\
             specialties = {{ general = 0.8, summarization = 0.6 }}\n"
        ));
    }
    models
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_and_models_pages_in_embedded_mode() {
    pages_in_a_browser(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_and_models_pages_in_redis_mode() {
    pages_in_a_browser(Backend::redis()).await;
}

async fn pages_in_a_browser(backend: Backend) {
    let fake = FakeLlm::start().await;
    let config =
        std::env::temp_dir().join(format!("orch-console-wf-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&config).unwrap();
    let embedded = matches!(backend, Backend::Embedded);
    let setup = Setup::new(backend)
        .env(
            "ORCH_MODELS_CONFIG",
            &write(&config, "models.toml", &registry(&fake.base_url())),
        )
        .env(
            "ORCH_WORKFLOW_PATTERNS",
            &write(&config, "patterns.toml", PATTERNS),
        )
        .env("ORCH_API_KEYS", KEY);
    let mut api = setup.start_api(&[]).await;
    api.key = Some(KEY.to_string());
    // In Redis mode the tasks and the context pack's embeddings run in a
    // worker process.
    let _worker = (!embedded).then(|| setup.start_worker(&["--queues", "inference,embed"]));

    console::run(Scenarios {
        base: &api.base,
        mode: if embedded { "embedded" } else { "redis" },
        key: Some(KEY),
        only: &["workflows", "models"],
        extra: &[],
        screenshots: embedded,
    })
    .await;

    // The workflow's three tasks went to the model the form preferred.
    let asked = fake
        .calls()
        .iter()
        .filter(|call| call.model == "sleepy-a")
        .count();
    assert_eq!(asked, 3, "{:?}", fake.calls());
    let (status, body) = api.get("/api/v1/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["activity"]["feedback_buffered"].as_u64() >= Some(1),
        "{body}"
    );
    assert!(
        body["activity"]["workflows"]["completed"].as_u64() >= Some(1),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(&config);
}
