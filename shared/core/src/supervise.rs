//! In-process loops (the depth sampler, the trainer, the campaign
//! supervisor, event forwarders) restarted when they panic, with backoff, so
//! one bad input does not silently stop a subsystem until the process
//! restarts. Restarts are counted for `/api/v1/status` and in
//! `orchestrator_subsystem_restarts_total{subsystem}`.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::metrics as m;

/// First wait before a restart; doubled per panic in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A loop that ran this long before panicking starts again from [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Restarts of one subsystem in this process.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Restarts {
    pub count: u64,
    /// The last panic's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_panic: Option<String>,
    /// When it last restarted (ms since the Unix epoch).
    pub last_at: u64,
}

static RESTARTS: LazyLock<Mutex<BTreeMap<String, Restarts>>> = LazyLock::new(Default::default);

/// Restarts so far, by subsystem (only those that restarted).
pub fn restarts() -> BTreeMap<String, Restarts> {
    RESTARTS.lock().expect("restart table").clone()
}

/// Runs `make()` until it returns or `shutdown`; a panic restarts it after
/// a backoff. A loop that returns (with or without an error) is not
/// restarted: it ended on purpose.
pub fn spawn<F, Fut>(name: &'static str, shutdown: CancellationToken, make: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            let run = tokio::spawn(make());
            let panic = tokio::select! {
                ended = run => match ended {
                    Ok(()) => return,
                    Err(err) if err.is_panic() => panic_text(err.into_panic()),
                    Err(_) => return,
                },
                _ = shutdown.cancelled() => return,
            };
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            record(name, &panic);
            tracing::error!(subsystem = name, panic = %panic, "restarting in {backoff:?}");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

fn record(name: &str, panic: &str) {
    metrics::counter!(m::SUBSYSTEM_RESTARTS, "subsystem" => name.to_string()).increment(1);
    let mut table = RESTARTS.lock().expect("restart table");
    let entry = table.entry(name.to_string()).or_default();
    entry.count += 1;
    entry.last_panic = Some(panic.chars().take(500).collect());
    entry.last_at = crate::now_ms();
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_panicking_loop_is_restarted_and_counted() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let shutdown = CancellationToken::new();
        spawn("test-loop", shutdown.clone(), move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("bad input {}", runs.load(Ordering::SeqCst));
                }
                // The third run stays up until shutdown.
                std::future::pending::<()>().await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(std::time::Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let restarts = restarts()["test-loop"].clone();
        assert_eq!(restarts.count, 2);
        assert_eq!(restarts.last_panic.as_deref(), Some("bad input 2"));
        shutdown.cancel();
    }
}
