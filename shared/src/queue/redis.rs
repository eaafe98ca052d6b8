//! The Redis backend: every state change is one Lua script call, so a batch
//! push, a fetch of many jobs or a batch of acknowledgements costs a single
//! round trip and is atomic.
//!
//! Keys (under the configured prefix `P`, per queue `q`):
//! `P:job:{id}` hash with the envelope and state; `P:q:{q}:pending` sorted
//! by priority then sequence; `P:q:{q}:delayed` and `P:q:{q}:leased` sorted
//! by due time and lease deadline; `P:q:{q}:dead`; `P:q:{q}:stats` counters;
//! `P:q:{q}:workers` heartbeats; `P:paused`; `P:idem:{q}:{key}`. Pushes
//! publish the queue name on `P:wake` so idle workers start at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{Value as RedisValue, scripts::Script},
};
use tokio::sync::{Notify, OnceCell};

use super::{
    Ack, Fetched, JobInfo, JobStatus, LeasedJob, MAX_BACKOFF_MS, NewJob, Pushed, QueueBackend,
    QueueCounts, WORKER_LIVENESS_MS,
};
use crate::now_ms;

/// How long an idempotency key keeps answering with its first job's id.
pub const IDEMPOTENCY_TTL_S: u64 = 24 * 3600;
/// How long a finished job stays readable.
pub const DONE_RETENTION_MS: u64 = 24 * 3_600_000;
/// Connections in the command pool.
const POOL_SIZE: usize = 4;

struct Scripts {
    push: Script,
    fetch: Script,
    ack: Script,
    extend: Script,
    release: Script,
    counts: Script,
    requeue: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            push: Script::from_lua(include_str!("lua/push.lua")),
            fetch: Script::from_lua(include_str!("lua/fetch.lua")),
            ack: Script::from_lua(include_str!("lua/ack.lua")),
            extend: Script::from_lua(include_str!("lua/extend.lua")),
            release: Script::from_lua(include_str!("lua/release.lua")),
            counts: Script::from_lua(include_str!("lua/counts.lua")),
            requeue: Script::from_lua(include_str!("lua/requeue.lua")),
        }
    }
}

/// Wake-ups per queue, fed by the `P:wake` subscription.
type Wakers = Arc<Mutex<HashMap<String, Arc<Notify>>>>;

pub struct RedisBackend {
    pool: Pool,
    config: Config,
    prefix: String,
    scripts: Scripts,
    wakers: Wakers,
    subscriber: OnceCell<SubscriberClient>,
}

