//! Runs one workflow task: renders its prompt from the task, its
//! dependencies' outputs and retrieved context; asks the planned models in
//! order (validating, or polling several for consensus); stores the result
//! and queues the dependents it released; finishes the workflow after its
//! last task.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    INFERENCE_QUEUE, Workflows, judge,
    state::{self, TaskResult, TaskRow, WorkflowRow, status, workflow_status},
};
use orchestrator_llm::{ChatMessage, GenerationParams};
use orchestrator_memory::manager;
use orchestrator_models::{Answer, Plan};
use orchestrator_queue::{JobError, LeasedJob};

/// Characters of each dependency's output carried into a prompt.
const DEPENDENCY_CHARS: usize = 2_000;
/// Context chunks per task, and their token budget.
const CONTEXT_CHUNKS: usize = 4;
const CONTEXT_TOKENS: usize = 600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPayload {
    pub workflow_id: String,
    pub task_id: String,
}

/// Checks an `inference` job payload.
pub fn parse_payload(payload: &Value) -> Result<TaskPayload, String> {
    let parsed: TaskPayload = serde_json::from_value(payload.clone())
        .map_err(|e| format!("{INFERENCE_QUEUE} payload: {e}"))?;
    uuid::Uuid::parse_str(&parsed.workflow_id)
        .map_err(|_| format!("{INFERENCE_QUEUE} payload: workflow_id must be a UUID"))?;
    if !parsed.task_id.starts_with(&parsed.workflow_id) {
        return Err(format!(
            "{INFERENCE_QUEUE} payload: task_id is not of that workflow"
        ));
    }
    Ok(parsed)
}

/// What asking the models produced.
struct Outcome {
    answer: Answer,
    validation: Option<Value>,
    consensus: Option<Value>,
}

impl Workflows {
    /// Runs one `inference` job.
    pub async fn run_task(&self, job: &LeasedJob) -> Result<Value, JobError> {
        let payload = parse_payload(&job.payload).map_err(JobError::new)?;
        let internal = |e: anyhow::Error| JobError::new(format!("{e:#}"));
        let task = state::task(&self.db, &payload.task_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| JobError::new(format!("no task {}", payload.task_id)))?;
        let workflow = state::workflow(&self.db, &task.workflow_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| JobError::new(format!("no workflow {}", task.workflow_id)))?;
        if task.status == status::DONE {
            // A re-delivery after a crash between storing the result and
            // queueing the dependents: queue them (idempotently) again.
            self.after_done(&workflow).await.map_err(internal)?;
            return Ok(json!({"task": task.id, "already": "done"}));
        }
        if task.status == status::FAILED || workflow.status != workflow_status::RUNNING {
            return Ok(json!({"task": task.id, "skipped": workflow.status}));
        }
        let plan: Plan = serde_json::from_str(&task.plan)
            .map_err(|e| JobError::new(format!("task {} has a bad plan: {e}", task.id)))?;
        if !state::claim(&self.db, &task.id, &plan.primary)
            .await
            .map_err(internal)?
        {
            return Ok(json!({"task": task.id, "skipped": "finished elsewhere"}));
        }
        self.publish_progress(&workflow.id, Some(&task)).await;

        let messages = self.prompt(&workflow, &task).await.map_err(internal)?;
        let params = params_for(&task);
        let mut attempts = Vec::new();
        let consensus = options(&workflow)["consensus"].as_u64().unwrap_or(0) as usize;
        let outcome = if consensus >= 2 {
            self.ask_consensus(&task, &plan, &messages, &params, consensus, &mut attempts)
                .await
        } else {
            self.ask_chain(&task, &plan, &messages, &params, &mut attempts)
                .await
        };
        let attempts = Value::Array(attempts);
        match outcome {
            Some(outcome) => self.store(&workflow, &task, outcome, attempts).await,
            None => self.give_up(job, &workflow, &task, attempts).await,
        }
    }

