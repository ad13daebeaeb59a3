//! Shared library of mcp: generated protos, the service-definition model and
//! its validation, configuration loading, identities, TLS and the certificate
//! authority, SQLite helpers.

pub mod proto {
    //! Generated gRPC types; only this module and `convert` know prost types.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mcp.v1");

    /// Encoded `google.protobuf.FileDescriptorSet` of every mcp proto: lets
    /// tests enumerate each service's RPCs from what was compiled.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mcp_descriptor.bin"));
}

pub mod config;
pub mod convert;
pub mod db;
pub mod endpoint;
pub mod fsutil;
pub mod identity;
pub mod join;
pub mod logging;
pub mod mcias;
pub mod metrics;
pub mod pki;
pub mod placement;
pub mod service;
pub mod snapshot;
pub mod sync;
pub mod tls;

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
