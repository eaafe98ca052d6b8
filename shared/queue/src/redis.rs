//! The Redis backend: every state change is one Lua script call working
//! on whole batches with variadic commands, so a push of 1,000 jobs, a fetch
//! of 1,000 or 2,000 acknowledgements cost one round trip and a handful of
//! Redis commands, not a few per job.
//!
//! Layout (see `lua/common.lua`): job envelopes live in one hash, priority-0
//! jobs in a FIFO list per queue, other priorities in a sorted set, delayed
//! jobs and leases in sorted sets by time. A job's status is derived from
//! where it is, so the hot path writes no per-job status. Pushes publish the
//! queue name on `P:wake`, so idle workers start at once.
//!
//! A plain batch of 16 jobs or more is stored as a segment: its payloads in
//! one string (with where each ends in another), a status byte per job, one
//! wait-list element for all of them;
//! fetches lease ranges of it as one member and acknowledgements mark bytes
//! per run of jobs. Its jobs' ids (UUIDv8) locate it. A job leaves its
//! segment for the per-job structures only on a rare path (failure, expired
//! lease, release, cancel, progress report).

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
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OnceCell};

use super::{
    Ack, Cancelled, Fetched, JobInfo, JobStatus, LeasedJob, MAX_BACKOFF_MS, MAX_LOG_BYTES,
    MAX_LOG_LINES, NewJob, Progress, Pushed, QueueBackend, QueueCounts, QueueOptions, Report,
    Retry, WORKER_LIVENESS_MS,
};
use orchestrator_core::now_ms;

/// How long an idempotency key keeps answering with its first job's id.
pub const IDEMPOTENCY_TTL_S: u64 = 24 * 3600;
/// How long a finished job stays readable.
pub const DONE_RETENTION_MS: u64 = 24 * 3_600_000;
/// Connections in the command pool.
const POOL_SIZE: usize = 4;
/// Plain batches this large or larger are stored as segments.
const SEGMENT_MIN_JOBS: usize = 16;
/// Most jobs in one segment: the index takes the id's last 20 bits.
const SEGMENT_MAX_JOBS: usize = 1 << 20;
/// Most payload bytes in one segment (more only for a single job): one
/// Redis string holds them, with 32-bit offsets.
const SEGMENT_MAX_BYTES: usize = 64 << 20;

struct Scripts {
    push: Script,
    push_plain: Script,
    push_segment: Script,
    fetch: Script,
    ack: Script,
    ack_segment: Script,
    extend: Script,
    release: Script,
    counts: Script,
    requeue: Script,
    job: Script,
    cancel: Script,
    report: Script,
    purge: Script,
}