    /// Primary, then fallbacks, until one answers (and passes validation
    /// when the task asks for it).
    async fn ask_chain(
        &self,
        task: &TaskRow,
        plan: &Plan,
        messages: &[ChatMessage],
        params: &GenerationParams,
        attempts: &mut Vec<Value>,
    ) -> Option<Outcome> {
        for model in plan.chain() {
            let Some(answer) = self.ask(task, model, messages, params, attempts).await else {
                continue;
            };
            if !task.validation_required {
                self.learn(task, &answer, true, None).await;
                return Some(Outcome {
                    answer,
                    validation: None,
                    consensus: None,
                });
            }
            let validators = validators_for(plan, model);
            if validators.is_empty() {
                self.learn(task, &answer, true, None).await;
                let note = json!({"skipped": "no other model to validate with"});
                return Some(Outcome {
                    answer,
                    validation: Some(note),
                    consensus: None,
                });
            }
            match self.judge(task, &validators, &answer.completion.text).await {
                Ok((validator, verdict)) if verdict.pass => {
                    self.learn(task, &answer, true, Some(true)).await;
                    let validation = json!({"validator": validator, "verdict": verdict});
                    return Some(Outcome {
                        answer,
                        validation: Some(validation),
                        consensus: None,
                    });
                }
                Ok((validator, verdict)) => {
                    // An unclear verdict says nothing about the answer's model.
                    let validated = verdict.clear.then_some(false);
                    self.learn(task, &answer, true, validated).await;
                    attempts.push(json!({
                        "model": model, "outcome": "rejected",
                        "validator": validator, "reason": verdict.reason,
                    }));
                }
                Err(err) => {
                    // No judge could answer: the answer is not known to be
                    // wrong, so it is kept.
                    self.learn(task, &answer, true, None).await;
                    let validation = json!({"skipped": err});
                    return Some(Outcome {
                        answer,
                        validation: Some(validation),
                        consensus: None,
                    });
                }
            }
        }
        None
    }

