//! Waiting at start for what a process cannot work without: Redis and the
//! store. A process started while one of them is down (a restart, a
//! container that comes up later) waits for it with backoff instead of
//! exiting, and is not ready until connected. Only failures to reach a
//! server are waited out: a mistake in the configuration still stops the
//! process at once, with its message.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use crate::config::{ConfigError, redact_url};

/// The setting that bounds each wait; unset or 0 waits forever.
pub const TIMEOUT_VAR: &str = "ORCH_CONNECT_TIMEOUT_S";
/// The pause after the first failed try; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest pause between tries, so a server that comes back is found
/// within seconds however long it was gone.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// `ORCH_CONNECT_TIMEOUT_S`: how long a start-up wait may last before the
/// process gives up; `None` (unset, empty or 0) waits forever.
pub fn limit_from_env() -> Result<Option<Duration>, ConfigError> {
    match std::env::var(TIMEOUT_VAR) {
        Ok(raw) => parse_limit(&raw),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError::new(TIMEOUT_VAR, "not valid UTF-8"))
        }
    }
}

fn parse_limit(raw: &str) -> Result<Option<Duration>, ConfigError> {
    let raw = raw.trim();
    match raw.parse::<u64>() {
        _ if raw.is_empty() => Ok(None),
        Ok(0) => Ok(None),
        Ok(seconds) => Ok(Some(Duration::from_secs(seconds))),
        Err(_) => Err(ConfigError::new(
            TIMEOUT_VAR,
            format!("{raw:?} is not a whole number of seconds (0 waits forever)"),
        )),
    }
}

/// Runs `attempt` until it succeeds. While it fails because `what` (at
/// `url`, logged without its password) cannot be reached, it logs a warning
/// and tries again after 200 ms, doubling up to 10 s; any other failure is
/// returned at once. With `limit`, gives up once that much time has passed,
/// naming `what` and the setting.
pub async fn until_connected<T, F, Fut>(
    what: &str,
    url: &str,
    limit: Option<Duration>,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let left = || limit.map(|limit| limit.saturating_sub(started.elapsed()));
    let mut delay = FIRST_DELAY;
    let mut last = None;
    let mut tries = 0;
    loop {
        tries += 1;
        let err = match within(left(), attempt()).await {
            Some(Ok(value)) => {
                if tries > 1 {
                    tracing::info!("reached {what} at {} (attempt {tries})", redact_url(url));
                }
                return Ok(value);
            }
            Some(Err(err)) if is_unreachable(&err) => err,
            Some(Err(err)) => return Err(err),
            None => return Err(gave_up(what, url, limit, tries, last.as_ref())),
        };
        let pause = left().map_or(delay, |left| left.min(delay));
        if pause.is_zero() {
            return Err(gave_up(what, url, limit, tries, Some(&err)));
        }
        tracing::warn!(
            "waiting for {what} at {} (attempt {tries}, next in {:?}): {}",
            redact_url(url),
            Duration::from_millis(pause.as_millis() as u64),
            reason(&err)
        );
        tokio::time::sleep(pause).await;
        last = Some(err);
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Runs one try; `None` when the time `left` ran out first (a server that
/// swallows packets would otherwise hold it for the client's own timeout).
async fn within<T>(left: Option<Duration>, attempt: impl Future<Output = T>) -> Option<T> {
    match left {
        None => Some(attempt.await),
        Some(left) => tokio::time::timeout(left, attempt).await.ok(),
    }
}

fn gave_up(
    what: &str,
    url: &str,
    limit: Option<Duration>,
    tries: u32,
    last: Option<&anyhow::Error>,
) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach {what} at {} within {TIMEOUT_VAR}={} s (attempts: {tries}): {}",
        redact_url(url),
        limit.unwrap_or_default().as_secs(),
        last.map_or_else(|| "the first attempt did not finish".to_string(), reason)
    )
}

/// Whether `err` says the server could not be reached (refused, reset, timed
/// out, not resolvable yet, still loading its data), as opposed to a
/// mistake that waiting will not fix (a bad password, an unknown database).
pub fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(err) = cause.downcast_ref::<fred::error::Error>() {
            redis_unreachable(err)
        } else if let Some(err) = cause.downcast_ref::<sea_orm::DbErr>() {
            store_unreachable(err)
        } else if let Some(err) = cause.downcast_ref::<sqlx::Error>() {
            sqlx_unreachable(err)
        } else {
            false
        }
    })
}

