//! LLM workflows: a request is classified, decomposed into a DAG of tasks
//! ([`decomposer`]), each task gets models from the scheduler, and the
//! `inference` queue runs the tasks in dependency order ([`executor`]),
//! publishing progress over [`Events`]. The `inference` queue's handler is
//! [`Inference`].
//!
//! It stands on the queue engine, the model registry and memory, and must
//! not know campaigns or the trainer.

pub mod dag;
pub mod decomposer;
pub mod executor;
mod inference_job;
pub mod judge;
pub mod state;

use std::{collections::HashMap, sync::Arc};

use sea_orm::{ActiveValue::Set, DatabaseConnection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use utoipa::ToSchema;

use decomposer::{GENERAL, Patterns, PlannedTask};
pub use inference_job::Inference;
use orchestrator_core::events::Events;
use orchestrator_core::{now_ms, store::workflow_task_entity as tasks};
use orchestrator_llm::{ChatMessage, GenerationParams};
use orchestrator_memory::Memory;
use orchestrator_models::{Models, OptimizationTarget, scheduler};
use orchestrator_queue::{NewJob, QueueBackend};
use state::{TaskRow, WorkflowRow, status};

/// The queue workflow tasks run on.
pub const INFERENCE_QUEUE: &str = "inference";
/// Longest workflow description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 16 * 1024;
/// Similarity a request needs to an example to take its type.
const NEAREST_EXAMPLE_MIN: f32 = 0.35;

/// `POST /api/v1/workflows`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    pub description: String,
    /// Task type; classified from the description when absent.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub context_packs: Vec<String>,
    /// Model ids to put first, best first.
    #[serde(default)]
    pub model_preferences: Vec<String>,
    #[serde(default)]
    pub optimization_target: Option<OptimizationTarget>,
    /// `patterns` (default) or `model` (the primary model plans the tasks;
    /// a bad plan falls back to the patterns).
    #[serde(default)]
    pub decomposer: Option<Decomposer>,
    /// Ask this many models (2 to 5) per task and keep the most agreed
    /// answer.
    #[serde(default)]
    pub consensus: Option<u32>,
    /// Most the workflow may spend, in USD.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// An http(s) URL told (signed POST) when the workflow ends.
    #[serde(default)]
    pub callback_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decomposer {
    Patterns,
    Model,
}

/// The 202 answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Created {
    pub workflow_id: String,
    pub status: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Rough finish time, Unix milliseconds.
    pub estimated_completion: u64,
    /// Primary model per task name.
    pub assigned_models: HashMap<String, String>,
    pub total_steps: usize,
    /// Which decomposer made the tasks, and why a model plan was dropped.
    pub decomposer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// One task as `GET /api/v1/workflows/{id}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub task_type: String,
    pub depends_on: Vec<i32>,
    pub status: String,
    #[schema(value_type = Object)]
    pub plan: Value,
    pub model: Option<String>,
    pub output: Option<String>,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cost: f64,
    pub latency_ms: i64,
    #[schema(value_type = Object)]
    pub attempts: Value,
    #[schema(value_type = Option<Object>)]
    pub validation: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub consensus: Option<Value>,
    pub error: Option<String>,
}

/// A workflow as `GET /api/v1/workflows/{id}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkflowView {
    pub id: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub optimization_target: String,
    pub total_steps: i32,
    pub done_steps: i32,
    pub progress: f64,
    pub result: Option<String>,
    pub error: Option<String>,
    pub cost: f64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub tasks: Vec<TaskView>,
}

/// Workflow creation, reading and execution.
pub struct Workflows {
    db: DatabaseConnection,
    models: Arc<Models>,
    memory: Arc<Memory>,
    patterns: Patterns,
    queue: Arc<dyn QueueBackend>,
    events: Arc<Events>,
    /// Embedded pattern examples, for classification by nearest example.
    examples: OnceCell<Vec<(String, Vec<f32>)>>,
}

