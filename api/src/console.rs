//! Mission Control, the web console: static files compiled into the binary
//! (no CDN, nothing fetched at run time) and served at `/` and
//! `/console/{asset}`. The console is a client of the public API like any
//! other; it has no routes of its own beyond its files.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::error::{ApiError, ErrorBody};

/// Every file of the console: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("../console/index.html")),
    ("style.css", CSS, include_bytes!("../console/style.css")),
    ("uplot.css", CSS, include_bytes!("../console/uplot.css")),
    ("uplot.js", JS, include_bytes!("../console/uplot.js")),
    ("app.js", JS, include_bytes!("../console/app.js")),
    ("core.js", JS, include_bytes!("../console/core.js")),
    ("download.js", JS, include_bytes!("../console/download.js")),
    (
        "page-overview.js",
        JS,
        include_bytes!("../console/page-overview.js"),
    ),
    (
        "page-queues.js",
        JS,
        include_bytes!("../console/page-queues.js"),
    ),
    (
        "page-workflows.js",
        JS,
        include_bytes!("../console/page-workflows.js"),
    ),
    (
        "page-models.js",
        JS,
        include_bytes!("../console/page-models.js"),
    ),
    (
        "page-campaigns.js",
        JS,
        include_bytes!("../console/page-campaigns.js"),
    ),
    (
        "page-training.js",
        JS,
        include_bytes!("../console/page-training.js"),
    ),
    (
        "page-data.js",
        JS,
        include_bytes!("../console/page-data.js"),
    ),
    (
        "uplot-LICENSE.txt",
        TEXT,
        include_bytes!("../console/uplot-LICENSE.txt"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Scripts, styles and connections only from this origin; no framing.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The console's page.
#[utoipa::path(get, path = "/", tag = "console", responses(
    (status = 200, description = "Mission Control (HTML)", content_type = "text/html")))]
pub async fn index() -> Response {
    serve("index.html").unwrap_or_else(IntoResponse::into_response)
}

/// One of the console's files (scripts, styles).
#[utoipa::path(get, path = "/console/{asset}", tag = "console",
    params(("asset" = String, Path, description = "A file name such as app.js")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript"),
        (status = 404, description = "No such file", body = ErrorBody)))]
pub async fn asset(Path(name): Path<String>) -> Response {
    serve(&name).unwrap_or_else(IntoResponse::into_response)
}

fn serve(name: &str) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .ok_or_else(|| {
            ApiError::not_found(
                "asset_not_found",
                format!("no console file {}", crate::error::shown(name)),
            )
        })?;
    let mut response = (StatusCode::OK, *body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files, checked again on every load so an upgrade shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page or a script names is one the binary serves.
    #[test]
    fn every_referenced_file_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|(name, _, _)| *name).collect();
        for (_, _, body) in ASSETS {
            let text = String::from_utf8_lossy(body);
            for (at, _) in text.match_indices("/console/") {
                let rest = &text[at + "/console/".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                    .collect();
                if name.is_empty() {
                    continue;
                }
                assert!(served.contains(&name.as_str()), "{name} is not served");
            }
        }
    }
}
