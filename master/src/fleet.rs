//! The master's shared state, handed to every subsystem: configuration,
//! the fleet database, the node table, the agent client, the CA, the
//! per-service locks and the internal zone's records. Subsystems are plain
//! functions over a [`Fleet`]; none of them holds state of its own.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use mcp_infra::pki::Ca;

use crate::agents::{AgentClient, Target};
use crate::config::MasterConfig;
use crate::db::{FleetDb, PlacementRow};
use crate::dns::Records;
use crate::error::{FleetError, Result};
use crate::limits::{RateLimiter, ServiceLocks};
use crate::nodes::Nodes;

/// Master state shared by all requests and background work.
pub struct Fleet {
    pub cfg: MasterConfig,
    pub db: FleetDb,
    /// Nodes, authoritative in memory; written back by [`Fleet::flush`].
    pub nodes: Nodes,
    pub agents: Arc<dyn AgentClient>,
    pub ca: Ca,
    /// One operation per service at a time.
    pub locks: ServiceLocks,
    /// Per-node limits on agent calls (register, heartbeat).
    pub limits: RateLimiter,
    /// The internal zone's records, served by the DNS server.
    pub records: Arc<Records>,
    /// Services agents run that the master did not place there (found by
    /// the last reconciliation).
    orphans: Mutex<Vec<String>>,
}

impl Fleet {
    /// Loads nodes and DNS records from the database.
    pub fn new(cfg: MasterConfig, db: FleetDb, ca: Ca, agents: Arc<dyn AgentClient>) -> Result<Fleet> {
        let nodes = Nodes::new(db.nodes()?);
        let records = Arc::new(Records::new());
        let mut by_name: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for r in db.dns_records()? {
            if let Ok(ip) = r.value.parse() {
                by_name.entry(r.name).or_default().push(ip);
            }
        }
        records
            .replace_all(by_name)
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        Ok(Fleet {
            locks: ServiceLocks::new(secs(cfg.timeouts.deploy)),
            limits: RateLimiter::default(),
            records,
            cfg,
            db,
            nodes,
            agents,
            ca,
            orphans: Mutex::default(),
        })
    }

    /// Internal zone of the fleet.
    pub fn zone(&self) -> &str {
        &self.cfg.dns.zone
    }

    /// `<service>.<zone>`: the service's internal name.
    pub fn internal_name(&self, service: &str) -> String {
        format!("{service}.{}", self.zone())
    }

    /// Writes changed nodes to the database (heartbeats are batched here).
    pub fn flush(&self) -> Result<()> {
        Ok(self.nodes.flush(&self.db)?)
    }

    /// Where to reach `node`'s agent, with a deadline of `timeout` seconds.
    pub fn target(&self, node: &str, timeout: u64) -> Result<Target> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| FleetError::NotFound(format!("unknown node {node:?}")))?;
        Ok(Target {
            node: n.name,
            address: n.address,
            timeout: secs(timeout),
        })
    }

    /// Calls every node of `nodes` in parallel, each within `timeout`
    /// seconds: (node, answer), in the order given.
    pub async fn each<'a, T, F, Fut>(&'a self, nodes: &'a [String], timeout: u64, call: F) -> Vec<(String, Result<T>)>
    where
        F: Fn(&'a dyn AgentClient, Target) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let call = &call;
        let calls = nodes.iter().map(|n| async move {
            let r = match self.target(n, timeout) {
                Ok(t) => call(&*self.agents, t).await,
                Err(e) => Err(e),
            };
            (n.clone(), r)
        });
        join_all(calls).await
    }

    /// The placement of `service`, or `NotFound`.
    pub fn placement_of(&self, service: &str) -> Result<PlacementRow> {
        self.db
            .placement(service)?
            .ok_or_else(|| FleetError::NotFound(format!("service {service} is not deployed")))
    }

    /// Orphans found by the last reconciliation.
    pub fn orphans(&self) -> Vec<String> {
        self.orphans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the orphans (reconciliation only).
    pub fn set_orphans(&self, orphans: Vec<String>) {
        *self.orphans.lock().unwrap_or_else(|p| p.into_inner()) = orphans;
    }
}

/// `s` seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