impl Workflows {
    pub fn new(
        db: DatabaseConnection,
        models: Arc<Models>,
        memory: Arc<Memory>,
        patterns: Patterns,
        queue: Arc<dyn QueueBackend>,
        events: Arc<Events>,
    ) -> Self {
        Self {
            db,
            models,
            memory,
            patterns,
            queue,
            events,
            examples: OnceCell::new(),
        }
    }

    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Checks a request, plans it, stores it and queues its first tasks.
    pub async fn create(&self, request: WorkflowRequest) -> Result<Created, CreateError> {
        self.check(&request)?;
        let description = request.description.trim().to_string();
        let kind = match &request.kind {
            Some(kind) => kind.clone(),
            None => self.classify(&description).await,
        };
        let target = request.optimization_target.unwrap_or_default();
        let (planned, decomposer, note) =
            self.decompose(&request, &kind, &description, target).await;

        let id = uuid::Uuid::now_v7().to_string();
        let options = json!({
            "context_packs": request.context_packs,
            "model_preferences": request.model_preferences,
            "consensus": request.consensus,
            "budget_usd": request.budget_usd,
            "decomposer": decomposer,
            "callback_url": request.callback_url,
        });
        let in_flight = self.models.in_flight().await?;
        let mut assigned = HashMap::new();
        let mut rows = Vec::with_capacity(planned.len());
        let mut estimate_ms = 0u64;
        for (idx, task) in planned.iter().enumerate() {
            let history = self.models.history(&task.task_type).await?;
            let plan = self.plan_for(task, &request, target, &history, &in_flight)?;
            estimate_ms += self.estimate_ms(&plan.primary, &history);
            assigned.insert(task.name.clone(), plan.primary.clone());
            rows.push(task_row(&id, idx, task, &plan));
        }
        state::insert(
            &self.db,
            state::new_workflow(
                &id,
                &description,
                &kind,
                target_name(target),
                &options,
                planned.len(),
            ),
            rows,
        )
        .await?;
        self.queue_ready(&id).await?;
        Ok(Created {
            workflow_id: id,
            status: state::workflow_status::RUNNING.to_string(),
            kind,
            estimated_completion: now_ms() + estimate_ms,
            assigned_models: assigned,
            total_steps: planned.len(),
            decomposer: decomposer.to_string(),
            note,
        })
    }

    fn check(&self, request: &WorkflowRequest) -> Result<(), CreateError> {
        let invalid = |m: String| Err(CreateError::Invalid(m));
        if request.description.trim().is_empty() {
            return invalid("description must not be empty".into());
        }
        if request.description.len() > MAX_DESCRIPTION_BYTES {
            return invalid(format!("description is over {MAX_DESCRIPTION_BYTES} bytes"));
        }
        if let Some(kind) = &request.kind
            && self.patterns.get(kind).is_none()
        {
            let known: Vec<&str> = self.patterns.types().collect();
            return invalid(format!(
                "unknown type {kind:?}; known: {}",
                known.join(", ")
            ));
        }
        if request.context_packs.len() > 16
            || request
                .context_packs
                .iter()
                .any(|p| uuid::Uuid::parse_str(p).is_err())
        {
            return invalid("context_packs: at most 16 pack ids (UUIDs)".into());
        }
        if request.model_preferences.len() > 16 {
            return invalid("model_preferences: at most 16 model ids".into());
        }
        for id in &request.model_preferences {
            if self.models.resolve(id).is_none() {
                return invalid(format!("model_preferences: unknown model {id:?}"));
            }
        }
        if request.consensus.is_some_and(|n| !(2..=5).contains(&n)) {
            return invalid("consensus must be 2 to 5".into());
        }
        if request
            .budget_usd
            .is_some_and(|b| !(b.is_finite() && b > 0.0))
        {
            return invalid("budget_usd must be above 0".into());
        }
        Ok(())
    }

