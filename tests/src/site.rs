//! A website on loopback for campaign tests and benches: robots.txt, a
//! sitemap, pages carrying JSON-LD, microdata and RDFa, broken HTML, a
//! redirect to the cloud metadata address, Storybook indexes (v6 and v8),
//! a chain of slow pages, and the generated bench corpus. It counts every
//! request by path, so tests can prove what was (never) fetched.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

/// A running fixture site.
pub struct Site {
    pub addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct SiteState {
    hits: Arc<Mutex<HashMap<String, u32>>>,
    origin: String,
    /// Pages in the slow chain, and how long each takes.
    slow_pages: u32,
    slow_delay: Duration,
    /// Pages of the bench corpus listed by `/p/sitemap.xml`.
    corpus_pages: usize,
}

impl Site {
    /// Starts the site with the first `pages` pages of the bench corpus
    /// listed in `/p/sitemap.xml`.
    pub async fn start_corpus(pages: usize) -> Self {
        Self::start_with(0, Duration::ZERO, pages).await
    }

    /// Starts the site on 127.0.0.1 with a chain of `slow_pages` pages
    /// (`/slow/0.html` ...), each answering after `slow_delay`.
    pub async fn start(slow_pages: u32, slow_delay: Duration) -> Self {
        Self::start_with(slow_pages, slow_delay, 0).await
    }

    async fn start_with(slow_pages: u32, slow_delay: Duration, corpus_pages: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fixture site");
        let addr = listener.local_addr().expect("fixture address");
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let state = SiteState {
            hits: hits.clone(),
            origin: format!("http://{addr}"),
            slow_pages,
            slow_delay,
            corpus_pages,
        };
        let app = Router::new()
            .route("/robots.txt", get(robots))
            .route("/sitemap.xml", get(sitemap))
            .route("/", get(home))
            .route("/products/{n}", get(product))
            .route("/about.html", get(about))
            .route("/team.html", get(team))
            .route("/broken.html", get(broken))
            .route("/blog/post.html", get(blog_post))
            .route("/private/secret.html", get(|| async { html("secret") }))
            .route(
                "/redirect-metadata",
                get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data/") }),
            )
            .route("/sb8/index.json", get(storybook_v8))
            .route("/sb6/stories.json", get(storybook_v6))
            .route("/slow/{n}", get(slow))
            .route("/p/sitemap.xml", get(corpus_sitemap))
            .route("/p/{n}", get(corpus_page))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(state.clone(), count))
            .with_state(state);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fixture site");
        });
        Self {
            addr,
            hits,
            _server: server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Every path requested, with its count.
    pub fn all_hits(&self) -> HashMap<String, u32> {
        self.hits.lock().unwrap().clone()
    }

    pub fn total_hits(&self) -> u32 {
        self.hits.lock().unwrap().values().sum()
    }
}

async fn count(
    State(state): State<SiteState>,
    uri: Uri,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    *state
        .hits
        .lock()
        .unwrap()
        .entry(uri.path().to_string())
        .or_default() += 1;
    next.run(request).await
}

fn html(body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn robots(State(state): State<SiteState>) -> String {
    format!(
        "User-agent: *\nDisallow: /private/\n\nSitemap: {}/sitemap.xml\n",
        state.origin
    )
}

async fn sitemap(State(state): State<SiteState>) -> Response {
    let o = &state.origin;
    (
        [(header::CONTENT_TYPE, "application/xml")],
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>{o}/products/1.html</loc></url>
  <url><loc>{o}/blog/post.html</loc></url>
  <url><loc>http://elsewhere.invalid/page.html</loc></url>
</urlset>"#
        ),
    )
        .into_response()
}

async fn home() -> Response {
    html(
        r#"<!doctype html><html><head><title>Shop</title>
<script type="application/ld+json">{"@context":"https://schema.org","@type":"WebSite","name":"Fixture Shop","url":"/"}</script>
</head><body>
<a href="/products/1.html">One</a> <a href="/products/2.html">Two</a>
<a href="/about.html">About</a> <a href="/team.html">Team</a>
<a href="/broken.html">Broken</a> <a href="/private/secret.html">Private</a>
<a href="/products/1.html#reviews">One again</a>
<a href="http://elsewhere.invalid/">Elsewhere</a> <a href="mailto:x@y.z">Mail</a>
</body></html>"#,
    )
}

async fn product(Path(n): Path<String>) -> Response {
    let n = n.trim_end_matches(".html");
    if n != "1" && n != "2" {
        return StatusCode::NOT_FOUND.into_response();
    }
    html(&format!(
        r#"<html><head><script type="application/ld+json">
{{"@context":"https://schema.org","@type":"Product","name":"Widget {n}","sku":"W-{n}",
  "offers":{{"@type":"Offer","price":"{n}9.00","priceCurrency":"EUR"}},
  "review":{{"@type":"Review","author":{{"@type":"Person","name":"Ann"}},"reviewRating":{{"@type":"Rating","ratingValue":"5"}}}}}}
</script></head><body><h1>Widget {n}</h1><a href="/">Home</a></body></html>"#
    ))
}

