//! The trainer: leases runs, trains them, publishes their adapters.
//!
//! Each tick it takes a queued run (or one whose trainer died: its lease
//! expired), else starts a run for a base model whose buffer holds
//! `batch_threshold` examples. A run continues from the base model's active
//! adapter when it has the run's shape, so what earlier runs taught is kept
//! and "before" means what is served now. The adapter's files are written
//! to a private directory first and renamed into place; the registry row
//! that makes them visible is written in one transaction with the run's end,
//! and only while the trainer still holds the lease. A trainer killed at
//! any point therefore leaves no adapter half-published, and the run is
//! picked up again once its lease expires.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BackendKind, TextFormat, TrainingConfig,
    backend::{self, Progress, Trained},
    data,
    feedback::{Feedback, GOOD_RATING, MAX_TEXT_BYTES, NewFeedback},
    runs::{self, CreateError, Outcome, RunRow, status},
};
use orchestrator_core::{
    events::Events,
    metrics::{FEEDBACK, TRAINING_LOSS, TRAINING_RUNS, TRAINING_TOKENS_PER_SEC},
};
use orchestrator_models::{
    Models, adapter_files,
    adapters::{self, status as adapter_status},
};

/// How a trainer behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Names this trainer in leases; unique per process.
    pub owner: String,
    pub lease: Duration,
    /// Pause between looks for work when there is none.
    pub poll: Duration,
    /// Buffered examples that start a run on their own.
    pub batch_threshold: u64,
    /// Promote an adapter that beats the served model at once (else it
    /// waits as a candidate for `POST /api/v1/adapters/{id}/promote`).
    pub auto_promote: bool,
    /// Settings of runs the trainer starts itself.
    pub config: TrainingConfig,
    /// Self-play: when idle, up to this many synthetic examples per buffered
    /// human example (0: off).
    pub self_play: u64,
    /// Where adapter directories go.
    pub adapters_dir: PathBuf,
    pub backend: BackendKind,
}

/// Sees every step of the run in progress (a terminal progress bar).
pub type Observer = Arc<dyn Fn(&RunRow, &Progress) + Send + Sync>;

pub struct Trainer {
    db: DatabaseConnection,
    feedback: Arc<Feedback>,
    models: Arc<Models>,
    notices: Arc<Events>,
    settings: Settings,
    observer: Option<Observer>,
}

