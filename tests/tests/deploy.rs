//! The deploy/ folder, proven with the real tools this machine has
//! (Debian's `docker-compose`, `prometheus`, `promtool` and
//! `systemd-analyze`; no container runtime or cluster):
//!
//! - `docker-compose config` accepts the compose stack, and every
//!   orchestrator service's command and environment exist in its binary;
//! - `promtool` accepts the Prometheus config and rules, and its unit tests
//!   make every alert fire when it should and stay quiet when it should not;
//! - the real Prometheus server, with the shipped config pointed at an API,
//!   two workers and a trainer on loopback, scrapes them; after a workload
//!   every recording rule, every alert expression and every dashboard
//!   panel's query returns data through its HTTP API;
//! - the Kubernetes manifests render (kustomize's rules, checked against
//!   `kubectl kustomize` where kubectl is installed) and hold what matters:
//!   commands, flags and environment the binaries know, probe paths the
//!   processes serve, ScaledObjects on existing Deployments and on metrics
//!   the processes export;
//! - `systemd-analyze verify` accepts the systemd units, whose commands and
//!   environment files the binaries accept.
//!
//! A missing tool fails the test with the package to install
//! (`deploy/scripts/test-services.sh` installs them).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::Path as UrlPath,
    http::StatusCode as HttpStatus,
    response::{Html, IntoResponse},
    routing::get,
};
use orchestrator_tests::{Api, Backend, Setup, StatusCode, fake_llm::FakeLlm, free_port};
use serde::Deserialize;
use serde_json::{Value, json};

const BINARIES: [&str; 3] = [
    "orchestrator-api",
    "orchestrator-worker",
    "orchestrator-trainer",
];

// ---------------------------------------------------------------------
// Files and tools
// ---------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A tool the deploy tests need; fails loudly when it is not installed.
fn tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: run deploy/scripts/test-services.sh \
             (Debian package {package})"
        )
    })
}

/// Runs `command` and returns its standard output, failing with both
/// outputs when it does not succeed.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{text}"))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("invalid YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn read_yaml(path: &Path) -> Value {
    yaml(&read(path))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------
// What the binaries accept
// ---------------------------------------------------------------------

