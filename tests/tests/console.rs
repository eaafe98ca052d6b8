//! Mission Control in a real browser: Debian's chromium driven by
//! playwright-core (tests/console) against a running API with real workers,
//! in embedded and in Redis mode, with and without API keys. The browser's
//! console must stay free of errors.

use orchestrator_tests::{
    Backend, Setup,
    console::{self, Scenarios},
};

const KEY: &str = "console-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_embedded_mode() {
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let out = console::run(Scenarios {
        base: &api.base,
        mode: "embedded",
        key: None,
        only: &[],
        extra: &[],
        screenshots: true,
    })
    .await;
    assert!(out.contains(r#""scenario":"weight","ok":true"#), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_redis_mode_with_keys() {
    let setup = Setup::new(Backend::redis()).env("ORCH_API_KEYS", KEY);
    let api = setup.start_api(&[]).await;
    let _worker = setup.start_worker(&["--queues", "noop"]);
    let out = console::run(Scenarios {
        base: &api.base,
        mode: "redis",
        key: Some(KEY),
        only: &[],
        extra: &[],
        screenshots: false,
    })
    .await;
    assert!(out.contains(r#""scenario":"key","ok":true"#), "{out}");
}