    /// Asks the first `n` models of the chain and keeps the answer the
    /// others agree with most.
    async fn ask_consensus(
        &self,
        task: &TaskRow,
        plan: &Plan,
        messages: &[ChatMessage],
        params: &GenerationParams,
        n: usize,
        attempts: &mut Vec<Value>,
    ) -> Option<Outcome> {
        let mut answers = Vec::new();
        for model in plan.chain().take(n) {
            if let Some(answer) = self.ask(task, model, messages, params, attempts).await {
                answers.push(answer);
            }
        }
        let texts: Vec<&str> = answers.iter().map(|a| a.completion.text.as_str()).collect();
        let (winner, agreement) = judge::most_agreed(&texts)?;
        let votes: Vec<Value> = answers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({"model": a.model, "similarity_to_winner": judge::similarity(texts[i], texts[winner])})
            })
            .collect();
        for answer in &answers {
            self.learn(task, answer, true, None).await;
        }
        let consensus = json!({
            "asked": n, "answered": answers.len(), "winner": answers[winner].model,
            "agreement": agreement, "votes": votes,
        });
        let answer = answers.swap_remove(winner);
        Some(Outcome {
            answer,
            validation: None,
            consensus: Some(consensus),
        })
    }

    /// One model call; a failure is recorded and gives None.
    async fn ask(
        &self,
        task: &TaskRow,
        model: &str,
        messages: &[ChatMessage],
        params: &GenerationParams,
        attempts: &mut Vec<Value>,
    ) -> Option<Answer> {
        let answer = match self.models.complete(model, messages, params, None).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::info!(task = %task.id, model, error = %err, "model failed; trying the next");
                attempts
                    .push(json!({"model": model, "outcome": "error", "error": err.to_string()}));
                self.record_failure(task, model).await;
                return None;
            }
        };
        let text = &answer.completion.text;
        let refused = if text.trim().is_empty() {
            Some(json!({"model": model, "outcome": "error", "error": "empty answer"}))
        } else {
            judge::degenerate(text)
                .map(|why| json!({"model": model, "outcome": "rejected", "reason": why}))
        };
        if let Some(attempt) = refused {
            attempts.push(attempt);
            self.record_failure(task, model).await;
            return None;
        }
        attempts
            .push(json!({"model": model, "outcome": "answered", "latency_ms": answer.latency_ms}));
        Some(answer)
    }

    /// The first of `validators` that answers judges `answer`.
    async fn judge<'v>(
        &self,
        task: &TaskRow,
        validators: &[&'v str],
        answer: &str,
    ) -> Result<(&'v str, judge::Verdict), String> {
        let messages = judge::judge_prompt(&task.description, answer);
        let params = GenerationParams {
            max_tokens: 48,
            ..GenerationParams::default()
        };
        let mut errors = Vec::new();
        for validator in validators {
            match self
                .models
                .complete(validator, &messages, &params, None)
                .await
            {
                Ok(verdict) => {
                    return Ok((validator, judge::parse_verdict(&verdict.completion.text)));
                }
                Err(err) => errors.push(format!("{validator}: {err}")),
            }
        }
        Err(format!("no validator answered ({})", errors.join("; ")))
    }

    async fn learn(&self, task: &TaskRow, answer: &Answer, success: bool, validated: Option<bool>) {
        let recorded = self
            .models
            .record(
                &answer.model,
                &task.task_type,
                success,
                validated,
                answer.latency_ms,
            )
            .await;
        if let Err(err) = recorded {
            tracing::warn!(error = %format!("{err:#}"), "recording model history failed");
        }
    }

    async fn record_failure(&self, task: &TaskRow, model: &str) {
        if let Err(err) = self
            .models
            .record(model, &task.task_type, false, None, 0)
            .await
        {
            tracing::warn!(error = %format!("{err:#}"), "recording model history failed");
        }
    }

    async fn store(
        &self,
        workflow: &WorkflowRow,
        task: &TaskRow,
        outcome: Outcome,
        attempts: Value,
    ) -> Result<Value, JobError> {
        let internal = |e: anyhow::Error| JobError::new(format!("{e:#}"));
        let completion = &outcome.answer.completion;
        let result = TaskResult {
            model: outcome.answer.model.clone(),
            output: completion.text.clone(),
            prompt_tokens: completion.prompt_tokens,
            completion_tokens: completion.completion_tokens,
            cost: outcome.answer.cost,
            latency_ms: outcome.answer.latency_ms,
            attempts,
            validation: outcome.validation,
            consensus: outcome.consensus,
        };
        state::complete(&self.db, task, &result)
            .await
            .map_err(internal)?;
        self.after_done(workflow).await.map_err(internal)?;
        Ok(json!({"task": task.id, "model": result.model, "tokens": result.completion_tokens}))
    }

    /// After a task is stored: queue what it released, or finish the
    /// workflow if every task is done.
    async fn after_done(&self, workflow: &WorkflowRow) -> anyhow::Result<()> {
        let tasks = state::tasks_of(&self.db, &workflow.id).await?;
        if tasks.iter().all(|t| t.status == status::DONE) {
            let result = final_result(&tasks);
            if state::finish(
                &self.db,
                &workflow.id,
                workflow_status::COMPLETED,
                Some(&result),
                None,
            )
            .await?
            {
                self.remember(workflow, &result).await;
                self.tell_callback(&workflow.id).await;
            }
            let fresh = state::workflow(&self.db, &workflow.id).await?;
            if let Some(fresh) = fresh {
                self.events
                    .publish(&workflow.id, completion_event(&fresh, &tasks))
                    .await;
            }
            return Ok(());
        }
        // The rows read above already show what this completion released.
        self.queue_tasks(&tasks).await?;
        self.publish_progress(&workflow.id, None).await;
        Ok(())
    }

    /// Every model failed. Retry the job while it has attempts left (a
    /// provider may come back); then fail the task and the workflow.
    async fn give_up(
        &self,
        job: &LeasedJob,
        workflow: &WorkflowRow,
        task: &TaskRow,
        attempts: Value,
    ) -> Result<Value, JobError> {
        let internal = |e: anyhow::Error| JobError::new(format!("{e:#}"));
        let message = format!("every planned model failed for task {}", task.name);
        if job.attempt < job.max_attempts {
            state::requeue(&self.db, &task.id, &attempts)
                .await
                .map_err(internal)?;
            return Err(JobError::new(message));
        }
        state::fail(&self.db, task, &message, &attempts)
            .await
            .map_err(internal)?;
        let event = json!({"type": "error", "workflow_id": workflow.id, "message": message});
        self.events.publish(&workflow.id, event).await;
        self.tell_callback(&workflow.id).await;
        Ok(json!({"task": task.id, "failed": message}))
    }

    /// Stores the result as memory for later workflows. Best effort: the
    /// embedding model may be absent.
    async fn remember(&self, workflow: &WorkflowRow, result: &str) {
        if !self.memory.model_present() {
            return;
        }
        if let Err(err) =
            manager::remember(&self.memory, &workflow.id, &workflow.description, result).await
        {
            tracing::warn!(error = %format!("{err:#}"), "remembering a workflow failed");
        }
    }

    /// The conversation for a task.
    async fn prompt(
        &self,
        workflow: &WorkflowRow,
        task: &TaskRow,
    ) -> anyhow::Result<Vec<ChatMessage>> {
        let mut user = format!(
            "Request: {}\n\nYour step: {}\n",
            workflow.description, task.description
        );
        let tasks = state::tasks_of(&self.db, &workflow.id).await?;
        for parent in state::depends_on(task) {
            if let Some(parent) = tasks.iter().find(|t| t.idx == parent) {
                let output: String = parent
                    .output
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(DEPENDENCY_CHARS)
                    .collect();
                user.push_str(&format!(
                    "\nResult of step \"{}\":\n{}\n",
                    parent.name, output
                ));
            }
        }
        let packs: Vec<String> =
            serde_json::from_value(options(workflow)["context_packs"].clone()).unwrap_or_default();
        if task.context_needed && self.memory.model_present() {
            match manager::context_for(
                &self.memory,
                &task.description,
                &packs,
                CONTEXT_CHUNKS,
                CONTEXT_TOKENS,
            )
            .await
            {
                Ok(context) if !context.chunks.is_empty() => {
                    user.push_str(&format!("\nRelevant context:\n{}\n", context.render()));
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "context retrieval failed"),
            }
        }
        Ok(vec![
            ChatMessage::new(
                "system",
                "You are one step of a larger job. Do only your step, concisely.",
            ),
            ChatMessage::new("user", user),
        ])
    }

    /// Publishes a `status_update` with the workflow's current state.
    pub(crate) async fn publish_progress(&self, workflow_id: &str, running: Option<&TaskRow>) {
        let Ok(Some(workflow)) = state::workflow(&self.db, workflow_id).await else {
            return;
        };
        let Ok(tasks) = state::tasks_of(&self.db, workflow_id).await else {
            return;
        };
        let mut event = status_event(&workflow, &tasks);
        if let Some(task) = running {
            event["messages"] = json!([format!(
                "running {} on {}",
                task.name,
                serde_json::from_str::<Plan>(&task.plan)
                    .map(|p| p.primary)
                    .unwrap_or_default()
            )]);
        }
        self.events.publish(workflow_id, event).await;
    }
}

