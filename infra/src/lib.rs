//! The infrastructure every mcp binary stands on: TLS 1.3 configs,
//! listeners and the authorization layer, the built-in CA, bounded HTTPS
//! endpoints and the MCIAS client, files with private modes, configuration
//! loading, Prometheus metrics, logging, daemon start and stop, and the one
//! shape of background work. No SQLite here (`mcp-store`), no wire types (`mcp-proto`).

pub mod config;
pub mod daemon;
pub mod endpoint;
pub mod fsutil;
pub mod logging;
pub mod mcias;
pub mod metrics;
pub mod pki;
pub mod random;
pub mod tls;
pub mod worker;

/// Version of this build, shown by every binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Git commit of this build (set by the build script), or "unknown".
pub const GIT_COMMIT: &str = env!("MCP_GIT_COMMIT");

/// [`GIT_COMMIT`] read from the binary's data at run time: an optimised
/// build may otherwise inline the short constant into instructions, and a
/// binary whose embedded commit was rewritten (the upgrade tests and
/// benchmark make "version B" that way) would report the old one.
pub fn git_commit() -> &'static str {
    std::hint::black_box(GIT_COMMIT)
}

/// `<version> (commit <hash>)`, for `--version`.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("MCP_GIT_COMMIT"), ")");
