//! Group commit for pushes: callers pushing at the same moment share one
//! backend call.
//!
//! A push costs the backend one round trip (Redis) or one transaction
//! (SQLite) whatever its size, so a thousand HTTP requests pushing one job
//! each pay that cost a thousand times. Here every push is handed to one
//! task, which takes everything that queued up while the previous calls ran
//! and sends it as one batch. An idle system adds no wait (a lone push goes
//! out at once); under load, batches grow by themselves as calls queue up
//! behind the ones in flight. Each caller still gets exactly its own
//! answers, and a failed call fails every caller in it with the same error,
//! so nobody's jobs land half-way: the backend's batch is atomic.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{NewJob, Pushed, QueueBackend};

/// Jobs one shared call carries at most (a caller's own batch may exceed it
/// and then travels alone).
const MAX_GROUP_JOBS: usize = 2_000;

type Reply = oneshot::Sender<Result<Vec<Pushed>, Arc<anyhow::Error>>>;

struct Waiting {
    jobs: Vec<NewJob>,
    reply: Reply,
}

/// Pushes through a shared, self-sizing batch. Cheap to clone.
#[derive(Clone)]
pub struct PushCoalescer {
    waiting: mpsc::UnboundedSender<Waiting>,
}

impl PushCoalescer {
    /// Starts the batching task on the current runtime. `in_flight` calls
    /// may run at once: several for Redis, which pipelines them; one for
    /// SQLite, whose writers take turns anyway.
    pub fn new(backend: Arc<dyn QueueBackend>) -> Self {
        let in_flight = if backend.kind() == "sqlite" { 1 } else { 4 };
        let (waiting, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(backend, queued, in_flight));
        Self { waiting }
    }

    /// Enqueues `jobs` (atomically, as one backend push would) and returns
    /// one answer per job, in order.
    pub async fn push(&self, jobs: Vec<NewJob>) -> anyhow::Result<Vec<Pushed>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.waiting
            .send(Waiting { jobs, reply })
            .map_err(|_| anyhow::anyhow!("the push task has stopped"))?;
        match answer.await {
            Ok(Ok(pushed)) => Ok(pushed),
            Ok(Err(err)) => Err(anyhow::anyhow!("{err:#}")),
            Err(_) => Err(anyhow::anyhow!("the push was dropped before it finished")),
        }
    }
}

async fn run(
    backend: Arc<dyn QueueBackend>,
    mut queued: mpsc::UnboundedReceiver<Waiting>,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // Taking the slot first lets pushes pile up while every slot is busy:
        // that pile is the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queued.recv().await else {
            return;
        };
        let mut jobs = first.jobs.len();
        let mut group = vec![first];
        while jobs < MAX_GROUP_JOBS {
            let Ok(next) = queued.try_recv() else { break };
            jobs += next.jobs.len();
            group.push(next);
        }
        let backend = backend.clone();
        tokio::spawn(async move {
            push_group(backend.as_ref(), group).await;
            drop(slot);
        });
    }
}

/// One backend push for the whole group; each caller gets its slice back.
async fn push_group(backend: &dyn QueueBackend, group: Vec<Waiting>) {
    let mut sizes = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut jobs = Vec::new();
    for waiting in group {
        sizes.push(waiting.jobs.len());
        replies.push(waiting.reply);
        jobs.extend(waiting.jobs);
    }
    metrics::counter!(orchestrator_core::metrics::PUSH_CALLS).increment(1);
    match backend.push(jobs).await {
        Ok(pushed) => {
            let mut pushed = pushed.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                // A caller that gave up (its request was dropped) is skipped.
                let _ = reply.send(Ok(pushed.by_ref().take(size).collect()));
            }
        }
        Err(err) => {
            let err = Arc::new(err);
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
