//! The one error type every handler returns: it maps each failure to a status
//! and the `{"error": {"code", "message"}}` body.

use axum::{
    Json,
    extract::{Request, rejection::JsonRejection},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unknown_queue`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A queue named in the path that the registry does not hold.
    pub fn queue_not_found(name: &str) -> Self {
        Self::not_found(
            "queue_not_found",
            format!("no queue named {:?}", shown(name)),
        )
    }

    /// A failure of ours (backend down, bug): logged in full, reported as
    /// 503 so clients retry, without internals in the body.
    pub fn backend(err: anyhow::Error) -> Self {
        tracing::error!("backend error: {err:#}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            "a backend did not answer; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_field",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                "body_too_large"
            }
            _ => "invalid_body",
        };
        Self::new(rejection.status(), code, rejection.body_text())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::backend(err)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Rejects a value outside `range`, naming the field; `None` passes.
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: Option<T>,
    range: std::ops::RangeInclusive<T>,
) -> ApiResult<()> {
    match value {
        Some(v) if !range.contains(&v) => Err(ApiError::invalid(format!(
            "{field} must be between {} and {}",
            range.start(),
            range.end()
        ))),
        _ => Ok(()),
    }
}

/// A client-supplied name as it may appear in a message: cut to 64
/// characters, so a hostile name cannot bloat the reply.
pub fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}

/// Longest plain-text error body turned into a JSON message.
const MAX_PLAIN_ERROR: usize = 4096;

/// Middleware: an error answered in plain text (axum's own rejections of a
/// path that does not decode, a websocket request without upgrade headers,
/// a body over a route's limit) is turned into the API's JSON error body,
/// so every error has the same shape. Headers such as `Allow`,
/// `Retry-After` and `WWW-Authenticate` are kept.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        _ if status.is_server_error() => "internal_error",
        _ => "request_refused",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut json = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().append(name.clone(), value.clone());
        }
    }
    json
}