/// The flags and environment variables one binary's `--help` lists.
#[derive(Debug, Default)]
struct Surface {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

/// Every binary's `--help`, plus the variables the README's Configuration
/// table documents without a flag (read outside clap: RUST_LOG, ...).
struct Surfaces {
    binaries: BTreeMap<String, Surface>,
    plain_env: BTreeSet<String>,
}

impl Surfaces {
    fn read() -> Self {
        let mut binaries = BTreeMap::new();
        for name in BINARIES {
            let help = run_ok(Command::new(orchestrator_tests::binary(name)).arg("--help"));
            let mut surface = Surface::default();
            for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[') {
                let word = word.trim_end_matches([']', '=', '.']);
                if let Some(flag) = word.strip_prefix("--")
                    && !flag.is_empty()
                {
                    surface
                        .flags
                        .insert(flag.split('=').next().unwrap().to_string());
                }
            }
            for part in help.split("[env: ").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                surface.env.insert(name);
            }
            assert!(
                surface.flags.contains("help") && !surface.env.is_empty(),
                "{name} --help lists no flags or variables:\n{help}"
            );
            binaries.insert(name.to_string(), surface);
        }
        // README rows: | `VAR` | — | default | meaning |
        let readme = read(&repo().join("README.md"));
        let plain_env = readme
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let var = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                (cells.next()? == "—").then(|| var.to_string())
            })
            .collect::<BTreeSet<_>>();
        assert!(
            plain_env.contains("RUST_LOG"),
            "README's Configuration table not found: {plain_env:?}"
        );
        Self {
            binaries,
            plain_env,
        }
    }

    /// Checks one process's command line and environment, adding what is
    /// wrong to `problems`.
    fn check(
        &self,
        what: &str,
        command: &[String],
        env: &BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        let Some(binary) = command.first() else {
            problems.push(format!("{what}: no command"));
            return;
        };
        let Some(surface) = self.binaries.get(binary.as_str()) else {
            problems.push(format!("{what}: {binary} is not one of {BINARIES:?}"));
            return;
        };
        for arg in &command[1..] {
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                if !surface.flags.contains(flag) {
                    problems.push(format!("{what}: {binary} has no flag --{flag}"));
                }
            }
        }
        for name in env {
            if !surface.env.contains(name) && !self.plain_env.contains(name) {
                problems.push(format!(
                    "{what}: {binary} reads no variable {name} (not in its --help nor in README's Configuration)"
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------
// Compose
// ---------------------------------------------------------------------

const COMPOSE_SERVICES: [&str; 13] = [
    "redis",
    "postgres",
    "qdrant",
    "models",
    "api",
    "worker-noop",
    "worker-inference",
    "worker-embed",
    "worker-datagen",
    "campaign-worker",
    "trainer",
    "prometheus",
    "grafana",
];

#[test]
fn compose_stack_is_accepted_by_docker_compose() {
    let compose = tool("docker-compose", "docker-compose");
    let file = deploy("compose.yaml");
    let example = deploy(".env.example");
    let rendered = run_ok(
        Command::new(&compose)
            .arg("--env-file")
            .arg(&example)
            .arg("-f")
            .arg(&file)
            .arg("config"),
    );
    let stack = yaml(&rendered);
    let services = stack["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        COMPOSE_SERVICES.into_iter().collect(),
        "the stack's services"
    );

    let redis = &services["redis"];
    let command = strings(&redis["command"]);
    assert!(
        command.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "redis runs with AOF on: {command:?}"
    );
    assert!(
        strings(&redis["volumes"])
            .iter()
            .any(|v| v.contains(":/data")),
        "redis persists /data in a volume: {redis}"
    );

    let surfaces = Surfaces::read();
    let mut problems = Vec::new();
    for (name, service) in services {
        let image = service["image"].as_str().unwrap_or_default();
        let health = strings(&service["healthcheck"]["test"]).join(" ");
        if !matches!(name.as_str(), "models" | "qdrant") && health.is_empty() {
            problems.push(format!("{name}: no health check"));
        }
        if !image.starts_with("master-orchestrator:") {
            continue;
        }
        let command = strings(&service["command"]);
        let env: BTreeSet<String> = service["environment"]
            .as_object()
            .map(|vars| vars.keys().cloned().collect())
            .unwrap_or_default();
        surfaces.check(&format!("compose {name}"), &command, &env, &mut problems);
        for (dependency, condition) in [
            ("redis", "service_healthy"),
            ("postgres", "service_healthy"),
            ("models", "service_completed_successfully"),
        ] {
            if service["depends_on"][dependency]["condition"] != condition {
                problems.push(format!(
                    "{name}: does not wait for {dependency} ({condition})"
                ));
            }
        }
        if name == "api" {
            if !health.contains("8080/ready") {
                problems.push(format!("api: health check {health:?} is not /ready"));
            }
            continue;
        }
        // Workers and the trainer: scalable (no fixed name or port), with a
        // metrics listener whose /health the health check reads.
        if service.get("ports").is_some() || service.get("container_name").is_some() {
            problems.push(format!(
                "{name}: publishes a port or fixes a name, so it cannot --scale"
            ));
        }
        let metrics = service["environment"]["ORCH_METRICS_ADDR"]
            .as_str()
            .unwrap_or_default();
        if !metrics.ends_with(":9090") || !health.contains("9090/health") {
            problems.push(format!(
                "{name}: metrics on {metrics:?}, health check {health:?} (want :9090 and /health)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "compose stack:\n{}",
        problems.join("\n")
    );

    // Secrets come from the .env file: without one the stack is refused,
    // and the example names every variable the compose file reads.
    let empty =
        std::env::temp_dir().join(format!("orch-empty-{}.env", uuid::Uuid::now_v7().simple()));
    std::fs::write(&empty, "").unwrap();
    let bare = Command::new(&compose)
        .arg("--env-file")
        .arg(&empty)
        .arg("-f")
        .arg(&file)
        .arg("config")
        .output()
        .expect("run docker-compose");
    let _ = std::fs::remove_file(&empty);
    let said = String::from_utf8_lossy(&bare.stderr);
    assert!(
        !bare.status.success() && said.contains("deploy/.env"),
        "without .env compose must refuse, naming the file: {said}"
    );
    let defined: BTreeSet<String> = read(&example)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    let compose_text = read(&file);
    for part in compose_text.split("${").skip(1) {
        let var: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            defined.contains(&var),
            "deploy/.env.example does not define {var}, which compose.yaml reads"
        );
    }
}

// ---------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------

/// `KEY=value` lines of an environment file, comments left out.
fn env_file(path: &Path) -> BTreeSet<String> {
    read(path)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect()
}

#[test]
fn systemd_units_verify_and_run_what_the_binaries_accept() {
    let analyze = tool("systemd-analyze", "systemd");
    let surfaces = Surfaces::read();
    let units = deploy("systemd");
    let bin = orchestrator_tests::binary("orchestrator-api")
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("orch-units-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // Templates verify as instances; the binaries are the ones just built.
    let instances = [
        ("orchestrator-api.service", "orchestrator-api.service", ""),
        (
            "orchestrator-worker@.service",
            "orchestrator-worker@inference.service",
            "inference",
        ),
        (
            "orchestrator-campaigns@.service",
            "orchestrator-campaigns@1.service",
            "1",
        ),
        (
            "orchestrator-trainer.service",
            "orchestrator-trainer.service",
            "",
        ),
        ("orchestrator.target", "orchestrator.target", ""),
    ];
    let mut problems = Vec::new();
    for (file, instance, name) in instances {
        let text = read(&units.join(file));
        std::fs::write(
            dir.join(instance),
            text.replace("/usr/local/bin/", &format!("{}/", bin.display())),
        )
        .unwrap();
        if !file.ends_with(".service") {
            continue;
        }
        let setting = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .collect()
        };
        let command: Vec<String> = setting("ExecStart")[0]
            .split_whitespace()
            .map(|w| {
                w.replace("/usr/local/bin/", "")
                    .replace("%I", name)
                    .replace("%i", name)
            })
            .collect();
        let mut env: BTreeSet<String> = setting("Environment")
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, _)| k.to_string()))
            .collect();
        for file in setting("EnvironmentFile") {
            let example = Path::new(file.trim_start_matches('-'))
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace(".env", ".env.example");
            env.extend(env_file(&units.join(example)));
        }
        surfaces.check(&format!("systemd {file}"), &command, &env, &mut problems);
        for hardening in [
            "Restart=always",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
            "User=orchestrator",
        ] {
            if !text.lines().any(|l| l == hardening) {
                problems.push(format!("systemd {file}: no {hardening}"));
            }
        }
        let stop: u64 = setting("TimeoutStopSec")[0].parse().unwrap();
        let calls_models =
            command[0] == "orchestrator-api" || command.contains(&"inference".to_string());
        if calls_models && stop <= 300 {
            problems.push(format!(
                "systemd {file}: TimeoutStopSec={stop} does not cover a model call"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "systemd units:\n{}",
        problems.join("\n")
    );
    let output = Command::new(&analyze)
        .arg("verify")
        .args(instances.iter().map(|(_, instance, _)| dir.join(instance)))
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let target = read(&units.join("orchestrator.target"));
    for unit in [
        "orchestrator-api.service",
        "orchestrator-trainer.service",
        "orchestrator-worker@noop.service",
        "orchestrator-campaigns@1.service",
    ] {
        assert!(
            target.contains(unit),
            "orchestrator.target does not start {unit}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------
// Prometheus: promtool
// ---------------------------------------------------------------------

fn rule_files() -> Vec<PathBuf> {
    let config = read_yaml(&deploy("prometheus/prometheus.yml"));
    let files: Vec<PathBuf> = strings(&config["rule_files"])
        .iter()
        .map(|f| deploy("prometheus").join(f))
        .collect();
    assert!(files.len() >= 2, "rule files: {files:?}");
    files
}

/// Every rule of the shipped rule files: (group kind, name, expression).
fn rules() -> Vec<(bool, String, String)> {
    let mut all = Vec::new();
    for file in rule_files() {
        let doc = read_yaml(&file);
        for group in doc["groups"].as_array().expect("groups") {
            for rule in group["rules"].as_array().expect("rules") {
                let expr = rule["expr"].as_str().expect("expr").trim().to_string();
                match (rule["record"].as_str(), rule["alert"].as_str()) {
                    (Some(record), None) => all.push((false, record.to_string(), expr)),
                    (None, Some(alert)) => all.push((true, alert.to_string(), expr)),
                    _ => panic!(
                        "{}: a rule is neither record nor alert: {rule}",
                        file.display()
                    ),
                }
            }
        }
    }
    all
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let promtool = tool("promtool", "prometheus");
    run_ok(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(deploy("prometheus/prometheus.yml")),
    );
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .args(rule_files()),
    );
    let tests = deploy("prometheus/tests/alerts.test.yml");
    let said = run_ok(Command::new(&promtool).args(["test", "rules"]).arg(&tests));
    assert!(said.contains("SUCCESS"), "{said}");

    // Every alert has a case where it fires and one where it stays quiet.
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in read_yaml(&tests)["tests"].as_array().expect("tests") {
        for check in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = check["alertname"].as_str().expect("alertname").to_string();
            match check["exp_alerts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                true => fires.insert(name),
                false => quiet.insert(name),
            };
        }
    }
    let alerts: Vec<String> = rules()
        .into_iter()
        .filter(|(alert, ..)| *alert)
        .map(|(_, name, _)| name)
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in &alerts {
        assert!(fires.contains(alert), "no unit test makes {alert} fire");
        assert!(quiet.contains(alert), "no unit test keeps {alert} quiet");
    }
}

// ---------------------------------------------------------------------
// A fixture site for a campaign that keeps running and keeps failing
// ---------------------------------------------------------------------

/// `/chain/{n}.html` answers after 150 ms and links to the next page of the
/// chain and to `/gone/{n}.html`, which answers 404: a campaign on it runs
/// for minutes with one failed fetch for every page.
struct ChainSite {
    base: String,
    server: tokio::task::JoinHandle<()>,
}

impl ChainSite {
    async fn start() -> Self {
        async fn chain(UrlPath(page): UrlPath<String>) -> axum::response::Response {
            let Ok(n) = page.trim_end_matches(".html").parse::<u64>() else {
                return HttpStatus::NOT_FOUND.into_response();
            };
            tokio::time::sleep(Duration::from_millis(150)).await;
            Html(format!(
                r#"<html><head><script type="application/ld+json">{{"@type":"Product","name":"Chain {n}"}}</script></head>
                <body><a href="/chain/{next}.html">next</a> <a href="/gone/{n}.html">gone</a></body></html>"#,
                next = n + 1
            ))
            .into_response()
        }
        let app = Router::new().route("/chain/{page}", get(chain));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the chain site");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, server }
    }

    fn campaign(&self) -> Value {
        json!({"name": "deploy chain", "type": "seo_mining",
               "config": {"urls": [format!("{}/chain/0.html", self.base)], "allow": ["127.0.0.1/32"],
                          "max_depth": 1000, "max_pages": 1000, "per_host_interval_ms": 0}})
    }
}

impl Drop for ChainSite {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Metric names in a Prometheus text exposition.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------
// Kubernetes: a kustomize renderer for what the manifests use
// ---------------------------------------------------------------------

const CLUSTER_SCOPED: [&str; 4] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
];

/// Renders a kustomization the way `kubectl kustomize` does, for the
/// features the manifests use (anything else fails the test, so a new
/// feature is never silently rendered wrong).
fn kustomize(dir: &Path) -> Vec<Value> {
    let k = read_yaml(&dir.join("kustomization.yaml"));
    for key in k.as_object().expect("kustomization").keys() {
        assert!(
            [
                "apiVersion",
                "kind",
                "resources",
                "namespace",
                "images",
                "replicas",
                "patches",
                "configMapGenerator",
                "generatorOptions"
            ]
            .contains(&key.as_str()),
            "{}: the test's renderer does not know `{key}`",
            dir.display()
        );
    }
    let mut docs = Vec::new();
    for resource in strings(&k["resources"]) {
        let path = dir.join(&resource);
        if path.is_dir() {
            docs.extend(kustomize(&path));
        } else {
            docs.extend(yaml_docs(&read(&path)));
        }
    }
    if let Some(generators) = k["configMapGenerator"].as_array() {
        assert_eq!(
            k["generatorOptions"]["disableNameSuffixHash"],
            true,
            "{}: the renderer does not hash ConfigMap names",
            dir.display()
        );
        for generator in generators {
            let mut data = serde_json::Map::new();
            for file in strings(&generator["files"]) {
                let (key, path) = match file.split_once('=') {
                    Some((key, path)) => (key.to_string(), path.to_string()),
                    None => (
                        Path::new(&file)
                            .file_name()
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                        file.clone(),
                    ),
                };
                data.insert(key, Value::String(read(&dir.join(path))));
            }
            for literal in strings(&generator["literals"]) {
                let (key, value) = literal.split_once('=').expect("KEY=value");
                data.insert(key.to_string(), Value::String(value.to_string()));
            }
            docs.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": generator["name"]}, "data": data}));
        }
    }
    for patch in k["patches"].as_array().into_iter().flatten() {
        let target = &patch["target"];
        let ops = yaml(patch["patch"].as_str().expect("inline JSON 6902 patch"));
        let mut matched = 0;
        for doc in docs.iter_mut() {
            let group = doc["apiVersion"]
                .as_str()
                .and_then(|v| v.split_once('/'))
                .map_or("", |(group, _)| group);
            let matches = target["kind"].as_str().is_none_or(|k| doc["kind"] == k)
                && target["name"]
                    .as_str()
                    .is_none_or(|n| doc["metadata"]["name"] == n)
                && target["group"].as_str().is_none_or(|g| group == g);
            if matches {
                matched += 1;
                for op in ops.as_array().expect("a list of operations") {
                    json_patch(doc, op);
                }
            }
        }
        assert!(
            matched > 0,
            "{}: patch matches nothing: {target}",
            dir.display()
        );
    }
    if let Some(namespace) = k["namespace"].as_str() {
        for doc in docs.iter_mut() {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if !CLUSTER_SCOPED.contains(&kind) {
                doc["metadata"]["namespace"] = json!(namespace);
            }
        }
    }
    for image in k["images"].as_array().into_iter().flatten() {
        let name = image["name"].as_str().expect("image name");
        for doc in docs.iter_mut() {
            for list in [
                "/spec/template/spec/initContainers",
                "/spec/template/spec/containers",
            ] {
                let containers = doc.pointer_mut(list).and_then(Value::as_array_mut);
                for container in containers.into_iter().flatten() {
                    let current = container["image"].as_str().unwrap_or_default().to_string();
                    let (current_name, current_tag) = match current.rsplit_once(':') {
                        Some((n, t)) if !t.contains('/') => (n.to_string(), Some(t.to_string())),
                        _ => (current.clone(), None),
                    };
                    if current_name != name {
                        continue;
                    }
                    let new_name = image["newName"].as_str().unwrap_or(name);
                    let tag = image["newTag"].as_str().map(str::to_string).or(current_tag);
                    container["image"] = json!(match tag {
                        Some(tag) => format!("{new_name}:{tag}"),
                        None => new_name.to_string(),
                    });
                }
            }
        }
    }
    for replicas in k["replicas"].as_array().into_iter().flatten() {
        let name = replicas["name"].as_str().expect("replicas name");
        let doc = docs
            .iter_mut()
            .find(|d| d["metadata"]["name"] == name && d["spec"]["replicas"].is_number())
            .unwrap_or_else(|| panic!("replicas: no workload {name}"));
        doc["spec"]["replicas"] = replicas["count"].clone();
    }
    docs
}

/// One JSON 6902 operation (add, replace, remove).
fn json_patch(doc: &mut Value, op: &Value) {
    let path = op["path"].as_str().expect("path");
    let mut parts: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    let last = parts.pop().expect("a path below the root");
    let mut node = doc;
    for part in &parts {
        node = match node {
            Value::Array(items) => &mut items[part.parse::<usize>().expect("index")],
            other => other
                .get_mut(part.as_str())
                .unwrap_or_else(|| panic!("no {part} on the way to {path}")),
        };
    }
    let operation = op["op"].as_str().expect("op");
    match (node, operation) {
        (Value::Object(map), "add") => {
            map.insert(last, op["value"].clone());
        }
        (Value::Object(map), "replace") => {
            let slot = map
                .get_mut(&last)
                .unwrap_or_else(|| panic!("replace: nothing at {path}"));
            *slot = op["value"].clone();
        }
        (Value::Object(map), "remove") => {
            map.remove(&last)
                .unwrap_or_else(|| panic!("remove: nothing at {path}"));
        }
        (Value::Array(items), "add") if last == "-" => items.push(op["value"].clone()),
        (Value::Array(items), "add") => {
            items.insert(last.parse().expect("index"), op["value"].clone())
        }
        (Value::Array(items), "replace") => {
            items[last.parse::<usize>().expect("index")] = op["value"].clone()
        }
        (Value::Array(items), "remove") => {
            items.remove(last.parse().expect("index"));
        }
        (_, operation) => panic!("unsupported patch {operation} at {path}"),
    }
}

fn by_identity(docs: &[Value]) -> BTreeMap<String, Value> {
    docs.iter()
        .map(|d| {
            let key = format!(
                "{}/{}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["namespace"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            );
            (key, d.clone())
        })
        .collect()
}

/// The recipe for one campaign's pool, with its variables filled in.
fn campaign_pool(campaign: &str) -> Vec<Value> {
    let mut text = read(&deploy("kubernetes/recipes/campaign-pool.yaml"));
    for (var, value) in [
        ("CAMPAIGN_ID", campaign),
        ("POOL", "shop-crawl"),
        ("MAX_WORKERS", "4"),
        ("IMAGE", "registry.example.com/master-orchestrator:0.1.0"),
    ] {
        text = text.replace(&format!("${{{var}}}"), value);
    }
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !body.contains("${"),
        "the recipe reads a variable its comment does not name:\n{body}"
    );
    yaml_docs(&text)
}

/// Label matchers `name="value"` in a PromQL query.
fn matchers(query: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (i, _) in query.match_indices("=\"") {
        let name: String = query[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let value: String = query[i + 2..].chars().take_while(|c| *c != '"').collect();
        found.push((name, value));
    }
    found
}

/// What the live processes answer, for the manifests' checks.
struct Live {
    /// Metric names the API, a worker and a trainer export.
    metrics: BTreeSet<String>,
    /// (binary, path) -> HTTP status on the listener its probes use.
    probes: BTreeMap<(String, String), u16>,
}

/// Checks one rendered set of manifests, adding what is wrong to `problems`.
fn check_manifests(
    what: &str,
    docs: &[Value],
    surfaces: &Surfaces,
    live: &Live,
    problems: &mut Vec<String>,
) {
    let secret_keys: BTreeSet<String> =
        read_yaml(&deploy("kubernetes/secret.example.yaml"))["stringData"]
            .as_object()
            .expect("secret example")
            .keys()
            .cloned()
            .collect();
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    };
    let models_toml = read(&repo().join("config/models.toml"));
    let longest_call = models_toml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("timeout_s = "))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .max()
        .expect("timeout_s in config/models.toml");
    if let Some(config) = named("ConfigMap", "orchestrator-config") {
        for (key, shipped) in [
            ("models.toml", "config/models.toml"),
            ("workflow_patterns.toml", "config/workflow_patterns.toml"),
        ] {
            if config["data"][key].as_str() != Some(read(&repo().join(shipped)).as_str()) {
                problems.push(format!("{what}: ConfigMap {key} differs from {shipped}"));
            }
        }
    }
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert!(!deployments.is_empty(), "{what}: no Deployment");
    let pod_labels = |d: &Value| d["spec"]["template"]["metadata"]["labels"].clone();
    let selects = |selector: &Value, labels: &Value| {
        selector
            .as_object()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
    };
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let at = format!("{what}: {kind} {name}");
        match kind {
            "StatefulSet" => problems.push(format!("{at}: the design has no StatefulSet")),
            "Deployment" => {
                let pod = &doc["spec"]["template"]["spec"];
                if !selects(&doc["spec"]["selector"]["matchLabels"], &pod_labels(doc)) {
                    problems.push(format!("{at}: selector does not match its pods"));
                }
                let grace = pod["terminationGracePeriodSeconds"].as_u64();
                for container in pod["initContainers"].as_array().into_iter().flatten() {
                    let image = container["image"].as_str().unwrap_or_default();
                    if !image.contains("master-orchestrator-models") {
                        problems.push(format!("{at}: unknown init container image {image}"));
                    }
                }
                for container in pod["containers"].as_array().into_iter().flatten() {
                    check_container(
                        &at,
                        doc,
                        container,
                        grace,
                        longest_call,
                        docs,
                        &secret_keys,
                        surfaces,
                        live,
                        problems,
                    );
                }
            }
            "ScaledObject" => {
                let target = doc["spec"]["scaleTargetRef"]["name"]
                    .as_str()
                    .unwrap_or_default();
                let Some(deployment) = named("Deployment", target) else {
                    problems.push(format!("{at}: targets {target:?}, not a Deployment here"));
                    continue;
                };
                let args =
                    strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
                let (min, max) = (
                    doc["spec"]["minReplicaCount"].as_u64(),
                    doc["spec"]["maxReplicaCount"].as_u64(),
                );
                if !matches!((min, max), (Some(min), Some(max)) if min <= max && max >= 1) {
                    problems.push(format!("{at}: replica bounds {min:?}..{max:?}"));
                }
                for trigger in doc["spec"]["triggers"].as_array().into_iter().flatten() {
                    if trigger["type"] != "prometheus" {
                        problems.push(format!(
                            "{at}: trigger {} (want prometheus)",
                            trigger["type"]
                        ));
                        continue;
                    }
                    let meta = &trigger["metadata"];
                    let query = meta["query"].as_str().unwrap_or_default();
                    if meta["threshold"]
                        .as_str()
                        .and_then(|t| t.parse::<f64>().ok())
                        .is_none()
                        || !meta["serverAddress"]
                            .as_str()
                            .is_some_and(|a| a.starts_with("http"))
                    {
                        problems.push(format!("{at}: threshold or serverAddress missing: {meta}"));
                    }
                    let metric_names: Vec<&str> = query
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| w.starts_with("orchestrator_"))
                        .collect();
                    if metric_names.is_empty() {
                        problems.push(format!(
                            "{at}: query {query:?} reads no orchestrator metric"
                        ));
                    }
                    for metric in metric_names {
                        if !live.metrics.contains(metric) {
                            problems.push(format!("{at}: no process exports {metric}"));
                        }
                    }
                    // The pool scales on what it serves.
                    let labels = matchers(query);
                    for (label, value) in &labels {
                        let served = match label.as_str() {
                            "queue" => args
                                .windows(2)
                                .any(|w| w[0] == "--queues" && w[1].split(',').any(|q| q == value)),
                            "campaign" => args
                                .windows(2)
                                .any(|w| w[0] == "--campaign" && w[1] == *value),
                            _ => false,
                        };
                        if !served {
                            problems.push(format!("{at}: scales on {label}={value:?}, which {target} ({args:?}) does not serve"));
                        }
                    }
                    if query.contains("orchestrator_campaign_frontier")
                        && labels.is_empty()
                        && args != ["--campaigns", "all"]
                    {
                        problems.push(format!("{at}: every campaign's frontier scales {target}, which is not --campaigns all"));
                    }
                }
            }
            "PodDisruptionBudget" => {
                let selector = &doc["spec"]["selector"]["matchLabels"];
                if !deployments
                    .iter()
                    .any(|d| selects(selector, &pod_labels(d)))
                {
                    problems.push(format!("{at}: selects no Deployment's pods"));
                }
            }
            "Service" => {
                let Some(deployment) = deployments
                    .iter()
                    .find(|d| selects(&doc["spec"]["selector"], &pod_labels(d)))
                else {
                    problems.push(format!("{at}: selects no Deployment's pods"));
                    continue;
                };
                let ports: Vec<&Value> = deployment["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .collect();
                for port in doc["spec"]["ports"].as_array().into_iter().flatten() {
                    let target = &port["targetPort"];
                    if !ports
                        .iter()
                        .any(|p| p["name"] == *target || p["containerPort"] == *target)
                    {
                        problems.push(format!("{at}: targetPort {target} is no container port"));
                    }
                }
            }
            "ConfigMap" | "Namespace" => {}
            other => problems.push(format!("{at}: unexpected kind {other}")),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_container(
    at: &str,
    deployment: &Value,
    container: &Value,
    grace: Option<u64>,
    longest_call: u64,
    docs: &[Value],
    secret_keys: &BTreeSet<String>,
    surfaces: &Surfaces,
    live: &Live,
    problems: &mut Vec<String>,
) {
    let at = format!(
        "{at} container {}",
        container["name"].as_str().unwrap_or_default()
    );
    let image = container["image"].as_str().unwrap_or_default();
    let image_name = image
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default();
    if image_name != "master-orchestrator" {
        problems.push(format!("{at}: image {image} is not the orchestrator's"));
        return;
    }
    let mut command = strings(&container["command"]);
    command.extend(strings(&container["args"]));
    let binary = command.first().cloned().unwrap_or_default();
    let mut env = BTreeSet::new();
    let mut values = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default().to_string();
        if let Some(value) = var["value"].as_str() {
            values.insert(name.clone(), value.to_string());
        }
        let secret = &var["valueFrom"]["secretKeyRef"];
        if !secret.is_null()
            && (secret["name"] != "orchestrator-secrets"
                || !secret["key"]
                    .as_str()
                    .is_some_and(|k| secret_keys.contains(k)))
        {
            problems.push(format!(
                "{at}: {name} reads {secret}, not a key of deploy/kubernetes/secret.example.yaml"
            ));
        }
        env.insert(name);
    }
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"].as_str().unwrap_or_default();
        match docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        {
            Some(config) => {
                for (key, value) in config["data"].as_object().into_iter().flatten() {
                    env.insert(key.clone());
                    values.insert(key.clone(), value.as_str().unwrap_or_default().to_string());
                }
            }
            None => problems.push(format!("{at}: envFrom names no ConfigMap here: {source}")),
        }
    }
    surfaces.check(&at, &command, &env, problems);
    let pod = &deployment["spec"]["template"]["spec"];
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        if let Some(config) = volume["configMap"]["name"].as_str()
            && !docs
                .iter()
                .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == config)
        {
            problems.push(format!(
                "{at}: volume of ConfigMap {config}, which is not here"
            ));
        }
    }
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        if !pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == mount["name"])
        {
            problems.push(format!("{at}: mounts unknown volume {}", mount["name"]));
        }
    }
    for file in ["ORCH_MODELS_CONFIG", "ORCH_WORKFLOW_PATTERNS"] {
        if let Some(path) = values.get(file) {
            let mounted = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| {
                    m["mountPath"]
                        .as_str()
                        .is_some_and(|dir| path.starts_with(&format!("{dir}/")))
                });
            if !mounted {
                problems.push(format!("{at}: {file}={path} is on no mounted volume"));
            }
        }
    }
    let requests = &container["resources"]["requests"];
    if requests["cpu"].is_null() || requests["memory"].is_null() {
        problems.push(format!("{at}: no cpu and memory requests"));
    }
    // Inference and chat wait for a model call: the grace period covers it.
    let calls_models = binary == "orchestrator-api"
        || command
            .iter()
            .any(|a| a.split(',').any(|q| q == "inference"));
    if calls_models && grace.is_none_or(|g| g <= longest_call) {
        problems.push(format!(
            "{at}: terminationGracePeriodSeconds {grace:?} does not cover a model call ({longest_call} s)"
        ));
    }
    if grace.is_none() {
        problems.push(format!("{at}: no terminationGracePeriodSeconds"));
    }
    // Probes reach the listener that serves them, on a path it answers.
    let listen = match binary.as_str() {
        "orchestrator-api" => values.get("ORCH_HTTP_ADDR"),
        _ => values.get("ORCH_METRICS_ADDR"),
    };
    let Some(port) = listen
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse::<u64>().ok())
    else {
        problems.push(format!("{at}: no listen address for its probes"));
        return;
    };
    let container_port = |by: &Value| {
        container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == *by || p["containerPort"] == *by)
            .and_then(|p| p["containerPort"].as_u64())
    };
    let mut probed = BTreeSet::new();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let http = &container[probe]["httpGet"];
        if http.is_null() {
            continue;
        }
        let path = http["path"].as_str().unwrap_or_default().to_string();
        probed.insert(path.clone());
        if container_port(&http["port"]) != Some(port) {
            problems.push(format!(
                "{at}: {probe} port {} is not its listener's {port}",
                http["port"]
            ));
        }
        match live.probes.get(&(binary.clone(), path.clone())) {
            Some(200) => {}
            status => problems.push(format!(
                "{at}: {probe} {path} answers {status:?} on a live {binary}"
            )),
        }
    }
    let want: &[&str] = match binary.as_str() {
        "orchestrator-api" => &["/health", "/ready"],
        _ => &["/health"],
    };
    for path in want {
        if !probed.contains(*path) {
            problems.push(format!("{at}: no probe on {path}"));
        }
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    if annotations["prometheus.io/port"].as_str() != Some(port.to_string().as_str())
        || annotations["prometheus.io/path"] != "/metrics"
    {
        problems.push(format!(
            "{at}: scrape annotations {annotations} do not name its /metrics on {port}"
        ));
    }
}

