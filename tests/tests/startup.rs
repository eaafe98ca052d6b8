//! Start-up while Redis or the store is down: a process waits for them,
//! logging each try, instead of exiting, and is not ready until connected.
//! Configuration mistakes still stop it at once, and
//! `ORCH_CONNECT_TIMEOUT_S` bounds the wait.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use orchestrator_tests::{
    Backend, PrivateRedis, Setup, StatusCode, free_port, fresh_postgres_database, unique_prefix,
    wait_for_text,
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// A setup whose Redis is to be at `port`, where nothing listens yet.
fn redis_at(port: u16) -> Setup {
    let setup = Setup::new(Backend::Redis {
        url: format!("redis://127.0.0.1:{port}"),
        prefix: unique_prefix(),
    });
    std::fs::create_dir_all(&setup.data_dir).expect("create the data directory");
    setup
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Pushes noop jobs and waits until they are done: in Redis mode the API
/// runs no workers, so only a worker process can do them.
async fn run_noop_jobs(setup: &Setup) {
    let api = setup.start_api(&[]).await;
    let ids = api
        .push_many(json!({"queue": "noop", "payload": {}}), 20)
        .await;
    api.wait_for_done("noop", ids.len() as u64, Duration::from_secs(30))
        .await;
}

/// The arguments `binary` needs to start at all.
fn args(binary: &str) -> &'static [&'static str] {
    match binary {
        "orchestrator-worker" => &["--queues", "noop"],
        _ => &[],
    }
}

/// Starts `binary` logging to `log` and waits for it to exit, failing the
/// test unless it fails within `within` (counted from its start, after the
/// binaries are built). Returns what it said.
async fn run_to_exit(setup: &Setup, binary: &str, within: Duration) -> String {
    orchestrator_tests::binary(binary);
    let log = setup.data_dir.join(format!("{binary}.log"));
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let mut process = setup.spawn_logged(binary, args(binary), &[("ORCH_HTTP_ADDR", &addr)], &log);
    let status = process.wait_exit(within + Duration::from_secs(10)).await;
    let said = read(&log);
    assert!(!status.success(), "{binary} exited successfully:\n{said}");
    assert!(
        started.elapsed() < within,
        "{binary} took {:?} to exit:\n{said}",
        started.elapsed()
    );
    said
}

#[tokio::test]
async fn a_worker_started_before_redis_waits_for_it_then_serves() {
    let port = free_port();
    let setup = redis_at(port);
    let log = setup.data_dir.join("worker.log");
    let mut worker = setup.spawn_logged("orchestrator-worker", &["--queues", "noop"], &[], &log);
    let said = wait_for_text(&log, "(attempt 2,", Duration::from_secs(30)).await;
    let first = format!("waiting for Redis at redis://127.0.0.1:{port} (attempt 1, next in 200ms)");
    assert!(said.contains(&first), "{said}");
    assert!(said.contains("Connection refused"), "{said}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        worker.is_running(),
        "the worker exited while Redis was down:\n{}",
        read(&log)
    );

    let _redis = PrivateRedis::start_on(port).await;
    run_noop_jobs(&setup).await;
    assert!(worker.is_running(), "{}", read(&log));
}