/// The `status_update` message for a workflow.
pub fn status_event(workflow: &WorkflowRow, tasks: &[TaskRow]) -> Value {
    let active: Vec<&str> = tasks
        .iter()
        .filter(|t| t.status == status::RUNNING)
        .filter_map(|t| t.model.as_deref())
        .collect();
    let progress = if workflow.total_steps > 0 {
        workflow.done_steps as f64 / workflow.total_steps as f64
    } else {
        0.0
    };
    json!({
        "type": "status_update",
        "workflow_id": workflow.id,
        "status": workflow.status,
        "current_step": workflow.done_steps,
        "total_steps": workflow.total_steps,
        "active_models": active,
        "progress": progress,
        "messages": [],
    })
}

/// The `workflow_complete` (or `error`) message for a finished workflow.
pub fn completion_event(workflow: &WorkflowRow, tasks: &[TaskRow]) -> Value {
    if workflow.status == workflow_status::FAILED {
        return json!({
            "type": "error", "workflow_id": workflow.id,
            "message": workflow.error.clone().unwrap_or_default(),
        });
    }
    let outputs: Vec<Value> = tasks
        .iter()
        .map(|t| json!({"name": t.name, "model": t.model, "output": t.output}))
        .collect();
    json!({
        "type": "workflow_complete",
        "workflow_id": workflow.id,
        "result": workflow.result,
        "cost": workflow.cost,
        "tasks": outputs,
    })
}

fn options(workflow: &WorkflowRow) -> Value {
    serde_json::from_str(&workflow.options).unwrap_or(Value::Null)
}

fn params_for(task: &TaskRow) -> GenerationParams {
    let requirements: Value = serde_json::from_str(&task.requirements).unwrap_or(Value::Null);
    GenerationParams {
        max_tokens: requirements["max_tokens"]
            .as_u64()
            .unwrap_or(256)
            .clamp(1, 4_096) as u32,
        ..GenerationParams::default()
    }
}

/// Models other than `answerer` that may judge its answer, in order: the
/// planned validator, then the chain.
fn validators_for<'a>(plan: &'a Plan, answerer: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for model in plan.validator.iter().chain(plan.chain()) {
        if model != answerer && !out.contains(&model.as_str()) {
            out.push(model);
        }
    }
    out
}

/// The outputs of the tasks nothing depends on (the DAG's sinks), in order.
fn final_result(tasks: &[TaskRow]) -> String {
    let needed: std::collections::HashSet<i32> = tasks.iter().flat_map(state::depends_on).collect();
    tasks
        .iter()
        .filter(|t| !needed.contains(&t.idx))
        .filter_map(|t| t.output.clone())
        .collect::<Vec<_>>()
        .join("\n\n")
}

impl Workflows {
    /// The message a new watcher starts from: `status_update` while the
    /// workflow runs, its final message once it has finished.
    pub async fn snapshot(&self, workflow_id: &str) -> anyhow::Result<Option<Value>> {
        let Some(workflow) = state::workflow(&self.db, workflow_id).await? else {
            return Ok(None);
        };
        let tasks = state::tasks_of(&self.db, workflow_id).await?;
        Ok(Some(if workflow.status == workflow_status::RUNNING {
            status_event(&workflow, &tasks)
        } else {
            completion_event(&workflow, &tasks)
        }))
    }
}
