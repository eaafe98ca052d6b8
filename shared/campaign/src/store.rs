//! Campaigns in the store: the campaign rows, their frontiers (every URL
//! admitted, so none is fetched twice and none is dropped) and their
//! deduplicated results. Counters change by SQL arithmetic, so concurrent
//! workers never lose an update.

use std::collections::HashSet;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TryInsertResult,
    sea_query::{Expr, ExprTrait},
};

use super::{
    kinds::{Found, Op, OpKind},
    model::{Facts, Goals, Status},
};
use orchestrator_core::{
    now_ms,
    store::{
        campaign_entity as campaigns, campaign_result_entity as results,
        campaign_url_entity as urls,
    },
};

pub use campaigns::Model as CampaignRow;
pub use results::Model as ResultRow;

/// Most rows one insert statement carries (SQLite bounds bound variables).
const INSERT_CHUNK: usize = 500;

/// A campaign about to be stored.
pub struct NewCampaign {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub priority: i32,
    pub config: String,
    pub goals: String,
    pub max_workers: u32,
    pub max_memory_mb: Option<u32>,
}

/// What one finished operation changes.
pub struct Finished<'a> {
    pub op: &'a Op,
    pub items: Vec<Found>,
    pub discovered: Vec<Op>,
    pub failed: bool,
    pub max_pages: u32,
}

/// What recording an operation did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Items stored for the first time.
    pub new_items: u64,
    /// URLs admitted to the frontier for the first time, to be queued.
    pub admitted: Vec<Op>,
}

/// A results query.
#[derive(Debug, Default, Clone)]
pub struct ResultFilter {
    pub kind: Option<String>,
    pub syntax: Option<String>,
    pub url_prefix: Option<String>,
}

#[derive(Clone)]
pub struct CampaignStore {
    db: DatabaseConnection,
}