#[tokio::test]
async fn the_api_listens_only_once_redis_is_up() {
    let port = free_port();
    let setup = redis_at(port);
    let log = setup.data_dir.join("api.log");
    let mut api = setup.spawn_api_logged(free_port(), &[], &log);
    wait_for_text(&log, "waiting for Redis at", Duration::from_secs(30)).await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let answered = api.http.get(api.url("/health")).send().await;
        assert!(
            answered.is_err(),
            "the API answered before Redis was up:\n{}",
            read(&log)
        );
        assert!(api.process.is_running(), "the API exited:\n{}", read(&log));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let _redis = PrivateRedis::start_on(port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = api.http.get(api.url("/ready")).send().await
            && response.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API never became ready after Redis came up:\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Forwards every connection made to `port` to `target`: the store
/// becoming reachable at the address processes were given.
async fn forward(port: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("listen on the forwarded port");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn a_worker_started_before_postgresql_waits_for_it_then_serves() {
    let database = url::Url::parse(&fresh_postgres_database().await).expect("database URL");
    let target = format!(
        "{}:{}",
        database.host_str().expect("host"),
        database.port().unwrap_or(5432)
    );
    let port = free_port();
    let mut unreachable = database.clone();
    unreachable.set_port(Some(port)).expect("set port");
    let mut setup = Setup::new(Backend::redis());
    setup.database_url = Some(unreachable.to_string());
    std::fs::create_dir_all(&setup.data_dir).expect("create the data directory");
    let log = setup.data_dir.join("worker.log");
    let mut worker = setup.spawn_logged("orchestrator-worker", &["--queues", "noop"], &[], &log);
    // sqlx itself retries a refused connection for 5 s before giving up.
    let said = wait_for_text(&log, "waiting for the store at", Duration::from_secs(30)).await;
    assert!(said.contains("(attempt 1, next in 200ms)"), "{said}");
    assert!(
        worker.is_running(),
        "the worker exited while the store was down:\n{said}"
    );

    let _forwarder = forward(port, target).await;
    run_noop_jobs(&setup).await;
    assert!(worker.is_running(), "{}", read(&log));
}

#[tokio::test]
async fn a_malformed_redis_url_still_stops_a_process_at_once() {
    let mut setup = redis_at(free_port());
    setup.backend = Backend::Redis {
        url: "notredis://x".into(),
        prefix: unique_prefix(),
    };
    for binary in ["orchestrator-worker", "orchestrator-api"] {
        let said = run_to_exit(&setup, binary, Duration::from_secs(5)).await;
        assert!(
            said.contains("ORCH_REDIS_URL: scheme must be redis://, got notredis://"),
            "{said}"
        );
        assert!(!said.contains("waiting for"), "{said}");
    }
}

#[tokio::test]
async fn a_bad_connect_timeout_is_refused_by_name() {
    let setup = redis_at(free_port()).env("ORCH_CONNECT_TIMEOUT_S", "soon");
    for binary in ["orchestrator-worker", "orchestrator-api"] {
        let said = run_to_exit(&setup, binary, Duration::from_secs(5)).await;
        assert!(
            said.contains("ORCH_CONNECT_TIMEOUT_S: \"soon\" is not a whole number of seconds"),
            "{said}"
        );
        assert!(!said.contains("waiting for"), "{said}");
    }
}

#[tokio::test]
async fn a_connect_timeout_stops_a_process_naming_redis() {
    let port = free_port();
    let setup = redis_at(port).env("ORCH_CONNECT_TIMEOUT_S", "1");
    for binary in ["orchestrator-worker", "orchestrator-api"] {
        let said = run_to_exit(&setup, binary, Duration::from_secs(6)).await;
        let gave_up = format!(
            "cannot reach Redis at redis://127.0.0.1:{port} within ORCH_CONNECT_TIMEOUT_S=1 s"
        );
        assert!(said.contains(&gave_up), "{said}");
        assert!(said.contains("Connection refused"), "{said}");
    }
}

#[tokio::test]
async fn a_connect_timeout_stops_a_process_naming_the_store() {
    let port = free_port();
    let mut setup = Setup::new(Backend::redis()).env("ORCH_CONNECT_TIMEOUT_S", "1");
    setup.database_url = Some(format!("postgres://orch:hunter2@127.0.0.1:{port}/orch"));
    std::fs::create_dir_all(&setup.data_dir).expect("create the data directory");
    let said = run_to_exit(&setup, "orchestrator-worker", Duration::from_secs(6)).await;
    let gave_up = format!(
        "cannot reach the store at postgres://orch:***@127.0.0.1:{port}/orch within \
         ORCH_CONNECT_TIMEOUT_S=1 s"
    );
    assert!(said.contains(&gave_up), "{said}");
    assert!(!said.contains("hunter2"), "{said}");
}
