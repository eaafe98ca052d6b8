//! Prometheus metrics: the names every dashboard relies on, and the exporter
//! each process renders at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOBS_ENQUEUED: &str = "orchestrator_jobs_enqueued_total";
pub const JOBS_COMPLETED: &str = "orchestrator_jobs_completed_total";
pub const JOB_DURATION: &str = "orchestrator_job_duration_seconds";
pub const QUEUE_DEPTH: &str = "orchestrator_queue_depth";
pub const WORKERS_ACTIVE: &str = "orchestrator_workers_active";
pub const LLM_TOKENS: &str = "orchestrator_llm_tokens_total";
pub const LLM_REQUEST_DURATION: &str = "orchestrator_llm_request_duration_seconds";
pub const LLM_REQUEST_COST: &str = "orchestrator_llm_request_cost_dollars";
pub const TRAINING_RUNS: &str = "orchestrator_training_runs_total";
pub const TRAINING_LOSS: &str = "orchestrator_training_loss";
pub const TRAINING_TOKENS_PER_SEC: &str = "orchestrator_training_tokens_per_second";
pub const FEEDBACK: &str = "orchestrator_feedback_total";
pub const CAMPAIGN_OPS: &str = "orchestrator_campaign_ops_total";
pub const CAMPAIGN_ITEMS: &str = "orchestrator_campaign_items";
pub const CAMPAIGN_FRONTIER: &str = "orchestrator_campaign_frontier";
pub const CAMPAIGN_WORKERS: &str = "orchestrator_campaign_workers";
pub const FLEET_PROCESSES: &str = "orchestrator_fleet_processes";
pub const THROUGHPUT_TARGET: &str = "orchestrator_throughput_target";
pub const SUBSYSTEM_RESTARTS: &str = "orchestrator_subsystem_restarts_total";
pub const DATAGEN_EXAMPLES: &str = "orchestrator_datagen_examples_total";
pub const DATAGEN_SHARDS: &str = "orchestrator_datagen_shards_total";
pub const SCHEDULE_RUNS: &str = "orchestrator_schedule_runs_total";
pub const DELIVERIES: &str = "orchestrator_deliveries_total";
/// Backend calls that stored pushed jobs; with JOBS_ENQUEUED it gives the
/// mean batch (pushes arriving together share one call).
pub const PUSH_CALLS: &str = "orchestrator_push_calls_total";

/// Histogram buckets for job durations: from a no-op (microseconds) to a long
/// model call (minutes).
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0,
];

/// Histogram buckets for one model call: a cached local answer (tens of
/// milliseconds) to a long generation at its timeout (minutes).
const LLM_DURATION_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Histogram buckets for the price of one model call in dollars: free
/// (local) to a long answer from an expensive model.
const LLM_COST_BUCKETS: &[f64] = &[0.0, 0.000_01, 0.000_1, 0.001, 0.01, 0.1, 1.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that
/// renders the text format.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(JOB_DURATION.into()), DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(LLM_REQUEST_DURATION.into()),
                        LLM_DURATION_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(LLM_REQUEST_COST.into()),
                        LLM_COST_BUCKETS,
                    )
                })
                .expect("valid buckets")
                .install_recorder()
                .expect("install the Prometheus recorder");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        PUSH_CALLS,
        "Backend calls that stored pushed jobs (concurrent pushes share one)"
    );
    metrics::describe_counter!(
        LLM_TOKENS,
        "Tokens through language models, by model and direction (input, output)."
    );
    metrics::describe_histogram!(
        LLM_REQUEST_DURATION,
        "Time one model call took to answer in full, by model."
    );
    metrics::describe_histogram!(
        LLM_REQUEST_COST,
        "Price of one model call in dollars (its tokens at the registry's costs), by model."
    );
    metrics::describe_counter!(
        TRAINING_RUNS,
        "Training runs finished, by outcome (promoted, candidate, rejected, failed)."
    );
    metrics::describe_gauge!(
        TRAINING_LOSS,
        "Training loss of the latest step of the run in progress, by base model."
    );
    metrics::describe_gauge!(
        TRAINING_TOKENS_PER_SEC,
        "Tokens per second of the run in progress, by base model."
    );
    metrics::describe_counter!(
        FEEDBACK,
        "Feedback received, by origin (human, synthetic) and whether it became an example."
    );
    metrics::describe_counter!(
        CAMPAIGN_OPS,
        "Campaign operations finished, by campaign and kind (page, sitemap, storybook, or the failure: blocked, robots, http, ...)."
    );
    metrics::describe_gauge!(CAMPAIGN_ITEMS, "Distinct items a campaign has stored.");
    metrics::describe_gauge!(
        CAMPAIGN_FRONTIER,
        "URLs a campaign has admitted and not yet finished."
    );
    metrics::describe_gauge!(
        CAMPAIGN_WORKERS,
        "Workers holding one of a campaign's slots."
    );
    metrics::describe_counter!(
        DATAGEN_EXAMPLES,
        "Training examples generated and kept, by source."
    );
    metrics::describe_counter!(
        DATAGEN_SHARDS,
        "Dataset shards finished, by outcome (done, skipped)."
    );
    metrics::describe_counter!(
        SCHEDULE_RUNS,
        "Jobs pushed by recurring schedules, by queue (each due time once across the fleet)."
    );
    metrics::describe_counter!(
        DELIVERIES,
        "POSTs to HTTP targets and callback URLs, by queue and outcome (done, retry, refused)."
    );
    metrics::describe_counter!(
        SUBSYSTEM_RESTARTS,
        "In-process loops restarted after a panic, by subsystem."
    );
    metrics::describe_counter!(JOBS_ENQUEUED, "Jobs accepted into a queue.");
    metrics::describe_counter!(
        JOBS_COMPLETED,
        "Job attempts finished, by outcome (done, failed, dead)."
    );
    metrics::describe_histogram!(JOB_DURATION, "Run time of one job attempt.");
    metrics::describe_gauge!(QUEUE_DEPTH, "Jobs waiting in a queue (due or delayed).");
    metrics::describe_gauge!(WORKERS_ACTIVE, "Jobs being run right now by this process.");
}

/// Registers counter `name` at zero for each value of `label`, so that it
/// is exported before anything happens: Prometheus' `increase()` then sees
/// a first event as an increase instead of as a series that appeared.
pub fn register_at_zero(name: &'static str, label: &'static str, values: &[&'static str]) {
    for value in values {
        metrics::counter!(name, label => *value).increment(0);
    }
}

/// Serves the Prometheus text format; used by the API and by worker
/// processes' own listeners.
pub async fn render() -> String {
    install().render()
}

/// A minimal server for worker and trainer processes: `/metrics`, and
/// `/health` (the process is up and answering) for liveness probes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(render))
        .route("/health", axum::routing::get(|| async { "ok" }));
    tracing::info!(
        "metrics listening on http://{}/metrics",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
