//! The store on PostgreSQL: migrations run, the registry persists there, and
//! jobs flow as on SQLite.

use std::time::Duration;

use orchestrator_tests::{Backend, Setup, fresh_postgres_database};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::json;

#[tokio::test]
async fn postgres_store_push_then_done() {
    let database_url = fresh_postgres_database().await;
    let mut setup = Setup::new(Backend::redis());
    setup.database_url = Some(database_url.clone());
    let api = setup.start_api(&[]).await;
    let _worker = setup.start_worker(&["--queues", "noop"]);
    api.post("/api/v1/queues/noop/pause", &json!({})).await;
    api.post("/api/v1/queues/noop/resume", &json!({})).await;
    api.patch("/api/v1/queues/noop", &json!({"max_attempts": 7}))
        .await;
    let id = api.push(json!({"queue": "noop"})).await;
    let job = api
        .wait_for_status(&id, "done", Duration::from_secs(20))
        .await;
    assert_eq!(job["max_attempts"], 7, "{job}");

    let db = Database::connect(&database_url)
        .await
        .expect("connect to the test database");
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT max_attempts, paused FROM queues WHERE name = 'noop'",
        ))
        .await
        .expect("query queues")
        .expect("noop row in PostgreSQL");
    assert_eq!(row.try_get::<i32>("", "max_attempts").unwrap(), 7);
    assert!(!row.try_get::<bool>("", "paused").unwrap());
}

#[tokio::test]
async fn registry_survives_restart_on_sqlite() {
    let setup = Setup::new(Backend::Embedded);
    {
        let api = setup.start_api(&["--no-workers"]).await;
        api.post("/api/v1/queues/noop/pause", &json!({})).await;
        api.push(json!({"queue": "noop"})).await;
    }
    let api = setup.start_api(&[]).await;
    let counts = api.queue("noop").await;
    assert_eq!(
        counts["paused"], true,
        "pause was lost across a restart: {counts}"
    );
    assert_eq!(counts["pending"], 1, "{counts}");
}
