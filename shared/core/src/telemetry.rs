//! Logging set-up shared by the binaries (`RUST_LOG` filters, default info):
//! readable lines, or one JSON object per line in production mode (for log
//! collectors).

use tracing_subscriber::EnvFilter;

use crate::config::Mode;

/// Logs as `ORCH_MODE` (read from the environment: logging starts before
/// the command line is parsed) asks.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match Mode::from_env() {
        Mode::Production => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
}

/// Logs panics as one error line: a panicking job handler is an ordinary
/// failed attempt, not a reason to print a backtrace into the service log.
pub fn log_panics_briefly() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
}