/// A script with the shared helpers in front.
macro_rules! script {
    ($file:literal) => {
        Script::from_lua(concat!(
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

impl Scripts {
    fn new() -> Self {
        Self {
            push: script!("push.lua"),
            push_plain: script!("push_plain.lua"),
            push_segment: script!("push_segment.lua"),
            fetch: script!("fetch.lua"),
            ack: script!("ack.lua"),
            ack_segment: script!("ack_segment.lua"),
            extend: script!("extend.lua"),
            release: script!("release.lua"),
            counts: script!("counts.lua"),
            requeue: script!("requeue.lua"),
            job: script!("job.lua"),
            cancel: script!("cancel.lua"),
            report: script!("report.lua"),
            purge: script!("purge.lua"),
        }
    }
}

/// What the job hash stores per job; short keys keep memory per job low.
#[derive(Deserialize)]
struct Envelope {
    q: String,
    p: serde_json::Value,
    pr: i32,
    ma: u32,
    c: u64,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    cb: Option<String>,
}

/// The same, borrowed, for writing (with the backoff only Lua reads).
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    q: &'a str,
    p: &'a serde_json::Value,
    pr: i32,
    ma: u32,
    b: u64,
    c: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cb: Option<&'a str>,
}

#[derive(Deserialize)]
struct ResultRecord {
    a: u32,
    t: u64,
    r: serde_json::Value,
}

#[derive(Deserialize)]
struct ErrorRecord {
    e: String,
    t: u64,
}

/// A job's progress and log lines (`P:prog`); Lua writes an empty log as
/// an absent field.
#[derive(Deserialize)]
struct ProgressRecord {
    f: Option<f64>,
    #[serde(default)]
    m: String,
    #[serde(default)]
    t: u64,
    #[serde(default)]
    l: Vec<String>,
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
                orchestrator_core::config::redact_url(url)
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

    /// The common batch (one queue, priority 0, no delay or key): the
    /// arguments are laid out for the bulk commands, so Lua does no per-job
    /// work.
    async fn push_plain(&self, jobs: Vec<NewJob>) -> anyhow::Result<Vec<Pushed>> {
        let now = now_ms();
        let queue = jobs[0].queue.clone();
        let ids: Vec<String> = jobs
            .iter()
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let mut args: Vec<RedisValue> = Vec::with_capacity(3 + jobs.len() * 3);
        args.push(self.prefix.clone().into());
        args.push(queue.as_str().into());
        args.push((jobs.len() as i64).into());
        args.extend(ids.iter().map(|id| RedisValue::from(id.as_str())));
        for (id, job) in ids.iter().zip(&jobs) {
            args.push(id.as_str().into());
            args.push(envelope_json(job, now)?.into());
        }
        let _: i64 = self
            .eval(&self.scripts.push_plain, args)
            .await
            .context("push to Redis")?;
        Ok(ids
            .into_iter()
            .map(|id| Pushed {
                id,
                duplicate: false,
            })
            .collect())
    }

    /// A plain batch as segments (see `lua/common.lua`), as few as the
    /// size limits allow: each job's payload JSON is written straight into
    /// its segment's payload string.
    async fn push_segments(&self, jobs: Vec<NewJob>) -> anyhow::Result<Vec<Pushed>> {
        let mut pushed = Vec::with_capacity(jobs.len());
        let mut segment = SegmentPayloads::default();
        for job in &jobs {
            let before = segment.bytes.len();
            serde_json::to_writer(&mut segment.bytes, &job.payload)?;
            let full = segment.count == SEGMENT_MAX_JOBS || segment.bytes.len() > SEGMENT_MAX_BYTES;
            if segment.count > 0 && full {
                let carried = segment.bytes.split_off(before);
                let ready = std::mem::take(&mut segment);
                pushed.extend(self.push_segment(&jobs[0], ready).await?);
                segment.bytes = carried;
            }
            segment
                .ends
                .extend((segment.bytes.len() as u32).to_be_bytes());
            segment.count += 1;
        }
        pushed.extend(self.push_segment(&jobs[0], segment).await?);
        Ok(pushed)
    }

    /// One segment: the job ids are UUIDv8s sharing their first 108 bits,
    /// the last 20 being the index.
    async fn push_segment(
        &self,
        first: &NewJob,
        payloads: SegmentPayloads,
    ) -> anyhow::Result<Vec<Pushed>> {
        let segment = segment_prefix();
        let args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            first.queue.as_str().into(),
            segment.as_str().into(),
            i64::from(first.max_attempts).into(),
            (first.backoff_ms as i64).into(),
            (now_ms() as i64).into(),
            RedisValue::Bytes(payloads.bytes.into()),
            RedisValue::Bytes(payloads.ends.into()),
        ];
        let _: i64 = self
            .eval(&self.scripts.push_segment, args)
            .await
            .context("push to Redis")?;
        Ok((0..payloads.count)
            .map(|index| Pushed {
                id: segment_job_id(&segment, index),
                duplicate: false,
            })
            .collect())
    }

    /// Successes of jobs pushed in segments, per segment as runs of
    /// consecutive indices plus the few result records to keep, as
    /// `ack_segment.lua` takes them.
    async fn ack_segments(
        &self,
        queue: &str,
        worker: &str,
        now: u64,
        done: Vec<Ack>,
    ) -> anyhow::Result<Vec<String>> {
        let mut groups: std::collections::BTreeMap<&str, Vec<(u32, Option<String>)>> =
            std::collections::BTreeMap::new();
        for ack in &done {
            let (segment, index) = segment_of(&ack.id).expect("partitioned: segment jobs only");
            let result = ack.outcome.as_ref().expect("partitioned: successes only");
            // None: Lua knows a null result of a first attempt without one.
            let record = if result.is_null() && ack.attempt == 1 {
                None
            } else {
                Some(result_record(ack.attempt, now, result)?)
            };
            groups.entry(segment).or_default().push((index, record));
        }
        let mut args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            queue.into(),
            (now as i64).into(),
            worker_slot(worker).into(),
            (DONE_RETENTION_MS as i64).into(),
        ];
        for (segment, mut jobs) in groups {
            jobs.sort_unstable_by_key(|(index, _)| *index);
            jobs.dedup_by_key(|(index, _)| *index);
            let runs = index_runs(jobs.iter().map(|(index, _)| *index));
            let records: Vec<(u32, String)> = jobs
                .into_iter()
                .filter_map(|(index, record)| Some((index, record?)))
                .collect();
            args.push(segment.into());
            args.push((runs.len() as i64).into());
            args.push((records.len() as i64).into());
            for (first, last) in runs {
                args.push(first.into());
                args.push(last.into());
            }
            for (index, record) in records {
                args.push(index.into());
                args.push(record.into());
            }
        }
        self.eval(&self.scripts.ack_segment, args)
            .await
            .context("acknowledge in Redis")
    }

    /// Deletes every key under this backend's prefix (benchmarks and test
    /// clean-up); SCAN-based, so Redis keeps serving meanwhile.
    pub async fn purge(&self) -> anyhow::Result<u64> {
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = "0".to_string();
        let mut deleted = 0;
        loop {
            let (next, keys): (String, Vec<String>) = self
                .client()
                .scan_page(cursor, pattern.as_str(), Some(1000), None)
                .await?;
            if !keys.is_empty() {
                deleted += self.client().unlink::<u64, _>(keys).await?;
            }
            if next == "0" {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Redis' `used_memory`, in bytes, once keys deleted earlier (`UNLINK`
    /// frees them on a background thread) are freed, so a before/after
    /// difference measures only what happened in between.
    pub async fn used_memory(&self) -> anyhow::Result<u64> {
        for _ in 0..100 {
            let info: String = self
                .client()
                .info(Some(fred::types::InfoKind::Memory))
                .await?;
            if info_field::<u64>(&info, "lazyfree_pending_objects")? == 0 {
                return info_field(&info, "used_memory");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(anyhow!("Redis is still freeing deleted keys after 5 s"))
    }

    /// CPU seconds the Redis server has used (user + system).
    pub async fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let info: String = self.client().info(Some(fred::types::InfoKind::Cpu)).await?;
        Ok(info_field::<f64>(&info, "used_cpu_user")? + info_field::<f64>(&info, "used_cpu_sys")?)
    }

    /// Runs a script by its hash, loading it first if this Redis lacks it.
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        args: Vec<RedisValue>,
    ) -> anyhow::Result<R> {
        Ok(script
            .evalsha_with_reload(self.client(), Vec::<String>::new(), args)
            .await?)
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
        if is_plain(&jobs) && jobs.len() >= SEGMENT_MIN_JOBS && is_uniform(&jobs) {
            return self.push_segments(jobs).await;
        }
        if is_plain(&jobs) {
            return self.push_plain(jobs).await;
        }
        let now = now_ms();
        let mut args: Vec<RedisValue> = Vec::with_capacity(4 + jobs.len() * 7);
        args.push(self.prefix.clone().into());
        args.push((now as i64).into());
        args.push((IDEMPOTENCY_TTL_S as i64).into());
        args.push((jobs.len() as i64).into());
        for job in jobs {
            let envelope = envelope_json(&job, now)?;
            args.push(uuid::Uuid::now_v7().to_string().into());
            args.push(job.queue.into());
            args.push(envelope.into());
            args.push(i64::from(job.priority).into());
            args.push(job.idempotency_key.unwrap_or_default().into());
            args.push((job.delay_ms as i64).into());
            args.push(job.concurrency_key.unwrap_or_default().into());
        }
        let reply: Vec<RedisValue> = self
            .eval(&self.scripts.push, args)
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
            worker_slot(worker).into(),
        ];
        let reply: Vec<RedisValue> = self
            .eval(&self.scripts.fetch, args)
            .await
            .context("fetch from Redis")?;
        let head = reply
            .first()
            .and_then(RedisValue::as_string)
            .unwrap_or_default();
        let ended = if head == "paused" {
            reply.get(1)
        } else {
            reply.get(4)
        };
        let callbacks = expired_callbacks(queue, ended)?;
        if head == "paused" {
            return Ok(Fetched {
                paused: true,
                callbacks,
                ..Fetched::default()
            });
        }
        let mut jobs = Vec::new();
        if let [_, ids, envelopes, attempts, _, ranges] = &reply[..] {
            segment_jobs(queue, array(ranges)?, &mut jobs)?;
            let (ids, envelopes, attempts) = (array(ids)?, array(envelopes)?, array(attempts)?);
            jobs.reserve(ids.len());
            for ((id, envelope), attempts) in ids.iter().zip(envelopes).zip(attempts) {
                // Nil: the envelope is gone (the job expired); Lua skipped it too.
                let Some(envelope) = envelope.as_bytes() else {
                    continue;
                };
                let envelope: Envelope = serde_json::from_slice(envelope)?;
                jobs.push(LeasedJob {
                    id: string(id)?,
                    queue: queue.to_string(),
                    payload: envelope.p,
                    attempt: attempts.as_u64().unwrap_or(0) as u32 + 1,
                    max_attempts: envelope.ma,
                    concurrency_key: envelope.k,
                    callback_url: envelope.cb,
                });
            }
        }
        Ok(Fetched {
            jobs,
            next_due_ms: head.parse::<f64>().ok().map(|ms| ms as u64),
            paused: false,
            callbacks,
        })
    }

    async fn wait_for_jobs(&self, queue: &str, timeout: Duration) {
        if let Err(err) = self.ensure_subscribed().await {
            tracing::warn!("cannot subscribe to push notifications: {err:#}; polling instead");
        }
        let waker = self.waker(queue);
        let _ = tokio::time::timeout(timeout, waker.notified()).await;
    }

    async fn ack(&self, queue: &str, worker: &str, acks: Vec<Ack>) -> anyhow::Result<Vec<String>> {
        if acks.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let (done, failed): (Vec<Ack>, Vec<Ack>) =
            acks.into_iter().partition(|a| a.outcome.is_ok());
        let (in_segments, done): (Vec<Ack>, Vec<Ack>) =
            done.into_iter().partition(|a| segment_of(&a.id).is_some());
        let mut lost = Vec::new();
        if !in_segments.is_empty() {
            lost = self.ack_segments(queue, worker, now, in_segments).await?;
        }
        if done.is_empty() && failed.is_empty() {
            return Ok(lost);
        }
        let mut args: Vec<RedisValue> = Vec::with_capacity(8 + done.len() * 3 + failed.len() * 3);
        args.push(self.prefix.clone().into());
        args.push(queue.into());
        args.push((now as i64).into());
        args.push(worker_slot(worker).into());
        args.push((DONE_RETENTION_MS as i64).into());
        args.push((MAX_BACKOFF_MS as i64).into());
        args.push((done.len() as i64).into());
        // Laid out as ack.lua's bulk commands take them: the ids joined (one
        // list element per batch), the ids, id/result pairs, id/error pairs.
        let joined: Vec<&str> = done.iter().map(|ack| ack.id.as_str()).collect();
        args.push(joined.join(",").into());
        for ack in &done {
            args.push(ack.id.as_str().into());
        }
        for ack in done {
            let result = ack.outcome.expect("partitioned: successes only");
            let record = result_record(ack.attempt, now, &result)?;
            args.push(ack.id.into());
            args.push(record.into());
        }
        for ack in failed {
            let failure = ack.outcome.expect_err("partitioned: failures only");
            args.push(ack.id.into());
            args.push(
                serde_json::to_string(&serde_json::json!({ "e": failure.message, "t": now }))?
                    .into(),
            );
            args.push(match failure.retry {
                Retry::Backoff => "".into(),
                Retry::Never => "never".into(),
                Retry::After(ms) => ms.min(MAX_BACKOFF_MS).to_string().into(),
            });
        }
        let lost_here: Vec<String> = self
            .eval(&self.scripts.ack, args)
            .await
            .context("acknowledge in Redis")?;
        lost.extend(lost_here);
        Ok(lost)
    }

    async fn extend_leases(
        &self,
        queue: &str,
        worker: &str,
        ids: &[String],
        lease: Duration,
    ) -> anyhow::Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = now_ms() + lease.as_millis() as u64;
        let mut args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            queue.into(),
            worker_slot(worker).into(),
            (deadline as i64).into(),
        ];
        args.extend(ids.iter().map(|id| RedisValue::from(id.as_str())));
        Ok(self.eval(&self.scripts.extend, args).await?)
    }

    async fn cancel(&self, id: &str) -> anyhow::Result<Cancelled> {
        let now = now_ms();
        let record = serde_json::json!({ "e": "cancelled", "t": now }).to_string();
        let args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            id.into(),
            (now as i64).into(),
            record.into(),
        ];
        let reply: Vec<String> = self.eval(&self.scripts.cancel, args).await?;
        let status = |raw: &str| {
            JobStatus::parse(raw).ok_or_else(|| anyhow!("unexpected status {raw:?} from cancel"))
        };
        match reply.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["cancelled", had] => Ok(Cancelled::Now(status(had)?)),
            ["final", was] => Ok(Cancelled::AlreadyFinal(status(was)?)),
            _ => Ok(Cancelled::NotFound),
        }
    }

    async fn report(&self, id: &str, report: Report) -> anyhow::Result<bool> {
        let (fraction, message) = match report.progress {
            Some((fraction, message)) => (fraction.to_string(), message),
            None => (String::new(), String::new()),
        };
        let mut args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            id.into(),
            (now_ms() as i64).into(),
            fraction.into(),
            message.into(),
            (MAX_LOG_LINES as i64).into(),
            (MAX_LOG_BYTES as i64).into(),
        ];
        args.extend(report.lines.into_iter().map(RedisValue::from));
        let stored: i64 = self.eval(&self.scripts.report, args).await?;
        Ok(stored == 1)
    }

    async fn purge_jobs(&self, queue: &str, statuses: &[JobStatus]) -> anyhow::Result<u64> {
        let mut args: Vec<RedisValue> = vec![self.prefix.clone().into(), queue.into()];
        args.extend(statuses.iter().map(|s| RedisValue::from(s.as_str())));
        let mut total = 0;
        // Bounded work per call, so Redis keeps serving between calls.
        loop {
            let (forgotten, removed): (u64, u64) =
                self.eval(&self.scripts.purge, args.clone()).await?;
            if removed == 0 {
                return Ok(total);
            }
            total += forgotten;
        }
    }

    async fn configure(&self, queue: &str, options: &QueueOptions) -> anyhow::Result<()> {
        let key = self.key(&format!("q:{queue}:conf"));
        let fields = [
            ("max_per_key", options.max_per_key.map(u64::from)),
            ("keep_done", options.keep_done_ms),
            ("keep_dead", options.keep_dead_ms),
            ("remove", options.remove_on_complete.then_some(1)),
        ];
        // Two commands at most: the fields set, then the fields cleared.
        let set: Vec<(&str, String)> = fields
            .iter()
            .filter_map(|(field, value)| Some((*field, (*value)?.to_string())))
            .collect();
        let cleared: Vec<&str> = fields
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(field, _)| *field)
            .collect();
        if !set.is_empty() {
            let _: i64 = self.client().hset(&key, set).await?;
        }
        if !cleared.is_empty() {
            let _: i64 = self.client().hdel(&key, cleared).await?;
        }
        Ok(())
    }

    async fn release(&self, queue: &str, worker: &str, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args: Vec<RedisValue> = vec![
            self.prefix.clone().into(),
            queue.into(),
            worker_slot(worker).into(),
            (now_ms() as i64).into(),
        ];
        args.extend(ids.iter().map(|id| RedisValue::from(id.as_str())));
        let _: i64 = self.eval(&self.scripts.release, args).await?;
        Ok(())
    }

    async fn find_by_key(
        &self,
        queue: &str,
        idempotency_key: &str,
    ) -> anyhow::Result<Option<String>> {
        let key = self.key(&format!("idem:{queue}:{idempotency_key}"));
        Ok(self.client().get(key).await?)
    }

    async fn job(&self, id: &str) -> anyhow::Result<Option<JobInfo>> {
        let args: Vec<RedisValue> = vec![self.prefix.clone().into(), id.into()];
        let reply: Vec<RedisValue> = self.eval(&self.scripts.job, args).await?;
        if reply.is_empty() {
            return Ok(None);
        }
        job_info(id, &reply).map(Some)
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
            (max as i64).into(),
        ];
        args.extend(ids.iter().map(|id| RedisValue::from(id.as_str())));
        Ok(self.eval(&self.scripts.requeue, args).await?)
    }

    async fn counts(&self, queue: &str) -> anyhow::Result<QueueCounts> {
        let live_since = now_ms().saturating_sub(WORKER_LIVENESS_MS) as i64;
        let args: Vec<RedisValue> =
            vec![self.prefix.clone().into(), queue.into(), live_since.into()];
        let c: Vec<u64> = self.eval(&self.scripts.counts, args).await?;
        let [pending, running, done, failed, dead, workers, cancelled] = c[..] else {
            return Err(anyhow!("unexpected counts reply {c:?}"));
        };
        Ok(QueueCounts {
            pending,
            running,
            done,
            failed,
            dead,
            workers,
            cancelled,
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

/// Lease slots (see `lua/common.lua`): a lease score carries its holder's
/// slot, so acknowledgements check ownership without storing a name per job.
const LEASE_SLOTS: u64 = 1024;

/// The slot of a worker: a stable hash (FNV-1a) of its unique name. Two live
/// workers share a slot with probability 1/1024; that only matters if one of
/// them also lost a lease, and then a job's result may come from the run
/// whose lease expired instead of the rerun (both ran it: at-least-once).
fn worker_slot(worker: &str) -> i64 {
    let hash = worker.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % LEASE_SLOTS) as i64
}

/// The callbacks of `fetch.lua`'s `ended` list (id, URL, attempts each).
fn expired_callbacks(queue: &str, ended: Option<&RedisValue>) -> anyhow::Result<Vec<NewJob>> {
    let Some(ended) = ended.filter(|e| matches!(e, RedisValue::Array(_))) else {
        return Ok(Vec::new());
    };
    array(ended)?
        .chunks(3)
        .map(|entry| match entry {
            [id, url, attempts] => Ok(crate::callback::expired_callback(
                &string(id)?,
                queue,
                &string(url)?,
                number(attempts)? as u32,
            )),
            _ => Err(anyhow!("unexpected expired entry {entry:?}")),
        })
        .collect()
}

fn array(value: &RedisValue) -> anyhow::Result<&[RedisValue]> {
    match value {
        RedisValue::Array(items) => Ok(items),
        other => Err(anyhow!("expected an array from Redis, got {other:?}")),
    }
}

fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> anyhow::Result<T> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {name} in INFO"))
}

fn envelope_json(job: &NewJob, now: u64) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&EnvelopeRef {
        q: &job.queue,
        p: &job.payload,
        pr: job.priority,
        ma: job.max_attempts,
        b: job.backoff_ms,
        c: now,
        k: job.concurrency_key.as_deref(),
        cb: job.callback_url.as_deref(),
    })?)
}

