//! Logging to stderr through tracing-subscriber. `RUST_LOG` wins over the given level
//! (which for the agent is `log.level`). Under systemd (`JOURNAL_STREAM` set) lines carry
//! no timestamp and no colour: journald stamps every line itself and stores raw bytes.

use std::io::IsTerminal;

/// Installs the global subscriber; a second call is a no-op.
pub fn init(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journal = under_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::stderr().is_terminal());
    let _ = if journal {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// Whether stderr goes to journald.
pub fn under_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
}
