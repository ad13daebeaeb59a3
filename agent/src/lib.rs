//! mcp-agent: runs a node's services as rootless podman containers and
//! records them in its SQLite registry.
//!
//! Bottom to top: `config`, `node`, `ports`, `volumes`, `runtime` (the
//! container runtime trait and podman), `registry`, `outcome`, `alerts`,
//! `platform` (where certificates, DNS records and routes go) →
//! `handle` (the shared [`handle::Agent`]) → `wiring`, `deploy`,
//! `lifecycle`, `status`, `snapshot`, `render`, `adopt`, `health` → `boot`,
//! `monitor`, `link`, `metrics` → `rpc` (the gRPC edge).

pub mod adopt;
pub mod alerts;
pub mod boot;
pub mod config;
pub mod deploy;
pub mod handle;
pub mod health;
pub mod lifecycle;
pub mod link;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod outcome;
pub mod pb;
pub mod platform;
pub mod ports;
pub mod registry;
pub mod render;
pub mod rpc;
pub mod runtime;
pub mod snapshot;
pub mod status;
pub mod volumes;
pub mod wiring;