impl CampaignStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Stores a campaign and admits its seeds in one transaction.
    pub async fn create(&self, new: NewCampaign, seeds: &[Op]) -> anyhow::Result<CampaignRow> {
        let now = now_ms() as i64;
        let txn = orchestrator_core::store::begin_write(&self.db).await?;
        let row = campaigns::ActiveModel {
            id: Set(new.id.clone()),
            name: Set(new.name),
            kind: Set(new.kind),
            status: Set(Status::Pending.as_str().into()),
            priority: Set(new.priority),
            config: Set(new.config),
            goals: Set(new.goals),
            max_workers: Set(new.max_workers as i32),
            max_memory_mb: Set(new.max_memory_mb.map(|m| m as i32)),
            ops_done: Set(0),
            items_found: Set(0),
            errors: Set(0),
            admitted: Set(seeds.len() as i64),
            goals_met: Set(false),
            reason: Set(None),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            started_at_ms: Set(None),
            finished_at_ms: Set(None),
        };
        campaigns::Entity::insert(row).exec(&txn).await?;
        insert_urls(&txn, &new.id, None, seeds).await?;
        txn.commit().await?;
        self.get(&new.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("campaign {} vanished after insert", new.id))
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<Option<CampaignRow>> {
        Ok(campaigns::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// The newest campaigns first, optionally only those in `status`.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: u64,
    ) -> anyhow::Result<Vec<CampaignRow>> {
        let mut query = campaigns::Entity::find();
        if let Some(status) = status {
            query = query.filter(campaigns::Column::Status.eq(status.as_str()));
        }
        Ok(query
            .order_by_desc(campaigns::Column::CreatedAtMs)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Campaigns workers may serve, highest priority first, then oldest.
    pub async fn active(&self) -> anyhow::Result<Vec<CampaignRow>> {
        Ok(campaigns::Entity::find()
            .filter(
                campaigns::Column::Status
                    .is_in([Status::Pending.as_str(), Status::Running.as_str()]),
            )
            .order_by_desc(campaigns::Column::Priority)
            .order_by_asc(campaigns::Column::CreatedAtMs)
            .all(&self.db)
            .await?)
    }

    /// Campaigns not yet ended (active or paused).
    pub async fn unfinished(&self) -> anyhow::Result<Vec<CampaignRow>> {
        Ok(campaigns::Entity::find()
            .filter(campaigns::Column::Status.is_in([
                Status::Pending.as_str(),
                Status::Running.as_str(),
                Status::Paused.as_str(),
            ]))
            .all(&self.db)
            .await?)
    }

    /// Moves a campaign to `to` if it is in one of `from`; `false` when it
    /// was not (another request or worker moved it first).
    pub async fn transition(
        &self,
        id: &str,
        from: &[Status],
        to: Status,
        reason: Option<&str>,
    ) -> anyhow::Result<bool> {
        let now = now_ms() as i64;
        let mut update = campaigns::Entity::update_many()
            .col_expr(campaigns::Column::Status, Expr::value(to.as_str()))
            .col_expr(campaigns::Column::UpdatedAtMs, Expr::value(now));
        if to == Status::Running {
            update = update.col_expr(
                campaigns::Column::StartedAtMs,
                Expr::col(campaigns::Column::StartedAtMs).if_null(now),
            );
        }
        if to.is_final() {
            update = update
                .col_expr(campaigns::Column::FinishedAtMs, Expr::value(now))
                .col_expr(
                    campaigns::Column::Reason,
                    Expr::value(reason.map(str::to_string)),
                );
        }
        if to == Status::Completed && reason == Some(GOALS_MET) {
            update = update.col_expr(campaigns::Column::GoalsMet, Expr::value(true));
        }
        let done = update
            .filter(campaigns::Column::Id.eq(id))
            .filter(campaigns::Column::Status.is_in(from.iter().map(|s| s.as_str())))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected == 1)
    }

    /// Sets how many workers may serve the campaign.
    pub async fn set_max_workers(&self, id: &str, workers: u32) -> anyhow::Result<bool> {
        let done = campaigns::Entity::update_many()
            .col_expr(campaigns::Column::MaxWorkers, Expr::value(workers as i32))
            .col_expr(campaigns::Column::UpdatedAtMs, Expr::value(now_ms() as i64))
            .filter(campaigns::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected == 1)
    }

    /// Whether an operation already finished (a duplicate delivery).
    pub async fn is_done(&self, campaign: &str, url_key: &str) -> anyhow::Result<bool> {
        let row = urls::Entity::find_by_id((campaign.to_string(), url_key.to_string()))
            .one(&self.db)
            .await?;
        Ok(row.is_some_and(|r| r.state == URL_DONE))
    }

    /// Records a finished operation in one transaction: its items
    /// (deduplicated), the URLs it discovered (deduplicated, within
    /// `max_pages`), the counters, and the operation itself as done.
    pub async fn record(&self, campaign: &str, finished: Finished<'_>) -> anyhow::Result<Recorded> {
        let now = now_ms() as i64;
        let txn = orchestrator_core::store::begin_write(&self.db).await?;
        // Writing the campaign row first serialises concurrent recorders of
        // one campaign (a row lock on PostgreSQL, the write lock on SQLite),
        // so the page budget below is never overrun.
        campaigns::Entity::update_many()
            .col_expr(
                campaigns::Column::OpsDone,
                Expr::col(campaigns::Column::OpsDone).add(1),
            )
            .col_expr(
                campaigns::Column::Errors,
                Expr::col(campaigns::Column::Errors).add(i64::from(finished.failed)),
            )
            .col_expr(campaigns::Column::UpdatedAtMs, Expr::value(now))
            .filter(campaigns::Column::Id.eq(campaign))
            .exec(&txn)
            .await?;
        let op_key = finished.op.key();
        let new_items =
            insert_results(&txn, campaign, finished.op, &op_key, finished.items).await?;
        let admitted_so_far = campaigns::Entity::find_by_id(campaign)
            .one(&txn)
            .await?
            .map_or(0, |row| row.admitted);
        let room = std::cmp::max(i64::from(finished.max_pages) - admitted_so_far, 0) as usize;
        let admitted = admit(&txn, campaign, &op_key, finished.discovered, room).await?;
        campaigns::Entity::update_many()
            .col_expr(
                campaigns::Column::Admitted,
                Expr::col(campaigns::Column::Admitted).add(admitted.len() as i64),
            )
            .col_expr(
                campaigns::Column::ItemsFound,
                Expr::col(campaigns::Column::ItemsFound).add(new_items as i64),
            )
            .filter(campaigns::Column::Id.eq(campaign))
            .exec(&txn)
            .await?;
        urls::Entity::update_many()
            .col_expr(urls::Column::State, Expr::value(URL_DONE))
            .col_expr(urls::Column::UpdatedAtMs, Expr::value(now))
            .filter(urls::Column::CampaignId.eq(campaign))
            .filter(urls::Column::UrlKey.eq(op_key))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(Recorded {
            new_items,
            admitted,
        })
    }

    /// Admitted URLs not yet done.
    pub async fn frontier(&self, campaign: &str) -> anyhow::Result<i64> {
        Ok(urls::Entity::find()
            .filter(urls::Column::CampaignId.eq(campaign))
            .filter(urls::Column::State.eq(URL_QUEUED))
            .count(&self.db)
            .await? as i64)
    }

    /// Up to `limit` admitted URLs not yet done, to queue again.
    pub async fn queued_ops(&self, campaign: &str, limit: u64) -> anyhow::Result<Vec<Op>> {
        let rows = urls::Entity::find()
            .filter(urls::Column::CampaignId.eq(campaign))
            .filter(urls::Column::State.eq(URL_QUEUED))
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().filter_map(op_of_row).collect())
    }

    /// What the goals are measured against.
    pub async fn facts(&self, campaign: &str, goals: &Goals) -> anyhow::Result<Facts> {
        let mut facts = Facts {
            items: results::Entity::find()
                .filter(results::Column::CampaignId.eq(campaign))
                .count(&self.db)
                .await?,
            ..Facts::default()
        };
        if goals.min_sites.is_some() {
            let sites: Option<i64> = results::Entity::find()
                .select_only()
                .column_as(Expr::col(results::Column::Host).count_distinct(), "sites")
                .filter(results::Column::CampaignId.eq(campaign))
                .into_tuple()
                .one(&self.db)
                .await?;
            facts.sites = u64::try_from(sites.unwrap_or(0)).unwrap_or(0);
        }
        if !goals.schema_types.is_empty() {
            let found: Vec<String> = results::Entity::find()
                .select_only()
                .column(results::Column::Kind)
                .distinct()
                .filter(results::Column::CampaignId.eq(campaign))
                .filter(results::Column::Kind.is_in(goals.schema_types.iter().cloned()))
                .into_tuple()
                .all(&self.db)
                .await?;
            facts.kinds_found = found.into_iter().collect();
        }
        Ok(facts)
    }

    /// Results after id `after`, oldest first.
    pub async fn results(
        &self,
        campaign: &str,
        filter: &ResultFilter,
        after: i64,
        limit: u64,
    ) -> anyhow::Result<Vec<ResultRow>> {
        let mut condition = Condition::all()
            .add(results::Column::CampaignId.eq(campaign))
            .add(results::Column::Id.gt(after));
        if let Some(kind) = &filter.kind {
            condition = condition.add(results::Column::Kind.eq(kind.as_str()));
        }
        if let Some(syntax) = &filter.syntax {
            condition = condition.add(results::Column::Syntax.eq(syntax.as_str()));
        }
        if let Some(prefix) = &filter.url_prefix {
            condition = condition.add(results::Column::Url.starts_with(prefix.as_str()));
        }
        Ok(results::Entity::find()
            .filter(condition)
            .order_by_asc(results::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

/// The reason a campaign that met its goals completed with.
pub const GOALS_MET: &str = "goals met";
const URL_QUEUED: &str = "queued";
const URL_DONE: &str = "done";

fn op_of_row(row: urls::Model) -> Option<Op> {
    Some(Op {
        url: url::Url::parse(&row.url).ok()?,
        kind: OpKind::parse(&row.kind)?,
        depth: std::cmp::max(row.depth, 0) as u32,
    })
}

async fn insert_urls(
    txn: &DatabaseTransaction,
    campaign: &str,
    parent: Option<&str>,
    ops: &[Op],
) -> anyhow::Result<Vec<Op>> {
    let mut admitted = Vec::new();
    let now = now_ms() as i64;
    for chunk in ops.chunks(INSERT_CHUNK) {
        let rows = chunk.iter().map(|op| urls::ActiveModel {
            campaign_id: Set(campaign.to_string()),
            url_key: Set(op.key()),
            url: Set(op.url.to_string()),
            kind: Set(op.kind.as_str().to_string()),
            depth: Set(op.depth as i32),
            parent_key: Set(parent.map(str::to_string)),
            state: Set(URL_QUEUED.to_string()),
            updated_at_ms: Set(now),
        });
        let inserted = urls::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([urls::Column::CampaignId, urls::Column::UrlKey])
            .exec_with_returning_keys(txn)
            .await?;
        if let TryInsertResult::Inserted(keys) = inserted {
            let keys: HashSet<String> = keys.into_iter().map(|(_, key)| key).collect();
            admitted.extend(chunk.iter().filter(|op| keys.contains(&op.key())).cloned());
        }
    }
    Ok(admitted)
}

/// Admits up to `room` of `candidates` not admitted before.
async fn admit(
    txn: &DatabaseTransaction,
    campaign: &str,
    parent: &str,
    mut candidates: Vec<Op>,
    mut room: usize,
) -> anyhow::Result<Vec<Op>> {
    let mut seen = HashSet::new();
    candidates.retain(|op| seen.insert(op.key()));
    let mut admitted = Vec::new();
    let mut rest = candidates.as_slice();
    // Some candidates may be known already, so admit in rounds until the
    // budget or the candidates run out.
    while room > 0 && !rest.is_empty() {
        let take = room.min(rest.len());
        let new = insert_urls(txn, campaign, Some(parent), &rest[..take]).await?;
        room -= new.len();
        admitted.extend(new);
        rest = &rest[take..];
    }
    Ok(admitted)
}

async fn insert_results(
    txn: &DatabaseTransaction,
    campaign: &str,
    op: &Op,
    op_key: &str,
    items: Vec<Found>,
) -> anyhow::Result<u64> {
    let now = now_ms() as i64;
    let mut inserted = 0;
    for chunk in items.chunks(INSERT_CHUNK) {
        let rows = chunk.iter().map(|item| results::ActiveModel {
            campaign_id: Set(campaign.to_string()),
            url_key: Set(op_key.to_string()),
            url: Set(op.url.to_string()),
            host: Set(op
                .url
                .host_str()
                .unwrap_or_default()
                .chars()
                .take(255)
                .collect()),
            item_key: Set(item.key.clone()),
            kind: Set(item.kind.chars().take(128).collect()),
            syntax: Set(item.syntax.to_string()),
            data: Set(item.data.to_string()),
            found_at_ms: Set(now),
            ..Default::default()
        });
        let done = results::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([
                results::Column::CampaignId,
                results::Column::UrlKey,
                results::Column::ItemKey,
            ])
            .exec_without_returning(txn)
            .await?;
        if let TryInsertResult::Inserted(n) = done {
            inserted += n;
        }
    }
    Ok(inserted)
}