impl Trainer {
    pub fn new(
        feedback: Arc<Feedback>,
        models: Arc<Models>,
        notices: Arc<Events>,
        settings: Settings,
    ) -> Self {
        Self {
            db: feedback.db().clone(),
            feedback,
            models,
            notices,
            settings,
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Works until `shutdown`; a run in progress is abandoned (its lease
    /// lapses and another trainer resumes it).
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(owner = %self.settings.owner, "trainer started");
        while !shutdown.is_cancelled() {
            // A stopped system starts no run; one under way finishes.
            if !orchestrator_core::system::current().runs_work()
                && !orchestrator_core::system::wait_until_running(&shutdown).await
            {
                break;
            }
            let worked = match self.tick(&shutdown).await {
                Ok(worked) => worked,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "trainer tick failed");
                    false
                }
            };
            if !worked {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(self.settings.poll) => {}
                }
            }
        }
        Ok(())
    }

    /// One look for work; true when a run was trained or started.
    pub async fn tick(&self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let lease_ms = self.settings.lease.as_millis() as u64;
        if let Some(run) = runs::claim(&self.db, &self.settings.owner, lease_ms).await? {
            // Counted as this process's job in flight, so a system stop
            // waits for it.
            let counts = orchestrator_core::fleet::job_counts();
            counts.started();
            self.execute(run, shutdown).await;
            counts.finished();
            return Ok(true);
        }
        for base in self.models.trainable() {
            // Only people's examples fill the buffer; self-play's ride along.
            let (human, _) = self.feedback.buffered_by_origin(&base.id).await?;
            if human < self.settings.batch_threshold {
                continue;
            }
            match runs::create(&self.feedback, &base.id, &self.settings.config, "threshold").await {
                Ok(run) => {
                    tracing::info!(run = %run.id, base = %base.id, "buffer full: run queued");
                    return Ok(true);
                }
                Err(CreateError::Busy(_) | CreateError::TooFew(_)) => {}
                Err(CreateError::Store(err)) => return Err(err),
            }
        }
        if self.settings.self_play > 0 {
            return self.play().await;
        }
        Ok(false)
    }

    /// Self-play: the current best model (`base@latest`) rewords the prompt
    /// of a buffered human example, and the rewording with the same target
    /// joins the buffer as a synthetic example, so a run sees each lesson
    /// asked more than one way. Synthetic examples are counted apart
    /// everywhere (feedback metric, run's `synthetic_examples`) and never
    /// start a run on their own.
    async fn play(&self) -> anyhow::Result<bool> {
        for base in self.models.trainable() {
            let (human, synthetic) = self.feedback.buffered_by_origin(&base.id).await?;
            if human == 0 || synthetic >= human * self.settings.self_play {
                continue;
            }
            let Some(example) = self
                .feedback
                .buffered_human(&base.id, synthetic % human)
                .await?
            else {
                continue;
            };
            let ask = format!(
                "Rewrite this question in other words. Reply with the rewritten question only.\n\nQuestion: {}",
                example.prompt
            );
            let params = orchestrator_llm::GenerationParams {
                max_tokens: 64,
                temperature: 0.8,
                seed: synthetic,
                ..Default::default()
            };
            let answer = self
                .models
                .complete(
                    &format!("{}@latest", base.id),
                    &[orchestrator_llm::ChatMessage::new("user", ask)],
                    &params,
                    None,
                )
                .await
                .map_err(|e| anyhow::anyhow!("self-play: {e}"))?;
            let reworded = answer.completion.text.trim().to_string();
            if reworded.is_empty() || reworded == example.prompt || reworded.len() > MAX_TEXT_BYTES
            {
                continue;
            }
            self.feedback
                .add(NewFeedback {
                    task_id: None,
                    base_model: base.id.clone(),
                    prompt: reworded,
                    response: Some(example.target),
                    rating: GOOD_RATING,
                    correction: None,
                    synthetic: true,
                })
                .await?;
            metrics::counter!(FEEDBACK, "origin" => "synthetic", "example" => "true").increment(1);
            return Ok(true);
        }
        Ok(false)
    }

    /// Trains a leased run and records how it ended.
    async fn execute(&self, run: RunRow, shutdown: &CancellationToken) {
        tracing::info!(run = %run.id, base = %run.base_model, attempt = run.attempts, "training");
        let outcome = match self.train(&run, shutdown).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => return,
            Err(err) => {
                let error = format!("{err:#}");
                tracing::warn!(run = %run.id, %error, "training failed");
                let failed = Outcome {
                    status: status::FAILED,
                    eval_after: None,
                    adapter_id: None,
                    error: Some(error),
                };
                if let Err(err) =
                    runs::finish(&self.db, &run.id, &self.settings.owner, failed).await
                {
                    tracing::warn!(%err, "could not record the failed run");
                }
                status::FAILED
            }
        };
        metrics::counter!(TRAINING_RUNS, "outcome" => outcome).increment(1);
    }

    /// None when the run was given up (lease lost, shutting down).
    async fn train(
        &self,
        run: &RunRow,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<&'static str>> {
        let base = self
            .models
            .registry()
            .get(&run.base_model)
            .with_context(|| format!("{} is not in the model registry", run.base_model))?;
        let gguf = self.models.weights_path(base);
        let config = runs::config(run)?;
        let examples = runs::examples(run)?;
        let start_from = self.start_from(&run.base_model, &config).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let job = {
            let (stop, base_model) = (stop.clone(), run.base_model.clone());
            let kind = self.settings.backend;
            tokio::task::spawn_blocking(move || {
                let job = Job {
                    kind,
                    gguf: &gguf,
                    base_model: &base_model,
                    examples: &examples,
                    config: &config,
                    start_from: start_from.as_deref(),
                };
                train_blocking(job, &stop, progress_tx)
            })
        };
        let kept = self.watch(run, progress_rx, &stop, shutdown).await;
        let trained = job.await.context("the training thread panicked")??;
        if !kept {
            return Ok(None);
        }
        let Some(trained) = trained else {
            return Ok(None);
        };
        self.publish(run, trained).await
    }

    /// The active adapter of `base_model`, when it has the run's shape.
    async fn start_from(
        &self,
        base_model: &str,
        config: &TrainingConfig,
    ) -> anyhow::Result<Option<PathBuf>> {
        let rows = adapters::list(&self.db).await?;
        let Some(active) = rows
            .into_iter()
            .find(|a| a.base_model == base_model && a.status == adapter_status::ACTIVE)
        else {
            return Ok(None);
        };
        let path = adapter_files::local_dir(
            &self.db,
            &active,
            &self.settings.adapters_dir.join(".from-store"),
        )
        .await?;
        let shape: Option<orchestrator_llm::lora::AdapterConfig> =
            std::fs::read(path.join(orchestrator_llm::lora::CONFIG_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let same = shape.is_some_and(|s| {
            s.r == config.rank
                && s.lora_alpha == config.alpha
                && s.target_modules == config.target_modules
        });
        Ok(same.then_some(path))
    }

    /// Heartbeats the lease with each step's progress until the training
    /// thread ends. False when the lease was lost or the trainer is
    /// stopping (the thread is then told to stop).
    async fn watch(
        &self,
        run: &RunRow,
        mut steps: mpsc::UnboundedReceiver<Progress>,
        stop: &AtomicBool,
        shutdown: &CancellationToken,
    ) -> bool {
        let lease_ms = self.settings.lease.as_millis() as u64;
        let mut beat = tokio::time::interval(self.settings.lease / 3);
        let mut latest = Progress::default();
        loop {
            tokio::select! {
                step = steps.recv() => match step {
                    Some(progress) => {
                        if let Some(loss) = progress.loss_curve.last() {
                            metrics::gauge!(TRAINING_LOSS, "base_model" => run.base_model.clone()).set(*loss as f64);
                        }
                        metrics::gauge!(TRAINING_TOKENS_PER_SEC, "base_model" => run.base_model.clone())
                            .set(progress.tokens_per_sec);
                        if let Some(observer) = &self.observer {
                            observer(run, &progress);
                        }
                        latest = progress;
                        continue;
                    }
                    None => return true,
                },
                _ = beat.tick() => {}
                _ = shutdown.cancelled() => {
                    stop.store(true, Ordering::Relaxed);
                    return false;
                }
            }
            let held =
                runs::heartbeat(&self.db, &run.id, &self.settings.owner, lease_ms, &latest).await;
            match held {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(run = %run.id, "lease lost: another trainer has the run");
                    stop.store(true, Ordering::Relaxed);
                    return false;
                }
                Err(err) => tracing::warn!(%err, "heartbeat failed; retrying"),
            }
        }
    }

    /// Writes the adapter's files, then records the adapter and the run's
    /// end in one transaction.
    async fn publish(
        &self,
        run: &RunRow,
        trained: Trained,
    ) -> anyhow::Result<Option<&'static str>> {
        let improved = trained.eval_after.is_finite() && trained.eval_after < trained.eval_before;
        let (run_status, adapter_state) = match (improved, self.settings.auto_promote) {
            (true, true) => (status::PROMOTED, adapter_status::ACTIVE),
            (true, false) => (status::PROMOTED, adapter_status::CANDIDATE),
            (false, _) => (status::REJECTED, adapter_status::REJECTED),
        };
        let dir = self.write_files(run, &trained).await?;
        let metrics = json!({
            "eval_before": trained.eval_before,
            "eval_after": finite(trained.eval_after),
            "train_examples": trained.progress.train_examples,
            "eval_examples": trained.progress.eval_examples,
            "train_tokens": trained.train_tokens,
            "seconds": trained.seconds,
            "tokens_per_sec": trained.progress.tokens_per_sec,
            "final_loss": trained.progress.loss_curve.last(),
        });
        let txn = orchestrator_core::store::begin_write(&self.db).await?;
        let adapter = adapters::publish(
            &txn,
            &run.base_model,
            &run.id,
            &dir.to_string_lossy(),
            &metrics,
            adapter_state,
        )
        .await?;
        // Processes on other machines load the adapter from the store.
        adapter_files::store(&txn, &adapter.id, &dir).await?;
        // Progress first: `finish` ends the lease the heartbeat checks.
        runs::heartbeat(&txn, &run.id, &self.settings.owner, 0, &trained.progress).await?;
        let ended = runs::finish(
            &txn,
            &run.id,
            &self.settings.owner,
            Outcome {
                status: run_status,
                eval_after: finite(trained.eval_after),
                adapter_id: Some(adapter.id.clone()),
                error: None,
            },
        )
        .await?;
        if !ended {
            // Another trainer owns the run now; it will publish.
            drop(txn);
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(None);
        }
        txn.commit().await?;
        // This process serves the change at once; others on the notice.
        if let Err(err) = self.models.refresh_adapters().await {
            tracing::warn!(%err, "reloading adapters failed");
        }
        tracing::info!(
            run = %run.id, adapter = %adapter.id, state = adapter_state,
            eval_before = trained.eval_before, eval_after = trained.eval_after,
            "adapter published"
        );
        self.notices
            .publish(
                &run.base_model,
                json!({"adapter_id": adapter.id, "status": adapter_state}),
            )
            .await;
        Ok(Some(if adapter_state == adapter_status::CANDIDATE {
            "candidate"
        } else {
            run_status
        }))
    }

    /// Saves the adapter under a private name, then renames it into place,
    /// so its directory is either complete or absent.
    async fn write_files(&self, run: &RunRow, trained: &Trained) -> anyhow::Result<PathBuf> {
        let base_dir = self.settings.adapters_dir.join(&run.base_model);
        let name = format!("{}-{}", run.id, run.attempts);
        let partial = base_dir.join(format!(".partial-{name}"));
        let dir = base_dir.join(&name);
        let model_config = trained.model;
        let adapter = trained.adapter.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<PathBuf> {
            let _ = std::fs::remove_dir_all(&partial);
            adapter.save(&partial, &model_config)?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&partial, &dir)
                .with_context(|| format!("cannot move the adapter to {}", dir.display()))?;
            Ok(dir)
        })
        .await?
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// What one training thread works on.
struct Job<'a> {
    kind: BackendKind,
    gguf: &'a Path,
    base_model: &'a str,
    examples: &'a [data::Example],
    config: &'a TrainingConfig,
    start_from: Option<&'a Path>,
}