#[tokio::test]
async fn kubernetes_manifests_render_and_hold_their_invariants() {
    let root = deploy("kubernetes");
    let renders: Vec<(String, Vec<Value>)> = ["base", "overlays/production", "overlays/small"]
        .into_iter()
        .map(|dir| (dir.to_string(), kustomize(&root.join(dir))))
        .collect();
    match find_tool("kubectl") {
        Some(kubectl) => {
            for (dir, docs) in &renders {
                let theirs = yaml_docs(&run_ok(
                    Command::new(&kubectl).arg("kustomize").arg(root.join(dir)),
                ));
                let (ours, theirs) = (by_identity(docs), by_identity(&theirs));
                assert_eq!(
                    ours.keys().collect::<Vec<_>>(),
                    theirs.keys().collect::<Vec<_>>(),
                    "{dir}: resources differ from kubectl kustomize's"
                );
                for (key, doc) in &ours {
                    assert_eq!(
                        doc, &theirs[key],
                        "{dir}: {key} differs from kubectl kustomize's"
                    );
                }
            }
            eprintln!(
                "the renderer's output equals kubectl kustomize's for {} kustomizations",
                renders.len()
            );
        }
        None => eprintln!(
            "kubectl is not installed: the manifests were rendered by this test's own renderer only"
        ),
    }

    // Live processes: what they export and which probe paths they serve.
    let site = ChainSite::start().await;
    let setup = Setup::new(Backend::redis()).env("ORCH_CAMPAIGN_ALLOW", "127.0.0.1/32");
    let api = setup.start_api(&[]).await;
    let (worker_addr, trainer_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _worker = setup.start_worker(&["--queues", "noop", "--metrics-addr", &worker_addr]);
    let _trainer = setup.start_trainer(&["--metrics-addr", &trainer_addr, "--no-progress"]);
    let (status, campaign) = api.post("/api/v1/campaigns", &site.campaign()).await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let campaign = campaign["id"].as_str().expect("campaign id").to_string();
    let listeners = [
        ("orchestrator-api", api.base.clone()),
        ("orchestrator-worker", format!("http://{worker_addr}")),
        ("orchestrator-trainer", format!("http://{trainer_addr}")),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let mut names = BTreeSet::new();
        for (_, base) in &listeners {
            names.extend(metric_names(
                &orchestrator_tests::fetch_text(&format!("{base}/metrics")).await,
            ));
        }
        // The API samples campaigns every second.
        if names.contains("orchestrator_campaign_frontier")
            && names.contains("orchestrator_queue_depth")
        {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "the processes never exported the campaign and queue gauges: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pool = campaign_pool(&campaign);
    let mut paths = BTreeSet::new();
    for doc in renders.iter().flat_map(|(_, docs)| docs).chain(&pool) {
        for container in doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                if let Some(path) = container[probe]["httpGet"]["path"].as_str() {
                    paths.insert(path.to_string());
                }
            }
        }
    }
    let mut probes = BTreeMap::new();
    for (binary, base) in &listeners {
        for path in &paths {
            let status = reqwest::get(format!("{base}{path}"))
                .await
                .expect("probe")
                .status();
            probes.insert((binary.to_string(), path.clone()), status.as_u16());
        }
    }
    let live = Live { metrics, probes };

    let surfaces = Surfaces::read();
    let mut problems = Vec::new();
    for (dir, docs) in &renders {
        check_manifests(dir, docs, &surfaces, &live, &mut problems);
    }
    // The recipe's pool runs exactly the campaign workers' pod, but for its
    // one campaign.
    let mut pool_docs = pool.clone();
    pool_docs.extend(
        renders[0]
            .1
            .iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .cloned(),
    );
    check_manifests(
        "recipes/campaign-pool",
        &pool_docs,
        &surfaces,
        &live,
        &mut problems,
    );
    let base_campaign = renders[0]
        .1
        .iter()
        .find(|d| d["metadata"]["name"] == "orchestrator-campaign-worker")
        .expect("campaign workers");
    let pool_deployment = pool
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("pool Deployment");
    let mut theirs = base_campaign["spec"]["template"]["spec"]["containers"][0].clone();
    let mut ours = pool_deployment["spec"]["template"]["spec"]["containers"][0].clone();
    for container in [&mut theirs, &mut ours] {
        container["args"] = Value::Null;
        container["image"] = Value::Null;
    }
    if theirs != ours {
        problems.push("recipes/campaign-pool: its container differs from base campaign-worker's beyond args and image".into());
    }
    let pool_scaler = pool
        .iter()
        .find(|d| d["kind"] == "ScaledObject")
        .expect("pool ScaledObject");
    if pool_scaler["spec"]["maxReplicaCount"] != 4 {
        problems.push(format!(
            "recipes/campaign-pool: maxReplicaCount {} is not MAX_WORKERS",
            pool_scaler["spec"]["maxReplicaCount"]
        ));
    }
    assert!(
        problems.is_empty(),
        "Kubernetes manifests:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------
// Prometheus against the live fleet
// ---------------------------------------------------------------------

/// A child process killed when the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped prometheus.yml with its targets rewritten to loopback
/// processes, its rule files made absolute and its intervals shortened.
fn loopback_config(targets: &BTreeMap<&str, Vec<String>>) -> Value {
    let mut config = read_yaml(&deploy("prometheus/prometheus.yml"));
    config["global"]["scrape_interval"] = json!("1s");
    config["global"]["scrape_timeout"] = json!("1s");
    config["global"]["evaluation_interval"] = json!("1s");
    config["rule_files"] = json!(
        rule_files()
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
    );
    let mut jobs = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs")
    {
        let name = job["job_name"].as_str().expect("job_name").to_string();
        let job = job.as_object_mut().unwrap();
        job.retain(|key, _| !key.ends_with("_sd_configs") && key != "static_configs");
        let loopback = targets
            .get(name.as_str())
            .unwrap_or_else(|| panic!("the test starts nothing for scrape job {name}"));
        job.insert("static_configs".into(), json!([{"targets": loopback}]));
        jobs.insert(name);
    }
    assert_eq!(
        jobs,
        targets.keys().map(|k| k.to_string()).collect(),
        "a scrape job for every kind of process"
    );
    config
}

/// Prometheus' HTTP API.
struct Prometheus {
    base: String,
    http: reqwest::Client,
    _process: Guard,
}

impl Prometheus {
    async fn start(config: &Value, dir: &Path) -> Self {
        let file = dir.join("prometheus.yml");
        // JSON is YAML: Prometheus reads it as it is.
        std::fs::write(&file, serde_json::to_string_pretty(config).unwrap()).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus", "prometheus"))
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _process: Guard(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await
                && r.status().is_success()
            {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .expect("prometheus API");
        let body: Value = response.json().await.expect("prometheus JSON");
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The finite values an instant query returns now.
    async fn values(&self, query: &str) -> Vec<f64> {
        let data = self.get("/api/v1/query", &[("query", query)]).await;
        let samples: Vec<&Value> = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| &s["value"][1])
                .collect(),
            Some("scalar") => vec![&data["result"][1]],
            other => panic!("{query}: result type {other:?}"),
        };
        samples
            .into_iter()
            .filter_map(|v| v.as_str()?.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .collect()
    }
}

/// One query the deployment relies on, and where it comes from.
struct Query {
    source: String,
    expr: String,
}

/// Dashboard queries as Grafana sends them: its interval variables become
/// windows, a multi-value variable at "All" becomes `.+`.
fn grafana_expr(expr: &str, variables: &[String]) -> String {
    let mut expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    for var in variables {
        expr = expr.replace(&format!("${var}"), ".+");
    }
    assert!(
        !expr.contains('$'),
        "a variable Grafana would fill in is left in {expr}"
    );
    expr
}

fn dashboards() -> Vec<(String, Value)> {
    let mut all: Vec<(String, Value)> = std::fs::read_dir(deploy("grafana/dashboards"))
        .expect("dashboards")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let doc: Value =
                serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, doc)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["campaigns", "fleet", "llm", "queues", "training"]);
    all
}

fn registry(fake: &FakeLlm) -> String {
    format!(
        r#"
[[model]]
id = "smollm2"
provider = "local"
file = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
context_window = 4096
max_concurrency = 2
timeout_s = 300
specialties = {{ general = 0.4 }}

# A local model whose weights are missing: its training run fails.
[[model]]
id = "broken"
provider = "local"
file = "broken/missing.gguf"
max_concurrency = 1
timeout_s = 30
specialties = {{ general = 0.1 }}

[[model]]
id = "slow-remote"
provider = "openai"
base_url = "{}"
model = "slow-remote"
cost_per_1k_input = 0.5
cost_per_1k_output = 1.5
max_concurrency = 8
timeout_s = 30
specialties = {{ general = 0.2 }}
"#,
        fake.base_url()
    )
}

/// A client of the API for background tasks.
#[derive(Clone)]
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn chat(&self, model: &str, max_tokens: u32) {
        let (status, body) = self
            .post(
                "/v1/chat/completions",
                &json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": "Name one colour."}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{model}: {body}");
    }
}

async fn wait_json(
    api: &Api,
    path: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_fleet_and_every_rule_and_panel_has_data() {
    let started = Instant::now();
    let fake = FakeLlm::start().await;
    let site = ChainSite::start().await;
    let dir = std::env::temp_dir().join(format!("orch-deploy-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let models = dir.join("models.toml");
    std::fs::write(&models, registry(&fake)).unwrap();
    let setup = Setup::new(Backend::redis())
        .env("ORCH_MODELS_CONFIG", models.to_str().unwrap())
        .env("ORCH_CAMPAIGN_ALLOW", "127.0.0.1/32")
        .env("ORCH_TRAIN_POLL_MS", "200")
        .env("ORCH_TRAIN_BATCH_THRESHOLD", "1000");
    let api = setup.start_api(&[]).await;
    let addr = || format!("127.0.0.1:{}", free_port());
    let (queues_addr, campaigns_addr, trainer_addr) = (addr(), addr(), addr());
    let _queues = setup.start_worker(&[
        "--queues",
        "noop,inference,embed,datagen",
        "--metrics-addr",
        &queues_addr,
    ]);
    let _campaigns = setup.start_worker(&["--campaigns", "all", "--metrics-addr", &campaigns_addr]);
    let trainer = setup.start_trainer(&["--metrics-addr", &trainer_addr, "--no-progress"]);
    let api_target = api.base.trim_start_matches("http://").to_string();
    let targets = BTreeMap::from([
        ("orchestrator-api", vec![api_target]),
        ("orchestrator-worker", vec![queues_addr.clone()]),
        ("orchestrator-campaign-worker", vec![campaigns_addr.clone()]),
        ("orchestrator-trainer", vec![trainer_addr.clone()]),
    ]);
    let prometheus = Prometheus::start(&loopback_config(&targets), &dir).await;

    // --- The workload ------------------------------------------------------
    let client = Client {
        base: api.base.clone(),
        http: reqwest::Client::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Noop jobs of a few milliseconds, one that dies and one that is
    // retried in every batch; after 15 s the queue is paused and keeps
    // being fed, so a backlog grows.
    let noop = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut paused = false;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut jobs: Vec<Value> = (0..60)
                    .map(|i| json!({"queue": "noop", "payload": {"sleep_ms": (round + i) % 15}}))
                    .collect();
                jobs.push(
                    json!({"queue": "noop", "payload": {"fail_attempts": 5}, "max_attempts": 1}),
                );
                jobs.push(
                    json!({"queue": "noop", "payload": {"fail_attempts": 1}, "max_attempts": 3}),
                );
                let (status, body) = client
                    .post("/api/v1/jobs/batch", &json!({"jobs": jobs}))
                    .await;
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                if !paused && started.elapsed() > Duration::from_secs(15) {
                    let (status, body) = client.post("/api/v1/queues/noop/pause", &json!({})).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    paused = true;
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    // A remote model (priced) every 600 ms, the local one now and then.
    let llm = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client.chat("slow-remote", 16).await;
                if round.is_multiple_of(8) {
                    client.chat("smollm2", 4).await;
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
        })
    };
    let (status, campaign) = api.post("/api/v1/campaigns", &site.campaign()).await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let (status, dataset) = api
        .post(
            "/api/v1/datasets",
            &json!({"name": "deploy", "count": 2000, "shard_size": 250, "seed": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{dataset}");
    // Training: a run of a model without weights fails; a short run of
    // SmolLM2 reports its loss and tokens/s.
    let feedback = |model: &str, i: usize| {
        json!({"model": model, "prompt": format!("What is {i} plus {i}?"),
               "response": format!("{i} plus {i} is {}.", 2 * i), "rating": 5})
    };
    // A trainer exports its run outcomes at zero from the start; the
    // failure comes after Prometheus has seen that zero, as it would in a
    // trainer that has been running for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus
        .values(r#"orchestrator_training_runs_total{outcome="failed"} == 0"#)
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the trainer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..2 {
        let (status, body) = api.post("/api/v1/feedback", &feedback("broken", i)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, broken) = api
        .post("/api/v1/training/runs", &json!({"base_model": "broken"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{broken}");
    for i in 0..5 {
        let (status, body) = api.post("/api/v1/feedback", &feedback("smollm2", i)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, tuned) = api
        .post(
            "/api/v1/training/runs",
            &json!({"base_model": "smollm2",
                    "config": {"epochs": 1, "batch_size": 4, "max_seq_len": 96, "learning_rate": 1e-3, "seed": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{tuned}");
    let finished = |run: &Value| !matches!(run["status"].as_str(), Some("queued" | "running"));
    let run_path = |run: &Value| format!("/api/v1/training/runs/{}", run["id"].as_str().unwrap());
    let broken = wait_json(&api, &run_path(&broken), Duration::from_secs(60), finished).await;
    assert_eq!(broken["status"], "failed", "{broken}");
    let tuned = wait_json(&api, &run_path(&tuned), Duration::from_secs(90), finished).await;
    assert_ne!(tuned["status"], "failed", "{tuned}");
    let dataset_path = format!("/api/v1/datasets/{}", dataset["id"].as_str().unwrap());
    wait_json(&api, &dataset_path, Duration::from_secs(60), |d| {
        d["status"] == "completed"
    })
    .await;
    // The backlog grows for a while before the alerts are read.
    while started.elapsed() < Duration::from_secs(28) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let workload = started.elapsed();

    // --- Every query has data ----------------------------------------------
    // Two alerts need a kind of process gone: they are read after the
    // trainer stops, below.
    let after_stop = ["OrchestratorProcessKindMissing", "OrchestratorTargetDown"];
    let mut queries = Vec::new();
    let mut later = Vec::new();
    for (alert, name, expr) in rules() {
        let (source, expr) = match alert {
            true => (format!("alert {name}"), expr),
            false => (format!("recording rule {name}"), name.clone()),
        };
        let query = Query { source, expr };
        match after_stop.contains(&name.as_str()) {
            true => later.push((name, query)),
            false => queries.push(query),
        }
    }
    let mut variables = Vec::new();
    let mut panels = 0;
    for (dashboard, doc) in dashboards() {
        let vars: Vec<String> = doc["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        for var in doc["templating"]["list"].as_array().into_iter().flatten() {
            let definition = var["definition"]
                .as_str()
                .expect("a label_values() definition");
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{dashboard}: variable {definition}"));
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            variables.push((
                format!("{dashboard} variable {}", var["name"]),
                metric.trim().to_string(),
                label.trim().to_string(),
            ));
        }
        for panel in doc["panels"].as_array().expect("panels") {
            panels += 1;
            let targets = panel["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{dashboard}: panel {} has no query",
                panel["title"]
            );
            for target in targets {
                queries.push(Query {
                    source: format!("{dashboard} panel {} ({})", panel["title"], target["refId"]),
                    expr: grafana_expr(target["expr"].as_str().expect("expr"), &vars),
                });
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for query in &queries {
            if prometheus.values(&query.expr).await.is_empty() {
                missing.push(format!("{}: {}", query.source, query.expr));
            }
        }
        for (source, metric, label) in &variables {
            let values = prometheus
                .get(
                    &format!("/api/v1/label/{label}/values"),
                    &[("match[]", metric.as_str())],
                )
                .await;
            if values.as_array().is_none_or(Vec::is_empty) {
                missing.push(format!("{source}: label_values({metric}, {label})"));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "no data through Prometheus for:\n{}",
        missing.join("\n")
    );

    // The figures behind them are the workload's.
    let throughput = prometheus
        .values("orchestrator:jobs_completed:rate1m")
        .await[0];
    let target = prometheus
        .values("max(orchestrator_throughput_target)")
        .await[0];
    assert!(
        throughput > 1.0 && target == 100_000.0,
        "{throughput} jobs/s against {target}"
    );
    let cost = prometheus
        .values("sum(orchestrator_llm_request_cost_dollars_sum)")
        .await;
    assert!(
        cost.iter().sum::<f64>() > 0.0,
        "the priced model cost nothing: {cost:?}"
    );
    let up = prometheus.values("up{job=~\"orchestrator-.*\"} == 1").await;
    assert_eq!(up.len(), 4, "every process scraped");

    // Every rule evaluates without error, and every alert whose expression
    // has data is pending or firing (the one without a hold fires).
    let groups = prometheus.get("/api/v1/rules", &[]).await;
    let mut states = BTreeMap::new();
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            if rule["type"] == "alerting" {
                states.insert(
                    rule["name"].as_str().unwrap().to_string(),
                    rule["state"].as_str().unwrap().to_string(),
                );
            }
        }
    }
    for (alert, state) in &states {
        let wanted: &[&str] = match alert.as_str() {
            "OrchestratorTrainingRunFailed" => &["firing"],
            name if after_stop.contains(&name) => &["inactive"],
            _ => &["pending", "firing"],
        };
        assert!(
            wanted.contains(&state.as_str()),
            "{alert} is {state}, want {wanted:?}"
        );
    }

    // --- A kind of process gone ---------------------------------------------
    trainer.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, query) in &later {
        loop {
            if !prometheus.values(&query.expr).await.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no data after the trainer stopped: {}",
                query.source,
                query.expr
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("{name} has data once the trainer is gone");
    }
    stop.store(true, Ordering::Relaxed);
    noop.await.unwrap();
    llm.await.unwrap();
    eprintln!(
        "{} queries and {} variables of {panels} panels and {} rules had data after a {:.0?} workload; {:.0?} in all",
        queries.len() + later.len(),
        variables.len(),
        rules().len(),
        workload,
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
