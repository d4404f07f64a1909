//! One tracing set-up for pgwi programs: JSON lines when stdout is not a terminal (what AKS log collection
//! wants), human-readable otherwise; `RUST_LOG` respected; logs go to stderr so stdout stays for output.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

impl LogFormat {
    /// `PGWI_LOG_FORMAT` (`json` or `text`) if set, else JSON unless stdout is a terminal.
    pub fn detect() -> Self {
        match std::env::var("PGWI_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            Ok("text") => LogFormat::Text,
            _ if std::io::stdout().is_terminal() => LogFormat::Text,
            _ => LogFormat::Json,
        }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset (e.g. `info`).
/// Calling it twice is harmless: the second call changes nothing.
pub fn init(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