async fn about() -> Response {
    html(
        r#"<html><body>
<div itemscope itemtype="https://schema.org/Organization">
  <span itemprop="name">Fixture Shop Ltd</span>
  <a itemprop="url" href="/">home</a>
  <div itemprop="address" itemscope itemtype="https://schema.org/PostalAddress">
    <span itemprop="addressLocality">Lyon</span>
  </div>
</div></body></html>"#,
    )
}

async fn team() -> Response {
    html(
        r#"<html><body vocab="https://schema.org/">
<div typeof="Person"><span property="name">Grace Hopper</span>
  <span property="jobTitle">Admiral</span></div>
</body></html>"#,
    )
}

async fn broken() -> Response {
    html(
        r#"<html><body><div><p>unclosed <b>tags <table><tr><td>cell
</div></div></span>
<script type="application/ld+json">{"@type":"Event","name":"Launch"}</script>
<script type="application/ld+json">{ not json at all </script>
<div itemscope itemtype="http://schema.org/Review"><span itemprop="reviewBody">Good<p>still"#,
    )
}

async fn blog_post() -> Response {
    html(
        r#"<html><head><script type="application/ld+json">
{"@context":"https://schema.org","@type":"BlogPosting","headline":"Hello","datePublished":"2026-11-01"}
</script></head><body>only in the sitemap</body></html>"#,
    )
}

async fn storybook_v8() -> Response {
    let index = serde_json::json!({"v": 5, "entries": {
        "button--primary": {"type": "story", "id": "button--primary", "title": "Button", "name": "Primary",
            "importPath": "./src/Button.stories.tsx", "tags": ["dev", "autodocs"], "args": {"label": "Go"}},
        "button--secondary": {"type": "story", "id": "button--secondary", "title": "Button", "name": "Secondary",
            "importPath": "./src/Button.stories.tsx", "tags": ["dev"]},
        "button--docs": {"type": "docs", "id": "button--docs", "title": "Button", "name": "Docs",
            "importPath": "./src/Button.mdx", "tags": ["autodocs"]},
        "forms-input--empty": {"type": "story", "id": "forms-input--empty", "title": "Forms/Input", "name": "Empty",
            "importPath": "./src/Input.stories.tsx", "tags": ["dev"]},
        "layout-card--plain": {"type": "story", "id": "layout-card--plain", "title": "Layout/Card", "name": "Plain",
            "importPath": "./src/Card.stories.tsx", "tags": []}
    }});
    axum::Json(index).into_response()
}

async fn storybook_v6() -> Response {
    let index = serde_json::json!({"v": 3, "stories": {
        "header--logged-in": {"id": "header--logged-in", "kind": "Header", "name": "Logged In", "story": "Logged In",
            "parameters": {"fileName": "./src/Header.stories.js", "docsOnly": false, "args": {"user": {"name": "Jane"}}}},
        "header--logged-out": {"id": "header--logged-out", "kind": "Header", "name": "Logged Out", "story": "Logged Out",
            "parameters": {"fileName": "./src/Header.stories.js", "docsOnly": false}},
        "intro--page": {"id": "intro--page", "kind": "Intro", "name": "Page", "story": "Page",
            "parameters": {"docsOnly": true}}
    }});
    axum::Json(index).into_response()
}

/// `/slow/{n}.html`: a Product, and links to the next two pages of the
/// chain (so the frontier branches and reconverges: dedup matters).
async fn slow(State(state): State<SiteState>, Path(n): Path<String>) -> Response {
    let Ok(n) = n.trim_end_matches(".html").parse::<u32>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if n >= state.slow_pages {
        return StatusCode::NOT_FOUND.into_response();
    }
    tokio::time::sleep(state.slow_delay).await;
    let links: String = [n + 1, n + 2]
        .iter()
        .filter(|m| **m < state.slow_pages)
        .map(|m| format!(r#"<a href="/slow/{m}.html">next</a>"#))
        .collect();
    html(&format!(
        r#"<html><head><script type="application/ld+json">{{"@type":"Product","name":"Slow {n}"}}</script></head><body>{links}</body></html>"#
    ))
}

/// `/p/{n}.html`: page `n` of the generated bench corpus.
async fn corpus_page(Path(n): Path<String>) -> Response {
    match n.trim_end_matches(".html").parse::<usize>() {
        Ok(n) => html(&orchestrator_campaign::corpus::generate_page(n)),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `/p/sitemap.xml`: every corpus page the site was started with.
async fn corpus_sitemap(State(state): State<SiteState>) -> Response {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">"#,
    );
    for n in 0..state.corpus_pages {
        xml.push_str(&format!(
            "<url><loc>{}/p/{n}.html</loc></url>",
            state.origin
        ));
    }
    xml.push_str("</urlset>");
    ([(header::CONTENT_TYPE, "application/xml")], xml).into_response()
}
