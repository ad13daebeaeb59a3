//! mcp-master: the fleet master. Places services on nodes, coordinates
//! deploys, tracks node health, owns the fleet CA.
//!
//! Modules are listed in layers, bottom up: a module imports only from its
//! own layer or the layers before it, never from a later one.

// Foundations: configuration schema, the fleet database, what agents report.
pub mod config;
pub mod db;
pub mod reports;

// Errors, the agent client trait, locks and limits, the node table,
// metrics, and the DNS server for the internal zone.
pub mod agents;
pub mod dns;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod nodes;

/// The shared handle every subsystem works on.
pub mod fleet;

// Subsystems on the handle alone.
pub mod certs;
pub mod fanout;
pub mod health;
pub mod zone;

// Subsystems on those: joining, public routes, reconciliation.
pub mod admission;
pub mod edge;
pub mod reconcile;

/// Deploy coordination, on edge and zone.
pub mod deploy;

// On deploy: sync and snapshots; migration on all of them.
pub mod snapshots;
pub mod sync;

pub mod migrate;

/// The gRPC edge: both services, the agent client, proto ⇄ domain.
pub mod rpc;

#[cfg(test)]
mod testing;