impl RedisBackend {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let config = Config::from_url(url).context("ORCH_REDIS_URL: invalid Redis URL")?;
        let pool = Builder::from_config(config.clone())
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_pool(POOL_SIZE)?;
        pool.init().await.with_context(|| {
            format!(
                "cannot connect to Redis at {}",
                crate::config::redact_url(url)
            )
        })?;
        Ok(Self {
            pool,
            config,
            prefix: prefix.to_string(),
            scripts: Scripts::new(),
            wakers: Arc::default(),
            subscriber: OnceCell::new(),
        })
    }

    fn client(&self) -> &Client {
        self.pool.next()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().expect("wakers lock");
        wakers.entry(queue.to_string()).or_default().clone()
    }

    /// Subscribes to push notifications once per process, on first wait.
    async fn ensure_subscribed(&self) -> anyhow::Result<()> {
        self.subscriber
            .get_or_try_init(|| async {
                let subscriber = Builder::from_config(self.config.clone())
                    .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                    .build_subscriber_client()?;
                subscriber.init().await?;
                subscriber.manage_subscriptions();
                subscriber.subscribe(self.key("wake")).await?;
                let mut messages = subscriber.message_rx();
                let wakers = self.wakers.clone();
                tokio::spawn(async move {
                    while let Ok(message) = messages.recv().await {
                        let Some(queue) = message.value.as_string() else {
                            continue;
                        };
                        let waker = wakers.lock().expect("wakers lock").get(&queue).cloned();
                        if let Some(waker) = waker {
                            waker.notify_one();
                        }
                    }
                });
                Ok::<_, anyhow::Error>(subscriber)
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl QueueBackend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let _: String = self.client().ping(None).await?;
        Ok(())
    }

    async fn push(&self, jobs: Vec<NewJob>) -> anyhow::Result<Vec<Pushed>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<RedisValue> = Vec::with_capacity(4 + jobs.len() * 8);
        args.push(self.prefix.clone().into());
        args.push((now_ms() as i64).into());
        args.push((IDEMPOTENCY_TTL_S as i64).into());
        args.push((jobs.len() as i64).into());
        for job in &jobs {
            args.push(uuid::Uuid::now_v7().to_string().into());
            args.push(job.queue.clone().into());
            args.push(serde_json::to_string(&job.payload)?.into());
            args.push(i64::from(job.priority).into());
            args.push(i64::from(job.max_attempts).into());
            args.push((job.backoff_ms as i64).into());
            args.push(job.idempotency_key.clone().unwrap_or_default().into());
            args.push((job.delay_ms as i64).into());
        }
        let reply: Vec<RedisValue> = self
            .scripts
            .push
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await
            .context("push to Redis")?;
        reply
            .chunks(2)
            .map(|pair| {
                Ok(Pushed {
                    id: string(&pair[0])?,
                    duplicate: pair[1].as_i64() == Some(1),
                })
            })
            .collect()
    }

    async fn fetch(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> anyhow::Result<Fetched> {
        let args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            queue.into(),
            (now_ms() as i64).into(),
            (max as i64).into(),
            (lease.as_millis() as i64).into(),
            worker.into(),
        ];
        let reply: Vec<RedisValue> = self
            .scripts
            .fetch
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await
            .context("fetch from Redis")?;
        let head = reply
            .first()
            .and_then(RedisValue::as_string)
            .unwrap_or_default();
        if head == "paused" {
            return Ok(Fetched {
                paused: true,
                ..Fetched::default()
            });
        }
        let mut jobs = Vec::with_capacity((reply.len() - 1) / 4);
        for fields in reply[1..].chunks(4) {
            jobs.push(LeasedJob {
                id: string(&fields[0])?,
                queue: queue.to_string(),
                payload: serde_json::from_str(&string(&fields[1])?)?,
                attempt: number(&fields[2])? as u32,
                max_attempts: number(&fields[3])? as u32,
            });
        }
        let next_due_ms = head.parse::<f64>().ok().map(|ms| ms as u64);
        Ok(Fetched {
            jobs,
            next_due_ms,
            paused: false,
        })
    }

    async fn wait_for_jobs(&self, queue: &str, timeout: Duration) {
        if let Err(err) = self.ensure_subscribed().await {
            tracing::warn!("cannot subscribe to push notifications: {err:#}; polling instead");
        }
        let waker = self.waker(queue);
        let _ = tokio::time::timeout(timeout, waker.notified()).await;
    }

    async fn ack(&self, worker: &str, acks: Vec<Ack>) -> anyhow::Result<()> {
        if acks.is_empty() {
            return Ok(());
        }
        let mut args: Vec<RedisValue> = Vec::with_capacity(6 + acks.len() * 3);
        args.push(self.prefix.clone().into());
        args.push((now_ms() as i64).into());
        args.push(worker.into());
        args.push((DONE_RETENTION_MS as i64).into());
        args.push((MAX_BACKOFF_MS as i64).into());
        args.push((acks.len() as i64).into());
        for ack in acks {
            args.push(ack.id.into());
            match ack.outcome {
                Ok(result) => {
                    args.push("1".into());
                    args.push(serde_json::to_string(&result)?.into());
                }
                Err(error) => {
                    args.push("0".into());
                    args.push(error.into());
                }
            }
        }
        let _: i64 = self
            .scripts
            .ack
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await
            .context("acknowledge in Redis")?;
        Ok(())
    }

    async fn extend_leases(
        &self,
        worker: &str,
        ids: &[String],
        lease: Duration,
    ) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let deadline = now_ms() + lease.as_millis() as u64;
        let mut args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            worker.into(),
            (deadline as i64).into(),
        ];
        args.extend(ids.iter().map(|id| RedisValue::from(id.as_str())));
        let _: i64 = self
            .scripts
            .extend
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await?;
        Ok(())
    }

    async fn release(&self, worker: &str, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            worker.into(),
            (now_ms() as i64).into(),
        ];
        args.extend(ids.iter().map(|id| RedisValue::from(id.as_str())));
        let _: i64 = self
            .scripts
            .release
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await?;
        Ok(())
    }

    async fn job(&self, id: &str) -> anyhow::Result<Option<JobInfo>> {
        let fields: HashMap<String, String> = self
            .client()
            .hgetall(self.key(&format!("job:{id}")))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        job_info(id, &fields).map(Some)
    }

    async fn dead_jobs(&self, queue: &str, limit: usize) -> anyhow::Result<Vec<JobInfo>> {
        let key = self.key(&format!("q:{queue}:dead"));
        let ids: Vec<String> = self
            .client()
            .zrevrange(key, 0, limit.saturating_sub(1) as i64, false)
            .await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.extend(self.job(&id).await?);
        }
        Ok(jobs)
    }

    async fn requeue_dead(
        &self,
        queue: &str,
        ids: &[String],
        max: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            queue.into(),
            (now_ms() as i64).into(),
            (max as i64).into(),
        ];
        args.extend(ids.iter().map(|id| RedisValue::from(id.as_str())));
        Ok(self
            .scripts
            .requeue
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await?)
    }

    async fn counts(&self, queue: &str) -> anyhow::Result<QueueCounts> {
        let live_since = now_ms().saturating_sub(WORKER_LIVENESS_MS) as i64;
        let args: Vec<RedisValue> =
            vec![self.prefix.clone().into(), queue.into(), live_since.into()];
        let c: Vec<u64> = self
            .scripts
            .counts
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await?;
        let [pending, running, done, failed, dead, workers] = c[..] else {
            return Err(anyhow!("unexpected counts reply {c:?}"));
        };
        Ok(QueueCounts {
            pending,
            running,
            done,
            failed,
            dead,
            workers,
        })
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> anyhow::Result<()> {
        let key = self.key("paused");
        if paused {
            let _: i64 = self.client().sadd(key, queue).await?;
        } else {
            let _: i64 = self.client().srem(key, queue).await?;
            let _: i64 = self.client().publish(self.key("wake"), queue).await?;
        }
        Ok(())
    }

    async fn register_worker(&self, queue: &str, worker: &str) -> anyhow::Result<()> {
        let key = self.key(&format!("q:{queue}:workers"));
        let now = now_ms();
        let _: i64 = self
            .client()
            .zadd(&key, None, None, false, false, (now as f64, worker))
            .await?;
        let stale = now.saturating_sub(WORKER_LIVENESS_MS * 4) as f64;
        let _: i64 = self
            .client()
            .zremrangebyscore(&key, f64::MIN, stale)
            .await?;
        Ok(())
    }

    async fn unregister_worker(&self, queue: &str, worker: &str) -> anyhow::Result<()> {
        let key = self.key(&format!("q:{queue}:workers"));
        let _: i64 = self.client().zrem(key, worker).await?;
        Ok(())
    }
}

fn string(value: &RedisValue) -> anyhow::Result<String> {
    value
        .as_string()
        .ok_or_else(|| anyhow!("expected a string from Redis, got {value:?}"))
}

fn number(value: &RedisValue) -> anyhow::Result<i64> {
    value
        .as_i64()
        .ok_or_else(|| anyhow!("expected a number from Redis, got {value:?}"))
}

fn job_info(id: &str, fields: &HashMap<String, String>) -> anyhow::Result<JobInfo> {
    let get = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    let int = |name: &str| get(name).parse::<i64>().unwrap_or_default();
    let status = JobStatus::parse(get("status"))
        .ok_or_else(|| anyhow!("job {id} has unknown status {:?}", get("status")))?;
    Ok(JobInfo {
        id: id.to_string(),
        queue: get("queue").to_string(),
        status,
        attempts: int("attempts") as u32,
        max_attempts: int("max_attempts") as u32,
        priority: int("priority") as i32,
        payload: serde_json::from_str(get("payload")).unwrap_or_default(),
        result: fields
            .get("result")
            .and_then(|r| serde_json::from_str(r).ok()),
        error: fields.get("error").cloned(),
        created_at_ms: int("created_ms") as u64,
        updated_at_ms: int("updated_ms") as u64,
    })
}
