//! The original orchestrator's paths over a real API: each alias answers in
//! its documented shape, camelCase campaign fields land where the README
//! says, bad bodies get the v1 routes' 422s, the keys guard the aliases
//! like every other route, and the singular websocket path streams progress
//! in percent.

use std::time::{Duration, Instant};

use futures::StreamExt;
use orchestrator_tests::{Api, Backend, Setup, StatusCode, fake_llm::FakeLlm, site::Site};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "compat-key-0123456789abcdef";
const LOOPBACK: &str = "127.0.0.1/32";

/// Two tasks in a row, so a watcher sees progress halfway.
const TWO_STEPS: &str = r#"
[[pattern]]
type = "general"
[[pattern.tasks]]
name = "draft"
description = "Draft: {request}"
max_tokens = 24
[[pattern.tasks]]
name = "polish"
description = "Polish the draft above: {request}"
depends_on = ["draft"]
max_tokens = 24
"#;

/// GETs `path` until the first status snapshot is there (a second at most).
async fn get_snapshot(api: &Api, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api.get(path).await;
        if status == StatusCode::OK && ready(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn status_and_metrics_answer_in_the_original_shapes() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    for _ in 0..5 {
        api.push(json!({"queue": "noop", "payload": {"sleep_ms": 0}}))
            .await;
    }
    api.wait_for_done("noop", 5, Duration::from_secs(30)).await;

    let status = get_snapshot(&api, "/api/master/status", |_| true).await;
    assert_eq!(status["status"], "running", "{status:#}");
    assert!(status["uptime"].is_u64(), "{status:#}");
    assert!(status["timestamp"].is_u64(), "{status:#}");
    let (code, v1) = api.get("/api/v1/status").await;
    assert_eq!(code, StatusCode::OK, "{v1}");
    assert_eq!(status["version"], v1["version"]);
    let system = &status["system"];
    assert_eq!(system["version"], v1["version"]);
    assert_eq!(system["uptime_s"], status["uptime"]);
    assert_eq!(system["taken_at"], status["timestamp"]);
    assert_eq!(system["system"]["state"], status["status"]);
    for field in ["subsystems", "queues"] {
        assert!(system[field].is_array(), "{field}: {system:#}");
    }
    assert!(system["fleet"].is_object() && system["throughput"].is_object());

    let metrics = get_snapshot(&api, "/api/master/metrics", |m| {
        m["queues"]["done"].as_u64() >= Some(5)
    })
    .await;
    let throughput = &metrics["throughput"];
    for field in ["jobs_per_s_10s", "jobs_per_s_1m", "ratio"] {
        assert!(throughput[field].is_f64(), "{field}: {metrics:#}");
    }
    assert!(throughput["target"].is_u64(), "{metrics:#}");
    let queues = &metrics["queues"];
    assert_eq!(
        queues["count"].as_u64(),
        v1["queues"].as_array().map(|q| q.len() as u64)
    );
    for field in ["pending", "running", "dead"] {
        assert!(queues[field].is_u64(), "{field}: {metrics:#}");
    }
    let fleet = &metrics["fleet"];
    assert_eq!(fleet["by_kind"]["api"], 1, "{metrics:#}");
    let total: u64 = fleet["by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(fleet["total"], total);
    assert!(metrics["timestamp"].is_u64());
}

#[tokio::test]
async fn aliases_need_the_key_like_every_route() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_API_KEYS", KEY);
    let mut api = setup.start_api(&["--no-workers"]).await;
    let socket = format!("/ws/workflow/{}", uuid::Uuid::now_v7());
    let body = json!({"description": "x"});
    for (post, path) in [
        (false, "/api/master/status"),
        (false, "/api/master/metrics"),
        (true, "/api/master/workflow"),
        (true, "/api/master/campaign"),
        (false, "/api/master/campaigns"),
        (true, "/api/v1/workflow/execute"),
        (false, socket.as_str()),
    ] {
        let (status, reply) = if post {
            api.post(path, &body).await
        } else {
            api.get(path).await
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "unauthorized", "{path}");
    }
    api.key = Some(KEY.into());
    let (status, reply) = api.get("/api/master/campaigns").await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

async fn created_campaign(api: &Api, body: Value) -> Value {
    let (status, created) = api.post("/api/master/campaign", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("campaign id");
    let (status, read) = api.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["id"], created["id"]);
    read
}

#[tokio::test]
async fn camel_case_campaign_fields_land_in_goals_and_resources() {
    let site = Site::start(0, Duration::ZERO).await;
    let setup = Setup::new(Backend::Embedded).env("ORCH_CAMPAIGN_ALLOW", LOOPBACK);
    let api = setup.start_api(&[]).await;
    let config = json!({"urls": [site.url("/")], "allow": [LOOPBACK], "per_host_interval_ms": 0});

    let seo = created_campaign(
        &api,
        json!({"name": "camel", "type": "seo_mining", "config": config,
               "minSites": 1, "schemaTypes": ["Product"], "maxWorkers": 2, "maxMemoryMB": 64}),
    )
    .await;
    assert_eq!(
        seo["goals"],
        json!({"min_sites": 1, "schema_types": ["Product"]})
    );
    assert_eq!(
        seo["resources"],
        json!({"max_workers": 2, "max_memory_mb": 64})
    );

    let storybook = created_campaign(
        &api,
        json!({"name": "stories", "type": "storybook_discovery",
               "config": {"urls": [site.url("/sb8/")], "allow": [LOOPBACK]},
               "goals": {"minComponents": 3}, "resources": {"maxWorkers": 1}}),
    )
    .await;
    assert_eq!(storybook["goals"], json!({"min_components": 3}));
    assert_eq!(storybook["resources"]["max_workers"], 1);

    // The v1 body works through the alias unchanged.
    let snake = created_campaign(
        &api,
        json!({"name": "snake", "type": "seo_mining", "config": config,
               "goals": {"min_sites": 1}, "resources": {"max_workers": 3}}),
    )
    .await;
    assert_eq!(snake["goals"], json!({"min_sites": 1}));
    assert_eq!(snake["resources"]["max_workers"], 3);

    // Bad bodies: the v1 route's errors, nothing stored.
    let unknown = json!({"name": "u", "type": "seo_mining", "config": config, "maxCpus": 4});
    let (status, alias) = api.post("/api/master/campaign", &unknown).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{alias}");
    assert!(
        alias["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxCpus"),
        "{alias}"
    );
    let (status, v1) = api.post("/api/v1/campaigns", &unknown).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v1}");
    assert_eq!(alias["error"]["code"], v1["error"]["code"]);
    let twice = json!({"name": "t", "type": "seo_mining", "config": config,
                       "maxWorkers": 2, "resources": {"max_workers": 3}});
    let (status, reply) = api.post("/api/master/campaign", &twice).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(reply["error"]["message"].is_string(), "{reply}");
    let invalid = json!({"name": "i", "type": "seo_mining", "config": config, "minSites": 0});
    let (status, reply) = api.post("/api/master/campaign", &invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let (status, reply) = api.post_raw("/api/master/campaign", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");

    let (status, listed) = api.get("/api/master/campaigns").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let (_, v1_list) = api.get("/api/v1/campaigns").await;
    let ids = |list: &Value| -> Vec<Value> {
        list["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect()
    };
    assert_eq!(ids(&listed).len(), 3, "{listed:#}");
    assert_eq!(ids(&listed), ids(&v1_list));
    let (status, reply) = api.get("/api/master/campaigns?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
}

fn workflow_setup(fake: &FakeLlm) -> Setup {
    let dir = std::env::temp_dir().join(format!("orch-compat-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut models = String::new();
    for id in ["sleepy", "other"] {
        models.push_str(&format!(
            "[[model]]\nid = \"{id}\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"{id}\"\n\
             max_concurrency = 64\ntimeout_s = 60\nspecialties = {{ general = 0.9 }}\n",
            fake.base_url()
        ));
    }
    let models_path = dir.join("models.toml");
    let patterns_path = dir.join("patterns.toml");
    std::fs::write(&models_path, models).unwrap();
    std::fs::write(&patterns_path, TWO_STEPS).unwrap();
    Setup::new(Backend::Embedded)
        .env("ORCH_MODELS_CONFIG", &models_path.display().to_string())
        .env(
            "ORCH_WORKFLOW_PATTERNS",
            &patterns_path.display().to_string(),
        )
}

/// Every message the websocket at `path` sends until it closes.
async fn watch(api: &Api, path: &str) -> tokio::task::JoinHandle<Vec<Value>> {
    let url = api.url(path).replace("http://", "ws://");
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

#[tokio::test]
async fn workflow_aliases_start_workflows_and_stream_progress_in_percent() {
    let fake = FakeLlm::start().await;
    let setup = workflow_setup(&fake);
    let api = setup.start_api(&[]).await;

    let (status, created) = api
        .post(
            "/api/master/workflow",
            &json!({"description": "a name for a bakery", "type": "general"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["status"], "running");
    assert_eq!(created["total_steps"], 2);
    assert!(created["workflow_id"].is_string());

    let (status, started) = api
        .post(
            "/api/v1/workflow/execute",
            &json!({"description": "a name for a cafe", "type": "general",
                    "model_preferences": {"preferred": ["sleepy"], "avoid": ["other"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["workflow_id"].as_str().expect("workflow_id");
    let events = watch(&api, &format!("/ws/workflow/{id}")).await;
    assert_eq!(started["status"], "started");
    assert!(started["estimated_completion"].is_u64(), "{started}");
    assert_eq!(started["total_steps"], 2);
    assert_eq!(started["ignored"], json!(["model_preferences.avoid"]));
    for model in started["assigned_models"].as_object().unwrap().values() {
        assert_eq!(model, "sleepy", "{started}");
    }

    let events = tokio::time::timeout(Duration::from_secs(60), events)
        .await
        .expect("the websocket closes after the final message")
        .unwrap();
    let (last, updates) = events.split_last().expect("messages");
    assert_eq!(last["type"], "workflow_complete", "{events:#?}");
    assert!(!updates.is_empty(), "{events:#?}");
    let mut percents = Vec::new();
    for update in updates {
        assert_eq!(update["type"], "status_update", "{events:#?}");
        let progress = update["progress"].as_f64().expect("progress");
        assert!((0.0..=100.0).contains(&progress), "{events:#?}");
        percents.push(progress);
    }
    // Halfway through two steps is 50, not 0.5.
    assert!(percents.contains(&50.0), "{percents:?}");
    let (_, workflow) = api.get(&format!("/api/v1/workflows/{id}")).await;
    assert_eq!(workflow["status"], "completed", "{workflow:#}");

    // The original's bodies are checked like v1's.
    for bad in [
        json!({"description": "x", "model_preferences": {"fastest": true}}),
        json!({"description": "x", "model_preferences": {"preferred": ["nope"]}}),
        json!({"description": "x", "surprise": 1}),
        json!({"description": ""}),
    ] {
        let (status, reply) = api.post("/api/v1/workflow/execute", &bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {reply}");
        assert!(reply["error"]["code"].is_string(), "{reply}");
    }
    let (status, reply) = api
        .post(
            "/api/master/workflow",
            &json!({"description": "x", "nope": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let (status, reply) = api
        .get(&format!("/ws/workflow/{}", uuid::Uuid::now_v7()))
        .await;
    assert!(status.is_client_error(), "{status} {reply}");
}
