//! Logging set-up: `tracing` with an `EnvFilter` (`RUST_LOG`), as text or JSON.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The filter when `RUST_LOG` is unset. kube's HTTP layer logs every 5xx answer at ERROR
/// (including the API server's 500s on `/readyz` while it starts); failed calls reach our code
/// as errors and are logged there, with context.
pub const DEFAULT_FILTER: &str = "info,kube_client::client::builder=off";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter of the user-facing tools when `RUST_LOG` is unset: their output is their result,
/// so only warnings and errors are logged.
pub const TOOLS_FILTER: &str = "warn,kube_client=off";

/// Installs the global subscriber; `RUST_LOG` filters (default `default_filter`). Safe to call
/// twice.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
}
