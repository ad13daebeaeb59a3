//! Log output of the daemons: tracing to stderr, text or JSON.

use crate::config::LogSection;

/// Installs the global subscriber; `MCP_LOG` overrides the configured filter.
pub fn init(log: &LogSection) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_LOG")
        // hickory logs every DNS query at info: keep that out of our logs.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},hickory_server=warn", log.level)));
    use std::io::IsTerminal;
    // Colour only for people at a terminal, never in log files or journald.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
