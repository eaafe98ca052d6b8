//! Named limits on what one API process takes on at once, so a flood of
//! requests (or a few slow ones) degrades into clear 503s instead of memory
//! growth and timeouts everywhere.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Most context pack uploads or re-indexes parsed at once: each holds up to
/// 64 MiB of documents while it is chunked and stored.
pub const MAX_CONCURRENT_PACK_WRITES: usize = 4;
/// Longest a websocket may stay open without a message either way.
pub const WEBSOCKET_IDLE: Duration = Duration::from_secs(300);
/// Largest message a websocket client may send (watchers send none of use).
pub const WEBSOCKET_MAX_MESSAGE: usize = 64 * 1024;

/// The process-wide limits, shared by every request.
#[derive(Clone)]
pub struct Limits {
    /// Requests being answered (until their response head is ready).
    requests: Arc<Semaphore>,
    /// Longest a handler may take to produce its response head.
    timeout: Duration,
    /// Open websockets.
    websockets: Arc<Semaphore>,
    /// Pack uploads and re-indexes in progress.
    pack_writes: Arc<Semaphore>,
}

impl Limits {
    pub fn new(max_requests: usize, timeout: Duration, max_websockets: usize) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(max_requests)),
            timeout,
            websockets: Arc::new(Semaphore::new(max_websockets)),
            pack_writes: Arc::new(Semaphore::new(MAX_CONCURRENT_PACK_WRITES)),
        }
    }

    /// A slot for one more websocket, held for the socket's life.
    pub fn websocket(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.websockets.clone().try_acquire_owned().map_err(|_| {
            busy(
                "too_many_websockets",
                "too many websockets are open; try again later",
            )
        })
    }

    /// A slot for one pack upload or re-index, held while it is parsed.
    fn pack_write(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.pack_writes.clone().try_acquire_owned().map_err(|_| {
            busy(
                "too_many_uploads",
                format!(
                    "{MAX_CONCURRENT_PACK_WRITES} context pack uploads are already being processed; try again shortly"
                ),
            )
        })
    }
}

fn busy(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
}

/// The middleware: refuses a request past the concurrency limit (503 with
/// `Retry-After`) and answers 503 when a handler overruns the timeout.
pub async fn enforce(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let Ok(_permit) = limits.requests.clone().try_acquire_owned() else {
        let mut response = busy(
            "overloaded",
            "the API is answering as many requests as it is configured for (ORCH_MAX_CONCURRENT_REQUESTS); retry",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => busy(
            "request_timeout",
            format!(
                "the request took longer than {} ms (ORCH_REQUEST_TIMEOUT_MS)",
                limits.timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// Middleware for the pack upload and re-index routes: the slot is taken
/// before the (up to 64 MiB) body is read, and held until the answer.
pub async fn pack_writes(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    match limits.pack_write() {
        Ok(_permit) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}
