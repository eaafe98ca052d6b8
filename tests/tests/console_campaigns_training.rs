//! Mission Control's campaigns, training and training-data pages in a real
//! browser (tests/console/scenarios-campaigns-training.mjs): campaigns
//! started from the console crawl the loopback fixture site, and "Train now"
//! fine-tunes the real SmolLM2 weights, and a dataset run is generated. In
//! embedded mode the API's in-process workers and trainer do the work; in
//! Redis mode `orchestrator-worker --campaigns all` processes, an
//! `orchestrator-worker --queues datagen` and an `orchestrator-trainer` do.
//! The browser's console must stay free of errors.

use std::time::Duration;

use orchestrator_tests::{
    Backend, Process, Setup,
    console::{self, Scenarios},
    site::Site,
};

/// Pages in the fixture site's slow chain: more than the scenario crawls
/// before it stops the campaign, so it is still running when it does.
const SLOW_PAGES: u32 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_training_and_data_pages_in_embedded_mode() {
    pages_in_a_browser(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_training_and_data_pages_in_redis_mode() {
    pages_in_a_browser(Backend::redis()).await;
}

async fn pages_in_a_browser(backend: Backend) {
    let site = Site::start(SLOW_PAGES, Duration::from_millis(100)).await;
    let embedded = matches!(backend, Backend::Embedded);
    let setup = Setup::new(backend)
        .env("ORCH_CAMPAIGN_ALLOW", "127.0.0.1/32")
        // Runs start when asked (Train now), and are picked up at once.
        .env("ORCH_TRAIN_BATCH_THRESHOLD", "1000")
        .env("ORCH_TRAIN_POLL_MS", "200");
    let api = setup.start_api(&[]).await;
    // Redis mode: the fleet does the work. Two campaign workers, so scaling
    // a campaign to 2 shows two slot holders; one for dataset shards.
    let _fleet: Vec<Process> = match embedded {
        true => Vec::new(),
        false => vec![
            setup.start_worker(&["--campaigns", "all"]),
            setup.start_worker(&["--campaigns", "all"]),
            setup.start_worker(&["--queues", "datagen"]),
            setup.start_trainer(&[]),
        ],
    };

    console::run(Scenarios {
        base: &api.base,
        mode: if embedded { "embedded" } else { "redis" },
        key: None,
        only: &["campaigns", "training", "data"],
        extra: &[("site", site.url(""))],
        screenshots: embedded,
    })
    .await;

    // The crawl stopped from the console stopped fetching, far from the
    // end of the chain, and never left the allowed site.
    let fetched = site.total_hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(site.total_hits(), fetched, "fetched after the stop");
    assert_eq!(site.hits(&format!("/slow/{}.html", SLOW_PAGES - 1)), 0);
    assert_eq!(site.hits("/private/secret.html"), 0, "robots.txt ignored");
}
