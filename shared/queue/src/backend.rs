//! The storage contract every queue backend fulfils.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{
    Ack, Cancelled, Fetched, JobInfo, JobStatus, NewJob, Pushed, QueueCounts, QueueOptions, Report,
    redis::RedisBackend, sqlite::SqliteBackend,
};
use orchestrator_core::config::CommonConfig;

/// A place jobs are stored and leased from. Implementations are cheap to
/// share (`Arc`) and safe to call from many tasks at once. Every method works
/// on batches where that saves round trips.
#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// A short name for logs and `/ready`: `redis` or `sqlite`.
    fn kind(&self) -> &'static str;

    /// Checks that the backend answers.
    async fn ping(&self) -> anyhow::Result<()>;

    /// Enqueues jobs atomically per call; returns one answer per job, in order.
    async fn push(&self, jobs: Vec<NewJob>) -> anyhow::Result<Vec<Pushed>>;

    /// Leases up to `max` due jobs of `queue` to `worker`. Also returns jobs
    /// whose lease expired to the queue (or to `dead` when out of attempts).
    async fn fetch(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> anyhow::Result<Fetched>;

    /// Waits until jobs may have arrived in `queue`, or `timeout` passes.
    async fn wait_for_jobs(&self, queue: &str, timeout: Duration);

    /// Records attempt outcomes of `queue`'s jobs leased to `worker`. An ack
    /// for a job whose lease this worker lost (expired and taken over, or
    /// cancelled) is ignored: returns those jobs' ids.
    async fn ack(&self, queue: &str, worker: &str, acks: Vec<Ack>) -> anyhow::Result<Vec<String>>;

    /// Extends the leases `worker` holds on running jobs of `queue`; returns
    /// the ids it no longer holds (lost or cancelled), whose handlers should
    /// stop.
    async fn extend_leases(
        &self,
        queue: &str,
        worker: &str,
        ids: &[String],
        lease: Duration,
    ) -> anyhow::Result<Vec<String>>;

    /// Cancels a job: a waiting or delayed one never starts, a running one
    /// loses its lease (its worker is told on its next heartbeat).
    async fn cancel(&self, id: &str) -> anyhow::Result<Cancelled>;

    /// Stores a running job's progress and appends its log lines (bounded).
    /// Returns false for an unknown job.
    async fn report(&self, id: &str, report: Report) -> anyhow::Result<bool>;

    /// Forgets `queue`'s jobs that ended with one of `statuses` (done, dead,
    /// cancelled); returns how many.
    async fn purge_jobs(&self, queue: &str, statuses: &[JobStatus]) -> anyhow::Result<u64>;

    /// Sets how `queue` shares its workers between concurrency keys and how
    /// long it keeps finished jobs.
    async fn configure(&self, queue: &str, options: &QueueOptions) -> anyhow::Result<()>;

    /// Hands back jobs leased to `worker` that it never started, without
    /// counting the attempt.
    async fn release(&self, queue: &str, worker: &str, ids: &[String]) -> anyhow::Result<()>;

    /// The id of the job pushed to `queue` with `idempotency_key` (while the
    /// key is remembered), for callers that name their jobs by key.
    async fn find_by_key(
        &self,
        queue: &str,
        idempotency_key: &str,
    ) -> anyhow::Result<Option<String>>;

    /// Everything known about a job, or `None` for an unknown id.
    async fn job(&self, id: &str) -> anyhow::Result<Option<JobInfo>>;

    /// The most recently dead jobs of `queue`, newest first.
    async fn dead_jobs(&self, queue: &str, limit: usize) -> anyhow::Result<Vec<JobInfo>>;

    /// Puts dead jobs of `queue` back to `pending` with their attempts reset:
    /// the listed ones (others are skipped), or up to `max` oldest when
    /// `ids` is empty. Returns the ids requeued.
    async fn requeue_dead(
        &self,
        queue: &str,
        ids: &[String],
        max: usize,
    ) -> anyhow::Result<Vec<String>>;

    /// Live counts of one queue.
    async fn counts(&self, queue: &str) -> anyhow::Result<QueueCounts>;

    /// Stops or restarts handing out jobs of `queue`; pushes still land.
    async fn set_paused(&self, queue: &str, paused: bool) -> anyhow::Result<()>;

    /// Records that `worker` serves `queue` (called periodically).
    async fn register_worker(&self, queue: &str, worker: &str) -> anyhow::Result<()>;

    /// Removes a worker registration on clean shutdown.
    async fn unregister_worker(&self, queue: &str, worker: &str) -> anyhow::Result<()>;
}

/// Opens the backend the configuration asks for: Redis when
/// `ORCH_REDIS_URL` is set, the embedded SQLite file otherwise.
pub async fn connect(config: &CommonConfig) -> anyhow::Result<Arc<dyn QueueBackend>> {
    match &config.redis_url {
        Some(url) => Ok(Arc::new(
            RedisBackend::connect(url, &config.redis_prefix).await?,
        )),
        None => Ok(Arc::new(
            SqliteBackend::open(&config.queue_db_path()).await?,
        )),
    }
}
