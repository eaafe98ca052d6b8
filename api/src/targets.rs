//! HTTP targets in this process: the check that deliveries can be signed
//! before an `http` queue or a `callback_url` is accepted, and (in embedded
//! mode) the in-process workers of `http` queues, started with the API and
//! for each queue created while it runs.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::StatusCode;
use orchestrator_core::store::QueueSettings;
use orchestrator_queue::{
    QueueBackend,
    fleet::{self, Assignment},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

#[derive(Default)]
pub struct Targets {
    /// Whether `ORCH_SIGNING_SECRET` is set.
    signing: bool,
    /// Set when this process runs workers itself.
    runner: Option<Runner>,
}

struct Runner {
    backend: Arc<dyn QueueBackend>,
    deliveries: orchestrator_delivery::Client,
    lease: Duration,
    shutdown: CancellationToken,
    /// One task per started queue, each waiting for that queue's workers.
    workers: Mutex<JoinSet<anyhow::Result<()>>>,
}

impl Targets {
    pub fn new(signing: bool) -> Self {
        Self {
            signing,
            runner: None,
        }
    }

    /// Runs the workers of `http` queues in this process, until `shutdown`.
    pub fn with_workers(
        self,
        backend: Arc<dyn QueueBackend>,
        deliveries: orchestrator_delivery::Client,
        lease: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let runner = Runner {
            backend,
            deliveries,
            lease,
            shutdown,
            workers: Mutex::default(),
        };
        Self {
            runner: Some(runner),
            ..self
        }
    }

    /// 422 unless deliveries can be signed: nothing is ever sent unsigned.
    pub fn require_signing(&self) -> Result<(), ApiError> {
        if self.signing {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "signing_secret_missing",
            "ORCH_SIGNING_SECRET is not set: requests to HTTP targets and callback URLs are \
             signed with it, so the operator must set it before either is accepted",
        ))
    }

    /// Starts workers for the given `http` queue plans (no-op unless this
    /// process runs workers).
    pub fn run(&self, plan: Vec<Assignment>) {
        let Some(runner) = &self.runner else { return };
        let queues = fleet::spawn_workers(
            runner.backend.clone(),
            plan,
            runner.lease,
            "api",
            runner.shutdown.clone(),
        );
        let mut workers = runner.workers.lock().expect("workers lock");
        workers.spawn(orchestrator_bootstrap::join_workers(queues));
    }

    /// Starts the workers of an `http` queue just created (other kinds are
    /// served elsewhere: external workers, the user's own process).
    pub fn start(&self, settings: &QueueSettings) {
        let Some(runner) = &self.runner else { return };
        if settings.handler != "http" {
            return;
        }
        match orchestrator_bootstrap::registry_handler(settings, &runner.deliveries) {
            Ok(handler) => self.run(vec![Assignment {
                handler,
                concurrency: settings.concurrency.max(1) as usize,
                rate_limit_per_s: settings
                    .rate_limit_per_s
                    .filter(|r| *r > 0)
                    .map(|r| r as u32),
            }]),
            Err(err) => tracing::error!(queue = %settings.name, "no worker started: {err:#}"),
        }
    }

    /// Waits for every started worker to drain (after shutdown).
    pub async fn join(&self) -> anyhow::Result<()> {
        let Some(runner) = &self.runner else {
            return Ok(());
        };
        let workers = std::mem::take(&mut *runner.workers.lock().expect("workers lock"));
        orchestrator_bootstrap::join_workers(workers).await
    }
}
