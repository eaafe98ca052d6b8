//! Running Mission Control's browser scenarios (tests/console, Debian's
//! chromium driven by playwright-core) from the Rust tests.

use std::{path::PathBuf, process::Command};

/// What to run and against what.
pub struct Scenarios<'a> {
    pub base: &'a str,
    /// `embedded` or `redis`.
    pub mode: &'a str,
    pub key: Option<&'a str>,
    /// Scenario names; empty: the core ones (no model or site needed).
    pub only: &'a [&'a str],
    /// Further `--name value` arguments for the scenarios.
    pub extra: &'a [(&'a str, String)],
    /// Write screenshots into docs/console.
    pub screenshots: bool,
}

/// Runs the scenarios (off the async runtime: fixture servers of the test
/// keep answering) and returns their output, failing the test with it when
/// any scenario fails or the browser logged an error.
pub async fn run(scenarios: Scenarios<'_>) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/console` \
         (deploy/scripts/test.sh does)"
    );
    let mut command = Command::new("node");
    command
        .arg(dir.join("run.mjs"))
        .args(["--base", scenarios.base, "--mode", scenarios.mode]);
    if let Some(key) = scenarios.key {
        command.args(["--key", key]);
    }
    if !scenarios.only.is_empty() {
        command.args(["--only", &scenarios.only.join(",")]);
    }
    for (name, value) in scenarios.extra {
        command.arg(format!("--{name}")).arg(value);
    }
    if scenarios.screenshots {
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&shots).expect("docs/console");
        command.arg("--shots").arg(shots);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join the browser run")
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser scenarios failed:\n{stdout}\n{stderr}"
    );
    for name in scenarios.only {
        assert!(
            stdout.contains(&format!(r#""scenario":"{name}","ok":true"#)),
            "{name} did not run: {stdout}"
        );
    }
    println!("{stdout}");
    stdout
}
