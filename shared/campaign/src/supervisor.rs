//! Lifecycle decisions every serving process may take (they are
//! conditional updates, so two processes deciding at once agree), the
//! per-campaign gauges, and in embedded mode the in-process workers.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{Campaigns, model::Status, queue_name, store::CampaignRow};
use orchestrator_core::metrics as m;
use orchestrator_queue::fleet;

/// How often the supervisor looks at every unfinished campaign.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Most stranded operations queued again per look.
const REQUEUE_BATCH: u64 = 10_000;

impl Campaigns {
    /// Completes a running campaign whose frontier is empty (failed when
    /// every operation failed), and queues again admitted operations whose
    /// push was lost (frontier not empty, queue empty).
    pub async fn settle(&self, row: &CampaignRow) -> anyhow::Result<()> {
        if row.status != Status::Running.as_str() {
            return Ok(());
        }
        let frontier = self.store.frontier(&row.id).await?;
        if frontier == 0 {
            let fresh = self
                .store
                .get(&row.id)
                .await?
                .unwrap_or_else(|| row.clone());
            if fresh.ops_done > 0 && fresh.errors == fresh.ops_done {
                self.finish(&row.id, Status::Failed, "every operation failed")
                    .await?;
            } else {
                self.finish(&row.id, Status::Completed, "frontier empty")
                    .await?;
            }
            self.forget(&row.id);
            return Ok(());
        }
        let counts = self.queue.counts(&queue_name(&row.id)).await?;
        if counts.pending + counts.running == 0 {
            let stranded = self.store.queued_ops(&row.id, REQUEUE_BATCH).await?;
            // Re-read: an operation may have finished between the two reads.
            if self.store.frontier(&row.id).await? > 0 && !stranded.is_empty() {
                tracing::info!(campaign = %row.id, count = stranded.len(), "queueing stranded operations again");
                self.push(&row.id, &stranded).await?;
            }
        }
        Ok(())
    }

    /// Sets every unfinished campaign's queue paused or not as its status
    /// says (a fresh Redis must learn it again).
    pub async fn resume_queues(&self) -> anyhow::Result<()> {
        for row in self.store.unfinished().await? {
            let active = Status::parse(&row.status).is_some_and(Status::is_active);
            self.queue.set_paused(&queue_name(&row.id), !active).await?;
        }
        Ok(())
    }

    /// Refreshes one campaign's gauges.
    async fn sample(&self, row: &CampaignRow) -> anyhow::Result<()> {
        let label = row.id.clone();
        metrics::gauge!(m::CAMPAIGN_ITEMS, "campaign" => label.clone()).set(row.items_found as f64);
        let frontier = self.store.frontier(&row.id).await?;
        metrics::gauge!(m::CAMPAIGN_FRONTIER, "campaign" => label.clone()).set(frontier as f64);
        let workers = self.slots.holders(&row.id).await?.len();
        metrics::gauge!(m::CAMPAIGN_WORKERS, "campaign" => label).set(workers as f64);
        Ok(())
    }

    /// Runs until `shutdown`: settles and samples every unfinished campaign
    /// each second and, when `in_process` (embedded mode), keeps as many
    /// in-process workers on each active campaign as it allows.
    pub fn supervise(self: &Arc<Self>, in_process: bool, shutdown: CancellationToken) {
        let campaigns = self.clone();
        let stop = shutdown.clone();
        orchestrator_core::supervise::spawn("campaign supervisor", shutdown, move || {
            campaigns.clone().supervise_loop(in_process, stop.clone())
        });
    }

    async fn supervise_loop(self: Arc<Self>, in_process: bool, shutdown: CancellationToken) {
        let mut local: HashMap<String, Arc<AtomicUsize>> = HashMap::new();
        loop {
            if let Err(err) = self.look(in_process, &mut local, &shutdown).await {
                tracing::warn!("campaign supervisor: {err:#}");
            }
            tokio::select! {
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn look(
        self: &Arc<Self>,
        in_process: bool,
        local: &mut HashMap<String, Arc<AtomicUsize>>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        for row in self.store.unfinished().await? {
            self.settle(&row).await?;
            self.sample(&row).await?;
            let status = Status::parse(&row.status).unwrap_or(Status::Failed);
            if in_process && status.is_active() {
                let count = local.entry(row.id.clone()).or_default().clone();
                self.top_up(&row, count, shutdown);
            }
        }
        Ok(())
    }

    /// Starts in-process workers until the campaign has `max_workers` here;
    /// each ends when it loses its slot or the campaign ends.
    fn top_up(
        self: &Arc<Self>,
        row: &CampaignRow,
        count: Arc<AtomicUsize>,
        shutdown: &CancellationToken,
    ) {
        let max = row.max_workers.max(0) as usize;
        while count.load(Ordering::SeqCst) < max {
            count.fetch_add(1, Ordering::SeqCst);
            let (campaigns, id, count, stop) = (
                self.clone(),
                row.id.clone(),
                count.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                let worker = fleet::worker_id("api-campaign");
                if let Err(err) = campaigns.serve(&id, &worker, false, &stop).await {
                    tracing::warn!(campaign = %id, "in-process campaign worker: {err:#}");
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}