    /// Keyword match first; else, with the embedding model present, the
    /// type of the nearest example; else `general`.
    async fn classify(&self, description: &str) -> String {
        if let Some(kind) = self.patterns.classify_by_keywords(description) {
            return kind.to_string();
        }
        if !self.memory.model_present() {
            return GENERAL.to_string();
        }
        match self.nearest_example(description).await {
            Ok(Some(kind)) => kind,
            Ok(None) => GENERAL.to_string(),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "classifying by example failed");
                GENERAL.to_string()
            }
        }
    }

    async fn nearest_example(&self, description: &str) -> anyhow::Result<Option<String>> {
        let examples = self
            .examples
            .get_or_try_init(|| async {
                let pairs = self.patterns.examples();
                let texts = pairs.iter().map(|(_, text)| text.to_string()).collect();
                let vectors = self.memory.embed(texts).await?;
                Ok::<_, anyhow::Error>(
                    pairs
                        .iter()
                        .zip(vectors)
                        .map(|((kind, _), v)| (kind.to_string(), v))
                        .collect(),
                )
            })
            .await?;
        let query = self.memory.embed(vec![description.to_string()]).await?;
        let query = &query[0];
        let best = examples
            .iter()
            .map(|(kind, v)| (kind, v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>()))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        Ok(best
            .filter(|(_, score)| *score >= NEAREST_EXAMPLE_MIN)
            .map(|(kind, _)| kind.clone()))
    }

    /// Tasks from the patterns, or from the primary model's plan when asked
    /// (falling back to the patterns, with a note, when the plan is bad).
    async fn decompose(
        &self,
        request: &WorkflowRequest,
        kind: &str,
        description: &str,
        target: OptimizationTarget,
    ) -> (Vec<PlannedTask>, &'static str, Option<String>) {
        let from_patterns = || self.patterns.decompose(kind, description);
        if request.decomposer != Some(Decomposer::Model) {
            return (from_patterns(), "patterns", None);
        }
        match self.model_plan(request, kind, description, target).await {
            Ok(tasks) => (tasks, "model", None),
            Err(why) => (
                from_patterns(),
                "patterns",
                Some(format!("model plan dropped: {why}")),
            ),
        }
    }

    async fn model_plan(
        &self,
        request: &WorkflowRequest,
        kind: &str,
        description: &str,
        target: OptimizationTarget,
    ) -> Result<Vec<PlannedTask>, String> {
        let history = self.models.history(kind).await.map_err(|e| e.to_string())?;
        let planning = PlannedTask {
            name: "plan".into(),
            description: description.into(),
            task_type: kind.into(),
            depends_on: vec![],
            context_needed: false,
            validation_required: false,
            priority: 0,
            max_tokens: 512,
            requirements: Value::Null,
        };
        let plan = self
            .plan_for(&planning, request, target, &history, &HashMap::new())
            .map_err(|e| e.to_string())?;
        let messages = [ChatMessage::new(
            "user",
            decomposer::planning_prompt(description),
        )];
        let params = GenerationParams {
            max_tokens: 512,
            ..GenerationParams::default()
        };
        let answer = self
            .models
            .complete(&plan.primary, &messages, &params, None)
            .await
            .map_err(|e| e.to_string())?;
        decomposer::parse_model_plan(&answer.completion.text, kind)
    }

    fn plan_for(
        &self,
        task: &PlannedTask,
        request: &WorkflowRequest,
        target: OptimizationTarget,
        history: &HashMap<String, scheduler::History>,
        in_flight: &HashMap<String, u32>,
    ) -> Result<scheduler::Plan, CreateError> {
        let models = self.models.specs();
        let inputs = scheduler::Inputs {
            task_type: &task.task_type,
            models: &models,
            history,
            in_flight,
            target,
            preferences: &request.model_preferences,
            budget_left: request.budget_usd,
            estimated_input_tokens: (task.description.len() / 4) as u32 + 200,
            estimated_output_tokens: task.max_tokens,
        };
        scheduler::plan(&inputs)
            .ok_or_else(|| CreateError::Internal(anyhow::anyhow!("the model registry is empty")))
    }

    fn estimate_ms(&self, model: &str, history: &HashMap<String, scheduler::History>) -> u64 {
        history
            .get(model)
            .filter(|h| h.samples > 0)
            .map(|h| h.latency_ms as u64)
            .unwrap_or(10_000)
    }

    /// Pushes every queued task of a workflow. Idempotent (the task id is
    /// the idempotency key), so it is safe to repeat after a crash.
    pub(crate) async fn queue_ready(&self, workflow_id: &str) -> anyhow::Result<()> {
        let tasks = state::tasks_of(&self.db, workflow_id).await?;
        self.queue_tasks(&tasks).await
    }

    /// Pushes the queued ones among `tasks` (freshly read from the store).
    pub(crate) async fn queue_tasks(&self, tasks: &[TaskRow]) -> anyhow::Result<()> {
        let ready: Vec<NewJob> = tasks
            .iter()
            .filter(|t| t.status == status::QUEUED)
            .map(|t| NewJob {
                queue: INFERENCE_QUEUE.to_string(),
                payload: json!({"workflow_id": t.workflow_id, "task_id": t.id}),
                priority: t.priority,
                max_attempts: 3,
                backoff_ms: 1_000,
                idempotency_key: Some(t.id.clone()),
                delay_ms: 0,
                concurrency_key: None,
                callback_url: None,
            })
            .collect();
        if !ready.is_empty() {
            self.queue.push(ready).await?;
        }
        Ok(())
    }

    /// Queues the ready tasks of every unfinished workflow (after a crash
    /// between storing a workflow and queueing its first tasks). Returns how
    /// many workflows had such tasks.
    pub async fn queue_stranded(&self) -> anyhow::Result<usize> {
        let ids = state::with_queued_tasks(&self.db).await?;
        for id in &ids {
            self.queue_ready(id).await?;
        }
        Ok(ids.len())
    }

    /// Cancels a running workflow: its unfinished tasks never run, and the
    /// ones running are stopped (their jobs are cancelled). `None` for an
    /// unknown workflow, `Some(false)` for one that has already ended.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<Option<bool>> {
        if state::workflow(&self.db, id).await?.is_none() {
            return Ok(None);
        }
        let Some(unfinished) = state::cancel(&self.db, id).await? else {
            return Ok(Some(false));
        };
        // A task's job is pushed with the task id as its idempotency key.
        for task in unfinished {
            if let Some(job) = self.queue.find_by_key(INFERENCE_QUEUE, &task.id).await? {
                self.queue.cancel(&job).await?;
            }
        }
        let event = json!({"type": "error", "workflow_id": id, "message": "cancelled"});
        self.events.publish(id, event).await;
        self.tell_callback(id).await;
        Ok(Some(true))
    }

    /// Pushes the callback of a workflow that has just ended, if it asked
    /// for one: `{"id", "kind": "workflow", "status", "result"?, "error"?}`.
    /// Best effort, like a job's: the outcome is stored already.
    pub(crate) async fn tell_callback(&self, id: &str) {
        let workflow = match state::workflow(&self.db, id).await {
            Ok(Some(workflow)) => workflow,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(workflow = %id, "cannot read the workflow for its callback: {err:#}");
                return;
            }
        };
        let options: Value = serde_json::from_str(&workflow.options).unwrap_or_default();
        let Some(url) = options["callback_url"].as_str() else {
            return;
        };
        let ended = json!({
            "id": workflow.id,
            "kind": "workflow",
            "status": workflow.status,
            "result": workflow.result,
            "error": workflow.error,
        });
        let key = format!("workflow:{}", workflow.id);
        let job = orchestrator_queue::callback::callback_job(url, &ended, &key);
        orchestrator_queue::callback::push_callbacks(self.queue.clone(), vec![job]);
    }

    pub async fn view(&self, id: &str) -> anyhow::Result<Option<WorkflowView>> {
        let Some(workflow) = state::workflow(&self.db, id).await? else {
            return Ok(None);
        };
        let tasks = state::tasks_of(&self.db, id).await?;
        Ok(Some(view(workflow, tasks)))
    }
}