/// A done job's record (`P:res`, a segment's results): attempt, time, result.
fn result_record(attempt: u32, now: u64, result: &serde_json::Value) -> anyhow::Result<String> {
    Ok(format!(
        r#"{{"a":{attempt},"t":{now},"r":{}}}"#,
        serde_json::to_string(result)?
    ))
}

/// A segment being built: its payload JSON back to back, where each ends
/// (4 bytes big-endian per job), and how many jobs.
#[derive(Default)]
struct SegmentPayloads {
    bytes: Vec<u8>,
    ends: Vec<u8>,
    count: usize,
}

/// Ascending indices as runs of consecutive ones, (first, last) inclusive.
fn index_runs(indices: impl Iterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for index in indices {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == index => *last = index,
            _ => runs.push((index, index)),
        }
    }
    runs
}

/// Whether a plain batch's jobs share what a segment stores once: attempts,
/// backoff, and no callback.
fn is_uniform(jobs: &[NewJob]) -> bool {
    jobs.iter().all(|job| {
        job.max_attempts == jobs[0].max_attempts
            && job.backoff_ms == jobs[0].backoff_ms
            && job.callback_url.is_none()
    })
}

/// A new segment's id prefix: a UUIDv7's time and randomness, marked as
/// version 8 (a custom layout), its last 20 bits left for the job index.
fn segment_prefix() -> String {
    let mut bytes = *uuid::Uuid::now_v7().as_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[13] &= 0xf0;
    bytes[14] = 0;
    bytes[15] = 0;
    let mut id = uuid::Uuid::from_bytes(bytes).to_string();
    id.truncate(31);
    id
}

