//! A progress bar per running dataset generation run, drawn on the
//! terminal a `datagen` worker is attached to (never into a log file or a
//! pipe: indicatif draws nothing when stderr is not a terminal).

use std::{collections::HashMap, io::IsTerminal, sync::Arc, time::Duration};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use orchestrator_datagen::runs::Datasets;
use tokio_util::sync::CancellationToken;

/// How often the bars follow the store.
const REFRESH: Duration = Duration::from_millis(500);

/// Whether bars would be seen: stderr is a terminal.
pub fn wanted() -> bool {
    std::io::stderr().is_terminal()
}

/// Draws the bars until `stop`; each run's bar finishes with the run.
pub fn spawn(datasets: Arc<Datasets>, stop: CancellationToken) {
    tokio::spawn(async move {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let style =
            ProgressStyle::with_template("{prefix:24!} [{bar:30}] {pos}/{len} shards  {msg}")
                .expect("a valid template")
                .progress_chars("=> ");
        let mut shown: HashMap<String, ProgressBar> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            let Ok(running) = datasets.running().await else {
                continue;
            };
            for run in &running {
                let bar = shown.entry(run.id.clone()).or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(run.shards_total));
                    bar.set_style(style.clone());
                    bar.set_prefix(run.name.clone());
                    bar
                });
                bar.set_position(run.shards_done);
                bar.set_message(format!(
                    "{} examples, {:.0}/s",
                    run.kept, run.examples_per_s
                ));
            }
            // Runs no longer running completed or were cancelled.
            shown.retain(|id, bar| {
                let still = running.iter().any(|run| &run.id == id);
                if !still {
                    bar.finish_with_message("finished");
                }
                still
            });
        }
        for bar in shown.values() {
            bar.abandon();
        }
    });
}
