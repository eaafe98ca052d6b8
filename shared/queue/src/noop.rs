//! The `noop` queue: completes each job at once, or after `sleep_ms`. Used by
//! benchmarks, probes and fault tests, so it can also be told to fail its
//! first attempts (`fail_attempts`) or to panic (`panic`).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{JobError, JobHandler, LeasedJob, QueueDefaults};

/// Longest sleep a noop job may ask for: one hour.
const MAX_SLEEP_MS: u64 = 3_600_000;

pub struct Noop;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoopPayload {
    #[serde(default)]
    sleep_ms: u64,
    /// Fail attempts 1..=fail_attempts, succeed after.
    #[serde(default)]
    fail_attempts: u32,
    #[serde(default)]
    panic: bool,
    /// Free-form data carried along (benchmarks pad jobs with it).
    #[serde(default)]
    #[allow(dead_code)]
    data: Value,
}

fn parse(payload: &Value) -> Result<NoopPayload, String> {
    if payload.is_null() {
        return Ok(NoopPayload::default());
    }
    let parsed: NoopPayload =
        serde_json::from_value(payload.clone()).map_err(|e| format!("noop payload: {e}"))?;
    if parsed.sleep_ms > MAX_SLEEP_MS {
        return Err(format!(
            "noop payload: sleep_ms must be at most {MAX_SLEEP_MS}"
        ));
    }
    Ok(parsed)
}

#[async_trait]
impl JobHandler for Noop {
    fn queue(&self) -> &'static str {
        "noop"
    }

    fn defaults(&self) -> QueueDefaults {
        QueueDefaults {
            max_attempts: 3,
            backoff_ms: 1_000,
            concurrency: 256,
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        parse(payload).map(|_| ())
    }

    async fn run(&self, job: &LeasedJob) -> Result<Value, JobError> {
        // When it started, in µs since the epoch: latency benches read it.
        let started_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let payload = parse(&job.payload).map_err(JobError)?;
        if payload.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(payload.sleep_ms)).await;
        }
        if payload.panic {
            panic!("noop job asked to panic");
        }
        if job.attempt <= payload.fail_attempts {
            return Err(JobError(format!(
                "noop job asked to fail attempt {} of {}",
                job.attempt, payload.fail_attempts
            )));
        }
        Ok(
            json!({ "attempt": job.attempt, "slept_ms": payload.sleep_ms, "started_us": started_us }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload: Value, attempt: u32) -> LeasedJob {
        LeasedJob {
            id: "j".into(),
            queue: "noop".into(),
            payload,
            attempt,
            max_attempts: 3,
        }
    }

    #[tokio::test]
    async fn fails_the_asked_attempts_then_succeeds() {
        let payload = json!({"fail_attempts": 1});
        assert!(Noop.run(&job(payload.clone(), 1)).await.is_err());
        let done = Noop.run(&job(payload, 2)).await.unwrap();
        assert_eq!(done["attempt"], 2);
    }

    #[test]
    fn rejects_unknown_fields_and_long_sleeps() {
        assert!(Noop.validate(&json!({"sleep": 5})).is_err());
        assert!(
            Noop.validate(&json!({"sleep_ms": MAX_SLEEP_MS + 1}))
                .is_err()
        );
        assert!(Noop.validate(&json!({"sleep_ms": 5})).is_ok());
        assert!(Noop.validate(&Value::Null).is_ok());
    }
}
