//! Logging: structured `tracing` output to stderr, as text or JSON.
//!
//! **Architecture Invariant:** log events carry ids, field names, routes and
//! counts, never a personal value or a request body. The filter comes from
//! `CONSENTVAULT_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Does nothing if one is already installed
/// (as in tests that run several servers in one process).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("CONSENTVAULT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _already_installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
