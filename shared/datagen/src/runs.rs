//! Generation runs over the fleet: a run is a row and one job per shard on
//! the `datagen` queue, served by any worker. A shard job writes its shard
//! (gzipped lines and dedup keys) into the store once, whoever runs it and
//! however often; the last shard in settles the run. The export streams the
//! shards in order, dropping repeats across shards as it goes.

use std::{
    collections::{BTreeMap, HashSet},
    io::{Read, Write},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use orchestrator_core::{
    metrics as m, now_ms,
    store::{
        self as store, dataset_entity as datasets, dataset_material_entity as materials,
        dataset_shard_entity as shards,
    },
};
use orchestrator_models::Models;
use orchestrator_queue::{
    JobContext, JobError, JobHandler, LeasedJob, NewJob, QueueBackend, QueueDefaults,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{
    Candidate, Filters, Format, Input, Inputs, Plan, PlanError, Shard, SourceWeight, What, llm,
    snapshot::{self, SnapshotError},
    sources::{self, Material},
};

/// The queue shard jobs wait in.
pub const DATAGEN_QUEUE: &str = "datagen";

/// `POST /api/v1/datasets`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetRequest {
    pub name: String,
    /// Examples to generate (1 to 10,000,000).
    pub count: u64,
    /// The mix of sources (default: `synthetic` alone).
    #[serde(default = "default_sources")]
    pub sources: Vec<SourceWeight>,
    #[serde(default)]
    pub format: Format,
    /// The same seed and settings give the same dataset.
    #[serde(default)]
    pub seed: u64,
    /// Share of examples held out for evaluation (0 to 0.5, default 0.05).
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Examples per shard job (1 to 100,000, default 10,000).
    #[serde(default = "default_shard_size")]
    pub shard_size: u64,
    #[serde(default)]
    pub filters: Filters,
}

fn default_sources() -> Vec<SourceWeight> {
    vec![SourceWeight {
        source: "synthetic".into(),
        weight: 1.0,
        ..Default::default()
    }]
}

fn default_eval_fraction() -> f64 {
    0.05
}

fn default_shard_size() -> u64 {
    10_000
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatasetView {
    pub id: String,
    pub name: String,
    /// `running`, `completed` or `cancelled`.
    pub status: String,
    pub plan: Plan,
    pub shards_total: u64,
    pub shards_done: u64,
    /// Share of shards done, 0 to 1.
    pub progress: f64,
    /// Examples kept so far (before repeats across shards are dropped,
    /// which `summary` counts once the run is complete).
    pub kept: u64,
    /// Examples dropped, by filter.
    pub dropped: BTreeMap<String, u64>,
    /// Examples kept by source.
    pub sources: BTreeMap<String, u64>,
    /// Examples kept by task family: the patterns the run produced.
    pub families: BTreeMap<String, u64>,
    /// Examples kept per second since the run started.
    pub examples_per_s: f64,
    /// Tokens the `llm` source spent (prompt and completion, every call).
    pub llm_tokens: u64,
    /// Tokens per second of model time, over the shards done.
    pub llm_tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    pub created_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

/// What a complete run holds once repeats across shards are dropped.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    pub train: u64,
    pub eval: u64,
    pub duplicates_across_shards: u64,
}

/// Why a run could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Invalid(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for DatasetError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Store(err.into())
    }
}

impl From<SnapshotError> for DatasetError {
    fn from(err: SnapshotError) -> Self {
        match err {
            SnapshotError::Invalid(invalid) => Self::Invalid(invalid),
            SnapshotError::Store(err) => Self::Store(err.into()),
        }
    }
}

/// The counts a shard records beside its lines.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ShardCounts {
    train: u64,
    dropped: BTreeMap<String, u64>,
    sources: BTreeMap<String, u64>,
    families: BTreeMap<String, u64>,
    /// Tokens the `llm` source spent, and the seconds its calls took.
    #[serde(default)]
    llm_tokens: u64,
    #[serde(default)]
    llm_seconds: f64,
}

/// Generation runs: created here, generated by [`ShardJob`]s.
pub struct Datasets {
    db: DatabaseConnection,
    queue: Arc<dyn QueueBackend>,
    models: Arc<Models>,
}

impl Datasets {
    pub fn new(db: DatabaseConnection, queue: Arc<dyn QueueBackend>, models: Arc<Models>) -> Self {
        Self { db, queue, models }
    }

