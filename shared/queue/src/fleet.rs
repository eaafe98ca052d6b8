//! Starting the workers of a process and keeping its queue gauges fresh:
//! shared by the API (embedded mode) and the worker binary.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{QueueBackend, worker};
use crate::JobHandler;
use orchestrator_core::metrics as m;

/// How often queue depth gauges are refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// A worker name unique across machines and restarts: leases are held in it.
pub fn worker_id(role: &str) -> String {
    let host = orchestrator_core::fleet::host_name();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let nonce = &id[24..];
    format!("{role}-{host}-{}-{nonce}", std::process::id())
}

/// One queue a process should serve.
pub struct Assignment {
    pub handler: Arc<dyn JobHandler>,
    pub concurrency: usize,
    pub rate_limit_per_s: Option<u32>,
}

/// Starts one apalis worker per assignment; each ends after `shutdown` once
/// its jobs are drained.
pub fn spawn_workers(
    backend: Arc<dyn QueueBackend>,
    assignments: Vec<Assignment>,
    lease: Duration,
    role: &str,
    shutdown: CancellationToken,
) -> JoinSet<anyhow::Result<()>> {
    let mut set = JoinSet::new();
    for assignment in assignments {
        let options = worker::WorkerOptions {
            queue: assignment.handler.queue().to_string(),
            concurrency: assignment.concurrency,
            lease,
            worker_id: worker_id(role),
            rate_limit_per_s: assignment.rate_limit_per_s,
        };
        tracing::info!(
            queue = %options.queue,
            concurrency = options.concurrency,
            worker = %options.worker_id,
            "worker started"
        );
        set.spawn(worker::run(
            backend.clone(),
            assignment.handler,
            options,
            shutdown.clone(),
        ));
    }
    set
}

/// Refreshes `orchestrator_queue_depth{queue}` until `shutdown`
/// (restarted if it panics).
pub fn spawn_depth_sampler(
    backend: Arc<dyn QueueBackend>,
    queues: Vec<String>,
    shutdown: CancellationToken,
) {
    let stop = shutdown.clone();
    orchestrator_core::supervise::spawn("depth sampler", shutdown, move || {
        sample_depths(backend.clone(), queues.clone(), stop.clone())
    });
}

async fn sample_depths(
    backend: Arc<dyn QueueBackend>,
    queues: Vec<String>,
    shutdown: CancellationToken,
) {
    loop {
        for queue in &queues {
            match backend.counts(queue).await {
                Ok(counts) => metrics::gauge!(m::QUEUE_DEPTH, "queue" => queue.clone())
                    .set(counts.pending as f64),
                Err(err) => tracing::debug!("queue depth of {queue}: {err:#}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
