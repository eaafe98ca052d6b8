//! The training loop, shared by every backend: held-out loss before, epochs
//! of seeded shuffled batches, held-out loss after. A backend does only the
//! tensor work (forward, backward, optimizer step, export).

use std::{path::Path, time::Instant};

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    TrainingConfig,
    data::{Batch, Sequence},
};
use orchestrator_llm::{
    llama::Config,
    lora::{AdapterConfig, AdapterWeights, LoraPair, Target},
};

/// What a backend does with tensors.
pub trait TrainBackend {
    fn name(&self) -> &'static str;
    /// One optimizer step; returns the batch's mean loss. `seed` draws the
    /// step's dropout masks.
    fn step(&mut self, batch: &Batch, seed: u64) -> anyhow::Result<f32>;
    /// The batch's mean loss without dropout or update.
    fn eval(&mut self, batch: &Batch) -> anyhow::Result<f32>;
    /// The trained adapter, in the base model's row order.
    fn export(&self) -> anyhow::Result<AdapterWeights>;
    fn model_config(&self) -> Config;
    /// The LoRA shape being trained.
    fn adapter_config(&self) -> &AdapterConfig;
    /// Overwrites one LoRA pair (GGUF row order).
    fn set_pair(&mut self, layer: usize, target: Target, pair: &LoraPair) -> anyhow::Result<()>;
}

/// Continues training from the saved adapter in `dir`, which must have the
/// backend's rank and targets.
pub fn load_adapter(backend: &mut dyn TrainBackend, dir: &Path) -> anyhow::Result<()> {
    let saved = AdapterWeights::load(dir, &backend.model_config())?;
    let wanted = backend.adapter_config();
    anyhow::ensure!(
        saved.config.r == wanted.r && saved.config.target_modules == wanted.target_modules,
        "the adapter in {} has another rank or targets",
        dir.display()
    );
    for (layer, pairs) in saved.layers.iter().enumerate() {
        for (&target, pair) in pairs {
            backend.set_pair(layer, target, pair)?;
        }
    }
    Ok(())
}

/// A run's progress, stored with the run and shown by the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    /// Mean training loss of each step.
    pub loss_curve: Vec<f32>,
    /// Tokens (prompt and answer) put through the model per second of
    /// training so far.
    pub tokens_per_sec: f64,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub eval_before: Option<f64>,
}

/// What a finished loop produced.
pub struct Trained {
    pub adapter: AdapterWeights,
    /// The shape of the model the adapter is for.
    pub model: Config,
    pub eval_before: f64,
    pub eval_after: f64,
    pub progress: Progress,
    pub train_tokens: usize,
    pub seconds: f64,
}

/// Runs the loop. `report` sees the progress after every step; an error
/// from it (the run was taken away, the process is stopping) ends the loop.
pub fn train(
    backend: &mut dyn TrainBackend,
    train_set: &[Sequence],
    eval_set: &[Sequence],
    config: &TrainingConfig,
    report: &mut dyn FnMut(&Progress) -> anyhow::Result<()>,
) -> anyhow::Result<Trained> {
    anyhow::ensure!(
        !train_set.is_empty() && !eval_set.is_empty(),
        "a run needs at least one training and one held-out example"
    );
    let steps_per_epoch = train_set.len().div_ceil(config.batch_size);
    let mut progress = Progress {
        total_steps: steps_per_epoch * config.epochs,
        train_examples: train_set.len(),
        eval_examples: eval_set.len(),
        ..Progress::default()
    };
    let eval_before = evaluate(backend, eval_set, config.batch_size)?;
    progress.eval_before = Some(eval_before);
    report(&progress)?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let started = Instant::now();
    let mut tokens = 0usize;
    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(config.batch_size) {
            let sequences: Vec<&Sequence> = chunk.iter().map(|&i| &train_set[i]).collect();
            let batch = Batch::pack(&sequences);
            let step_seed = config.seed ^ ((progress.step as u64 + 1) << 20);
            let loss = backend.step(&batch, step_seed)?;
            tokens += batch.tokens.len();
            progress.epoch = epoch + 1;
            progress.step += 1;
            progress.loss_curve.push(loss);
            progress.tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
            report(&progress)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let eval_after = evaluate(backend, eval_set, config.batch_size)?;
    Ok(Trained {
        adapter: backend.export()?,
        model: backend.model_config(),
        eval_before,
        eval_after,
        progress,
        train_tokens: tokens,
        seconds,
    })
}

/// Mean loss per scored token over `sequences`.
pub fn evaluate(
    backend: &mut dyn TrainBackend,
    sequences: &[Sequence],
    batch_size: usize,
) -> anyhow::Result<f64> {
    let mut total = 0.0f64;
    let mut scored = 0usize;
    for chunk in sequences.chunks(batch_size) {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let batch = Batch::pack(&refs);
        let loss = backend.eval(&batch)?;
        total += loss as f64 * batch.targets.len() as f64;
        scored += batch.targets.len();
    }
    Ok(total / scored.max(1) as f64)
}
