//! The worker runtime: apalis workers fed by a [`QueueBackend`].
//!
//! A fetch loop leases jobs in batches (never more than the worker can hold)
//! and hands them to an apalis [`Worker`](apalis::prelude::Worker) through
//! [`JobSource`]. apalis runs them under its middleware (concurrency limit,
//! catch-panic) and reports each outcome to an acknowledger, which batches
//! acknowledgements into one backend call. A heartbeat loop extends the
//! leases of running jobs, so only a dead worker's jobs are taken over.
//!
//! Shutdown (the token is cancelled): fetching stops, running jobs finish and
//! are acknowledged, jobs fetched but not started are released, then
//! [`run`] returns.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_core::{
    backend::{Backend, BackendConfig},
    error::BoxDynError,
    task::{
        ExecutionContext,
        task_id::{RandomId, TaskId},
    },
    worker::{context::WorkerContext, ext::ack::AcknowledgementExt},
};
use futures::{FutureExt, future::BoxFuture};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tower::{layer::util::Identity, limit::RateLimitLayer, service_fn};

use super::{Ack, Failure, LeasedJob, QueueBackend};
use crate::callback::{JobEnded, callback_job};
use crate::{JobContext, JobError, JobHandler};
use orchestrator_core::{metrics as m, now_ms, system};

/// Most jobs one fetch asks for.
const MAX_FETCH_BATCH: usize = 1_000;
/// Most acknowledgements sent in one backend call.
const MAX_ACK_BATCH: usize = 2_000;
/// Longest an idle worker sleeps between fetches when no wake-up arrives
/// (wake-ups come from pushes; this bounds how late a lease expiry is seen).
const IDLE_POLL: Duration = Duration::from_millis(1_000);
/// How often a worker re-registers itself as live.
const REGISTER_EVERY: Duration = Duration::from_secs(5);

/// What one worker serves and how much at once.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queue: String,
    pub concurrency: usize,
    pub lease: Duration,
    /// Unique per worker; leases are held in this name.
    pub worker_id: String,
    /// Most jobs this worker starts per second, if limited.
    pub rate_limit_per_s: Option<u32>,
}

/// Jobs this worker holds (leased, not yet acknowledged): renewed by the
/// heartbeat loop, released or acknowledged before exit. Looked up a few
/// times per job, so hashed with foldhash rather than SipHash.
type Held = Arc<Mutex<HashMap<String, HeldJob, foldhash::fast::RandomState>>>;

/// One held job: the token its handler watches (cancelled when the lease is
/// lost), and where to tell that it ended, if anywhere.
struct HeldJob {
    cancel: CancellationToken,
    /// The job's `callback_url` and `max_attempts` (to know a final failure).
    callback: Option<(String, u32)>,
}

