//! Context packs over the real API and workers, with the real embedding
//! model: a directory indexes (.gitignore and binary files respected),
//! searches, re-indexes only what changed, survives a restart; packs built
//! by worker processes through Redis; bad input refused.

use std::{path::Path, time::Duration};

use orchestrator_tests::{Api, Backend, Setup, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A small project: docs, code, prose, plus what must not be indexed.
fn write_fixture(root: &Path) {
    let files: [(&str, &[u8]); 7] = [
        (
            "README.md",
            b"# Widget\nA tool for widgets.\n\n## Installation\nRun cargo install widget.\n\n## Configuration\nSet WIDGET_HOME to the data folder.\n",
        ),
        (
            "src/db.rs",
            b"use std::io;\n\n/// Opens a connection to the PostgreSQL database.\npub fn connect_database(url: &str) -> io::Result<()> {\n    Ok(())\n}\n\n/// Reads the TOML configuration file.\npub fn parse_config(path: &str) -> io::Result<()> {\n    Ok(())\n}\n",
        ),
        ("notes/cooking.txt", b"To bake bread, mix flour, water, salt and yeast, then knead.\n"),
        (".gitignore", b"secret.txt\nbuild/\n"),
        ("secret.txt", b"The launch code is 1234.\n"),
        ("build/output.txt", b"Generated build artefact about databases.\n"),
        ("logo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01"),
    ];
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

async fn wait_ready(api: &Api, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, pack) = api.get(&format!("/api/v1/context-packs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{pack}");
        if pack["status"] == "ready" {
            return pack;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pack not ready: {pack}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn search(api: &Api, id: &str, body: Value) -> Vec<Value> {
    let (status, found) = api
        .post(&format!("/api/v1/context-packs/{id}/search"), &body)
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    found["results"].as_array().unwrap().clone()
}

fn sources(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|r| r["source"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn directory_pack_indexes_searches_and_reindexes_only_changes() {
    let setup = Setup::new(Backend::Embedded);
    let root = setup.data_dir.join("project");
    write_fixture(&root);
    let setup = setup.env("ORCH_INDEX_ROOTS", root.to_str().unwrap());
    let api = setup.start_api(&[]).await;

    let (status, created) = api
        .post(
            "/api/v1/context-packs",
            &json!({"name": "widget", "path": root}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(
        created["plan"]["added"], 3,
        "README, db.rs, cooking.txt: {created}"
    );
    let id = created["pack"]["id"].as_str().unwrap().to_string();
    let pack = wait_ready(&api, &id).await;
    assert_eq!(pack["files"], 3);
    assert_eq!(pack["files_indexed"], 3);
    assert_eq!(pack["progress"], 1.0);
    assert!(pack["chunks"].as_u64().unwrap() >= 3, "{pack}");

    let db = search(
        &api,
        &id,
        json!({"query": "open a connection to the database", "k": 3}),
    )
    .await;
    assert_eq!(db[0]["source"], "src/db.rs", "{db:?}");
    assert_eq!(db[0]["kind"], "code");
    assert!(db[0]["score"].as_f64().unwrap() > db[1]["score"].as_f64().unwrap());
    assert!(db[0]["start_line"].as_u64().unwrap() >= 1);
    let bread = search(&api, &id, json!({"query": "how to make bread", "k": 1})).await;
    assert_eq!(sources(&bread), ["notes/cooking.txt"]);
    let everything = search(&api, &id, json!({"query": "launch code", "k": 100})).await;
    let all_sources = sources(&everything);
    assert!(
        !all_sources
            .iter()
            .any(|s| s == "secret.txt" || s.starts_with("build/")),
        "{all_sources:?}"
    );
    let markdown = search(
        &api,
        &id,
        json!({"query": "install", "k": 10, "kind": "markdown"}),
    )
    .await;
    assert!(!markdown.is_empty() && markdown.iter().all(|r| r["source"] == "README.md"));
    let exact = search(
        &api,
        &id,
        json!({"query": "install", "k": 10, "kind": "markdown", "exact": true}),
    )
    .await;
    assert_eq!(sources(&exact), sources(&markdown));

    // Change one file, add one, delete one: only those two are embedded.
    std::fs::write(
        root.join("notes/cooking.txt"),
        "Pasta needs salted boiling water.\n",
    )
    .unwrap();
    std::fs::write(
        root.join("notes/travel.md"),
        "# Travel\nTrains from Lyon to Paris take two hours.\n",
    )
    .unwrap();
    std::fs::remove_file(root.join("src/db.rs")).unwrap();
    let (status, again) = api
        .post_raw(&format!("/api/v1/context-packs/{id}/reindex"), "")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    let plan = &again["plan"];
    assert_eq!(
        (
            plan["added"].as_u64(),
            plan["changed"].as_u64(),
            plan["removed"].as_u64(),
            plan["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1)),
        "{again}"
    );
    wait_ready(&api, &id).await;
    let embed = api.queue("embed").await;
    assert_eq!(embed["done"], 2, "one job per pass: {embed}");

    let after = search(
        &api,
        &id,
        json!({"query": "connect to the database", "k": 100}),
    )
    .await;
    assert!(
        !sources(&after).contains(&"src/db.rs".to_string()),
        "removed file gone"
    );
    let pasta = search(&api, &id, json!({"query": "cooking pasta", "k": 1})).await;
    assert!(
        pasta[0]["text"].as_str().unwrap().contains("Pasta"),
        "{pasta:?}"
    );
    let trains = search(&api, &id, json!({"query": "rail journey to Paris", "k": 1})).await;
    assert_eq!(sources(&trains), ["notes/travel.md"]);

    // A restart keeps packs and vectors.
    drop(api);
    let api = setup.start_api(&[]).await;
    let (_, list) = api.get("/api/v1/context-packs").await;
    assert_eq!(list["packs"][0]["id"], id.as_str());
    assert_eq!(list["packs"][0]["files"], 3);
    let trains = search(&api, &id, json!({"query": "rail journey to Paris", "k": 1})).await;
    assert_eq!(sources(&trains), ["notes/travel.md"]);

    assert_eq!(
        api.delete(&format!("/api/v1/context-packs/{id}")).await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = api.get(&format!("/api/v1/context-packs/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// With Redis the API only queues: the pack waits, visibly, until an
/// `embed` worker process picks its jobs up.
#[tokio::test]
async fn worker_processes_embed_document_packs_through_redis() {
    let setup = Setup::new(Backend::redis());
    let api = setup.start_api(&[]).await;
    let documents: Vec<Value> = (0..20)
        .map(|i| json!({"source": format!("doc-{i}.txt"), "text": format!("Document number {i} talks about topic {i}.")}))
        .chain([json!({"source": "whales.md", "text": "# Whales\nBlue whales are the largest animals on Earth."})])
        .collect();
    let (status, created) = api
        .post(
            "/api/v1/context-packs",
            &json!({"name": "docs", "documents": documents}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert!(
        created["jobs"].as_u64().unwrap() >= 2,
        "a big pack is several jobs: {created}"
    );
    let id = created["pack"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, waiting) = api.get(&format!("/api/v1/context-packs/{id}")).await;
    assert_eq!(waiting["status"], "indexing");
    assert_eq!(waiting["files_pending"], 21);

    let _worker = setup.start_worker(&["--queues", "embed"]);
    let pack = wait_ready(&api, &id).await;
    assert_eq!(pack["files_indexed"], 21);
    let found = search(
        &api,
        &id,
        json!({"query": "biggest creature in the ocean", "k": 1}),
    )
    .await;
    assert_eq!(sources(&found), ["whales.md"]);
}

#[tokio::test]
async fn bad_pack_requests_get_clear_4xx_and_change_nothing() {
    let setup = Setup::new(Backend::Embedded);
    let allowed = setup.data_dir.join("allowed");
    let binaries = allowed.join("binaries");
    std::fs::create_dir_all(&binaries).unwrap();
    std::fs::write(binaries.join("a.bin"), b"\0\x01\x02").unwrap();
    std::fs::write(binaries.join("b.png"), b"\x89PNG\0\0").unwrap();
    let outside = setup.data_dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("x.txt"), "text").unwrap();

    // Without ORCH_INDEX_ROOTS no path is allowed.
    let closed = setup.start_api(&[]).await;
    let (status, body) = closed
        .post(
            "/api/v1/context-packs",
            &json!({"name": "p", "path": allowed}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ORCH_INDEX_ROOTS")
    );
    drop(closed);

    let setup = setup.env("ORCH_INDEX_ROOTS", allowed.to_str().unwrap());
    let api = setup.start_api(&[]).await;
    let (_, ok) = api
        .post(
            "/api/v1/context-packs",
            &json!({"name": "ok", "documents": [{"source": "a.txt", "text": "hello"}]}),
        )
        .await;
    let id = ok["pack"]["id"].as_str().unwrap().to_string();
    wait_ready(&api, &id).await;

    let escape = format!("{}/../outside", allowed.display());
    let refused: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"name": "p", "path": outside}),
            StatusCode::FORBIDDEN,
            "outside",
        ),
        (
            json!({"name": "p", "path": escape}),
            StatusCode::FORBIDDEN,
            "outside",
        ),
        (
            json!({"name": "p", "path": binaries}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no text files",
        ),
        (
            json!({"name": "p", "path": "/definitely/not/here"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "No such file",
        ),
        (
            json!({"name": "p", "documents": [{"source": "x", "text": "a\u{0}b"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "binary",
        ),
        (
            json!({"name": "p", "documents": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "1 to",
        ),
        (
            json!({"name": "p", "documents": [{"source": "", "text": "x"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "source",
        ),
        (
            json!({"name": "p", "documents": [{"source": "x", "text": "x"}, {"source": "x", "text": "y"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "twice",
        ),
        (
            json!({"name": "p", "documents": [{"source": "x", "text": "x"}], "path": allowed}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "either",
        ),
        (
            json!({"name": "", "documents": [{"source": "x", "text": "x"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": "p", "documents": [{"source": "x", "text": "x", "kind": "video"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "kind",
        ),
        (
            json!({"name": "p", "documents": [{"source": "x", "text": "x".repeat(2 << 20)}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
        ),
    ];
    for (body, expected, needle) in refused {
        let (status, reply) = api.post("/api/v1/context-packs", &body).await;
        assert_eq!(status, expected, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }

    let search_path = format!("/api/v1/context-packs/{id}/search");
    for (body, needle) in [
        (json!({"query": ""}), "query"),
        (json!({"query": "   "}), "query"),
        (json!({"query": "x", "k": 0}), "k must be"),
        (json!({"query": "x", "k": 10000}), "k must be"),
        (json!({"query": "x".repeat(9000)}), "query"),
        (json!({"query": "x", "bogus": 1}), "unknown field"),
    ] {
        let (status, reply) = api.post(&search_path, &body).await;
        assert!(status.is_client_error(), "{status} {reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{reply}"
        );
    }
    let (status, _) = api
        .post(
            "/api/v1/context-packs/0196a0a0-0000-7000-8000-000000000000/search",
            &json!({"query": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get("/api/v1/context-packs/not-a-uuid").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .post_raw(&format!("/api/v1/context-packs/{id}/reindex"), "{not json")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, list) = api.get("/api/v1/context-packs").await;
    assert_eq!(
        list["packs"].as_array().unwrap().len(),
        1,
        "nothing was created: {list}"
    );
    assert_eq!(list["packs"][0]["files"], 1);
}