fn segment_job_id(segment: &str, index: usize) -> String {
    format!("{segment}{index:05x}")
}

/// The segment and index of a job pushed in a segment (`None` for others).
fn segment_of(id: &str) -> Option<(&str, u32)> {
    if id.len() != 36 || id.as_bytes()[14] != b'8' || !id.is_ascii() {
        return None;
    }
    let index = u32::from_str_radix(&id[31..], 16).ok()?;
    Some((&id[..31], index))
}

/// The jobs of the segment ranges a fetch leased (`fetch.lua` step 5): S,
/// from, status bytes, where the first payload starts, where each ends,
/// the payload bytes, max attempts per range; jobs not '0' were cancelled
/// while waiting.
fn segment_jobs(
    queue: &str,
    ranges: &[RedisValue],
    jobs: &mut Vec<LeasedJob>,
) -> anyhow::Result<()> {
    for range in ranges.chunks(7) {
        let [segment, from, states, start, ends, payloads, max_attempts] = range else {
            return Err(anyhow!("unexpected segment range {range:?}"));
        };
        let (segment, from) = (string(segment)?, number(from)? as usize);
        let max_attempts = string(max_attempts)?.parse()?;
        let (start, ends, payloads) = (number(start)? as usize, bytes(ends)?, bytes(payloads)?);
        let mut begin = 0;
        for (offset, (state, end)) in bytes(states)?.iter().zip(ends.chunks_exact(4)).enumerate() {
            let end = (u32::from_be_bytes(end.try_into()?) as usize).saturating_sub(start);
            let payload = payloads
                .get(begin..end)
                .ok_or_else(|| anyhow!("segment {segment}: payload offsets out of range"))?;
            begin = end;
            if *state != b'0' {
                continue;
            }
            jobs.push(LeasedJob {
                id: segment_job_id(&segment, from + offset),
                queue: queue.to_string(),
                payload: serde_json::from_slice(payload)?,
                attempt: 1,
                max_attempts,
                concurrency_key: None,
                callback_url: None,
            });
        }
    }
    Ok(())
}

