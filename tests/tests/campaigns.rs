//! Campaigns end to end over real processes, a real fixture website on
//! loopback, real SQLite and real Redis: both campaign types run to
//! completion with the expected items; pause and resume lose and repeat
//! nothing; workers scale up and down live; a worker killed with SIGKILL
//! loses nothing; private addresses are never fetched without an
//! allowlist; bad payloads are refused.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use orchestrator_tests::{Api, Backend, Setup, StatusCode, site::Site};
use serde_json::{Value, json};

const LOOPBACK: &str = "127.0.0.1/32";

/// A deployment whose operator lets campaigns reach the loopback fixture
/// site (`ORCH_CAMPAIGN_ALLOW`).
fn loopback_setup(backend: Backend) -> Setup {
    Setup::new(backend).env("ORCH_CAMPAIGN_ALLOW", LOOPBACK)
}

async fn create(api: &Api, body: Value) -> String {
    let (status, created) = api.post("/api/v1/campaigns", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().expect("campaign id").to_string()
}

async fn campaign(api: &Api, id: &str) -> Value {
    let (status, body) = api.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Waits until `check` holds for the campaign, failing with its last state.
async fn wait_until(
    api: &Api,
    id: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let body = campaign(api, id).await;
        if check(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "campaign never got there: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_status(api: &Api, id: &str, status: &str, timeout: Duration) -> Value {
    wait_until(api, id, timeout, |c| c["status"] == status).await
}

/// Every result of a campaign, walked page by page.
async fn all_results(api: &Api, id: &str, query: &str) -> Vec<Value> {
    let mut results = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = api
            .get(&format!(
                "/api/v1/campaigns/{id}/results?limit=3&after={after}{query}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        results.extend(page["results"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => return results,
        }
    }
}

/// A crawl of the fixture site's slow chain, two operations at a time.
async fn create_slow_campaign(api: &Api, site: &Site) -> String {
    create(
        api,
        json!({"name": "slow", "type": "seo_mining",
               "config": {"urls": [site.url("/slow/0.html")], "allow": [LOOPBACK], "max_depth": 50,
                          "per_host_interval_ms": 0, "concurrency": 2}}),
    )
    .await
}

async fn wait_for_ops(api: &Api, id: &str, ops: i64) {
    wait_until(api, id, Duration::from_secs(30), |c| {
        c["progress"]["ops_done"].as_i64() >= Some(ops)
    })
    .await;
}

/// The items found on the slow chain's pages.
async fn slow_results(api: &Api, id: &str) -> Vec<Value> {
    let mut slow = all_results(api, id, "").await;
    slow.retain(|r| r["url"].as_str().unwrap().contains("/slow/"));
    slow
}

fn kinds(results: &[Value]) -> HashSet<(String, String)> {
    results
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["syntax"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn seo_campaign_crawls_the_fixture_site_and_finds_every_syntax() {
    let site = Site::start(0, Duration::ZERO).await;
    let setup = loopback_setup(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let id = create(
        &api,
        json!({
            "name": "fixture shop",
            "type": "seo_mining",
            "config": {"urls": [site.url("/")], "allow": [LOOPBACK], "max_depth": 2,
                       "per_host_interval_ms": 0},
        }),
    )
    .await;
    let done = wait_status(&api, &id, "completed", Duration::from_secs(60)).await;
    assert_eq!(done["reason"], "frontier empty");

    let results = all_results(&api, &id, "").await;
    let found = kinds(&results);
    for expected in [
        ("WebSite", "json-ld"),
        ("Product", "json-ld"),
        ("Organization", "microdata"),
        ("Person", "rdfa"),
        ("Event", "json-ld"),
        ("Review", "microdata"),
        // Only the sitemap (named by robots.txt) links to it.
        ("BlogPosting", "json-ld"),
    ] {
        assert!(
            found.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} missing from {found:?}"
        );
    }
    let products: Vec<_> = results.iter().filter(|r| r["kind"] == "Product").collect();
    assert_eq!(
        products.len(),
        2,
        "one Product per product page: {products:#?}"
    );
    assert_eq!(done["progress"]["items_found"], results.len() as i64);

    // robots.txt respected, each page fetched once, nothing off-site.
    assert_eq!(site.hits("/private/secret.html"), 0);
    assert_eq!(site.hits("/robots.txt"), 1);
    for (path, hits) in site.all_hits() {
        assert_eq!(hits, 1, "{path} fetched {hits} times");
    }
    assert_eq!(site.hits("/products/1.html"), 1);

    // Filters, and the JSONL export holds exactly the same items.
    let only = all_results(&api, &id, "&kind=Product&syntax=json-ld").await;
    assert_eq!(only.len(), 2);
    let export = reqwest::get(api.url(&format!("/api/v1/campaigns/{id}/results?format=jsonl")))
        .await
        .unwrap();
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = export
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, results);

    let metrics = api.metrics().await;
    assert!(
        metrics.contains(&format!(
            "orchestrator_campaign_ops_total{{campaign=\"{id}\",kind=\"page\"}}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("orchestrator_campaign_items{{campaign=\"{id}\"}}")));
}

#[tokio::test]
async fn storybook_campaign_records_components_of_v6_and_v8_indexes() {
    let site = Site::start(0, Duration::ZERO).await;
    let setup = loopback_setup(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let id = create(
        &api,
        json!({
            "name": "design systems",
            "type": "storybook_discovery",
            "config": {"urls": [site.url("/sb8/"), site.url("/sb6/iframe.html")], "allow": [LOOPBACK]},
            "goals": {"min_components": 4},
        }),
    )
    .await;
    let done = wait_status(&api, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(done["progress"]["goals_met"], true, "{done:#}");
    let results = all_results(&api, &id, "&kind=component").await;
    let titles: HashSet<&str> = results
        .iter()
        .map(|r| r["data"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        HashSet::from(["Button", "Forms/Input", "Layout/Card", "Header"]),
        "docs-only entries are not components"
    );
    let button = results
        .iter()
        .find(|r| r["data"]["title"] == "Button")
        .unwrap();
    assert_eq!(button["data"]["stories"].as_array().unwrap().len(), 2);
    assert_eq!(button["data"]["stories"][0]["args"], json!({"label": "Go"}));
    assert_eq!(button["data"]["tags"], json!(["dev", "autodocs"]));
    let header = results
        .iter()
        .find(|r| r["data"]["title"] == "Header")
        .unwrap();
    assert_eq!(
        header["data"]["stories"][0]["args"],
        json!({"user": {"name": "Jane"}})
    );
    // v6 has no index.json: it was asked once, then stories.json.
    assert_eq!(site.hits("/sb6/index.json"), 1);
    assert_eq!(site.hits("/sb6/stories.json"), 1);
}

#[tokio::test]
async fn a_campaign_completes_when_its_goals_are_met() {
    let site = Site::start(200, Duration::from_millis(20)).await;
    let setup = loopback_setup(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let id = create(
        &api,
        json!({
            "name": "first products",
            "type": "seo_mining",
            "config": {"urls": [site.url("/slow/0.html")], "allow": [LOOPBACK], "max_depth": 20,
                       "max_pages": 200, "per_host_interval_ms": 0},
            "goals": {"schema_types": ["Product"], "min_sites": 1},
        }),
    )
    .await;
    let done = wait_status(&api, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(done["reason"], "goals met");
    assert_eq!(done["progress"]["goals_met"], true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fetched = site.total_hits();
    assert!(
        fetched < 20,
        "it kept crawling after its goals: {fetched} requests"
    );
}

#[tokio::test]
async fn private_addresses_are_never_fetched_without_an_allowlist() {
    let site = Site::start(0, Duration::ZERO).await;
    // No ORCH_CAMPAIGN_ALLOW: only public addresses.
    let setup = Setup::new(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let port = site.addr.port();
    // Address literals are refused at once.
    for url in [
        format!("http://127.0.0.1:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.1.2.3/".to_string(),
        "http://192.168.0.1/".to_string(),
        "http://[::1]/".to_string(),
        "http://[::ffff:127.0.0.1]/".to_string(),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/campaigns",
                &json!({"name": "x", "type": "seo_mining", "config": {"urls": [url]}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("config.urls"),
            "{body}"
        );
    }
    // A name that resolves to loopback is refused after resolution.
    let id = create(
        &api,
        json!({"name": "sneaky", "type": "seo_mining",
               "config": {"urls": [format!("http://localhost:{port}/")]}}),
    )
    .await;
    let done = wait_status(&api, &id, "failed", Duration::from_secs(30)).await;
    assert_eq!(done["progress"]["errors"], 1);
    // A request cannot widen the operator's (empty) list: not even to the
    // loopback site, let alone everything or the metadata service.
    for allow in [
        LOOPBACK,
        "0.0.0.0/0",
        "::/0",
        "169.254.169.254/32",
        "localhost",
    ] {
        let (status, body) = api
            .post(
                "/api/v1/campaigns",
                &json!({"name": "wide", "type": "seo_mining",
                        "config": {"urls": [site.url("/")], "allow": [allow]}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{allow}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("config.allow") && message.contains(allow),
            "{body}"
        );
    }
    let (_, listed) = api.get("/api/v1/campaigns").await;
    let names: Vec<&str> = listed["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sneaky"], "refused requests created nothing");
    assert_eq!(site.total_hits(), 0, "{:?}", site.all_hits());
    drop(api);

    // With the operator allowing loopback, a request may narrow that list
    // but not add to it.
    let setup = loopback_setup(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let (status, body) = api
        .post(
            "/api/v1/campaigns",
            &json!({"name": "wider", "type": "seo_mining",
                    "config": {"urls": [site.url("/")], "allow": [LOOPBACK, "10.0.0.0/8"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("10.0.0.0/8"), "{body}");
    // An allowed site redirecting to the metadata address is not followed.
    let id = create(
        &api,
        json!({"name": "redirect", "type": "seo_mining",
               "config": {"urls": [site.url("/redirect-metadata")], "allow": [LOOPBACK]}}),
    )
    .await;
    wait_status(&api, &id, "failed", Duration::from_secs(30)).await;
    assert_eq!(site.hits("/redirect-metadata"), 1);
    assert_eq!(
        site.total_hits(),
        2,
        "only robots.txt and the redirect: {:?}",
        site.all_hits()
    );
    let metrics = api.metrics().await;
    assert!(metrics.contains("kind=\"blocked\""), "{metrics}");
}

#[tokio::test]
async fn bad_campaign_payloads_get_a_clear_4xx_and_change_nothing() {
    let setup = loopback_setup(Backend::Embedded);
    let api = setup.start_api(&[]).await;
    let ok_config = json!({"urls": ["http://example.test/"]});
    let cases = [
        (json!({"type": "seo_mining", "config": ok_config}), "name"),
        (
            json!({"name": " ", "type": "seo_mining", "config": ok_config}),
            "name",
        ),
        (
            json!({"name": "x", "type": "mining", "config": ok_config}),
            "type",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {}}),
            "urls",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {"urls": ["ftp://example.test/"]}}),
            "config.urls",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {"urls": ["not a url"]}}),
            "config.urls",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {"urls": ["http://u:p@example.test/"]}}),
            "config.urls",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {"urls": ["http://example.test/"], "allow": ["http://x/"]}}),
            "config.allow",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {"urls": ["http://example.test/"], "allow": ["10.0.0.0/99"]}}),
            "config.allow",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {"urls": ["http://example.test/"], "max_depth": 5000}}),
            "max_depth",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": {"urls": ["http://example.test/"], "bogus": 1}}),
            "bogus",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": ok_config, "resources": {"max_workers": 0}}),
            "max_workers",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": ok_config, "priority": 5000}),
            "priority",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": ok_config, "goals": {"min_components": 3}}),
            "min_components",
        ),
        (
            json!({"name": "x", "type": "seo_mining", "config": ok_config, "goals": {"schema_types": ["<script>"]}}),
            "schema_types",
        ),
        (
            json!({"name": "x", "type": "storybook_discovery", "config": {"urls": ["http://example.test/"], "sitemaps": ["http://example.test/s.xml"]}}),
            "sitemaps",
        ),
        (
            json!({"name": "x".repeat(300), "type": "seo_mining", "config": ok_config}),
            "name",
        ),
    ];
    for (body, mentions) in cases {
        let (status, reply) = api.post("/api/v1/campaigns", &body).await;
        assert!(status.is_client_error(), "{body} -> {status} {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "{body}: {message:?} should mention {mentions}"
        );
    }
    let too_many: Vec<String> = (0..1_001)
        .map(|i| format!("http://example.test/{i}"))
        .collect();
    let (status, _) = api
        .post(
            "/api/v1/campaigns",
            &json!({"name": "x", "type": "seo_mining", "config": {"urls": too_many}}),
        )
        .await;
    assert!(status.is_client_error());
    let (_, list) = api.get("/api/v1/campaigns").await;
    assert_eq!(list["campaigns"], json!([]), "nothing was created");

    let missing = "0190f0e0-0000-7000-8000-000000000000";
    assert_eq!(
        api.get(&format!("/api/v1/campaigns/{missing}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/campaigns/../../etc").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.post(&format!("/api/v1/campaigns/{missing}/pause"), &json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/campaigns?limit=0").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.get("/api/v1/campaigns?status=weird").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let id = create(
        &api,
        json!({"name": "x", "type": "seo_mining", "config": ok_config}),
    )
    .await;
    let (status, _) = api
        .post(
            &format!("/api/v1/campaigns/{id}/scale"),
            &json!({"workers": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .post(
            &format!("/api/v1/campaigns/{id}/scale"),
            &json!({"workers": "many"}),
        )
        .await;
    assert!(status.is_client_error());
    assert_eq!(
        api.get(&format!("/api/v1/campaigns/{id}/results?limit=5000"))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.get(&format!("/api/v1/campaigns/{id}/results?format=xml"))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.get(&format!("/api/v1/campaigns/{id}/results?after=abc"))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(campaign(&api, &id).await["resources"]["max_workers"], 1);
    api.post(&format!("/api/v1/campaigns/{id}/stop"), &json!({}))
        .await;
    let (status, body) = api
        .post(&format!("/api/v1/campaigns/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// With Redis: one `--campaign` worker, paused mid-crawl and resumed; no
/// page is fetched while paused, none twice, none dropped.
#[tokio::test]
async fn pause_and_resume_keep_the_frontier_redis() {
    let site = Site::start(40, Duration::from_millis(60)).await;
    let setup = loopback_setup(Backend::redis());
    let api = setup.start_api(&[]).await;
    let id = create_slow_campaign(&api, &site).await;
    let _worker = setup.start_worker(&["--campaign", &id]);
    wait_for_ops(&api, &id, 8).await;
    let (status, paused) = api
        .post(&format!("/api/v1/campaigns/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["status"], "paused");
    tokio::time::sleep(Duration::from_millis(800)).await; // operations in flight finish
    let before = site.total_hits();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(site.total_hits(), before, "fetched while paused");
    let during = campaign(&api, &id).await;
    assert!(
        during["progress"]["frontier"].as_i64().unwrap() > 0,
        "{during:#}"
    );

    let (status, _) = api
        .post(&format!("/api/v1/campaigns/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_status(&api, &id, "completed", Duration::from_secs(60)).await;
    // The start page's robots.txt also names the site's sitemap, so the
    // rest of the fixture site is crawled too; count the chain's items.
    let slow = slow_results(&api, &id).await;
    assert_eq!(slow.len(), 40, "one item per page of the chain");
    for n in 0..40 {
        assert_eq!(site.hits(&format!("/slow/{n}.html")), 1, "page {n}");
    }
}

/// With Redis: `max_workers` holds across worker processes and changes
/// live; `--campaigns all` serves the campaign with the highest priority.
#[tokio::test]
async fn workers_scale_up_and_down_across_processes_redis() {
    let site = Site::start(400, Duration::from_millis(100)).await;
    let setup = loopback_setup(Backend::redis()).env("RUST_LOG", "info");
    let api = setup.start_api(&[]).await;
    let config = json!({"urls": [site.url("/slow/0.html")], "allow": [LOOPBACK], "max_depth": 1000,
                        "max_pages": 400, "per_host_interval_ms": 0, "concurrency": 1});
    let low = create(
        &api,
        json!({"name": "low", "type": "seo_mining", "config": config, "priority": 1}),
    )
    .await;
    let high = create(
        &api,
        json!({"name": "high", "type": "seo_mining", "config": config, "priority": 9,
               "resources": {"max_workers": 1}}),
    )
    .await;
    let workers: Vec<_> = (0..3)
        .map(|_| setup.start_worker(&["--campaigns", "all"]))
        .collect();
    let count = |c: &Value| c["workers"].as_array().map_or(0, Vec::len);
    // The high-priority campaign takes one worker (its limit); the others go to the next.
    wait_until(&api, &high, Duration::from_secs(20), |c| count(c) == 1).await;
    wait_until(&api, &low, Duration::from_secs(20), |c| count(c) == 1).await;
    let (status, scaled) = api
        .post(
            &format!("/api/v1/campaigns/{high}/scale"),
            &json!({"workers": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{scaled}");
    assert_eq!(scaled["resources"]["max_workers"], 3);
    // Workers leave the low campaign only when it ends or they lose their
    // slot; the third, idle one joins high at once.
    wait_until(&api, &high, Duration::from_secs(20), |c| count(c) >= 2).await;
    api.post(
        &format!("/api/v1/campaigns/{high}/scale"),
        &json!({"workers": 1}),
    )
    .await;
    let shrunk = wait_until(&api, &high, Duration::from_secs(20), |c| count(c) == 1).await;
    assert_eq!(count(&shrunk), 1);
    // Never over the limit: sampled while it runs.
    for _ in 0..10 {
        assert!(count(&campaign(&api, &high).await) <= 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(workers);
}

/// With Redis: a worker killed with SIGKILL mid-campaign loses nothing;
/// another worker finishes it with every page's item stored once.
#[tokio::test]
async fn a_worker_killed_mid_campaign_loses_nothing_redis() {
    worker_killed_mid_campaign(false).await;
}

#[tokio::test]
async fn a_worker_killed_mid_campaign_loses_nothing_on_postgres() {
    worker_killed_mid_campaign(true).await;
}

async fn worker_killed_mid_campaign(postgres: bool) {
    let site = Site::start(30, Duration::from_millis(150)).await;
    let mut setup = loopback_setup(Backend::redis()).env("ORCH_LEASE_MS", "3000");
    if postgres {
        setup = setup.on_postgres().await;
    }
    let api = setup.start_api(&[]).await;
    let id = create_slow_campaign(&api, &site).await;
    let first = setup.start_worker(&["--campaign", &id]);
    wait_for_ops(&api, &id, 6).await;
    first.signal(libc::SIGKILL);
    drop(first);
    let _second = setup.start_worker(&["--campaign", &id]);
    let done = wait_status(&api, &id, "completed", Duration::from_secs(90)).await;
    let results = slow_results(&api, &id).await;
    assert_eq!(
        done["progress"]["items_found"],
        all_results(&api, &id, "").await.len(),
        "the counter counts stored items, not deliveries"
    );
    let urls: HashSet<&str> = results.iter().map(|r| r["url"].as_str().unwrap()).collect();
    assert_eq!(results.len(), 30, "each item stored once");
    assert_eq!(urls.len(), 30);
    for n in 0..30 {
        let hits = site.hits(&format!("/slow/{n}.html"));
        assert!((1..=2).contains(&hits), "page {n} fetched {hits} times");
    }
}
