//! Recurring schedules through the real API: each due time pushed exactly
//! once however many API processes share the store, the lifecycle (list,
//! pause, resume, delete, windows), the missed policy after a stop or a
//! crash, and bad input refused with nothing created.
//!
//! Whether a schedule pushed due time `d` is read from the queue itself:
//! the scheduler pushes with the idempotency key `schedule:{id}:{d}`, so a
//! probe push with that key comes back `duplicate: true` exactly when the
//! scheduler pushed it. (A probe for a key not yet seen creates a job, so
//! probes come after every count.)

use std::time::{Duration, Instant};

use orchestrator_tests::{Api, Backend, Setup, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Creates a schedule, asserting 201.
async fn create(api: &Api, body: Value) -> Value {
    let (status, view) = api.post("/api/v1/schedules", &body).await;
    assert_eq!(status, StatusCode::CREATED, "create {body}: {view}");
    view
}

async fn schedule(api: &Api, id: &str) -> Value {
    let (status, view) = api.get(&format!("/api/v1/schedules/{id}")).await;
    assert_eq!(status, StatusCode::OK, "schedule {id}: {view}");
    view
}

async fn act(api: &Api, id: &str, action: &str) -> Value {
    let (status, view) = api
        .post(&format!("/api/v1/schedules/{id}/{action}"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{action} {id}: {view}");
    view
}

fn id(view: &Value) -> String {
    view["id"].as_str().expect("id").to_string()
}

fn runs(view: &Value) -> u64 {
    view["runs"].as_u64().expect("runs")
}

/// An RFC 3339 time of a view in milliseconds since the epoch.
fn ms(time: &Value) -> i64 {
    let raw = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    chrono::DateTime::parse_from_rfc3339(raw)
        .unwrap_or_else(|e| panic!("{raw}: {e}"))
        .timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Sleeps until the wall clock reads `at_ms`.
async fn sleep_until(at_ms: i64) {
    let left = at_ms - now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// Whether schedule `id` pushed due time `due` to `queue` (see the module
/// doc; creates a job when it did not).
async fn pushed(api: &Api, queue: &str, id: &str, due: i64) -> bool {
    let key = format!("schedule:{id}:{due}");
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"queue": queue, "payload": {}, "idempotency_key": key}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "probe {key}: {body}");
    body["duplicate"].as_bool().expect("duplicate")
}

/// Every job the queue holds, whatever its state.
async fn jobs_in(api: &Api, queue: &str) -> u64 {
    let counts = api.queue(queue).await;
    ["pending", "running", "done", "failed", "dead"]
        .iter()
        .map(|k| counts[*k].as_u64().unwrap_or(0))
        .sum()
}

async fn schedule_count(api: &Api) -> u64 {
    let (status, body) = api.get("/api/v1/schedules").await;
    assert_eq!(status, StatusCode::OK, "list: {body}");
    body["total"].as_u64().expect("total")
}

/// `orchestrator_schedule_runs_total{queue}` of one process (0 when absent).
async fn runs_metric(api: &Api, queue: &str) -> u64 {
    let series = format!("orchestrator_schedule_runs_total{{queue=\"{queue}\"}} ");
    api.metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

/// Waits until schedule `id` has made at least `at_least` runs.
async fn wait_for_runs(api: &Api, id: &str, at_least: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let view = schedule(api, id).await;
        if runs(&view) >= at_least {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "schedule {id} never reached {at_least} runs: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_api_processes_push_each_due_time_exactly_once_on_postgres() {
    let setup = Setup::new(Backend::redis()).on_postgres().await;
    // Redis-mode API processes run no workers: every pushed job stays
    // pending, so the queue counts all of them.
    let first = setup.start_api(&[]).await;
    let second = setup.start_api(&[]).await;
    let every = create(&first, json!({"queue": "noop", "every_ms": 1000})).await;
    let cron = create(
        &second,
        json!({"queue": "noop", "cron": "* * * * * *", "payload": {"sleep_ms": 1}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Paused, they are final: a pause waits for a claim holding the row,
    // and no claim takes a paused schedule.
    act(&second, &id(&every), "pause").await;
    act(&first, &id(&cron), "pause").await;

    let every = schedule(&second, &id(&every)).await;
    let cron = schedule(&first, &id(&cron)).await;
    let every_first_due = ms(&every["created_at"]) + 1000;
    let cron_first_due = ms(&cron["created_at"]).div_euclid(1000) * 1000 + 1000;
    let mut total_runs = 0;
    for (view, first_due) in [(&every, every_first_due), (&cron, cron_first_due)] {
        let made = runs(view);
        assert!((9..=11).contains(&made), "runs over 10 s: {view}");
        // Runs are due times claimed; due times only move forward, so this
        // many runs from the first to the last due time means none skipped.
        let last = ms(&view["last_run_at"]);
        assert_eq!(
            (last - first_due) / 1000 + 1,
            made as i64,
            "a due time between the first and the last was skipped: {view}"
        );
        total_runs += made;
    }
    assert_eq!(
        jobs_in(&first, "noop").await,
        total_runs,
        "jobs pushed differ from runs: a due time was pushed twice or lost"
    );
    let counted = runs_metric(&first, "noop").await + runs_metric(&second, "noop").await;
    assert_eq!(counted, total_runs, "runs counted by the two processes");
    for (view, first_due) in [(&every, every_first_due), (&cron, cron_first_due)] {
        let last = ms(&view["last_run_at"]);
        for due in (first_due..=last).step_by(1000) {
            assert!(
                pushed(&first, "noop", &id(view), due).await,
                "due time {} of {view} has no job",
                rfc3339(due)
            );
        }
        assert!(
            !pushed(&first, "noop", &id(view), last + 1000).await,
            "a paused schedule pushed: {view}"
        );
    }
}

#[tokio::test]
async fn a_schedule_is_listed_paused_resumed_and_deleted_embedded() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let every = create(
        &api,
        json!({"queue": "noop", "every_ms": 1000, "name": "heartbeat", "payload": {"sleep_ms": 1}}),
    )
    .await;
    assert_eq!(every["state"], "active", "{every}");
    assert_eq!(every["name"], "heartbeat");
    assert_eq!(every["payload"], json!({"sleep_ms": 1}));
    assert_eq!(every["missed"], "skip");
    assert_eq!(every["runs"], 0);
    assert!(every["timezone"].is_null(), "{every}");
    assert!(every["last_run_at"].is_null(), "{every}");
    let next: Vec<i64> = every["next_runs"]
        .as_array()
        .expect("next_runs")
        .iter()
        .map(ms)
        .collect();
    assert_eq!(next.len(), 5, "{every}");
    assert_eq!(next[0], ms(&every["next_run_at"]));
    assert_eq!(next[0], ms(&every["created_at"]) + 1000, "{every}");
    assert!(
        next.windows(2).all(|w| w[1] - w[0] == 1000),
        "next_runs 1 s apart: {next:?}"
    );

    let paris = create(
        &api,
        json!({"queue": "noop", "cron": "*/2 * * * * *", "timezone": "Europe/Paris", "missed": "run_once"}),
    )
    .await;
    assert_eq!(paris["timezone"], "Europe/Paris");
    assert_eq!(paris["missed"], "run_once");
    let next: Vec<i64> = paris["next_runs"]
        .as_array()
        .expect("next_runs")
        .iter()
        .map(ms)
        .collect();
    assert!(
        next.iter().all(|t| t % 2000 == 0) && next.windows(2).all(|w| w[1] - w[0] == 2000),
        "every other whole second: {next:?}"
    );

    let (status, list) = api.get("/api/v1/schedules").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 2, "{list}");
    let listed: Vec<&Value> = list["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .collect();
    assert_eq!(listed[0]["id"], every["id"], "oldest first: {list}");
    assert_eq!(listed[1]["id"], paris["id"], "{list}");

    // It runs, and its jobs run.
    let every_id = id(&every);
    wait_for_runs(&api, &every_id, 2).await;

    let paused = act(&api, &every_id, "pause").await;
    assert_eq!(paused["state"], "paused", "{paused}");
    assert!(paused["next_run_at"].is_null(), "{paused}");
    assert_eq!(paused["next_runs"], json!([]), "{paused}");
    let before = runs(&paused);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = schedule(&api, &every_id).await;
    assert_eq!(runs(&still), before, "pushed while paused: {still}");

    let resumed_at = now_ms();
    let resumed = act(&api, &every_id, "resume").await;
    assert_eq!(resumed["state"], "active", "{resumed}");
    assert!(ms(&resumed["next_run_at"]) >= resumed_at, "{resumed}");
    let after = wait_for_runs(&api, &every_id, before + 1).await;
    assert_eq!(runs(&after), before + 1, "{after}");
    assert!(
        ms(&after["last_run_at"]) >= resumed_at,
        "a due time of the pause was pushed after the resume: {after}"
    );

    // A window: no run before start_at, none after end_at.
    let start = (now_ms() / 1000 + 3) * 1000;
    let later = create(
        &api,
        json!({"queue": "noop", "every_ms": 60000, "start_at": rfc3339(start)}),
    )
    .await;
    assert_eq!(ms(&later["next_run_at"]), start, "{later}");
    let end = now_ms() + 2000;
    let ending = create(
        &api,
        json!({"queue": "noop", "every_ms": 500, "end_at": rfc3339(end)}),
    )
    .await;
    let last_due = ms(&ending["created_at"]) + 2000;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let ended = schedule(&api, &id(&ending)).await;
    assert_eq!(ended["state"], "finished", "{ended}");
    assert!(ended["next_run_at"].is_null(), "{ended}");
    assert_eq!(ended["next_runs"], json!([]), "{ended}");
    let expected = if last_due <= end { 4 } else { 3 };
    assert_eq!(runs(&ended), expected, "{ended}");
    assert!(ms(&ended["last_run_at"]) <= end, "{ended}");

    // Deleted: gone, and no more jobs.
    assert_eq!(
        api.delete(&format!("/api/v1/schedules/{every_id}")).await,
        StatusCode::NO_CONTENT
    );
    let (status, body) = api.get(&format!("/api/v1/schedules/{every_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "schedule_not_found");
    assert_eq!(
        api.delete(&format!("/api/v1/schedules/{every_id}")).await,
        StatusCode::NOT_FOUND
    );
    let (status, body) = api.get("/api/v1/schedules/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_schedule_id");
    let unknown = uuid::Uuid::now_v7();
    for action in ["pause", "resume"] {
        let (status, body) = api
            .post(&format!("/api/v1/schedules/{unknown}/{action}"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}: {body}");
    }
    // The first due time after the delete passes without a job.
    let deleted_at = now_ms();
    let created = ms(&every["created_at"]);
    let due = created + ((deleted_at - created) / 1000 + 1) * 1000;
    sleep_until(due + 1200).await;
    assert!(
        !pushed(&api, "noop", &every_id, due).await,
        "a deleted schedule pushed {}",
        rfc3339(due)
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("orchestrator_schedule_runs_total{queue=\"noop\"}"),
        "{metrics}"
    );
}

/// Two schedules on the same due times, `skip` and `run_once`.
async fn skip_and_run_once(api: &Api, every_ms: i64) -> (Value, Value, i64) {
    let anchor = (now_ms() / 1000 + 2) * 1000;
    let mut views = Vec::new();
    for missed in ["skip", "run_once"] {
        let body = json!({"queue": "noop", "every_ms": every_ms, "start_at": rfc3339(anchor),
            "missed": missed});
        views.push(create(api, body).await);
    }
    let run_once = views.pop().expect("run_once");
    let skip = views.pop().expect("skip");
    (skip, run_once, anchor)
}

#[tokio::test]
async fn after_a_system_stop_skip_pushes_nothing_missed_and_run_once_one_catch_up() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let period = 4000;
    let (skip, once, anchor) = skip_and_run_once(&api, period).await;
    wait_for_runs(&api, &id(&skip), 1).await;
    wait_for_runs(&api, &id(&once), 1).await;

    let (status, body) = api.post("/api/v1/system/stop?wait_s=60", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "stop: {body}");
    assert_eq!(body["state"], "stopped", "{body}");
    let stopped_at = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let skip_before = schedule(&api, &id(&skip)).await;
    let once_before = schedule(&api, &id(&once)).await;
    // Start in the middle of a period, at least 8.5 s on: two due times are
    // missed, and the next is two seconds away when the scheduler looks again.
    let mut resume_at = anchor + period / 2;
    while resume_at < stopped_at + 8500 {
        resume_at += period;
    }
    sleep_until(resume_at).await;
    for (before, view) in [(&skip_before, &skip), (&once_before, &once)] {
        let now = schedule(&api, &id(view)).await;
        assert_eq!(runs(&now), runs(before), "pushed while stopped: {now}");
    }
    let (status, body) = api.post("/api/v1/system/start", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "start: {body}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        now_ms() < resume_at + period / 2 - 100,
        "the start took too long to tell catch-ups from on-time runs"
    );

    let last_before = ms(&skip_before["last_run_at"]);
    assert_eq!(ms(&once_before["last_run_at"]), last_before);
    let missed: Vec<i64> = (1..)
        .map(|k| last_before + k * period)
        .take_while(|due| *due < resume_at)
        .collect();
    assert!(missed.len() >= 2, "missed {missed:?}");
    let latest_missed = *missed.last().expect("missed");

    let skip_now = schedule(&api, &id(&skip)).await;
    assert_eq!(
        runs(&skip_now),
        runs(&skip_before),
        "skip caught up: {skip_now}"
    );
    assert_eq!(
        ms(&skip_now["next_run_at"]),
        resume_at + period / 2,
        "{skip_now}"
    );
    let once_now = schedule(&api, &id(&once)).await;
    assert_eq!(
        runs(&once_now),
        runs(&once_before) + 1,
        "run_once pushes one catch-up: {once_now}"
    );
    assert_eq!(ms(&once_now["last_run_at"]), latest_missed, "{once_now}");

    // Both carry on on time.
    wait_for_runs(&api, &id(&skip), runs(&skip_before) + 1).await;
    wait_for_runs(&api, &id(&once), runs(&once_before) + 2).await;
    for due in &missed {
        assert!(
            !pushed(&api, "noop", &id(&skip), *due).await,
            "skip pushed {due}"
        );
        let expected = *due == latest_missed;
        assert_eq!(
            pushed(&api, "noop", &id(&once), *due).await,
            expected,
            "run_once and due time {}",
            rfc3339(*due)
        );
    }
}

#[tokio::test]
async fn after_a_crash_skip_pushes_nothing_missed_and_run_once_one_catch_up() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    // Long periods: the restart lands between two due times.
    let period = 6000;
    let (skip, once, anchor) = skip_and_run_once(&api, period).await;
    wait_for_runs(&api, &id(&skip), 1).await;
    wait_for_runs(&api, &id(&once), 1).await;
    drop(api); // SIGKILL
    sleep_until(anchor + period + 1500).await;
    let api = setup.start_api(&[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        now_ms() < anchor + 2 * period - 300,
        "the restart took too long to tell catch-ups from on-time runs"
    );
    let skip_now = schedule(&api, &id(&skip)).await;
    assert_eq!(runs(&skip_now), 1, "skip caught up: {skip_now}");
    assert_eq!(ms(&skip_now["last_run_at"]), anchor, "{skip_now}");
    assert_eq!(ms(&skip_now["next_run_at"]), anchor + 2 * period);
    let once_now = schedule(&api, &id(&once)).await;
    assert_eq!(runs(&once_now), 2, "one catch-up: {once_now}");
    assert_eq!(ms(&once_now["last_run_at"]), anchor + period, "{once_now}");
    wait_for_runs(&api, &id(&skip), 2).await;
    wait_for_runs(&api, &id(&once), 3).await;
    assert!(!pushed(&api, "noop", &id(&skip), anchor + period).await);
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field_and_nothing_is_created() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    create(&api, json!({"queue": "noop", "every_ms": 60000})).await;
    let past = rfc3339(now_ms() - 60_000);
    let soon = rfc3339(now_ms() + 60_000);
    let later = rfc3339(now_ms() + 120_000);
    let cases = [
        (json!({"queue": "no-such-queue", "every_ms": 1000}), "queue"),
        (json!({"queue": "embed", "every_ms": 1000}), "embed"),
        (
            json!({"queue": "noop", "cron": "every day at noon"}),
            "cron",
        ),
        (json!({"queue": "noop", "cron": "* * * * * * * *"}), "cron"),
        (json!({"queue": "noop", "cron": "0 0 0 30 2 *"}), "cron"),
        (
            json!({"queue": "noop", "cron": "* * * * * *", "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (
            json!({"queue": "noop", "cron": "* * * * * *", "every_ms": 1000}),
            "every_ms",
        ),
        (json!({"queue": "noop"}), "every_ms"),
        (json!({"queue": "noop", "every_ms": 99}), "every_ms"),
        (
            json!({"queue": "noop", "every_ms": 31_622_400_001u64}),
            "every_ms",
        ),
        (json!({"queue": "noop", "every_ms": -5}), "every_ms"),
        (
            json!({"queue": "noop", "every_ms": 1000, "timezone": "UTC"}),
            "timezone",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "start_at": later, "end_at": soon}),
            "end_at",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "end_at": past}),
            "end_at",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "start_at": "tomorrow"}),
            "start_at",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "missed": "sometimes"}),
            "missed",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "priority": 5000}),
            "priority",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "name": ""}),
            "name",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "payload": {"sleep_ms": "soon"}}),
            "payload",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "payload": {"pad": "x".repeat(40_000)}}),
            "payload",
        ),
        (
            json!({"queue": "noop", "every_ms": 1000, "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = api.post("/api/v1/schedules", &body).await;
        let shown: String = body.to_string().chars().take(200).collect();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{shown}: {answer}"
        );
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(field),
            "{shown}: the message does not name {field}: {message}"
        );
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    // Over the body limit.
    let huge = json!({"queue": "noop", "every_ms": 1000, "payload": {"pad": "x".repeat(100_000)}});
    let (status, answer) = api.post("/api/v1/schedules", &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(
        schedule_count(&api).await,
        1,
        "a refused schedule was created"
    );
    let (status, answer) = api.get("/api/v1/schedules?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
}

/// Writes `count` paused schedules straight into an embedded API's store
/// (creating them one by one through the API would take minutes).
async fn fill_store(setup: &Setup, count: usize) {
    use sea_orm::{ConnectionTrait, Database};
    let file = setup.data_dir.join("orchestrator.db");
    let db = Database::connect(format!("sqlite://{}?mode=rw", file.display()))
        .await
        .expect("open the store");
    let now = now_ms();
    let rows: Vec<String> = (0..count)
        .map(|_| {
            format!(
                "('{}', 'noop', '{{}}', 60000, 1, 'skip', {}, 0, {now}, {now})",
                uuid::Uuid::now_v7(),
                now + 60_000
            )
        })
        .collect();
    for chunk in rows.chunks(500) {
        let sql = format!(
            "INSERT INTO schedules (id, queue, payload, every_ms, paused, missed, \
             next_run_at_ms, runs, created_at_ms, updated_at_ms) VALUES {}",
            chunk.join(",")
        );
        db.execute_unprepared(&sql).await.expect("insert schedules");
    }
}

#[tokio::test]
async fn schedules_are_capped_at_ten_thousand() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    fill_store(&setup, 9_999).await;
    let body = json!({"queue": "noop", "every_ms": 60000, "paused": true});
    create(&api, body.clone()).await;
    let (status, answer) = api.post("/api/v1/schedules", &body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_schedules", "{answer}");
    assert_eq!(schedule_count(&api).await, 10_000);
    let (status, page) = api.get("/api/v1/schedules?limit=1000&offset=9500").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["schedules"].as_array().expect("schedules").len(), 500);
    assert_eq!(page["schedules"][499]["state"], "paused", "{page}");
}
