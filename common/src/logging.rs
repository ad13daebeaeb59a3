//! Log output of the daemons: tracing to stderr, text or JSON.

use crate::config::LogSection;

/// Installs the global subscriber; `MCP_LOG` overrides the configured filter.
pub fn init(log: &LogSection) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
