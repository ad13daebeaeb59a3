//! Certificates from the fleet CA: agents' own (signed from their CSRs),
//! services' (only for names the service holds on the asking node), and
//! the master's own, renewed in place.

use mcp_infra::pki::{self, LeafRequest};
use mcp_infra::tls::CertStore;
use mcp_model::identity::Identity;
use mcp_model::service;

use crate::error::{FleetError, Result};
use crate::fleet::Fleet;

/// A service certificate an agent asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCertRequest {
    /// The caller's node; empty: the caller's own.
    pub node: String,
    pub service: String,
    /// DNS names the certificate must carry.
    pub hostnames: Vec<String>,
    pub csr_pem: String,
}

/// Signs an agent certificate (`agent/<node>`) from its CSR.
pub fn sign_agent(fleet: &Fleet, node: &str, csr_pem: &str) -> Result<String> {
    fleet
        .ca
        .sign_csr(
            csr_pem,
            &Identity::Agent(node.to_string()),
            fleet.cfg.registration.cert_days,
        )
        .map_err(|e| FleetError::Invalid(format!("certificate signing request: {e}")))
}

/// Renews the master's own certificate when a third of its lifetime is
/// left, and swaps it into the listener. Returns whether it renewed.
pub fn renew_own_certificate(fleet: &Fleet, store: &CertStore) -> Result<bool> {
    let files = &fleet.cfg.tls;
    let pem = std::fs::read_to_string(&files.cert)
        .map_err(|e| FleetError::Internal(format!("{}: {e}", files.cert.display())))?;
    let (left, total) =
        pki::lifetime(&pem).ok_or_else(|| FleetError::Internal(format!("cannot read {}", files.cert.display())))?;
    if left > total / 3 {
        return Ok(false);
    }
    let (dns_names, ips) = pki::sans(&pem);
    let internal = |e: &dyn std::fmt::Display| FleetError::Internal(e.to_string());
    let issued = fleet
        .ca
        .issue(&LeafRequest {
            identity: Some(Identity::Master),
            dns_names,
            ips,
            days: 365,
        })
        .map_err(|e| internal(&e))?;
    issued.write(&files.cert, &files.key).map_err(|e| internal(&e))?;
    store.reload().map_err(|e| internal(&e))?;
    tracing::info!("master certificate renewed");
    Ok(true)
}

/// Names a service may carry on certificates the fleet CA issues to
/// `node`: its internal name and route hostnames when it is placed on
/// that node; public hostnames that node serves as an edge.
fn allowed_hostnames(fleet: &Fleet, node: &str, service: &str) -> Result<Vec<String>> {
    let mut allowed = Vec::new();
    match fleet.db.placement(service)? {
        // A service nobody placed (deployed with --direct): only its
        // internal name, the route hostnames are unknown to the master.
        None => allowed.push(fleet.internal_name(service)),
        Some(p) if p.node == node => {
            allowed.push(fleet.internal_name(service));
            let routes = p.def.components.iter().flat_map(|c| &c.routes);
            allowed.extend(routes.filter_map(|r| r.hostname.clone()));
        }
        Some(_) => {}
    }
    for e in fleet.db.edge_routes()? {
        if e.edge_node == node && e.service == service {
            allowed.push(e.hostname);
        }
    }
    Ok(allowed)
}

/// Signs a service certificate for `node` after checking every name.
pub fn issue_service_certificate(fleet: &Fleet, node: &str, req: &ServiceCertRequest) -> Result<String> {
    if !req.node.is_empty() && req.node != node {
        return Err(FleetError::Denied(format!(
            "agent-{node} may not ask for node {:?}",
            req.node
        )));
    }
    if req.hostnames.is_empty() {
        return Err(FleetError::Invalid("a certificate needs at least one hostname".into()));
    }
    let allowed = allowed_hostnames(fleet, node, &req.service)?;
    for h in &req.hostnames {
        service::check_hostname(h).map_err(|r| FleetError::Invalid(format!("hostname {h:?}: {r}")))?;
        if !allowed.contains(h) {
            return Err(FleetError::Denied(format!(
                "{h} is not a name of service {} on node {node}",
                req.service
            )));
        }
    }
    let chain = fleet
        .ca
        .sign_service_csr(&req.csr_pem, &req.hostnames, fleet.cfg.registration.cert_days)
        .map_err(|e| FleetError::Invalid(format!("certificate signing request: {e}")))?;
    tracing::info!(%node, service = %req.service, hostnames = ?req.hostnames, "service certificate issued");
    Ok(chain)
}
