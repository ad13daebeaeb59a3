//! Questions put to many nodes at once, in parallel: what they run
//! (`mcp ps`), what their proxies serve (`mcp route list`), and recovery
//! (`mcp agent recover`). A node that does not answer is reported, never
//! fatal.

use crate::error::{FleetError, Result};
use crate::fleet::Fleet;
use crate::reports::{ProxyRoute, Recovery, ServiceInfo};

/// One node's answer to a fan-out, or why it gave none.
#[derive(Debug, Clone, PartialEq)]
pub struct PerNode<T> {
    pub node: String,
    pub answer: std::result::Result<T, String>,
}

impl<T> PerNode<T> {
    fn new(node: String, answer: Result<T>) -> PerNode<T> {
        PerNode {
            node,
            answer: answer.map_err(|e| e.to_string()),
        }
    }
}

/// Every worker's services, with what the master's records say is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetServices {
    pub nodes: Vec<PerNode<Vec<ServiceInfo>>>,
    /// Services placed on a node that does not report them.
    pub missing: Vec<String>,
    /// node/service pairs running where the master did not place them.
    pub orphans: Vec<String>,
}

/// ListServices of every worker node (edge nodes run no services), in
/// parallel: (node, answer).
pub async fn list_workers(fleet: &Fleet) -> Vec<(String, Result<Vec<ServiceInfo>>)> {
    let nodes = fleet.nodes.names(|n| n.role != "edge");
    fleet
        .each(&nodes, fleet.cfg.timeouts.health_check, |agents, to| async move {
            agents.list_services(&to).await
        })
        .await
}

/// Every worker's services; unreachable nodes are reported.
pub async fn list(fleet: &Fleet) -> Result<FleetServices> {
    let results = list_workers(fleet).await;
    let placements = fleet.db.placements()?;
    let mut missing = Vec::new();
    for (node, services) in &results {
        let Ok(services) = services else { continue };
        for p in placements.iter().filter(|p| &p.node == node) {
            if !services.iter().any(|s| s.name == p.service) {
                missing.push(format!("{} (on {node}: {})", p.service, p.state));
            }
        }
    }
    Ok(FleetServices {
        nodes: results.into_iter().map(|(n, r)| PerNode::new(n, r)).collect(),
        missing,
        orphans: fleet.orphans(),
    })
}

/// Proxy routes of every node, in parallel.
pub async fn routes(fleet: &Fleet) -> Vec<PerNode<Vec<ProxyRoute>>> {
    let nodes = fleet.nodes.names(|_| true);
    proxy_routes(fleet, &nodes)
        .await
        .into_iter()
        .map(|(n, r)| PerNode::new(n, r.map(|l| l.routes)))
        .collect()
}

/// ListProxyRoutes of `nodes`, in parallel: (node, answer).
pub async fn proxy_routes(fleet: &Fleet, nodes: &[String]) -> Vec<(String, Result<crate::reports::ProxyRoutes>)> {
    fleet
        .each(nodes, fleet.cfg.timeouts.health_check, |agents, to| async move {
            agents.proxy_routes(&to).await
        })
        .await
}

/// `mcp agent recover`: every container of `node` (every node when empty)
/// back from its registry, nodes in parallel.
pub async fn recover(fleet: &Fleet, node: &str) -> Result<Vec<PerNode<Recovery>>> {
    let names = if node.is_empty() {
        fleet.nodes.names(|_| true)
    } else if fleet.nodes.contains(node) {
        vec![node.to_string()]
    } else {
        return Err(FleetError::NotFound(format!(
            "unknown node {node:?}; see mcp node list"
        )));
    };
    // Recreating every container takes a while: at least ten minutes.
    let timeout = fleet.cfg.timeouts.deploy.max(600);
    let results = fleet
        .each(&names, timeout, |agents, to| async move { agents.recover(&to).await })
        .await;
    Ok(results.into_iter().map(|(n, r)| PerNode::new(n, r)).collect())
}
