//! Logging set-up shared by the binaries (`RUST_LOG` filters, default info).

use tracing_subscriber::EnvFilter;

pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Logs panics as one error line: a panicking job handler is an ordinary
/// failed attempt, not a reason to print a backtrace into the service log.
pub fn log_panics_briefly() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
}