    /// Checks the request, stores the run and queues one job per shard.
    pub async fn create(&self, request: DatasetRequest) -> Result<DatasetView, DatasetError> {
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(PlanError {
                field: "name",
                message: "must be 1 to 128 characters, no control characters".into(),
            }
            .into());
        }
        let plan = Plan {
            count: request.count,
            shard_size: request.shard_size,
            seed: request.seed,
            eval_fraction: request.eval_fraction,
            format: request.format,
            filters: request.filters,
            sources: request.sources,
        };
        plan.check()?;
        let mut taken = Vec::new();
        for (index, entry) in plan.sources.iter().enumerate() {
            if let Some(material) = snapshot::take(&self.db, &self.models, entry).await? {
                taken.push((index, material));
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms() as i64;
        let txn = store::begin_write(&self.db).await?;
        datasets::Entity::insert(datasets::ActiveModel {
            id: Set(id.clone()),
            name: Set(name.to_string()),
            status: Set("running".into()),
            plan: Set(serde_json::to_string(&plan).map_err(anyhow::Error::from)?),
            shards_total: Set(plan.shards() as i32),
            summary: Set(None),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            finished_at_ms: Set(None),
        })
        .exec(&txn)
        .await?;
        for (index, material) in taken {
            let records = material.records.len() as i32;
            let data = tokio::task::spawn_blocking(move || {
                gzip(&serde_json::to_vec(&material).expect("records to JSON"))
            })
            .await
            .map_err(anyhow::Error::from)?
            .map_err(anyhow::Error::from)?;
            materials::Entity::insert(materials::ActiveModel {
                dataset_id: Set(id.clone()),
                source: Set(index as i32),
                records: Set(records),
                data: Set(data),
            })
            .exec(&txn)
            .await?;
        }
        txn.commit().await?;
        self.queue_shards(&id, plan.shards()).await?;
        Ok(self.view(&id).await?.expect("the run just stored"))
    }

    /// One job per shard; pushes are idempotent per (run, shard).
    async fn queue_shards(&self, id: &str, shards: u64) -> anyhow::Result<()> {
        let jobs: Vec<NewJob> = (0..shards)
            .map(|shard| NewJob {
                queue: DATAGEN_QUEUE.into(),
                payload: json!({"dataset": id, "shard": shard}),
                priority: 0,
                max_attempts: 5,
                backoff_ms: 1_000,
                idempotency_key: Some(format!("datagen:{id}:{shard}")),
                delay_ms: 0,
                concurrency_key: None,
                callback_url: None,
            })
            .collect();
        for chunk in jobs.chunks(1_000) {
            self.queue.push(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// The latest 100 runs, newest first.
    pub async fn list(&self) -> Result<Vec<DatasetView>, DatasetError> {
        self.views(None).await
    }

    /// The runs under way (status asks every second: only these).
    pub async fn running(&self) -> Result<Vec<DatasetView>, DatasetError> {
        self.views(Some("running")).await
    }

    pub async fn exists(&self, id: &str) -> Result<bool, DatasetError> {
        let found = datasets::Entity::find_by_id(id)
            .select_only()
            .column(datasets::Column::Id)
            .into_tuple::<String>()
            .one(&self.db)
            .await?;
        Ok(found.is_some())
    }

    async fn views(&self, status: Option<&str>) -> Result<Vec<DatasetView>, DatasetError> {
        let mut query = datasets::Entity::find();
        if let Some(status) = status {
            query = query.filter(datasets::Column::Status.eq(status));
        }
        let rows = query
            .order_by_desc(datasets::Column::CreatedAtMs)
            .limit(100)
            .all(&self.db)
            .await?;
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            views.push(self.view_of(row).await?);
        }
        Ok(views)
    }

    pub async fn view(&self, id: &str) -> Result<Option<DatasetView>, DatasetError> {
        match datasets::Entity::find_by_id(id).one(&self.db).await? {
            Some(row) => Ok(Some(self.view_of(row).await?)),
            None => Ok(None),
        }
    }

    async fn view_of(&self, row: datasets::Model) -> Result<DatasetView, DatasetError> {
        let plan: Plan = serde_json::from_str(&row.plan).map_err(anyhow::Error::from)?;
        let done: Vec<(i64, String)> = shards::Entity::find()
            .select_only()
            .column(shards::Column::Kept)
            .column(shards::Column::Counts)
            .filter(shards::Column::DatasetId.eq(&row.id))
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut view = DatasetView {
            id: row.id,
            name: row.name,
            status: row.status,
            shards_total: row.shards_total as u64,
            shards_done: done.len() as u64,
            progress: done.len() as f64 / row.shards_total.max(1) as f64,
            kept: 0,
            dropped: BTreeMap::new(),
            sources: BTreeMap::new(),
            families: BTreeMap::new(),
            examples_per_s: 0.0,
            llm_tokens: 0,
            llm_tokens_per_s: 0.0,
            summary: row
                .summary
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            created_at_ms: row.created_at_ms as u64,
            finished_at_ms: row.finished_at_ms.map(|ms| ms as u64),
            plan,
        };
        let mut llm_seconds = 0.0;
        for (kept, counts) in done {
            view.kept += kept as u64;
            let counts: ShardCounts = serde_json::from_str(&counts).unwrap_or_default();
            view.llm_tokens += counts.llm_tokens;
            llm_seconds += counts.llm_seconds;
            add(&mut view.dropped, counts.dropped);
            add(&mut view.sources, counts.sources);
            add(&mut view.families, counts.families);
        }
        let until = view.finished_at_ms.unwrap_or_else(now_ms);
        let seconds = until.saturating_sub(view.created_at_ms) as f64 / 1000.0;
        view.examples_per_s = view.kept as f64 / seconds.max(0.001);
        if llm_seconds > 0.0 {
            view.llm_tokens_per_s = view.llm_tokens as f64 / llm_seconds;
        }
        Ok(view)
    }

    /// Stops a running run: shards not yet generated are skipped; those
    /// done stay. `None` when there is no such run.
    pub async fn cancel(&self, id: &str) -> Result<Option<DatasetView>, DatasetError> {
        finish(&self.db, id, "cancelled", None).await?;
        self.view(id).await
    }

    /// Removes a run and its shards; false when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, DatasetError> {
        let found = datasets::Entity::delete_by_id(id).exec(&self.db).await?;
        shards::Entity::delete_many()
            .filter(shards::Column::DatasetId.eq(id))
            .exec(&self.db)
            .await?;
        materials::Entity::delete_many()
            .filter(materials::Column::DatasetId.eq(id))
            .exec(&self.db)
            .await?;
        Ok(found.rows_affected > 0)
    }

    /// The lines of `split`, shard by shard in order, each repeat of an
    /// earlier line (train lines come first) left out. Sent into `out` a
    /// shard at a time, so a run of any size streams in bounded memory
    /// (besides 8 bytes per line of dedup keys).
    pub async fn export(
        &self,
        id: &str,
        split: Split,
        out: tokio::sync::mpsc::Sender<anyhow::Result<Vec<u8>>>,
    ) -> anyhow::Result<()> {
        let Some(run) = datasets::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(());
        };
        let dedup = serde_json::from_str::<Plan>(&run.plan)?.filters.dedup;
        let mut seen = HashSet::new();
        if split == Split::Eval && dedup {
            // Train lines come first: only their keys are needed, not the lines.
            for (train, keys) in shard_keys(&self.db, id).await? {
                seen.extend(keys.into_iter().take(train));
            }
        }
        for shard in 0..run.shards_total {
            let Some((train, lines, keys)) = self.shard_lines(id, shard, split).await? else {
                continue;
            };
            let keys = match split {
                Split::Train => &keys[..train],
                Split::Eval => &keys[train..],
            };
            let mut chunk = Vec::with_capacity(lines.len());
            for (line, key) in lines.split_inclusive(|b| *b == b'\n').zip(keys) {
                if !dedup || seen.insert(*key) {
                    chunk.extend_from_slice(line);
                }
            }
            if out.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Up to `limit` (prompt, answer) pairs of `split`, in export order.
    /// `None` when there is no such run.
    pub async fn pairs(
        &self,
        id: &str,
        split: Split,
        limit: usize,
    ) -> anyhow::Result<Option<Vec<(String, String)>>> {
        let Some(run) = datasets::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        let format = serde_json::from_str::<Plan>(&run.plan)?.format;
        let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
        let export = self.export(id, split, sender);
        // Moved in: once the limit is reached, the receiver is dropped with
        // this future, which ends the export.
        let read = async move {
            let mut pairs = Vec::new();
            while let Some(chunk) = receiver.recv().await {
                for line in chunk?.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if pairs.len() == limit {
                        return Ok(pairs);
                    }
                    pairs.extend(format.parse(line));
                }
            }
            anyhow::Ok(pairs)
        };
        let (exported, pairs) = tokio::join!(export, read);
        exported?;
        Ok(Some(pairs?))
    }

    /// A shard's train line count, the lines of `split` and every key.
    async fn shard_lines(
        &self,
        id: &str,
        shard: i32,
        split: Split,
    ) -> anyhow::Result<Option<(usize, Vec<u8>, Vec<u64>)>> {
        let column = match split {
            Split::Train => shards::Column::Train,
            Split::Eval => shards::Column::Eval,
        };
        let row: Option<(String, Vec<u8>, Vec<u8>)> = shards::Entity::find()
            .select_only()
            .column(shards::Column::Counts)
            .column(column)
            .column(shards::Column::Keys)
            .filter(shards::Column::DatasetId.eq(id))
            .filter(shards::Column::Shard.eq(shard))
            .into_tuple()
            .one(&self.db)
            .await?;
        let Some((counts, gzipped, keys)) = row else {
            return Ok(None);
        };
        let train = serde_json::from_str::<ShardCounts>(&counts)?.train as usize;
        let lines = tokio::task::spawn_blocking(move || gunzip(&gzipped)).await??;
        Ok(Some((train, lines, decode_keys(&keys))))
    }
}

fn add(total: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) {
    for (name, count) in more {
        *total.entry(name).or_default() += count;
    }
}

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Eval,
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    encoder.write_all(bytes)?;
    encoder.finish()
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn encode_keys(keys: impl Iterator<Item = u64>) -> Vec<u8> {
    keys.flat_map(u64::to_le_bytes).collect()
}

fn decode_keys(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
        .collect()
}

/// The `datagen` queue's handler: generates one shard of one run.
pub struct ShardJob {
    db: DatabaseConnection,
    models: Arc<Models>,
    /// The inputs of the runs this worker generated for lately: a run's
    /// snapshots are read once, not once per shard.
    inputs: Mutex<Vec<(String, Arc<Inputs>)>>,
}

/// Runs whose inputs a worker keeps at once.
const INPUTS_KEPT: usize = 4;

impl ShardJob {
    pub fn new(db: DatabaseConnection, models: Arc<Models>) -> Self {
        Self {
            db,
            models,
            inputs: Mutex::new(Vec::new()),
        }
    }

    /// Generates and stores `shard` of `run` unless it is already stored.
    async fn generate(&self, run: &datasets::Model, shard: u64) -> anyhow::Result<Value> {
        let stored = shards::Entity::find_by_id((run.id.clone(), shard as i32))
            .select_only()
            .column(shards::Column::Shard)
            .into_tuple::<i32>()
            .one(&self.db)
            .await?;
        if stored.is_some() {
            metrics::counter!(m::DATAGEN_SHARDS, "outcome" => "skipped").increment(1);
            return Ok(json!({"shard": shard, "already": true}));
        }
        let plan: Plan = serde_json::from_str(&run.plan)?;
        let inputs = self.inputs_of(&run.id, &plan).await?;
        let (made, budget) = match plan.sources.iter().any(|s| s.source == "llm") {
            true => self.generate_with_models(&plan, shard, &inputs).await,
            false => {
                let made =
                    tokio::task::spawn_blocking(move || plan.generate(shard, &inputs)).await?;
                (made, None)
            }
        };
        let (row, made) = tokio::task::spawn_blocking(move || {
            encode(&made, budget.as_ref()).map(|row| (row, made))
        })
        .await??;
        let kept = made.kept;
        shards::Entity::insert(shards::ActiveModel {
            dataset_id: Set(run.id.clone()),
            shard: Set(shard as i32),
            created_at_ms: Set(now_ms() as i64),
            ..row
        })
        // Another delivery of this job may have stored it meanwhile: the
        // same examples, so the first one stays.
        .on_conflict_do_nothing_on([shards::Column::DatasetId, shards::Column::Shard])
        .exec(&self.db)
        .await?;
        for (source, count) in &made.sources {
            metrics::counter!(m::DATAGEN_EXAMPLES, "source" => source.clone()).increment(*count);
        }
        metrics::counter!(m::DATAGEN_SHARDS, "outcome" => "done").increment(1);
        self.settle(&run.id, run.shards_total).await?;
        Ok(json!({"shard": shard, "kept": kept}))
    }

    /// A shard with an `llm` source: the model writes those examples, one
    /// at a time within the shard's share of the token budget.
    async fn generate_with_models(
        &self,
        plan: &Plan,
        shard: u64,
        inputs: &Inputs,
    ) -> (Shard, Option<llm::Budget>) {
        let draws = plan.draws(shard, inputs);
        let mut budgets: BTreeMap<usize, llm::Budget> = BTreeMap::new();
        let mut candidates = Vec::with_capacity(draws.len());
        for draw in draws {
            let candidate = match draw.what {
                What::Example(example) => Candidate::Example(draw.eval, example),
                What::Ask { source, seed } => {
                    let entry = &plan.sources[source];
                    let budget = budgets
                        .entry(source)
                        .or_insert_with(|| llm::Budget::share(entry, plan.shards()));
                    llm::write(&self.models, entry, seed, draw.eval, budget).await
                }
            };
            candidates.push(candidate);
        }
        let spent = budgets.into_values().reduce(|mut all, one| {
            all.spent += one.spent;
            all.seconds += one.seconds;
            all
        });
        (plan.filter(candidates), spent)
    }

    /// What `plan`'s sources draw from: snapshots read from the store once
    /// per run and kept for the next shards.
    async fn inputs_of(&self, id: &str, plan: &Plan) -> anyhow::Result<Arc<Inputs>> {
        if let Some((_, inputs)) = self
            .inputs
            .lock()
            .expect("inputs")
            .iter()
            .find(|(run, _)| run == id)
        {
            return Ok(inputs.clone());
        }
        let rows = materials::Entity::find()
            .filter(materials::Column::DatasetId.eq(id))
            .all(&self.db)
            .await?;
        let mut snapshots: BTreeMap<usize, Material> = BTreeMap::new();
        for row in rows {
            let material = tokio::task::spawn_blocking(move || -> anyhow::Result<Material> {
                Ok(serde_json::from_slice(&gunzip(&row.data)?)?)
            })
            .await??;
            snapshots.insert(row.source as usize, material);
        }
        let mut sources = Vec::with_capacity(plan.sources.len());
        for (index, entry) in plan.sources.iter().enumerate() {
            let mut material = || {
                snapshots.remove(&index).ok_or_else(|| {
                    anyhow::anyhow!("the run's {} snapshot is missing", entry.source)
                })
            };
            sources.push(match entry.source.as_str() {
                "llm" => Input::Llm,
                "campaign" => Input::Ready(Box::new(sources::Campaign(material()?))),
                "context_pack" => Input::Ready(Box::new(sources::ContextPack(material()?))),
                "workflows" | "feedback" => Input::Ready(Box::new(sources::Answered {
                    source: if entry.source == "workflows" {
                        "workflows"
                    } else {
                        "feedback"
                    },
                    material: material()?,
                })),
                _ => Input::Ready(Box::new(sources::Synthetic)),
            });
        }
        let inputs = Arc::new(Inputs { sources });
        let mut kept = self.inputs.lock().expect("inputs");
        kept.push((id.to_string(), inputs.clone()));
        if kept.len() > INPUTS_KEPT {
            kept.remove(0);
        }
        Ok(inputs)
    }

    /// Once every shard is in: counts the repeats across shards (train
    /// first, as the export drops them) and completes the run.
    async fn settle(&self, id: &str, total: i32) -> anyhow::Result<()> {
        // A count first: the keys are read only once, by the last shard in.
        let stored = shards::Entity::find()
            .filter(shards::Column::DatasetId.eq(id))
            .count(&self.db)
            .await?;
        if stored < total as u64 {
            return Ok(());
        }
        let keys = shard_keys(&self.db, id).await?;
        let summary = tokio::task::spawn_blocking(move || summarize(&keys)).await?;
        let summary = serde_json::to_string(&summary)?;
        finish(&self.db, id, "completed", Some(summary)).await?;
        Ok(())
    }
}

/// Ends a run that is still running as `status` (one already ended keeps
/// how it ended), with its summary when it has one.
async fn finish(
    db: &DatabaseConnection,
    id: &str,
    status: &str,
    summary: Option<String>,
) -> Result<(), sea_orm::DbErr> {
    let now = now_ms() as i64;
    let mut update = datasets::Entity::update_many()
        .col_expr(datasets::Column::Status, status.into())
        .col_expr(datasets::Column::UpdatedAtMs, now.into())
        .col_expr(datasets::Column::FinishedAtMs, Some(now).into());
    if let Some(summary) = summary {
        update = update.col_expr(datasets::Column::Summary, Some(summary).into());
    }
    update
        .filter(datasets::Column::Id.eq(id))
        .filter(datasets::Column::Status.eq("running"))
        .exec(db)
        .await?;
    Ok(())
}

/// A generated shard as its store row (without its ids).
fn encode(shard: &Shard, spent: Option<&llm::Budget>) -> anyhow::Result<shards::ActiveModel> {
    let counts = ShardCounts {
        train: shard.train_keys.len() as u64,
        dropped: shard.dropped.clone(),
        sources: shard.sources.clone(),
        families: shard.families.clone(),
        llm_tokens: spent.map_or(0, |b| b.spent),
        llm_seconds: spent.map_or(0.0, |b| b.seconds),
    };
    let keys = encode_keys(shard.train_keys.iter().chain(&shard.eval_keys).copied());
    Ok(shards::ActiveModel {
        kept: Set(shard.kept as i64),
        counts: Set(serde_json::to_string(&counts)?),
        train: Set(gzip(&shard.train)?),
        eval: Set(gzip(&shard.eval)?),
        keys: Set(keys),
        ..Default::default()
    })
}

/// Every stored shard's train line count and dedup keys (train keys
/// first), in shard order.
async fn shard_keys(db: &DatabaseConnection, id: &str) -> anyhow::Result<Vec<(usize, Vec<u64>)>> {
    let rows: Vec<(String, Vec<u8>)> = shards::Entity::find()
        .select_only()
        .column(shards::Column::Counts)
        .column(shards::Column::Keys)
        .filter(shards::Column::DatasetId.eq(id))
        .order_by_asc(shards::Column::Shard)
        .into_tuple()
        .all(db)
        .await?;
    rows.iter()
        .map(|(counts, keys)| {
            let counts: ShardCounts = serde_json::from_str(counts)?;
            Ok((counts.train as usize, decode_keys(keys)))
        })
        .collect()
}

/// Train and eval lines left once repeats across shards are dropped.
fn summarize(shards: &[(usize, Vec<u64>)]) -> Summary {
    let mut seen = HashSet::new();
    let (mut train, mut eval, mut repeats) = (0, 0, 0);
    // Train lines of every shard first, then eval lines, as the export.
    for eval_pass in [false, true] {
        for (train_lines, keys) in shards {
            let part = match eval_pass {
                false => &keys[..*train_lines],
                true => &keys[*train_lines..],
            };
            for key in part {
                match (seen.insert(*key), eval_pass) {
                    (false, _) => repeats += 1,
                    (true, false) => train += 1,
                    (true, true) => eval += 1,
                }
            }
        }
    }
    Summary {
        train,
        eval,
        duplicates_across_shards: repeats,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardPayload {
    dataset: String,
    shard: u64,
}

#[async_trait]
impl JobHandler for ShardJob {
    fn queue(&self) -> &'static str {
        DATAGEN_QUEUE
    }

    fn defaults(&self) -> QueueDefaults {
        QueueDefaults {
            max_attempts: 5,
            backoff_ms: 1_000,
            // A shard keeps a core busy for a moment; two at a time per
            // worker leaves room for storing the previous ones.
            concurrency: 2,
        }
    }

    fn internal(&self) -> bool {
        true
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        serde_json::from_value::<ShardPayload>(payload.clone())
            .map(|_| ())
            .map_err(|e| format!("datagen payload: {e}"))
    }

    async fn run(&self, job: &LeasedJob, _ctx: &JobContext) -> Result<Value, JobError> {
        let payload: ShardPayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| JobError::new(e.to_string()))?;
        let run = datasets::Entity::find_by_id(&payload.dataset)
            .one(&self.db)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        let Some(run) = run.filter(|run| run.status == "running") else {
            // Cancelled or deleted: nothing more is generated.
            metrics::counter!(m::DATAGEN_SHARDS, "outcome" => "skipped").increment(1);
            return Ok(json!({"shard": payload.shard, "skipped": true}));
        };
        if payload.shard >= run.shards_total as u64 {
            return Err(JobError::new(format!(
                "no shard {} in this run",
                payload.shard
            )));
        }
        self.generate(&run, payload.shard)
            .await
            .map_err(|e| JobError::new(format!("{e:#}")))
    }
}