/// Runs one worker for one queue until `shutdown` is cancelled and every job
/// it held has been acknowledged or released.
pub async fn run(
    backend: Arc<dyn QueueBackend>,
    handler: Arc<dyn JobHandler>,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let concurrency = options.concurrency.max(1);
    // Up to `concurrency` jobs running plus as many prefetched.
    let capacity = Arc::new(Semaphore::new(concurrency * 2));
    let held: Held = Arc::default();
    let (task_tx, task_rx) = mpsc::unbounded_channel();
    let task_rx = Arc::new(Mutex::new(task_rx));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Ack>();

    // Its own token: fetching must also stop if the apalis worker ends
    // without a shutdown request.
    let stop_fetching = shutdown.child_token();
    // Told when acknowledged jobs free their slots: a fetch that found
    // nothing it may take now (every waiting key at its max_per_key) can
    // find something once running jobs end.
    let slots_freed = Arc::new(Notify::new());
    let fetcher = tokio::spawn(fetch_loop(
        backend.clone(),
        options.clone(),
        capacity.clone(),
        held.clone(),
        task_tx,
        slots_freed.clone(),
        stop_fetching.clone(),
    ));
    let acker = tokio::spawn(ack_loop(
        backend.clone(),
        options.queue.clone(),
        options.worker_id.clone(),
        ack_rx,
        capacity.clone(),
        held.clone(),
        slots_freed,
    ));
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        backend.clone(),
        options.clone(),
        held.clone(),
        heartbeat_stop.clone(),
    ));

    let job_metrics = Arc::new(JobMetrics::new(&options.queue));
    let running = Running {
        handler,
        meters: job_metrics,
        held: held.clone(),
        backend: backend.clone(),
    };
    let worker = WorkerBuilder::new(options.worker_id.as_str())
        .backend(JobSource {
            tasks: task_rx.clone(),
        })
        .concurrency(concurrency)
        .option_layer(
            options
                .rate_limit_per_s
                .map(|n| RateLimitLayer::new(u64::from(n.max(1)), Duration::from_secs(1))),
        )
        .ack_with(Acknowledger { tx: ack_tx })
        .catch_panic()
        .build(service_fn(move |task: Task<LeasedJob>| {
            run_one(running.clone(), task.args)
        }));
    let stop = shutdown.clone();
    let result = worker
        .run_with_ctx(move |ctx| {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                ctx.stop()
            }
        })
        .await;
    if let Err(err) = &result {
        tracing::error!(queue = %options.queue, "worker stopped: {err}");
    }

    // Everything below is the drain: nothing fetched may be left behind.
    stop_fetching.cancel();
    let _ = fetcher.await;
    let unstarted = drain_unstarted(&task_rx);
    if !unstarted.is_empty() {
        tracing::info!(queue = %options.queue, count = unstarted.len(), "releasing jobs not started");
        if let Err(err) = backend
            .release(&options.queue, &options.worker_id, &unstarted)
            .await
        {
            tracing::warn!("release failed ({err:#}); the jobs return when their lease expires");
        }
        let mut held = held.lock().expect("held lock");
        for id in &unstarted {
            held.remove(id);
        }
        orchestrator_core::fleet::job_counts().let_go(unstarted.len());
    }
    let _ = acker.await;
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    let _ = backend
        .unregister_worker(&options.queue, &options.worker_id)
        .await;
    result.map_err(|e| anyhow::anyhow!("worker for queue {}: {e}", options.queue))
}

/// The metric handles of one worker, looked up once instead of per job.
struct JobMetrics {
    active: metrics::Gauge,
    duration: metrics::Histogram,
    done: metrics::Counter,
    failed: metrics::Counter,
    dead: metrics::Counter,
}

impl JobMetrics {
    fn new(queue: &str) -> Self {
        let completed = |outcome: &'static str| metrics::counter!(m::JOBS_COMPLETED, "queue" => queue.to_string(), "outcome" => outcome);
        Self {
            active: metrics::gauge!(m::WORKERS_ACTIVE, "queue" => queue.to_string()),
            duration: metrics::histogram!(m::JOB_DURATION, "queue" => queue.to_string()),
            done: completed("done"),
            failed: completed("failed"),
            dead: completed("dead"),
        }
    }
}

/// What running one job needs, shared by every job of the worker.
#[derive(Clone)]
struct Running {
    handler: Arc<dyn JobHandler>,
    meters: Arc<JobMetrics>,
    held: Held,
    backend: Arc<dyn QueueBackend>,
}

