//! Workflows/s end to end: an `orchestrator-api` in embedded mode (its own
//! in-process workers) with one registered model, served by a local
//! OpenAI-compatible server that answers at once, so the figure is the
//! orchestrator's own cost: decomposition, scheduling, store, queue, fan-in.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use orchestrator_tests::{fake_llm::FakeLlm, free_port};
use serde_json::{Value, json};

pub async fn run(api_bin: &Path, count: usize, concurrency: usize) -> anyhow::Result<()> {
    let fake = FakeLlm::start().await;
    let dir = std::env::temp_dir().join(format!("orch-wf-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let registry = dir.join("models.toml");
    std::fs::write(
        &registry,
        format!(
            "[[model]]\nid = \"fast\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"fast\"\nmax_concurrency = 256\n",
            fake.base_url()
        ),
    )?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = Command::new(api_bin)
        .env("ORCH_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ORCH_DATA_DIR", dir.join("data"))
        .env("ORCH_MODELS_CONFIG", &registry)
        // No embedding model: no retrieval, so only orchestration is timed.
        .env("ORCH_MODELS_DIR", dir.join("no-models"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", api_bin.display()))?;
    let http = reqwest::Client::new();
    wait_healthy(&http, &base).await?;

    let started = Instant::now();
    // The shipped research pattern: two parallel tasks and a fan-in.
    let ids: Vec<String> = stream::iter(0..count)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let body =
                    json!({"description": format!("research topic {i}"), "type": "research"});
                let created: Value = http
                    .post(format!("{base}/api/v1/workflows"))
                    .json(&body)
                    .send()
                    .await?
                    .json()
                    .await?;
                created["workflow_id"]
                    .as_str()
                    .map(str::to_string)
                    .context("no workflow id")
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<anyhow::Result<String>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let created_s = started.elapsed().as_secs_f64();
    for id in &ids {
        loop {
            let workflow: Value = http
                .get(format!("{base}/api/v1/workflows/{id}"))
                .send()
                .await?
                .json()
                .await?;
            match workflow["status"].as_str() {
                Some("running") => tokio::time::sleep(Duration::from_millis(20)).await,
                Some("completed") => break,
                other => anyhow::bail!("workflow {id} ended {other:?}: {workflow}"),
            }
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    let _ = api.kill();
    let _ = api.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({
            "bench": "workflows", "workflows": count, "tasks": count * 3,
            "model_calls": fake.calls().len(),
            "created_per_s": count as f64 / created_s,
            "workflows_per_s": count as f64 / total_s,
            "tasks_per_s": (count * 3) as f64 / total_s,
        })
    );
    Ok(())
}

pub async fn wait_healthy(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the API did not become healthy")
}
