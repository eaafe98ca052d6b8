//! Operating the fleet: stop and start under load, live events with keys
//! and origins, and the modes.

use std::time::{Duration, Instant};

use orchestrator_tests::{Api, Backend, Process, Setup};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    self, Message,
    client::IntoClientRequest,
    http::{HeaderValue, header},
};

const KEY: &str = "operations-key-0123456789";
const LOAD: usize = 50_000;

/// Jobs done by every listed process, as their beats report them.
async fn executions(api: &Api) -> u64 {
    let (status, body) = api.get("/api/v1/fleet").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["jobs_done"].as_u64().unwrap())
        .sum()
}

/// Pushes the load, stops the system in the middle of it, checks that the
/// fleet is idle and refuses intake, starts it again and checks that every
/// job ran exactly once.
async fn stop_and_start_under_load(api: &Api) {
    let job = json!({"queue": "noop", "payload": {"sleep_ms": 50}});
    api.push_many(job.clone(), LOAD).await;

    let (status, report) = api.post("/api/v1/system/stop?wait_s=60", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["state"], "stopped", "{report}");
    assert_eq!(report["idle"], true, "{report}");
    assert_eq!(report["running_jobs"], 0, "{report}");
    assert!(report["acknowledged"].as_u64().unwrap() >= 1, "{report}");

    // Intake is refused and changes nothing.
    let before = api.queue("noop").await;
    let (status, refused) = api.post("/api/v1/jobs", &job).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "system_stopped", "{refused}");
    let (status, _) = api
        .post("/api/v1/jobs/batch", &json!({"jobs": [job.clone()]}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Nothing runs while stopped.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = api.queue("noop").await;
    assert_eq!(after["running"], 0, "{after}");
    assert_eq!(before["done"], after["done"], "jobs ran while stopped");
    assert_eq!(before["pending"], after["pending"], "{before} {after}");
    let done_at_stop = after["done"].as_u64().unwrap();
    assert!(
        done_at_stop < LOAD as u64,
        "the stop came after the load was done: nothing was tested"
    );
    let (_, status_body) = api.get("/api/v1/status").await;
    assert_eq!(status_body["system"]["state"], "stopped", "{status_body}");
    let (_, fleet) = api.get("/api/v1/fleet").await;
    for process in fleet["processes"].as_array().unwrap() {
        assert_eq!(process["state"], "stopped", "{process}");
    }

    // Twice is a conflict, with the state named.
    let (status, again) = api.post("/api/v1/system/stop", &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopped"),
        "{again}"
    );

    let (status, started) = api.post("/api/v1/system/start", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["state"], "running", "{started}");
    let phases = started["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["core", "index", "campaigns", "models"], "{started}");
    assert_eq!(phases[0]["state"], "done");
    let (status, again) = api.post("/api/v1/system/start", &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let counts = api
        .wait_for_done("noop", LOAD as u64, Duration::from_secs(180))
        .await;
    assert_eq!(counts["dead"], 0, "{counts}");
    assert_eq!(counts["failed"], 0, "{counts}");
    // Exactly once: the processes ran as many jobs as were done.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ran = executions(api).await;
        if ran == LOAD as u64 {
            break;
        }
        assert!(ran <= LOAD as u64, "{ran} executions of {LOAD} jobs");
        assert!(Instant::now() < deadline, "{ran} executions reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.push(job).await;
}

#[tokio::test]
async fn embedded_stop_and_start_under_load_lose_nothing_and_repeat_nothing() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    stop_and_start_under_load(&api).await;
}

#[tokio::test]
async fn redis_stop_and_start_under_load_lose_nothing_and_repeat_nothing() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let _workers: Vec<Process> = (0..2)
        .map(|_| setup.start_worker(&["--queues", "noop"]))
        .collect();
    wait_for_workers(&api, 2).await;
    stop_and_start_under_load(&api).await;
}

async fn wait_for_workers(api: &Api, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, fleet) = api.get("/api/v1/fleet").await;
        let workers = fleet["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "worker")
            .count();
        if workers == count {
            return;
        }
        assert!(Instant::now() < deadline, "{fleet}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `/ws/events` with `configure` applied to the handshake.
async fn open_events(
    api: &Api,
    query: &str,
    configure: impl FnOnce(&mut tungstenite::handshake::client::Request),
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let url = format!("{}/ws/events{query}", api.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    configure(&mut request);
    tokio_tungstenite::connect_async(request).await
}

fn refused_with(result: Result<impl Sized, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("not an HTTP refusal: {other}"),
        Ok(_) => panic!("the websocket opened"),
    }
}

/// The next event of `kind` on the socket, within `within`.
async fn next_event<S>(socket: &mut S, kind: &str, within: Duration) -> Value
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within {within:?}"))
            .expect("socket open")
            .expect("a message");
        if let Message::Text(text) = message {
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["type"] == kind {
                return event;
            }
        }
    }
}

#[tokio::test]
async fn events_need_a_key_and_come_only_to_our_origin() {
    let setup = Setup::new(Backend::Embedded).env("ORCH_API_KEYS", KEY);
    let mut api = setup.start_api(&[]).await;
    api.key = Some(KEY.into());

    assert_eq!(refused_with(open_events(&api, "", |_| {}).await), 401);
    assert_eq!(
        refused_with(open_events(&api, "?token=not-the-key-0123456789", |_| {}).await),
        401
    );
    let foreign = open_events(&api, &format!("?token={KEY}"), |request| {
        request.headers_mut().insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
    })
    .await;
    assert_eq!(refused_with(foreign), 403);

    // The key as a query parameter: a status event every 2 s.
    let (mut socket, _) = open_events(&api, &format!("?token={KEY}"), |_| {})
        .await
        .unwrap();
    let status = next_event(&mut socket, "status", Duration::from_secs(5)).await;
    assert_eq!(status["code"], "status");
    assert_eq!(status["data"]["system"]["state"], "running", "{status}");
    assert!(status["data"]["queues"].is_array(), "{status}");

    // The key as a subprotocol, as a browser sends it; the answer names ours.
    let (mut socket, response) = open_events(&api, "", |request| {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&format!("orchestrator.v1, bearer.{KEY}")).unwrap(),
        );
    })
    .await
    .unwrap();
    assert_eq!(
        response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
        "orchestrator.v1"
    );
    next_event(&mut socket, "status", Duration::from_secs(5)).await;

    // Server-sent events for curl: the same stream.
    let response = api
        .http
        .get(api.url(&format!("/api/v1/events?token={KEY}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut response = response;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text.contains("event: status") {
        assert!(Instant::now() < deadline, "no status event: {text}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Each frame's data is one event as JSON.
    let frame = text
        .split("\n\n")
        .find(|frame| frame.contains("event: status"))
        .unwrap();
    let data = frame
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line: {frame}"));
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["type"], "status", "{event}");
    assert!(
        event["at"].is_u64() && event["message"].is_string(),
        "{event}"
    );
    assert!(event["data"]["throughput"].is_object(), "{event}");
    // A key in the URL is only taken on the streams.
    let plain = api
        .http
        .get(api.url(&format!("/api/v1/status?token={KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_killed_worker_is_reported_lost_and_a_departed_one_is_not() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let mut leaving = setup.start_worker(&["--queues", "noop"]);
    let doomed = setup.start_worker(&["--queues", "noop"]);
    wait_for_workers(&api, 2).await;
    let (mut socket, _) = open_events(&api, "", |_| {}).await.unwrap();
    // Wait for a status event so the watchdog has seen both workers.
    next_event(&mut socket, "status", Duration::from_secs(5)).await;
    next_event(&mut socket, "status", Duration::from_secs(5)).await;

    // SIGTERM: it leaves on purpose, no warning.
    leaving.signal(libc::SIGTERM);
    leaving.wait_exit(Duration::from_secs(10)).await;
    doomed.signal(libc::SIGKILL);
    let killed = Instant::now();
    let warning = next_event(&mut socket, "warning", Duration::from_secs(10)).await;
    assert!(
        killed.elapsed() <= Duration::from_secs(8),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(warning["code"], "process_lost", "{warning}");
    assert_eq!(warning["data"]["process"]["pid"], doomed.pid(), "{warning}");
    // No second warning, about the worker that left.
    let later = events_within(&mut socket, Duration::from_secs(4)).await;
    let warnings: Vec<&Value> = later.iter().filter(|e| e["type"] == "warning").collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(later.iter().any(|e| e["type"] == "status"), "{later:?}");
}

/// Every event that arrives within `within`.
async fn events_within<S>(socket: &mut S, within: Duration) -> Vec<Value>
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
        if let Message::Text(text) = message {
            events.push(serde_json::from_str(&text).unwrap());
        }
    }
    events
}

#[tokio::test]
async fn modes_are_enforced() {
    // An unknown mode stops the process, naming the variable.
    let setup = Setup::new(Backend::Embedded).env("ORCH_MODE", "prod");
    let (status, stderr) = setup.run_api_expecting_exit("127.0.0.1:0");
    assert!(!status.success());
    assert!(stderr.contains("ORCH_MODE"), "{stderr}");

    // Production: keys even on loopback.
    let setup = Setup::new(Backend::Embedded)
        .env("ORCH_MODE", "production")
        .env("ORCH_ALLOW_EMBEDDED", "true");
    let (status, stderr) = setup.run_api_expecting_exit("127.0.0.1:0");
    assert!(!status.success());
    assert!(stderr.contains("ORCH_API_KEYS"), "{stderr}");

    // Production: no embedded queues unless allowed.
    let setup = Setup::new(Backend::Embedded)
        .env("ORCH_MODE", "production")
        .env("ORCH_API_KEYS", KEY);
    let (status, stderr) = setup.run_api_expecting_exit("127.0.0.1:0");
    assert!(!status.success());
    assert!(stderr.contains("--allow-embedded"), "{stderr}");

    // Allowed, it runs, logs JSON lines and says so in status.
    let setup = Setup::new(Backend::Embedded)
        .env("ORCH_MODE", "production")
        .env("ORCH_API_KEYS", KEY)
        .env("ORCH_WARM_MODELS", "false")
        .env("RUST_LOG", "info");
    std::fs::create_dir_all(&setup.data_dir).unwrap();
    let log = setup.data_dir.join("api.log");
    let mut api =
        setup.spawn_api_logged(orchestrator_tests::free_port(), &["--allow-embedded"], &log);
    api.key = Some(KEY.into());
    let text =
        orchestrator_tests::wait_for_text(&log, "listening on", Duration::from_secs(30)).await;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["message"].is_string(),
            "{line}"
        );
    }
    let status = wait_for_status(&api).await;
    assert_eq!(status["mode"], "production", "{status}");

    // Testing: a throw-away data directory, not the configured one.
    let setup = Setup::new(Backend::Embedded).env("ORCH_MODE", "testing");
    let api = setup.start_api(&[]).await;
    let status = wait_for_status(&api).await;
    assert_eq!(status["mode"], "testing", "{status}");
    api.push(json!({"queue": "noop", "payload": {}})).await;
    assert!(
        !setup.data_dir.join("orchestrator.db").exists(),
        "testing mode wrote into ORCH_DATA_DIR"
    );
}

async fn wait_for_status(api: &Api) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = api.get("/api/v1/status").await;
        if code == StatusCode::OK {
            return body;
        }
        assert!(Instant::now() < deadline, "{code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_lost_redis_is_reported_and_the_api_recovers() {
    let mut redis = orchestrator_tests::PrivateRedis::start_with_aof().await;
    let setup = Setup::new(Backend::Redis {
        url: redis.url(),
        prefix: orchestrator_tests::unique_prefix(),
    });
    let api = setup.start_api(&[]).await;
    let _worker = setup.start_worker(&["--queues", "noop"]);
    wait_for_workers(&api, 1).await;
    let (mut socket, _) = open_events(&api, "", |_| {}).await.unwrap();
    next_event(&mut socket, "status", Duration::from_secs(5)).await;

    redis.kill().await;
    let error = next_event(&mut socket, "error", Duration::from_secs(10)).await;
    assert_eq!(error["code"], "subsystem_down", "{error}");
    // Status answers at once, and says what is down.
    let asked = Instant::now();
    let status = wait_for_status(&api).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = status;
    while subsystem_state(&status, "queue") != "down" {
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = wait_for_status(&api).await;
    }

    redis.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while subsystem_state(&status, "queue") != "ok" || subsystem_state(&status, "fleet") != "ok" {
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = wait_for_status(&api).await;
    }
    let id = api.push(json!({"queue": "noop", "payload": {}})).await;
    api.wait_for_status(&id, "done", Duration::from_secs(30))
        .await;
}

fn subsystem_state(status: &Value, name: &str) -> String {
    status["subsystems"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .and_then(|s| s["state"].as_str())
        .unwrap_or_default()
        .to_string()
}
