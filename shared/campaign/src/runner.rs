//! What a campaign worker does: runs one operation (fetch, extract, record,
//! queue what it found), and serves a campaign while it holds one of its
//! slots.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Campaigns,
    kinds::{Op, OpContext},
    model::Status,
    queue_name,
    store::{Finished, GOALS_MET},
};
use orchestrator_core::metrics as m;
use orchestrator_queue::{JobContext, JobError, JobHandler, LeasedJob, QueueDefaults, worker};

/// How often a serving worker renews its slot and rereads its campaign.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How long a worker waiting for a slot (or a paused campaign) sleeps.
const WAIT_FOR_SLOT: Duration = Duration::from_secs(1);

/// A job on a campaign queue: the operation and its campaign.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpPayload {
    pub campaign: String,
    #[serde(flatten)]
    pub op: Op,
}

impl Campaigns {
    /// Runs one operation. Its outcome (items, discovered URLs, the op as
    /// done) is stored in one transaction, so a repeat delivery finds it done
    /// and does nothing. A retryable failure fails the attempt while
    /// attempts remain; any other failure is counted as the op's outcome.
    pub async fn run_op(&self, job: &LeasedJob) -> Result<Value, JobError> {
        let payload: OpPayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| JobError::new(format!("not a campaign operation: {e}")))?;
        let op = payload.op;
        let campaign = payload.campaign.as_str();
        let prepared = self
            .prepared(campaign)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        let store_error = |e: anyhow::Error| JobError::new(format!("store: {e:#}"));
        if self
            .store
            .is_done(campaign, &op.key())
            .await
            .map_err(store_error)?
        {
            return Ok(json!({"skipped": "already done"}));
        }
        let cx = OpContext {
            fetcher: &prepared.fetcher,
            settings: &prepared.settings,
        };
        let (outcome, error) = match prepared.kind.run(&op, &cx).await {
            Ok(outcome) => (outcome, None),
            Err(err) if err.is_retryable() && job.attempt < job.max_attempts => {
                return Err(JobError::new(err.to_string()));
            }
            Err(err) => (Default::default(), Some(err)),
        };
        let kind = error.as_ref().map_or(op.kind.as_str(), |e| e.kind());
        metrics::counter!(m::CAMPAIGN_OPS, "campaign" => campaign.to_string(), "kind" => kind)
            .increment(1);
        let found = outcome.items.len();
        let recorded = self
            .store
            .record(
                campaign,
                Finished {
                    op: &op,
                    items: outcome.items,
                    discovered: outcome.discovered,
                    failed: error.is_some(),
                    max_pages: prepared.settings.max_pages,
                },
            )
            .await
            .map_err(store_error)?;
        self.push(campaign, &recorded.admitted)
            .await
            .map_err(|e| JobError::new(format!("queue: {e:#}")))?;
        if recorded.new_items > 0 && !prepared.goals.is_empty() {
            let facts = self
                .store
                .facts(campaign, &prepared.goals)
                .await
                .map_err(store_error)?;
            if prepared.kind.goals_met(&prepared.goals, &facts) {
                self.finish(campaign, Status::Completed, GOALS_MET)
                    .await
                    .map_err(store_error)?;
            }
        }
        Ok(match error {
            Some(err) => json!({"error": err.to_string(), "kind": err.kind()}),
            None => json!({
                "items": found,
                "new_items": recorded.new_items,
                "admitted": recorded.admitted.len(),
            }),
        })
    }

    /// Ends a running campaign as `status` and stops its queue.
    pub async fn finish(&self, id: &str, status: Status, reason: &str) -> anyhow::Result<bool> {
        let from = [Status::Pending, Status::Running];
        let ended = self
            .store
            .transition(id, &from, status, Some(reason))
            .await?;
        if ended {
            tracing::info!(campaign = %id, status = status.as_str(), reason, "campaign ended");
            self.queue.set_paused(&queue_name(id), true).await?;
        }
        Ok(ended)
    }

    /// Serves campaign `id` until it ends or `shutdown`: holds a slot when
    /// one is free (waiting for one otherwise, or returning at once when
    /// `wait` is false), and runs a queue worker on its queue while it holds
    /// it. Returns whether this worker served it at all.
    pub async fn serve(
        self: &Arc<Self>,
        id: &str,
        worker_id: &str,
        wait: bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let mut served = false;
        while !shutdown.is_cancelled() {
            let Some(row) = self.store.get(id).await? else {
                anyhow::bail!("no campaign {id}");
            };
            let status = Status::parse(&row.status).unwrap_or(Status::Failed);
            if status.is_final() {
                break;
            }
            let max = row.max_workers.max(0) as u32;
            if status == Status::Paused || !self.slots.hold(id, worker_id, max).await? {
                if !wait {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(WAIT_FOR_SLOT) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            if status == Status::Pending {
                self.store
                    .transition(id, &[Status::Pending], Status::Running, None)
                    .await?;
            }
            served = true;
            self.serve_holding_slot(id, worker_id, shutdown).await?;
            let _ = self.slots.release(id, worker_id).await;
            if !wait {
                break;
            }
        }
        let _ = self.slots.release(id, worker_id).await;
        Ok(served)
    }

    /// Runs the queue worker while the slot holds and the campaign runs.
    async fn serve_holding_slot(
        self: &Arc<Self>,
        id: &str,
        worker_id: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let prepared = self.prepared(id).await.map_err(anyhow::Error::from)?;
        let stop = shutdown.child_token();
        let options = worker::WorkerOptions {
            queue: queue_name(id),
            concurrency: prepared.settings.concurrency as usize,
            lease: self.lease,
            worker_id: worker_id.to_string(),
            rate_limit_per_s: None,
        };
        tracing::info!(campaign = %id, worker = %worker_id, "serving campaign");
        let handler = Arc::new(CampaignJobs {
            campaigns: self.clone(),
        });
        let mut running = tokio::spawn(worker::run(
            self.queue.clone(),
            handler,
            options,
            stop.clone(),
        ));
        loop {
            tokio::select! {
                result = &mut running => {
                    result??;
                    return Ok(());
                }
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            if !self.keep_serving(id, worker_id).await {
                tracing::info!(campaign = %id, worker = %worker_id, "leaving campaign");
                stop.cancel();
            }
        }
    }

    /// Renews the slot and checks the campaign still runs; settles its
    /// lifecycle on the way (frontier empty means done).
    async fn keep_serving(&self, id: &str, worker_id: &str) -> bool {
        let row = match self.store.get(id).await {
            Ok(Some(row)) => row,
            Ok(None) => return false,
            Err(err) => {
                tracing::warn!(campaign = %id, "reading campaign: {err:#}");
                return true;
            }
        };
        if let Err(err) = self.settle(&row).await {
            tracing::warn!(campaign = %id, "settling campaign: {err:#}");
        }
        let status = Status::parse(&row.status).unwrap_or(Status::Failed);
        if !status.is_active() {
            return false;
        }
        let max = row.max_workers.max(0) as u32;
        match self.slots.hold(id, worker_id, max).await {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(campaign = %id, "renewing slot: {err:#}");
                true
            }
        }
    }

    /// Serves the active campaign with the highest priority that has a
    /// free slot, then the next, until `shutdown` (`--campaigns all`).
    pub async fn serve_any(
        self: &Arc<Self>,
        worker_id: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        while !shutdown.is_cancelled() {
            let mut served = false;
            for row in self.store.active().await? {
                if self.serve(&row.id, worker_id, false, shutdown).await? {
                    served = true;
                    break;
                }
            }
            if !served {
                tokio::select! {
                    _ = tokio::time::sleep(WAIT_FOR_SLOT) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
        Ok(())
    }
}

/// The job handler of campaign queues.
pub struct CampaignJobs {
    pub campaigns: Arc<Campaigns>,
}

#[async_trait]
impl JobHandler for CampaignJobs {
    fn queue(&self) -> &'static str {
        "campaign-*"
    }

    fn defaults(&self) -> QueueDefaults {
        QueueDefaults {
            max_attempts: super::OP_ATTEMPTS,
            backoff_ms: super::OP_BACKOFF_MS,
            concurrency: 4,
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        serde_json::from_value::<OpPayload>(payload.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn run(&self, job: &LeasedJob, _ctx: &JobContext) -> Result<Value, JobError> {
        self.campaigns.run_op(job).await
    }
}
