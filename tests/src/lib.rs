//! Harness for the end-to-end tests: starts the real `orchestrator-api` and
//! `orchestrator-worker` binaries against real Redis, PostgreSQL and SQLite,
//! and talks to them over HTTP on loopback.
//!
//! Services come from `ORCH_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) and `ORCH_TEST_POSTGRES_URL` (default
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`);
//! `deploy/scripts/test.sh` installs and starts them. A test that needs a
//! service fails when it is missing; nothing is skipped.
//!
//! Model weights come from `ORCH_TEST_MODELS_DIR` (default: the
//! workspace's `models/`, filled by `deploy/scripts/fetch-models.sh`).
//! With `QDRANT_URL` set, every memory test runs against that Qdrant (a
//! fresh collection per test) instead of the embedded vector store.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub use reqwest::StatusCode;

pub mod console;
pub mod fake_llm;
pub mod site;

/// Where the binaries under test are built.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Builds the binaries once per test process, so a test never runs a stale
/// binary (a no-op when they are up to date).
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Cargo sets these for the test process; build scripts that watch
        // them (ring watches CARGO_MANIFEST_DIR) would otherwise see a
        // change and rebuild half the dependency tree.
        for (key, _) in std::env::vars() {
            let per_crate = key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || matches!(
                    key.as_str(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                );
            if per_crate {
                cargo.env_remove(key);
            }
        }
        let status = cargo
            // Exactly what deploy/scripts/test.sh builds: `--tests` pulls the
            // dev-dependencies into feature resolution, so without it the
            // binaries would be rebuilt with other features (and rebuilt
            // again by the next test build).
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--bins",
                "--tests",
                "--examples",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the binaries under test");
        assert!(status.success(), "building the binaries under test failed");
    });
    let path = target_dir().join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing after the build",
        path.display()
    );
    path
}

/// An example program of the workspace (built with the binaries).
pub fn example(name: &str) -> PathBuf {
    binary("orchestrator-api");
    let path = target_dir().join("debug").join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing after the build",
        path.display()
    );
    path
}

/// The directory holding the model weights; fails loudly when the
/// embedding model is not there.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("ORCH_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let weights = dir.join("all-minilm-l6-v2/model.safetensors");
    assert!(
        weights.is_file(),
        "{} is missing: run deploy/scripts/fetch-models.sh",
        weights.display()
    );
    dir
}

/// The Qdrant the memory tests use, when one is configured.
pub fn qdrant_url() -> Option<String> {
    std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty())
}

pub fn redis_url() -> String {
    let url =
        std::env::var("ORCH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        std::net::TcpStream::connect(&hostport).is_ok(),
        "Redis is not reachable at {url}: run deploy/scripts/test.sh, or set ORCH_TEST_REDIS_URL"
    );
    url
}

pub fn postgres_admin_url() -> String {
    std::env::var("ORCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh PostgreSQL database for one test and returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sea_orm::{ConnectionTrait, Database};
    let admin = postgres_admin_url();
    let db = Database::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is not reachable at {admin}: {e}; run deploy/scripts/test.sh")
    });
    let name = format!("orch_test_{}", uuid::Uuid::now_v7().simple());
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(&admin);
    format!("{base}/{name}")
}

/// A unique Redis key prefix, so tests sharing one Redis never meet.
pub fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::now_v7().simple())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free port")
}

/// Which queue backend a process uses.
#[derive(Debug, Clone)]
pub enum Backend {
    Embedded,
    Redis { url: String, prefix: String },
}

impl Backend {
    pub fn redis() -> Self {
        Backend::Redis {
            url: redis_url(),
            prefix: unique_prefix(),
        }
    }
}

/// Settings shared by the processes of one test.
#[derive(Debug, Clone)]
pub struct Setup {
    pub backend: Backend,
    pub data_dir: PathBuf,
    /// `DATABASE_URL`; unset, processes in Redis mode are pointed at the
    /// data directory's SQLite file explicitly (they share this host).
    pub database_url: Option<String>,
    /// Start processes with no `DATABASE_URL` at all.
    pub no_database_url: bool,
    pub extra_env: Vec<(String, String)>,
    /// A collection of its own when the tests run against Qdrant.
    pub qdrant_collection: String,
}

impl Setup {
    pub fn new(backend: Backend) -> Self {
        let data_dir =
            std::env::temp_dir().join(format!("orch-test-{}", uuid::Uuid::now_v7().simple()));
        Self {
            backend,
            data_dir,
            database_url: None,
            no_database_url: false,
            extra_env: Vec::new(),
            qdrant_collection: format!("test_{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// The same setup with its store on a fresh PostgreSQL database.
    pub async fn on_postgres(mut self) -> Self {
        self.database_url = Some(fresh_postgres_database().await);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    fn command(&self, binary: &str) -> Command {
        self.command_at(&crate::binary(binary))
    }

    /// Starts the program at `path` (an example) with this setup's
    /// environment.
    pub fn spawn_program(&self, path: &Path, args: &[&str]) -> Process {
        let child = self
            .command_at(path)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        Process(Some(child))
    }

    fn command_at(&self, path: &Path) -> Command {
        let mut cmd = Command::new(path);
        // Only what the test sets: no ORCH_* leaking in from the shell.
        for (key, _) in std::env::vars() {
            if key.starts_with("ORCH_") || key == "DATABASE_URL" || key == "QDRANT_URL" {
                cmd.env_remove(key);
            }
        }
        // Fault payloads (panic, fail_attempts, long sleeps) are what the
        // reliability tests are made of; one test checks they are refused
        // without this operator setting.
        cmd.env("ORCH_DATA_DIR", &self.data_dir)
            .env("ORCH_MODELS_DIR", models_dir())
            .env("ORCH_NOOP_FAULTS", "true")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        if let Backend::Redis { url, prefix } = &self.backend {
            cmd.env("ORCH_REDIS_URL", url)
                .env("ORCH_REDIS_PREFIX", prefix);
        }
        match (&self.database_url, &self.backend) {
            _ if self.no_database_url => {}
            (Some(url), _) => {
                cmd.env("DATABASE_URL", url);
            }
            (None, Backend::Redis { .. }) => {
                let file = self.data_dir.join("orchestrator.db");
                cmd.env(
                    "DATABASE_URL",
                    format!("sqlite://{}?mode=rwc", file.display()),
                );
            }
            (None, Backend::Embedded) => {}
        }
        if let Some(url) = qdrant_url() {
            cmd.env("QDRANT_URL", url)
                .env("ORCH_QDRANT_COLLECTION", &self.qdrant_collection);
        }
        for (key, value) in &self.extra_env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Starts the API and waits until it answers `/health`.
    pub async fn start_api(&self, args: &[&str]) -> Api {
        self.start_api_at(free_port(), args).await
    }

    /// Starts the API on a port chosen beforehand (for configurations that
    /// must name the API's own address).
    pub async fn start_api_at(&self, port: u16, args: &[&str]) -> Api {
        let child = self
            .command("orchestrator-api")
            .env("ORCH_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .args(args)
            .spawn()
            .expect("start orchestrator-api");
        let api = Api {
            process: Process(Some(child)),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            key: None,
        };
        api.wait_healthy().await;
        api
    }

    /// Runs the API to completion, for start-up refusals.
    pub fn run_api_expecting_exit(&self, addr: &str) -> (ExitStatus, String) {
        let output = self
            .command("orchestrator-api")
            .env("ORCH_HTTP_ADDR", addr)
            .output()
            .expect("run orchestrator-api");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A `noop` worker process, except in embedded mode where the API runs
    /// its workers itself.
    pub fn start_noop_worker_unless_embedded(&self) -> Option<Process> {
        match self.backend {
            Backend::Embedded => None,
            Backend::Redis { .. } => Some(self.start_worker(&["--queues", "noop"])),
        }
    }

    pub fn start_worker(&self, args: &[&str]) -> Process {
        self.start_worker_with_env(args, &[])
    }

    pub fn start_worker_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Process {
        let child = self
            .command("orchestrator-worker")
            .args(args)
            .envs(env.iter().copied())
            .spawn()
            .expect("start orchestrator-worker");
        Process(Some(child))
    }

    /// An `orchestrator-trainer` process.
    pub fn start_trainer(&self, args: &[&str]) -> Process {
        let child = self
            .command("orchestrator-trainer")
            .args(args)
            .spawn()
            .expect("start orchestrator-trainer");
        Process(Some(child))
    }

    /// Runs the worker to completion, for start-up refusals.
    pub fn run_worker_expecting_exit(&self, args: &[&str]) -> (ExitStatus, String) {
        let output = self
            .command("orchestrator-worker")
            .args(args)
            .output()
            .expect("run orchestrator-worker");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A child process that is killed if the test ends first.
pub struct Process(Option<Child>);

impl Process {
    pub fn pid(&self) -> i32 {
        self.0.as_ref().expect("process running").id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.0.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.as_mut().expect("process").try_wait().expect("wait") {
                self.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running API and an HTTP client for it.
pub struct Api {
    pub process: Process,
    pub base: String,
    pub http: reqwest::Client,
    pub key: Option<String>,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "API did not become healthy at {}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn authed(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .authed(self.http.get(self.url(path)))
            .send()
            .await
            .expect("GET");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .authed(self.http.post(self.url(path)).json(body))
            .send()
            .await
            .expect("POST");
        decode(response).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .authed(self.http.patch(self.url(path)).json(body))
            .send()
            .await
            .expect("PATCH");
        decode(response).await
    }

    pub async fn delete(&self, path: &str) -> StatusCode {
        self.authed(self.http.delete(self.url(path)))
            .send()
            .await
            .expect("DELETE")
            .status()
    }

    /// Sends a raw body with a JSON content type.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .authed(self.http.post(self.url(path)))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        decode(response).await
    }

    /// Creates a queue for external workers (`settings` adds to the
    /// request body), asserting 201.
    pub async fn create_external_queue(&self, name: &str, settings: Value) {
        let mut body = json!({"name": name, "handler": "external"});
        body.as_object_mut()
            .unwrap()
            .extend(settings.as_object().expect("settings object").clone());
        let (status, created) = self.post("/api/v1/queues", &body).await;
        assert_eq!(status, StatusCode::CREATED, "create {name}: {created}");
        assert_eq!(created["handler"], "external", "{created}");
    }

    /// Pushes one job and returns its id, asserting 202.
    pub async fn push(&self, job: Value) -> String {
        let (status, body) = self.post("/api/v1/jobs", &job).await;
        assert_eq!(status, StatusCode::ACCEPTED, "push {job}: {body}");
        body["id"].as_str().expect("id").to_string()
    }

    /// Pushes `count` copies of `job` in batches of up to 10,000.
    pub async fn push_many(&self, job: Value, count: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            let n = (count - ids.len()).min(10_000);
            let jobs: Vec<Value> = (0..n).map(|_| job.clone()).collect();
            let (status, body) = self
                .post("/api/v1/jobs/batch", &json!({ "jobs": jobs }))
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "batch push: {body}");
            ids.extend(
                body["ids"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|id| id.as_str().unwrap().to_string()),
            );
        }
        ids
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "job {id}: {body}");
        body
    }

    /// Waits until job `id` has `status`, failing the test after `timeout`.
    pub async fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(id).await;
            if job["status"] == status {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never reached {status}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The counts of one queue from `GET /api/v1/queues`.
    pub async fn queue(&self, name: &str) -> Value {
        let (status, body) = self.get("/api/v1/queues").await;
        assert_eq!(status, StatusCode::OK, "queues: {body}");
        body["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == name).cloned())
            .unwrap_or_else(|| panic!("queue {name} missing from {body}"))
    }

    /// Waits until `done` of a queue reaches `expected`.
    pub async fn wait_for_done(&self, queue: &str, expected: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let counts = self.queue(queue).await;
            if counts["done"].as_u64() == Some(expected) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} never reached done={expected}: {counts}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        fetch_text(&self.url("/metrics")).await
    }
}

async fn decode(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// GETs a URL as text, retrying for a few seconds while nothing listens yet.
pub async fn fetch_text(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match reqwest::get(url).await {
            Ok(response) => return response.text().await.expect("response text"),
            Err(err) => assert!(Instant::now() < deadline, "GET {url}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis server of the test's own (for restarts), with AOF persistence.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    process: Process,
}

impl PrivateRedis {
    /// Starts `redis-server` with `appendonly yes` and `appendfsync always`.
    pub async fn start_with_aof() -> Self {
        Self::start_on(free_port()).await
    }

    fn spawn(port: u16, dir: &Path) -> Process {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (run deploy/scripts/test.sh to install it)");
        Process(Some(child))
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9, then start again on the same port and data directory.
    pub async fn crash_and_restart(&mut self) {
        self.kill().await;
        self.start_again().await;
    }

    /// kill -9: Redis is gone until [`Self::start_again`].
    pub async fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
        self.process.wait_exit(Duration::from_secs(10)).await;
    }

    /// Starts Redis again on the same port and data directory.
    pub async fn start_again(&mut self) {
        self.process = Self::spawn(self.port, &self.dir);
        self.wait_ready().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = self.process.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PrivateRedis {
    /// Starts `redis-server` on a port chosen beforehand: the processes under
    /// test were told to find Redis there before it was up.
    pub async fn start_on(port: u16) -> Self {
        let dir =
            std::env::temp_dir().join(format!("orch-redis-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("redis data dir");
        let process = Self::spawn(port, &dir);
        let redis = Self { port, dir, process };
        redis.wait_ready().await;
        redis
    }
}

impl Setup {
    /// Starts `binary` with its log and its error output both going to the
    /// file `log`, for tests that read what a process said while it runs.
    pub fn spawn_logged(
        &self,
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Process {
        let file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("create log file {}: {e}", log.display()));
        let child = self
            .command(binary)
            .args(args)
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        Process(Some(child))
    }

    /// Starts `binary` on a pseudo-terminal (util-linux `script`), everything
    /// it draws on the terminal going to the file `log`.
    pub fn spawn_on_terminal(&self, binary: &str, args: &[&str], log: &Path) -> Process {
        let mut inner = self.command(binary);
        inner.args(args);
        let line = std::iter::once(inner.get_program())
            .chain(inner.get_args())
            .map(|part| format!("'{}'", part.to_string_lossy().replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut outer = Command::new("script");
        outer.arg("-qfec").arg(&line).arg(log);
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => outer.env(key, value),
                None => outer.env_remove(key),
            };
        }
        let child = outer
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start script (util-linux) for a pseudo-terminal");
        Process(Some(child))
    }

    /// Starts the API on `port` without waiting for it to answer, logging
    /// to `log`: for tests of what it does before it listens.
    pub fn spawn_api_logged(&self, port: u16, args: &[&str], log: &Path) -> Api {
        let addr = format!("127.0.0.1:{port}");
        Api {
            process: self.spawn_logged("orchestrator-api", args, &[("ORCH_HTTP_ADDR", &addr)], log),
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            key: None,
        }
    }
}

/// Waits until the file at `path` contains `needle` and returns its text,
/// failing the test (with what the file holds) after `within`.
pub async fn wait_for_text(path: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never said {needle:?} within {within:?}; it holds:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