/// Runs the handler for one job and records its metrics. An error or a panic
/// fails the attempt: panics are caught here so the job records the panic
/// message; apalis' catch-panic layer still guards the rest of the stack. A
/// job cancelled while it runs (or whose lease was lost) is stopped at the
/// handler's next `.await`; its outcome is then ignored by the backend.
async fn run_one(running: Running, job: LeasedJob) -> Result<Value, BoxDynError> {
    let Running {
        handler,
        meters,
        held,
        backend,
    } = running;
    let cancel = held
        .lock()
        .expect("held lock")
        .get(&job.id)
        .map(|held| held.cancel.clone())
        .unwrap_or_default();
    let ctx = JobContext::new(job.id.clone(), cancel, backend);
    let started = Instant::now();
    let counts = orchestrator_core::fleet::job_counts();
    meters.active.increment(1.0);
    counts.started();
    let attempt = std::panic::AssertUnwindSafe(handler.run(&job, &ctx)).catch_unwind();
    let result = tokio::select! {
        result = attempt => Some(result),
        _ = ctx.cancelled() => None,
    };
    counts.finished();
    meters.active.decrement(1.0);
    meters.duration.record(started.elapsed().as_secs_f64());
    let result = match result {
        Some(Ok(result)) => result,
        Some(Err(panic)) => Err(JobError::new(format!(
            "handler panicked: {}",
            panic_message(&panic)
        ))),
        None => Err(JobError::new("cancelled while running")),
    };
    match &result {
        Ok(_) => meters.done.increment(1),
        Err(e) if job.attempt >= job.max_attempts || e.retry == crate::Retry::Never => {
            meters.dead.increment(1)
        }
        Err(_) => meters.failed.increment(1),
    }
    result.map_err(BoxDynError::from)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Leases jobs while this worker has room, sleeping until a push wakes it
/// (or the next delayed job is due) when the queue is empty.
async fn fetch_loop(
    backend: Arc<dyn QueueBackend>,
    options: WorkerOptions,
    capacity: Arc<Semaphore>,
    held: Held,
    tasks: mpsc::UnboundedSender<Task<LeasedJob>>,
    slots_freed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut error_backoff = Duration::from_millis(100);
    let counts = orchestrator_core::fleet::job_counts();
    let mut system_changes = system::watch();
    loop {
        // While the system is stopped nothing more is leased; what is held
        // runs to the end and is acknowledged.
        if !system::current().runs_work() && !system::wait_until_running(&shutdown).await {
            return;
        }
        let first = tokio::select! {
            permit = capacity.acquire() => permit,
            _ = shutdown.cancelled() => return,
        };
        let Ok(first) = first else { return };
        first.forget();
        let extra = capacity.available_permits().min(MAX_FETCH_BATCH - 1);
        if let Ok(permits) = capacity.try_acquire_many(extra as u32) {
            permits.forget();
        }
        let wanted = 1 + extra;
        if !system::current().runs_work() {
            capacity.add_permits(wanted);
            continue;
        }
        match backend
            .fetch(&options.queue, &options.worker_id, wanted, options.lease)
            .await
        {
            Ok(fetched) => {
                error_backoff = Duration::from_millis(100);
                if !fetched.callbacks.is_empty() {
                    let callbacks = &fetched.callbacks;
                    retry_until_stored("callback push", || backend.push(callbacks.clone())).await;
                }
                capacity.add_permits(wanted - fetched.jobs.len());
                let idle = fetched.jobs.is_empty();
                counts.leased(fetched.jobs.len());
                for job in fetched.jobs {
                    let callback = job.callback_url.clone().map(|url| (url, job.max_attempts));
                    let entry = HeldJob {
                        cancel: CancellationToken::new(),
                        callback,
                    };
                    held.lock()
                        .expect("held lock")
                        .insert(job.id.clone(), entry);
                    let (task_id, attempt) = (TaskId::from_string(job.id.clone()), job.attempt);
                    let task = TaskBuilder::new(job)
                        .task_id(task_id)
                        .data(Attempt(attempt))
                        .build();
                    if tasks.send(task).is_err() {
                        return;
                    }
                }
                if idle {
                    let wait = match fetched.next_due_ms {
                        Some(due) if !fetched.paused => {
                            Duration::from_millis(due.saturating_sub(now_ms())).min(IDLE_POLL)
                        }
                        _ => IDLE_POLL,
                    };
                    tokio::select! {
                        _ = backend.wait_for_jobs(&options.queue, wait) => {}
                        _ = slots_freed.notified() => {}
                        _ = system_changes.changed() => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            Err(err) => {
                capacity.add_permits(wanted);
                tracing::warn!(queue = %options.queue, "fetch failed: {err:#}; retrying in {error_backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(error_backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sends outcomes to the backend in batches. Runs until every acknowledger is
/// gone (the worker has stopped) and the channel is empty; a failed batch is
/// retried, so an outcome is only lost if the process dies (and then the
/// job's lease expires and it runs again).
async fn ack_loop(
    backend: Arc<dyn QueueBackend>,
    queue: String,
    worker_id: String,
    mut acks: mpsc::UnboundedReceiver<Ack>,
    capacity: Arc<Semaphore>,
    held: Held,
    slots_freed: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_ACK_BATCH);
    while acks.recv_many(&mut batch, MAX_ACK_BATCH).await > 0 {
        // Callbacks are stored before the outcomes they tell of: a crash in
        // between repeats a notice (at least once), never loses one.
        let callbacks = final_callbacks(&queue, &batch, &held);
        if !callbacks.is_empty() {
            retry_until_stored("callback push", || backend.push(callbacks.clone())).await;
        }
        retry_until_stored("acknowledgement", || {
            backend.ack(&queue, &worker_id, batch.clone())
        })
        .await;
        {
            let mut held = held.lock().expect("held lock");
            for ack in &batch {
                held.remove(&ack.id);
            }
        }
        capacity.add_permits(batch.len());
        slots_freed.notify_one();
        orchestrator_core::fleet::job_counts().let_go(batch.len());
        batch.clear();
    }
}

/// The callback jobs of the acknowledgements in `batch` that end their
/// job (done, or a failure with no retry left) and asked for one.
fn final_callbacks(queue: &str, batch: &[Ack], held: &Held) -> Vec<crate::NewJob> {
    let held = held.lock().expect("held lock");
    batch
        .iter()
        .filter_map(|ack| {
            let (url, max_attempts) = held.get(&ack.id)?.callback.as_ref()?;
            let ended = JobEnded::from_ack(queue, ack, *max_attempts)?;
            Some(callback_job(
                url,
                &ended,
                &format!("{}:{}", ack.id, ack.attempt),
            ))
        })
        .collect()
}

/// Runs `call` until it succeeds, backing off: an outcome is only lost if
/// the process dies (and then the job's lease expires and it runs again).
async fn retry_until_stored<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(err) => {
                tracing::warn!("{what} failed: {err:#}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Extends the leases of held jobs and keeps this worker registered.
async fn heartbeat_loop(
    backend: Arc<dyn QueueBackend>,
    options: WorkerOptions,
    held: Held,
    stop: CancellationToken,
) {
    let every = (options.lease / 3).min(REGISTER_EVERY);
    loop {
        if let Err(err) = backend
            .register_worker(&options.queue, &options.worker_id)
            .await
        {
            tracing::warn!("worker registration failed: {err:#}");
        }
        let ids: Vec<String> = held.lock().expect("held lock").keys().cloned().collect();
        match backend
            .extend_leases(&options.queue, &options.worker_id, &ids, options.lease)
            .await
        {
            // Cancelled, or taken over after this worker stalled: stop the
            // handler, whatever it would report is ignored anyway.
            Ok(lost) => {
                let held = held.lock().expect("held lock");
                for id in lost {
                    if let Some(job) = held.get(&id) {
                        job.cancel.cancel();
                    }
                }
            }
            Err(err) => tracing::warn!("lease extension failed: {err:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn drain_unstarted(tasks: &Mutex<mpsc::UnboundedReceiver<Task<LeasedJob>>>) -> Vec<String> {
    let mut tasks = tasks.lock().expect("task channel lock");
    let mut ids = Vec::new();
    while let Ok(task) = tasks.try_recv() {
        ids.push(task.args.id);
    }
    ids
}

/// The apalis backend of one worker: a channel the fetch loop fills.
pub struct JobSource {
    tasks: Arc<Mutex<mpsc::UnboundedReceiver<Task<LeasedJob>>>>,
}

impl Backend for JobSource {
    type Task = Task<LeasedJob>;
    type Error = std::convert::Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        let mut tasks = self.tasks.lock().expect("task channel lock");
        tasks.poll_recv(cx).map(|task| task.map(Ok))
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for JobSource {
    type Args = LeasedJob;
    type Id = RandomId;
    type Kind = apalis_core::backend::finalize::Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

/// The backend's attempt number, carried in the apalis task for the ack.
#[derive(Debug, Clone, Copy)]
struct Attempt(u32);

/// Reports each attempt's outcome to the ack loop.
#[derive(Clone)]
struct Acknowledger {
    tx: mpsc::UnboundedSender<Ack>,
}

impl apalis_core::worker::ext::ack::Acknowledge<Value> for Acknowledger {
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<(), Self::Error>>;

    fn ack(&mut self, result: &Result<Value, BoxDynError>, ctx: &ExecutionContext) -> Self::Future {
        if let Some(id) = ctx.task_id() {
            let outcome = match result {
                Ok(value) => Ok(value.clone()),
                Err(err) => Err(match err.downcast_ref::<JobError>() {
                    Some(err) => Failure {
                        message: err.message.clone(),
                        retry: err.retry,
                    },
                    None => Failure::new(err.to_string()),
                }),
            };
            let attempt = ctx.data().get::<Attempt>().map_or(0, |a| a.0);
            let _ = self.tx.send(Ack {
                id: id.to_string(),
                attempt,
                outcome,
            });
        }
        futures::future::ready(Ok(())).boxed()
    }
}