/// Whether a batch can take the plain push: one queue, priority 0, no
/// delay, no idempotency key.
fn is_plain(jobs: &[NewJob]) -> bool {
    jobs.iter().all(|job| {
        job.queue == jobs[0].queue
            && job.priority == 0
            && job.delay_ms == 0
            && job.idempotency_key.is_none()
            && job.concurrency_key.is_none()
    })
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

fn bytes(value: &RedisValue) -> anyhow::Result<&[u8]> {
    value
        .as_bytes()
        .ok_or_else(|| anyhow!("expected bytes from Redis, got {value:?}"))
}

/// Builds a job's view from `job.lua`'s reply.
fn job_info(id: &str, reply: &[RedisValue]) -> anyhow::Result<JobInfo> {
    let [envelope, status, attempts, result, error, progress, lease] = reply else {
        return Err(anyhow!("unexpected job reply {reply:?}"));
    };
    let envelope: Envelope = serde_json::from_slice(bytes(envelope)?)?;
    let status_text = string(status)?;
    let status = JobStatus::parse(&status_text)
        .ok_or_else(|| anyhow!("job {id} has unknown status {status_text:?}"))?;
    let result: Option<ResultRecord> = match bytes(result)? {
        b"" => None,
        raw => Some(serde_json::from_slice(raw)?),
    };
    let error: Option<ErrorRecord> = match bytes(error)? {
        b"" => None,
        raw => Some(serde_json::from_slice(raw)?),
    };
    let progress: Option<ProgressRecord> = match bytes(progress)? {
        b"" => None,
        raw => Some(serde_json::from_slice(raw)?),
    };
    let (progress, logs) = match progress {
        Some(p) => (
            p.f.map(|fraction| Progress {
                fraction,
                message: p.m,
                at_ms: p.t,
            }),
            p.l,
        ),
        None => (None, Vec::new()),
    };
    let attempts = match &result {
        Some(done) => done.a,
        None => number(attempts)? as u32,
    };
    let updated_at_ms = match (&result, &error) {
        (Some(done), _) => done.t,
        (None, Some(failed)) => failed.t,
        (None, None) => envelope.c,
    };
    Ok(JobInfo {
        id: id.to_string(),
        queue: envelope.q,
        status,
        attempts,
        max_attempts: envelope.ma,
        priority: envelope.pr,
        payload: envelope.p,
        result: result.map(|done| done.r),
        error: error.map(|failed| failed.e),
        progress,
        logs,
        concurrency_key: envelope.k,
        callback_url: envelope.cb,
        lease_expires_at_ms: lease.as_u64(),
        created_at_ms: envelope.c,
        updated_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_runs_join_consecutive_indices() {
        let runs = index_runs([0, 1, 2, 5, 7, 8].into_iter());
        assert_eq!(runs, vec![(0, 2), (5, 5), (7, 8)]);
        assert!(index_runs(std::iter::empty()).is_empty());
    }
}