fn redis_unreachable(err: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    match err.kind() {
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled => true,
        // A restarted Redis answers LOADING until its data is read back.
        _ => err.details().starts_with("LOADING"),
    }
}

fn store_unreachable(err: &sea_orm::DbErr) -> bool {
    match err {
        sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err)) => sqlx_unreachable(err),
        sea_orm::DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout) => true,
        _ => false,
    }
}

/// sqlx itself retries refused connections and servers still starting up
/// until its connect timeout, then reports the pool as timed out.
fn sqlx_unreachable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
}

/// The innermost message, which says what went wrong (`Connection
/// refused`); the outer ones repeat what the log line already names.
fn reason(err: &anyhow::Error) -> String {
    let root = err.root_cause();
    match root.downcast_ref::<fred::error::Error>() {
        // fred keeps an I/O error as its debug form, whose `message` field
        // is the readable part.
        Some(err) => io_message(err.details())
            .unwrap_or(err.details())
            .to_string(),
        None => root.to_string(),
    }
}

fn io_message(debug: &str) -> Option<&str> {
    let (_, rest) = debug.split_once("message: \"")?;
    rest.split_once('"').map(|(message, _)| message)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// What fred reports when nothing listens.
    fn refused() -> anyhow::Error {
        let io = r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#;
        let err = fred::error::Error::new(fred::error::ErrorKind::IO, io);
        anyhow::Error::new(err).context("cannot connect to Redis")
    }

    #[test]
    fn limit_is_whole_seconds_and_zero_waits_forever() {
        assert_eq!(parse_limit("").unwrap(), None);
        assert_eq!(parse_limit("0").unwrap(), None);
        assert_eq!(parse_limit(" 5 ").unwrap(), Some(Duration::from_secs(5)));
        let err = parse_limit("1.5").unwrap_err().to_string();
        assert!(err.starts_with("ORCH_CONNECT_TIMEOUT_S: \"1.5\""), "{err}");
    }

    #[test]
    fn a_refused_connection_is_unreachable_and_reads_plainly() {
        let err = refused();
        assert!(is_unreachable(&err));
        assert_eq!(reason(&err), "Connection refused");
        let auth = fred::error::Error::new(fred::error::ErrorKind::Auth, "WRONGPASS");
        assert!(!is_unreachable(&anyhow::Error::new(auth)));
        assert!(!is_unreachable(&anyhow::anyhow!("ORCH_REDIS_URL: bad")));
    }

    #[tokio::test]
    async fn retries_while_unreachable_then_returns_the_value() {
        let tries = AtomicU32::new(0);
        let value = until_connected("Redis", "redis://h", None, || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(refused()),
                _ => Ok(7),
            }
        })
        .await
        .unwrap();
        assert_eq!((value, tries.load(Ordering::SeqCst)), (7, 3));
    }

    #[tokio::test]
    async fn other_failures_are_returned_at_once() {
        let tries = AtomicU32::new(0);
        let err = until_connected("Redis", "redis://h", None, || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(anyhow::anyhow!("ORCH_REDIS_URL: invalid Redis URL"))
        })
        .await
        .unwrap_err();
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert_eq!(err.to_string(), "ORCH_REDIS_URL: invalid Redis URL");
    }

    #[tokio::test]
    async fn a_limit_gives_up_naming_what_and_the_setting() {
        let started = Instant::now();
        let err = until_connected(
            "Redis",
            "redis://:secret@h:1",
            Some(Duration::from_millis(500)),
            || async { Err::<(), _>(refused()) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            err.starts_with("cannot reach Redis at redis://:***@h:1"),
            "{err}"
        );
        assert!(err.contains("ORCH_CONNECT_TIMEOUT_S"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
