//! Public routes: after a deploy, every public route of the service gets
//! an edge route on a healthy edge node, backed by the worker's proxy
//! listener; hostnames no longer public lose theirs. `mcp edge list`
//! compares the records with what the edges serve now.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use mcp_model::service::ServiceDef;

use crate::agents::EdgeRouteOrder;
use crate::db::EdgeRow;
use crate::error::{FleetError, Result};
use crate::fanout;
use crate::fleet::Fleet;
use crate::reports::Step;

/// A recorded edge route and what its edge reports now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRouteState {
    pub route: EdgeRow,
    /// ok | missing | unreachable
    pub state: &'static str,
}

/// Public routes with what their edge reports now.
pub async fn edge_routes(fleet: &Fleet) -> Result<Vec<EdgeRouteState>> {
    let rows = fleet.db.edge_routes()?;
    let edges: Vec<String> = rows
        .iter()
        .map(|r| r.edge_node.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let served: HashMap<String, Result<crate::reports::ProxyRoutes>> =
        fanout::proxy_routes(fleet, &edges).await.into_iter().collect();
    Ok(rows
        .into_iter()
        .map(|route| {
            let state = match served.get(&route.edge_node) {
                Some(Ok(l)) if l.routes.iter().any(|x| x.hostname == route.hostname) => "ok",
                Some(Ok(_)) => "missing",
                _ => "unreachable",
            };
            EdgeRouteState { route, state }
        })
        .collect())
}

/// After a deploy on `node`: every public route of `def` gets an edge
/// route on a healthy edge node; edge routes of hostnames no longer public
/// are removed. Returns the step, if there was anything to do.
pub async fn sync_edge(fleet: &Fleet, def: &ServiceDef, node: &str) -> Option<Step> {
    let started = Instant::now();
    let public: Vec<(String, u16)> = def
        .components
        .iter()
        .flat_map(|c| &c.routes)
        .filter(|r| r.public)
        .filter_map(|r| r.hostname.clone().map(|h| (h, r.port as u16)))
        .collect();
    let existing: Vec<EdgeRow> = match fleet.db.edge_routes() {
        Ok(rows) => rows.into_iter().filter(|e| e.service == def.name).collect(),
        Err(e) => return Some(Step::timed("edge", started, Err(e.to_string()))),
    };
    if public.is_empty() && existing.is_empty() {
        return None;
    }
    let mut done = Vec::new();
    let mut problems = Vec::new();
    for stale in existing
        .iter()
        .filter(|e| !public.iter().any(|(h, _)| h == &e.hostname))
    {
        match remove_edge(fleet, stale).await {
            Ok(()) => done.push(format!("removed {}", stale.hostname)),
            Err(e) => problems.push(format!("{}: {e}", stale.hostname)),
        }
    }
    for (hostname, port) in &public {
        match setup_edge(fleet, def, node, hostname, *port).await {
            Ok(edge) => done.push(format!("{hostname} on {edge}")),
            Err(e) => problems.push(format!("{hostname}: {e}")),
        }
    }
    let result = if problems.is_empty() {
        Ok(done.join(", "))
    } else {
        Err(problems.join("; "))
    };
    Some(Step::timed("edge", started, result))
}

/// Where the edge reaches a worker's proxy listener: a wildcard listener
/// is reached at the worker's registered IPv4 address (loopback if none).
fn backend_address(listener: String, worker_ip: Option<std::net::Ipv4Addr>) -> String {
    match listener.rsplit_once(':') {
        Some((host, p)) if host == "0.0.0.0" || host == "[::]" => {
            let ip = worker_ip.map(|i| i.to_string()).unwrap_or_else(|| "127.0.0.1".into());
            format!("{ip}:{p}")
        }
        _ => listener,
    }
}

/// Asks an edge node to serve `hostname` for `def`, backed by the worker
/// `node`'s proxy listener for the route port. Returns the edge's name.
async fn setup_edge(fleet: &Fleet, def: &ServiceDef, node: &str, hostname: &str, port: u16) -> Result<String> {
    let edge = fleet
        .nodes
        .names(|n| n.role == "edge" && n.healthy)
        .into_iter()
        .next()
        .ok_or_else(|| FleetError::Precondition("no healthy edge node".into()))?;
    let backend_hostname = fleet.internal_name(&def.name);
    let timeout = fleet.cfg.timeouts.edge_route;
    // Where the worker's proxy listens for this route port.
    let routes = fleet.agents.proxy_routes(&fleet.target(node, timeout)?).await?;
    let listener = routes
        .routes
        .iter()
        .find(|r| r.service == def.name && r.listener_port == u32::from(port) && !r.listener.is_empty())
        .map(|r| r.listener.clone())
        .ok_or_else(|| {
            FleetError::Precondition(format!(
                "node {node} serves no proxy listener for port {port} of {}",
                def.name
            ))
        })?;
    let order = EdgeRouteOrder {
        hostname: hostname.to_string(),
        backend_hostname: backend_hostname.clone(),
        backend_port: port,
        backend_tls: true,
        service: def.name.clone(),
        port,
        backend_address: backend_address(listener, fleet.nodes.ipv4(node)),
    };
    // The edge asks the CA for the public name: record the route first.
    let mut row = EdgeRow {
        hostname: hostname.to_string(),
        service: def.name.clone(),
        edge_node: edge.clone(),
        backend_hostname,
        backend_port: port,
        cert_serial: String::new(),
        cert_expires_at: 0,
    };
    fleet.db.save_edge_route(&row)?;
    let set_up = match fleet.target(&edge, timeout) {
        Ok(to) => fleet.agents.setup_edge_route(&to, &order).await,
        Err(e) => Err(e),
    };
    match set_up {
        Ok(cert) => {
            row.cert_serial = cert.cert_serial;
            row.cert_expires_at = cert.cert_expires_at;
            fleet.db.save_edge_route(&row)?;
            tracing::info!(%hostname, %edge, service = %def.name, "edge route set up");
            Ok(edge)
        }
        Err(e) => {
            fleet.db.delete_edge_route(hostname)?;
            Err(e)
        }
    }
}

/// Removes an edge route from its edge and from the database.
async fn remove_edge(fleet: &Fleet, e: &EdgeRow) -> Result<()> {
    let to = fleet.target(&e.edge_node, fleet.cfg.timeouts.edge_route)?;
    fleet.agents.remove_edge_route(&to, &e.hostname, e.backend_port).await?;
    fleet.db.delete_edge_route(&e.hostname)?;
    Ok(())
}

/// Removes every edge route of `service` (after its worker side is gone);
/// returns the problems, one line each.
pub async fn remove_edges_of(fleet: &Fleet, service: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let routes = fleet.db.edge_routes().unwrap_or_default();
    for e in routes.iter().filter(|e| e.service == service) {
        if let Err(err) = remove_edge(fleet, e).await {
            problems.push(format!("edge route {} on {}: {err}", e.hostname, e.edge_node));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_address_of_a_listener() {
        let ip = Some(std::net::Ipv4Addr::new(10, 0, 0, 7));
        let cases = [
            ("0.0.0.0:10443", ip, "10.0.0.7:10443"),
            ("[::]:10443", ip, "10.0.0.7:10443"),
            ("0.0.0.0:10443", None, "127.0.0.1:10443"),
            ("10.0.0.9:10443", ip, "10.0.0.9:10443"),
            ("127.0.0.1:8080", None, "127.0.0.1:8080"),
        ];
        for (listener, worker, want) in cases {
            assert_eq!(backend_address(listener.to_string(), worker), want, "{listener}");
        }
    }
}
