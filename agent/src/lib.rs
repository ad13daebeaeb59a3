//! mcp-agent: runs a node's services as rootless podman containers and
//! records them in its SQLite registry.

pub mod adopt;
pub mod boot;
pub mod config;
pub mod health;
pub mod link;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod ops;
pub mod pb;
pub mod plan;
pub mod platform;
pub mod podman;
pub mod ports;
pub mod registry;
pub mod render;
pub mod rpc;
pub mod server;
pub mod snapshot;
pub mod spec;
pub mod wiring;
