//! Memory of an `orchestrator-api` process serving the local model: its
//! resident set when ready, then its peak and current resident set after
//! answering one chat (prompt plus `tokens` new tokens), read from
//! /proc/PID/status.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context;
use orchestrator_tests::free_port;
use serde_json::{Value, json};

pub async fn run(
    api_bin: &Path,
    models_dir: &Path,
    prompt: &str,
    tokens: u32,
) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("orch-mem-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = Command::new(api_bin)
        .env("ORCH_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ORCH_DATA_DIR", dir.join("data"))
        .env("ORCH_MODELS_DIR", models_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", api_bin.display()))?;
    let pid = api.id();
    let http = reqwest::Client::new();
    let outcome = async {
        super::workflows::wait_healthy(&http, &base).await?;
        let ready = status_mb(pid, "VmRSS")?;
        let body = json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "temperature": 0,
        });
        let answer: Value = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let completion_tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        anyhow::ensure!(completion_tokens > 0, "no answer: {answer}");
        Ok::<_, anyhow::Error>(json!({
            "bench": "api_memory",
            "model": "smollm2",
            "completion_tokens": completion_tokens,
            "rss_ready_mb": ready,
            "peak_rss_mb": status_mb(pid, "VmHWM")?,
            "rss_after_chat_mb": status_mb(pid, "VmRSS")?,
        }))
    }
    .await;
    let _ = api.kill();
    let _ = api.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", outcome?);
    Ok(())
}

/// A `kB` field of /proc/PID/status, in MiB.
fn status_mb(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}
