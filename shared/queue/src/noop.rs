//! The `noop` queue: completes each job at once, or after `sleep_ms`. Used by
//! benchmarks, probes and fault tests, so it can also be told to fail its
//! first attempts (`fail_attempts`) or to panic (`panic`). With `report`
//! it logs its attempt and reports progress halfway through its sleep (the
//! probe for progress and logs).
//!
//! A job without a payload is a true no-op: its result is null, like the
//! peers' no-op jobs in benchmarks. A job with an object payload (`{}`
//! will do) gets a record of its run: attempt, sleep and start time.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{JobContext, JobError, JobHandler, LeasedJob, QueueDefaults};

/// Longest sleep a noop job may ask for: one hour.
const MAX_SLEEP_MS: u64 = 3_600_000;
/// Longest sleep without fault mode: probes and benchmarks need no more.
pub const MAX_PLAIN_SLEEP_MS: u64 = 1_000;

/// The `noop` handler. Fault mode (`ORCH_NOOP_FAULTS`, an operator setting)
/// lets payloads panic, fail on purpose and sleep up to an hour; without
/// it such payloads are refused, so no API caller can tie up workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop {
    pub faults: bool,
}

impl Noop {
    /// A handler that accepts fault payloads (fault tests, benchmarks).
    pub fn with_faults() -> Self {
        Self { faults: true }
    }
}

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
    /// Log the attempt and report progress at the start, halfway and the end.
    #[serde(default)]
    report: bool,
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

/// What fault mode alone allows, if `payload` asks for it.
fn needs_faults(payload: &NoopPayload) -> Option<&'static str> {
    if payload.panic {
        Some("panic")
    } else if payload.fail_attempts > 0 {
        Some("fail_attempts")
    } else if payload.sleep_ms > MAX_PLAIN_SLEEP_MS {
        Some("sleep_ms over 1000")
    } else {
        None
    }
}

#[async_trait]
impl JobHandler for Noop {
    fn queue(&self) -> &str {
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
        let parsed = parse(payload)?;
        match needs_faults(&parsed) {
            Some(what) if !self.faults => Err(format!(
                "noop payload: {what} is for fault tests; the operator enables it with ORCH_NOOP_FAULTS=true"
            )),
            _ => Ok(()),
        }
    }

    async fn run(&self, job: &LeasedJob, ctx: &JobContext) -> Result<Value, JobError> {
        if job.payload.is_null() {
            return Ok(Value::Null);
        }
        // When it started, in µs since the epoch: latency benches read it.
        let started_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let payload = parse(&job.payload).map_err(JobError::new)?;
        if payload.report {
            ctx.log(&format!("attempt {} started", job.attempt)).await;
            ctx.progress(0.0, "started").await;
        }
        if payload.sleep_ms > 0 {
            let half = Duration::from_millis(payload.sleep_ms / 2);
            tokio::time::sleep(half).await;
            if payload.report {
                ctx.progress(0.5, "halfway").await;
            }
            tokio::time::sleep(Duration::from_millis(payload.sleep_ms) - half).await;
        }
        if payload.report {
            ctx.progress(1.0, "finished").await;
            ctx.log(&format!("attempt {} finished", job.attempt)).await;
        }
        if payload.panic {
            panic!("noop job asked to panic");
        }
        if job.attempt <= payload.fail_attempts {
            return Err(JobError::new(format!(
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
            concurrency_key: None,
            callback_url: None,
        }
    }

    #[tokio::test]
    async fn fails_the_asked_attempts_then_succeeds() {
        let payload = json!({"fail_attempts": 1});
        let noop = Noop::with_faults();
        let ctx = JobContext::detached("j");
        assert!(noop.run(&job(payload.clone(), 1), &ctx).await.is_err());
        let done = noop.run(&job(payload, 2), &ctx).await.unwrap();
        assert_eq!(done["attempt"], 2);
    }

    #[tokio::test]
    async fn a_job_without_payload_returns_null_and_an_object_a_record() {
        let ctx = JobContext::detached("j");
        let bare = Noop::default().run(&job(Value::Null, 1), &ctx).await;
        assert_eq!(bare.unwrap(), Value::Null);
        let record = Noop::default().run(&job(json!({}), 1), &ctx).await;
        let record = record.unwrap();
        assert_eq!(record["attempt"], 1);
        assert!(record["started_us"].as_u64().unwrap() > 0, "{record}");
    }

    #[test]
    fn rejects_unknown_fields_and_long_sleeps() {
        let noop = Noop::with_faults();
        assert!(noop.validate(&json!({"sleep": 5})).is_err());
        assert!(
            noop.validate(&json!({"sleep_ms": MAX_SLEEP_MS + 1}))
                .is_err()
        );
        assert!(noop.validate(&json!({"sleep_ms": 5})).is_ok());
        assert!(noop.validate(&Value::Null).is_ok());
    }

    #[test]
    fn faults_need_the_operator_setting() {
        let plain = Noop::default();
        for payload in [
            json!({"panic": true}),
            json!({"fail_attempts": 1}),
            json!({"sleep_ms": MAX_PLAIN_SLEEP_MS + 1}),
        ] {
            let err = plain.validate(&payload).unwrap_err();
            assert!(err.contains("ORCH_NOOP_FAULTS"), "{err}");
            Noop::with_faults().validate(&payload).unwrap();
        }
        plain
            .validate(&json!({"sleep_ms": MAX_PLAIN_SLEEP_MS}))
            .unwrap();
    }
}
