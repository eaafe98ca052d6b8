//! Models: the registry (models.toml), the scheduler that picks models for
//! tasks, and [`Models`], which runs a completion on any registered model
//! and keeps the per-model history the scheduler learns from.
//!
//! Published LoRA adapters are models too: `base@adapter-vN` names a
//! version, `base@latest` the active one (the base itself while none is).
//! The adapter table is re-read whenever the trainer announces a change, so
//! a new version serves without a restart. The adapter versions themselves
//! (rows, promotion, rollback) live in [`adapters`]: the trainer writes
//! them, every serving process reads them.
//!
//! It stands on the store and the LLM providers and must not know queues,
//! workflows or the trainer's loop.

pub mod adapter_files;
pub mod adapters;
pub mod registry;
pub mod scheduler;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    sea_query::OnConflict,
};
use tokio::sync::OnceCell;

pub use registry::{ModelSpec, ProviderKind, Registry};
pub use scheduler::{History, OptimizationTarget, Plan};

use crate::adapters::AdapterRow;
use orchestrator_core::{
    metrics::{LLM_REQUEST_COST, LLM_REQUEST_DURATION, LLM_TOKENS},
    now_ms,
    store::{model_history_entity as history, workflow_task_entity as tasks},
};
use orchestrator_llm::{
    ChatMessage, Completion, GenerationParams, LlmError, LocalModel, RemoteClient, TokenSink,
};

/// Weight of the newest observation in the decayed history averages.
const HISTORY_DECAY: f64 = 0.2;

type LocalSlot = Arc<OnceCell<Arc<LocalModel>>>;

/// Runs completions on registered models.
pub struct Models {
    registry: Registry,
    models_dir: PathBuf,
    db: DatabaseConnection,
    /// Local models load on first use and stay loaded.
    local: Mutex<HashMap<String, LocalSlot>>,
    /// One HTTP client per remote model, built at start so calls reuse its
    /// connections.
    remote: HashMap<String, RemoteClient>,
    adapters: RwLock<AdapterTable>,
    /// Copies of adapters whose trainer's directory this process cannot read.
    adapter_cache: PathBuf,
}

/// The adapters that may serve, as last read from the store.
#[derive(Default)]
struct AdapterTable {
    /// Every adapter not rejected, by id.
    servable: HashMap<String, AdapterRow>,
    /// Base model → its active adapter's id.
    active: HashMap<String, String>,
}

/// One model's answer, with what it cost.
#[derive(Debug, Clone)]
pub struct Answer {
    pub model: String,
    pub completion: Completion,
    pub cost: f64,
    pub latency_ms: u64,
}