/// The training itself, on a blocking thread. None when told to stop.
fn train_blocking(
    job: Job<'_>,
    stop: &AtomicBool,
    progress: mpsc::UnboundedSender<Progress>,
) -> anyhow::Result<Option<Trained>> {
    let Job {
        kind,
        gguf,
        base_model,
        examples,
        config,
        start_from,
    } = job;
    let format = TextFormat::from_gguf(gguf)?;
    let (train_set, eval_set) = match examples.iter().any(|e| e.held_out) {
        // A dataset's own eval split.
        true => {
            let (eval, train): (Vec<data::Example>, Vec<data::Example>) =
                examples.iter().cloned().partition(|e| e.held_out);
            let train_set = format.encode(&train, config.max_seq_len)?;
            let eval_set = format.encode(&eval, config.max_seq_len)?;
            anyhow::ensure!(
                !train_set.is_empty() && !eval_set.is_empty(),
                "of the run's {} training and {} held-out examples, {} and {} fit in max_seq_len {}",
                train.len(),
                eval.len(),
                train_set.len(),
                eval_set.len(),
                config.max_seq_len
            );
            let mut train_set = train_set;
            train_set.shuffle(&mut StdRng::seed_from_u64(config.seed));
            (train_set, eval_set)
        }
        false => {
            let sequences = format.encode(examples, config.max_seq_len)?;
            anyhow::ensure!(
                sequences.len() >= runs::MIN_RUN_EXAMPLES,
                "only {} of the run's {} examples fit in max_seq_len {}",
                sequences.len(),
                examples.len(),
                config.max_seq_len
            );
            data::split(sequences, config.eval_fraction, config.seed)
        }
    };
    let mut backend = crate::open_backend(kind, gguf, base_model, config, start_from)?;
    let stopped = "stopped";
    let result = backend::train(backend.as_mut(), &train_set, &eval_set, config, &mut |p| {
        let _ = progress.send(p.clone());
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!(stopped);
        }
        Ok(())
    });
    match result {
        Ok(trained) => Ok(Some(trained)),
        Err(err) if err.to_string() == stopped => Ok(None),
        Err(err) => Err(err),
    }
}
