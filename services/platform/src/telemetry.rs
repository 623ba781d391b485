//! Logs through `tracing`: human-readable by default, JSON when asked.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber. Safe to call more than once (tests start
/// many servers in one process): later calls keep the first subscriber.
pub fn init(settings: &Settings) {
    // Checked with the rest of the configuration; "info" if it was not.
    let filter = EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match settings.log_format {
        // Colours for a terminal only: a log file or a collector gets plain text.
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false))
            .try_init(),
    };
}