impl Models {
    pub fn new(
        registry: Registry,
        models_dir: PathBuf,
        db: DatabaseConnection,
    ) -> anyhow::Result<Self> {
        let remote = registry
            .models()
            .iter()
            .filter(|spec| spec.provider == ProviderKind::Openai)
            .map(|spec| Ok((spec.id.clone(), remote_client(spec)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            registry,
            models_dir,
            db,
            local: Mutex::new(HashMap::new()),
            remote,
            adapters: RwLock::new(AdapterTable::default()),
            adapter_cache: std::env::temp_dir().join("orchestrator-adapters"),
        })
    }

    /// Where adapters written on another machine are copied to from the
    /// store before loading (default: a folder in the temporary directory).
    pub fn with_adapter_cache(mut self, dir: PathBuf) -> Self {
        self.adapter_cache = dir;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Local models: the ones a trainer can fine-tune.
    pub fn trainable(&self) -> Vec<&ModelSpec> {
        self.registry
            .models()
            .iter()
            .filter(|m| m.provider == ProviderKind::Local)
            .collect()
    }

    /// The weights file of a local model.
    pub fn weights_path(&self, spec: &ModelSpec) -> PathBuf {
        self.models_dir
            .join(spec.file.as_deref().unwrap_or_default())
    }

    /// Every model the scheduler may pick: the registry's, plus each base
    /// model's active adapter.
    pub fn specs(&self) -> Vec<ModelSpec> {
        let mut specs = self.registry.models().to_vec();
        let table = self.adapters.read().expect("adapter table");
        let mut active: Vec<&String> = table.active.values().collect();
        active.sort();
        specs.extend(
            active
                .into_iter()
                .filter_map(|id| self.adapter_spec(&table, id)),
        );
        specs
    }

    /// The model `id` names: a registered model, an adapter version, or
    /// `base@latest`.
    pub fn resolve(&self, id: &str) -> Option<ModelSpec> {
        if let Some(spec) = self.registry.get(id) {
            return Some(spec.clone());
        }
        let (base, version) = id.split_once('@')?;
        let table = self.adapters.read().expect("adapter table");
        match version {
            "latest" => match table.active.get(base) {
                Some(active) => self.adapter_spec(&table, active),
                None => self.registry.get(base).cloned(),
            },
            _ => self.adapter_spec(&table, id),
        }
    }

    fn adapter_spec(&self, table: &AdapterTable, id: &str) -> Option<ModelSpec> {
        let adapter = table.servable.get(id)?;
        let base = self.registry.get(&adapter.base_model)?;
        Some(ModelSpec {
            id: adapter.id.clone(),
            ..base.clone()
        })
    }

    /// Re-reads the adapter table; returns the active adapter ids.
    pub async fn refresh_adapters(&self) -> anyhow::Result<Vec<String>> {
        let rows = adapters::list(&self.db).await?;
        let mut table = AdapterTable::default();
        for row in rows {
            if row.status == adapters::status::REJECTED {
                continue;
            }
            if row.status == adapters::status::ACTIVE {
                table.active.insert(row.base_model.clone(), row.id.clone());
            }
            table.servable.insert(row.id.clone(), row);
        }
        let active = table.active.values().cloned().collect();
        *self.adapters.write().expect("adapter table") = table;
        Ok(active)
    }

    /// Whether local model `id` is loaded in this process.
    pub fn is_loaded(&self, id: &str) -> bool {
        self.local
            .lock()
            .expect("local model table")
            .get(id)
            .is_some_and(|slot| slot.initialized())
    }

    /// After an adapter change: re-read the table and load the active
    /// adapters of base models this process already serves, so the first
    /// request to a new version does not wait for it.
    pub async fn adapters_changed(&self) -> anyhow::Result<()> {
        for id in self.refresh_adapters().await? {
            let Some(spec) = self.resolve(&id) else {
                continue;
            };
            let base = id.split('@').next().unwrap_or_default().to_string();
            let base_loaded = self
                .local
                .lock()
                .expect("local model table")
                .get(&base)
                .is_some_and(|slot| slot.initialized());
            if base_loaded {
                self.local(&spec).await?;
                tracing::info!(adapter = %id, "adapter loaded");
            }
        }
        Ok(())
    }

    /// Asks `model_id`, bounded by the model's timeout.
    pub async fn complete(
        &self,
        model_id: &str,
        messages: &[ChatMessage],
        params: &GenerationParams,
        sink: Option<TokenSink>,
    ) -> Result<Answer, LlmError> {
        let spec = match self.resolve(model_id) {
            Some(spec) => spec,
            // An adapter published since the last notification reached
            // this process.
            None if model_id.contains('@') => {
                self.refresh_adapters()
                    .await
                    .map_err(|e| LlmError::Unavailable(format!("reading adapters: {e:#}")))?;
                self.resolve(model_id)
                    .ok_or_else(|| LlmError::Rejected(format!("unknown model {model_id}")))?
            }
            None => return Err(LlmError::Rejected(format!("unknown model {model_id}"))),
        };
        let spec = &spec;
        let started = Instant::now();
        // The request's penalties win; unset ones are the model's defaults.
        let params = &GenerationParams {
            penalties: params.penalties.or(spec.sampling),
            ..params.clone()
        };
        let call = self.call(spec, messages, params, sink);
        let completion = tokio::time::timeout(Duration::from_secs(spec.timeout_s), call)
            .await
            .map_err(|_| {
                LlmError::Unavailable(format!("{model_id} timed out after {} s", spec.timeout_s))
            })??;
        metrics::counter!(LLM_TOKENS, "model" => spec.id.clone(), "direction" => "input")
            .increment(completion.prompt_tokens as u64);
        metrics::counter!(LLM_TOKENS, "model" => spec.id.clone(), "direction" => "output")
            .increment(completion.completion_tokens as u64);
        let cost = spec.cost(completion.prompt_tokens, completion.completion_tokens);
        let latency = started.elapsed();
        metrics::histogram!(LLM_REQUEST_DURATION, "model" => spec.id.clone())
            .record(latency.as_secs_f64());
        metrics::histogram!(LLM_REQUEST_COST, "model" => spec.id.clone()).record(cost);
        Ok(Answer {
            model: spec.id.clone(),
            cost,
            latency_ms: latency.as_millis() as u64,
            completion,
        })
    }

    async fn call(
        &self,
        spec: &ModelSpec,
        messages: &[ChatMessage],
        params: &GenerationParams,
        sink: Option<TokenSink>,
    ) -> Result<Completion, LlmError> {
        match spec.provider {
            ProviderKind::Local => {
                self.local(spec)
                    .await?
                    .complete(messages, params, sink)
                    .await
            }
            ProviderKind::Openai => {
                let client = self
                    .remote
                    .get(&spec.id)
                    .ok_or_else(|| LlmError::Unavailable(format!("no client for {}", spec.id)))?;
                client.complete(messages, params, sink).await
            }
        }
    }

    /// The loaded local model, loading it on first use. An adapter loads
    /// onto its base model's weights, loading those first.
    pub async fn local(&self, spec: &ModelSpec) -> Result<Arc<LocalModel>, LlmError> {
        let slot = self
            .local
            .lock()
            .expect("local model table")
            .entry(spec.id.clone())
            .or_default()
            .clone();
        let sessions = spec.max_concurrency as usize;
        let adapter = self
            .adapters
            .read()
            .expect("adapter table")
            .servable
            .get(&spec.id)
            .cloned();
        if let Some(adapter) = adapter {
            let base = self.registry.get(&adapter.base_model).ok_or_else(|| {
                LlmError::Unavailable(format!("base model {} is gone", adapter.base_model))
            })?;
            let base = Box::pin(self.local(base)).await?;
            return slot
                .get_or_try_init(|| async move {
                    let dir = adapter_files::local_dir(&self.db, &adapter, &self.adapter_cache)
                        .await
                        .map_err(|e| {
                            LlmError::Unavailable(format!("adapter {}: {e:#}", adapter.id))
                        })?;
                    tokio::task::spawn_blocking(move || base.with_adapter(&dir, sessions))
                        .await
                        .map_err(|e| LlmError::Unavailable(format!("loading failed: {e}")))?
                        .map(Arc::new)
                        .map_err(|e| {
                            LlmError::Unavailable(format!("loading adapter {}: {e:#}", adapter.id))
                        })
                })
                .await
                .cloned();
        }
        let path = self.weights_path(spec);
        let kernels = spec.kernels;
        slot.get_or_try_init(|| async move {
            if !path.is_file() {
                return Err(LlmError::Unavailable(format!(
                    "model weights {} are missing (run deploy/scripts/fetch-models.sh)",
                    path.display()
                )));
            }
            tokio::task::spawn_blocking(move || LocalModel::load(&path, sessions, kernels))
                .await
                .map_err(|e| LlmError::Unavailable(format!("loading failed: {e}")))?
                .map(Arc::new)
                .map_err(|e| LlmError::Unavailable(format!("{e:#}")))
        })
        .await
        .cloned()
    }

    /// The decayed history of every model on `task_type`.
    pub async fn history(&self, task_type: &str) -> anyhow::Result<HashMap<String, History>> {
        let rows = history::Entity::find()
            .filter(history::Column::TaskType.eq(task_type))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let h = History {
                    samples: r.samples.max(0) as u32,
                    success: r.success,
                    validation: r.validation,
                    latency_ms: r.latency_ms,
                };
                (r.model_id, h)
            })
            .collect())
    }

    /// Folds one call's outcome into the history. `validated` is None when
    /// the answer was not judged.
    pub async fn record(
        &self,
        model_id: &str,
        task_type: &str,
        success: bool,
        validated: Option<bool>,
        latency_ms: u64,
    ) -> anyhow::Result<()> {
        let old = history::Entity::find_by_id((model_id.to_string(), task_type.to_string()))
            .one(&self.db)
            .await?;
        let value = |b: bool| if b { 1.0 } else { 0.0 };
        let (samples, success, validation, latency) = match old {
            None => (
                1,
                value(success),
                validated.map(value).unwrap_or(1.0),
                latency_ms as f64,
            ),
            Some(h) => (
                h.samples.saturating_add(1),
                decay(h.success, value(success)),
                validated.map_or(h.validation, |v| decay(h.validation, value(v))),
                if success {
                    decay(h.latency_ms, latency_ms as f64)
                } else {
                    h.latency_ms
                },
            ),
        };
        let row = history::ActiveModel {
            model_id: Set(model_id.to_string()),
            task_type: Set(task_type.to_string()),
            samples: Set(samples),
            success: Set(success),
            validation: Set(validation),
            latency_ms: Set(latency),
            updated_at_ms: Set(now_ms() as i64),
        };
        history::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([history::Column::ModelId, history::Column::TaskType])
                    .update_columns([
                        history::Column::Samples,
                        history::Column::Success,
                        history::Column::Validation,
                        history::Column::LatencyMs,
                        history::Column::UpdatedAtMs,
                    ])
                    .to_owned(),
            )
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Tasks running now per model, across every worker sharing the store.
    pub async fn in_flight(&self) -> anyhow::Result<HashMap<String, u32>> {
        let rows: Vec<(Option<String>, i64)> = tasks::Entity::find()
            .select_only()
            .column(tasks::Column::Model)
            .column_as(tasks::Column::Id.count(), "running")
            .filter(tasks::Column::Status.eq("running"))
            .group_by(tasks::Column::Model)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(model, n)| Some((model?, n.max(0) as u32)))
            .collect())
    }
}

/// The client of a remote model; its key is read from the environment
/// variable the registry names.
fn remote_client(spec: &ModelSpec) -> anyhow::Result<RemoteClient> {
    let key = spec
        .api_key_env
        .as_ref()
        .and_then(|var| std::env::var(var).ok())
        .filter(|k| !k.is_empty());
    RemoteClient::new(
        spec.base_url.as_deref().unwrap_or_default(),
        spec.model.as_deref().unwrap_or_default(),
        key,
        Duration::from_secs(spec.timeout_s),
    )
}

fn decay(old: f64, new: f64) -> f64 {
    old * (1.0 - HISTORY_DECAY) + new * HISTORY_DECAY
}
