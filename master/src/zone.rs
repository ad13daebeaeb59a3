//! The internal zone's contents: agents publish and withdraw
//! `<service>.<zone>` for the services placed on their node; every change
//! goes to the fleet database and to the records the DNS server answers from.

use std::net::Ipv4Addr;

use crate::db::DnsRow;
use crate::error::{FleetError, Result};
use crate::fleet::Fleet;

/// A record an agent publishes or withdraws.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordRequest {
    /// The caller's node; empty: the caller's own.
    pub node: String,
    pub service: String,
    /// `<service>.<zone>`.
    pub hostname: String,
    /// IPv4 address; empty for a removal.
    pub address: String,
}

/// Refuses a caller acting for another node.
fn check_caller(node: &str, req: &RecordRequest) -> Result<()> {
    if !req.node.is_empty() && req.node != node {
        return Err(FleetError::Denied(format!(
            "agent-{node} may not act for node {:?}",
            req.node
        )));
    }
    Ok(())
}

/// Publishes `<service>.<zone>` → the node's address.
pub fn register(fleet: &Fleet, node: &str, req: &RecordRequest) -> Result<()> {
    check_caller(node, req)?;
    let expected = fleet.internal_name(&req.service);
    if req.hostname != expected {
        return Err(FleetError::Invalid(format!(
            "record {:?}: expected {expected}",
            req.hostname
        )));
    }
    // The service must be placed on the caller's node, or placed nowhere
    // (deployed with --direct, e.g. while the master was down) and its name
    // not held by another node.
    match fleet.db.placement(&req.service)? {
        Some(p) if p.node != node => {
            return Err(FleetError::Denied(format!(
                "service {} is placed on node {}, not {node}",
                req.service, p.node
            )));
        }
        Some(_) => {}
        None => check_holder(fleet, node, &expected)?,
    }
    let addr: Ipv4Addr = req
        .address
        .parse()
        .map_err(|_| FleetError::Invalid(format!("address {:?} is not IPv4", req.address)))?;
    if let Some(own) = fleet.nodes.ipv4(node)
        && own != addr
    {
        return Err(FleetError::Denied(format!(
            "{addr} is not node {node}'s address ({own})"
        )));
    }
    fleet
        .db
        .set_dns_record(&expected, &addr.to_string(), fleet.cfg.dns.ttl, node, &req.service)?;
    fleet
        .records
        .set(&expected, vec![addr])
        .map_err(|e| FleetError::Invalid(e.to_string()))?;
    tracing::info!(%node, name = %expected, %addr, "dns record set");
    Ok(())
}

/// Refuses `node` a name another node holds.
fn check_holder(fleet: &Fleet, node: &str, name: &str) -> Result<()> {
    match fleet
        .db
        .dns_records()?
        .into_iter()
        .find(|r| r.name == name && r.node != node)
    {
        Some(other) => Err(FleetError::Denied(format!("{name} belongs to node {}", other.node))),
        None => Ok(()),
    }
}

/// Withdraws `<service>.<zone>` (only the node that holds it may).
pub fn remove(fleet: &Fleet, node: &str, req: &RecordRequest) -> Result<()> {
    check_caller(node, req)?;
    let name = fleet.internal_name(&req.service);
    check_holder(fleet, node, &name)?;
    fleet.db.remove_dns_records(&name)?;
    fleet.records.remove(&name);
    tracing::info!(%node, %name, "dns record removed");
    Ok(())
}

/// Drops whatever record `service` left behind (after an undeploy, or
/// before a migration moves it).
pub fn withdraw(fleet: &Fleet, service: &str) -> Result<()> {
    let name = fleet.internal_name(service);
    if fleet.db.remove_dns_records(&name)? > 0 {
        fleet.records.remove(&name);
    }
    Ok(())
}

/// The zone's records.
pub fn records(fleet: &Fleet) -> Result<Vec<DnsRow>> {
    Ok(fleet.db.dns_records()?)
}
