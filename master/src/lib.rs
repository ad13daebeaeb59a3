//! mcp-master: the fleet master. Places services on nodes, coordinates
//! deploys, tracks node health, owns the fleet CA.

pub mod config;
pub mod db;
pub mod dns;
pub mod fleet;
pub mod metrics;
pub mod server;