fn target_name(target: OptimizationTarget) -> &'static str {
    match target {
        OptimizationTarget::Speed => "speed",
        OptimizationTarget::Cost => "cost",
        OptimizationTarget::Quality => "quality",
        OptimizationTarget::Balanced => "balanced",
    }
}

fn task_row(
    workflow_id: &str,
    idx: usize,
    task: &PlannedTask,
    plan: &scheduler::Plan,
) -> tasks::ActiveModel {
    let ready = task.depends_on.is_empty();
    tasks::ActiveModel {
        id: Set(format!("{workflow_id}-{idx}")),
        workflow_id: Set(workflow_id.to_string()),
        idx: Set(idx as i32),
        name: Set(task.name.clone()),
        description: Set(task.description.clone()),
        task_type: Set(task.task_type.clone()),
        depends_on: Set(json!(task.depends_on).to_string()),
        pending_deps: Set(task.depends_on.len() as i32),
        status: Set(if ready {
            status::QUEUED
        } else {
            status::WAITING
        }
        .to_string()),
        requirements: Set(json!({
            "requirements": task.requirements,
            "max_tokens": task.max_tokens,
        })
        .to_string()),
        context_needed: Set(task.context_needed),
        validation_required: Set(task.validation_required),
        priority: Set(task.priority),
        plan: Set(json!(plan).to_string()),
        model: Set(None),
        output: Set(None),
        prompt_tokens: Set(0),
        completion_tokens: Set(0),
        cost: Set(0.0),
        latency_ms: Set(0),
        attempts: Set("[]".into()),
        validation: Set(None),
        consensus: Set(None),
        error: Set(None),
        updated_at_ms: Set(now_ms() as i64),
    }
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

pub(crate) fn view(workflow: WorkflowRow, tasks: Vec<TaskRow>) -> WorkflowView {
    let progress = if workflow.total_steps > 0 {
        workflow.done_steps as f64 / workflow.total_steps as f64
    } else {
        0.0
    };
    WorkflowView {
        progress,
        tasks: tasks
            .into_iter()
            .map(|t| TaskView {
                depends_on: state::depends_on(&t),
                plan: parse_json(&t.plan),
                attempts: parse_json(&t.attempts),
                validation: t.validation.as_deref().map(parse_json),
                consensus: t.consensus.as_deref().map(parse_json),
                id: t.id,
                name: t.name,
                description: t.description,
                task_type: t.task_type,
                status: t.status,
                model: t.model,
                output: t.output,
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
                cost: t.cost,
                latency_ms: t.latency_ms,
                error: t.error,
            })
            .collect(),
        id: workflow.id,
        description: workflow.description,
        kind: workflow.kind,
        status: workflow.status,
        optimization_target: workflow.optimization_target,
        total_steps: workflow.total_steps,
        done_steps: workflow.done_steps,
        result: workflow.result,
        error: workflow.error,
        cost: workflow.cost,
        created_at_ms: workflow.created_at_ms,
        updated_at_ms: workflow.updated_at_ms,
    }
}
