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
    use std::io::IsTerminal;
    let filter = filter_of(std::env::var("CONSENTVAULT_LOG").ok().as_deref());
    // Colour only for a person at a terminal: a file or a collector gets
    // the text without escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _already_installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The filter for `CONSENTVAULT_LOG` (`info` when unset or invalid). The
/// storage engine's own records stop at warnings unless the setting names
/// it: below that they trace its internals, some from destructors run as a
/// thread exits, when the formatter's thread-local buffer is gone already.
pub fn filter_of(setting: Option<&str>) -> EnvFilter {
    let setting = setting.filter(|text| EnvFilter::try_new(text).is_ok()).unwrap_or("info");
    if setting.contains("sled") { EnvFilter::new(setting) } else { EnvFilter::new(format!("{setting},sled=warn")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_logs_warnings_only_unless_asked() {
        let directives = |setting| {
            let mut parts: Vec<String> = filter_of(setting).to_string().split(',').map(str::to_owned).collect();
            parts.sort();
            parts
        };
        assert_eq!(directives(None), ["info", "sled=warn"]);
        assert_eq!(directives(Some("debug")), ["debug", "sled=warn"]);
        assert_eq!(directives(Some("debug,sled=trace")), ["debug", "sled=trace"]);
        assert_eq!(directives(Some("==")), ["info", "sled=warn"]);
    }
}
