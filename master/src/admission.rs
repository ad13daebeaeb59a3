//! Who belongs to the fleet: join tokens, the join itself (token + CSR →
//! agent certificate), registration and heartbeats (which also heal an
//! unhealthy node), agent certificate renewal; the allowlist, `max_nodes`
//! and per-node rate limits guard every door.

use std::time::Instant;

use mcp_model::join::JoinToken;
use mcp_model::placement::NodeRole;
use mcp_model::service;

use crate::certs;
use crate::db::{NodeLoad, NodeRow, TokenError, now};
use crate::error::{FleetError, Result};
use crate::fleet::Fleet;

/// What an agent tells about its node when it registers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// The caller's node; empty: the caller's own.
    pub node: String,
    /// worker | edge | master
    pub role: String,
    /// host:port the master dials.
    pub address: String,
    pub arch: String,
    pub version: String,
    pub cpus: u32,
    pub memory_total: u64,
}

/// What an agent reports in each heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    /// The caller's node (never empty).
    pub node: String,
    pub load: NodeLoad,
    /// 0: unchanged.
    pub cpus: u32,
}

/// Issues a one-time join token for `node`; `ttl` 0: the configured default.
pub fn add_node(fleet: &Fleet, node: &str, ttl: u64) -> Result<(JoinToken, i64)> {
    service::check_name(node).map_err(|r| FleetError::Invalid(format!("node name {node:?}: {r}")))?;
    check_admission(fleet, node, true)?;
    let fp = mcp_infra::pki::fingerprint(fleet.ca.cert_pem())
        .ok_or_else(|| FleetError::Internal("the CA certificate cannot be read".into()))?;
    let secret = mcp_infra::random::random_bytes::<32>().map_err(|e| FleetError::Internal(e.to_string()))?;
    let token = JoinToken::new(node, secret, &fp);
    let ttl = if ttl == 0 {
        fleet.cfg.registration.join_token_ttl
    } else {
        ttl
    };
    let expires = now() + ttl as i64;
    fleet.db.add_join_token(&token.secret_hash(), node, expires)?;
    tracing::info!(%node, expires, "join token issued");
    Ok((token, expires))
}

/// Allowlist and (for a node the fleet does not know yet, when `new_ok`)
/// `max_nodes` checks for a node that joins, registers or renews.
fn check_admission(fleet: &Fleet, node: &str, new_ok: bool) -> Result<()> {
    let reg = &fleet.cfg.registration;
    if !reg.allowlist.is_empty() && !reg.allowlist.iter().any(|a| a == node) {
        return Err(FleetError::Denied(format!(
            "node {node} is not in registration.allowlist"
        )));
    }
    let known = fleet.nodes.contains(node);
    if !known && new_ok && reg.max_nodes > 0 && fleet.nodes.len() as u32 >= reg.max_nodes {
        return Err(FleetError::Exhausted(format!(
            "the fleet already has registration.max_nodes = {} nodes",
            reg.max_nodes
        )));
    }
    Ok(())
}

/// Exchanges a join token and CSR for an agent certificate chain and the CA.
pub fn join(fleet: &Fleet, name: &str, token: &str, csr_pem: &str) -> Result<(String, String)> {
    let parsed = JoinToken::parse(token).map_err(FleetError::Unauthenticated)?;
    if parsed.node != name {
        return Err(FleetError::Denied(format!(
            "join token is for node {:?}, not {name:?}",
            parsed.node
        )));
    }
    check_admission(fleet, name, true)?;
    let hash = parsed.secret_hash();
    match fleet.db.use_join_token(&hash, name)? {
        Ok(()) => {}
        Err(e @ TokenError::WrongNode { .. }) => return Err(FleetError::Denied(e.to_string())),
        Err(e) => return Err(FleetError::Unauthenticated(e.to_string())),
    }
    match certs::sign_agent(fleet, name, csr_pem) {
        Ok(chain) => {
            tracing::info!(node = %name, "node joined");
            Ok((chain, fleet.ca.cert_pem().to_string()))
        }
        Err(e) => {
            // The token stays usable: the node may retry with a good CSR.
            fleet.db.release_join_token(&hash)?;
            Err(e)
        }
    }
}

/// Renews the caller's own certificate: only for a node the fleet knows
/// and still admits (allowlist), so a removed node cannot renew.
pub fn renew_agent_certificate(fleet: &Fleet, node: &str, csr_pem: &str) -> Result<String> {
    if !fleet.nodes.contains(node) {
        return Err(FleetError::Precondition(format!(
            "node {node} is not registered; it cannot renew its certificate"
        )));
    }
    check_admission(fleet, node, false)?;
    certs::sign_agent(fleet, node, csr_pem)
}

/// Records a node's registration; returns the heartbeat interval (seconds).
pub fn register(fleet: &Fleet, node: &str, reg: &Registration) -> Result<u32> {
    if !reg.node.is_empty() && reg.node != node {
        return Err(FleetError::Denied(format!(
            "agent-{node} may not register node {:?}",
            reg.node
        )));
    }
    let role = NodeRole::parse(&reg.role)
        .ok_or_else(|| FleetError::Invalid(format!("unknown role {:?}: worker, edge or master", reg.role)))?;
    if reg.address.is_empty() || !reg.address.contains(':') {
        return Err(FleetError::Invalid(format!(
            "address {:?} is not host:port",
            reg.address
        )));
    }
    check_admission(fleet, node, true)?;
    fleet.limits.check(
        node,
        "Register",
        fleet.cfg.registration.register_interval,
        Instant::now(),
    )?;
    let t = now();
    fleet.nodes.upsert(node, |prev| {
        if prev.as_ref().is_some_and(|p| !p.healthy) {
            tracing::info!(%node, "node healthy again (registered)");
        }
        // Load figures other than memory stay as the last heartbeat
        // reported them.
        let load = prev.map(|p| p.load).unwrap_or_default();
        NodeRow {
            name: node.to_string(),
            role: role.as_str().to_string(),
            address: reg.address.clone(),
            arch: reg.arch.clone(),
            version: reg.version.clone(),
            healthy: true,
            status_reason: String::new(),
            registered_at: t,
            last_seen: t,
            cpus: reg.cpus,
            load: NodeLoad {
                memory_total: reg.memory_total,
                ..load
            },
        }
    });
    fleet.flush()?;
    tracing::info!(%node, role = role.as_str(), address = %reg.address, version = %reg.version, "node registered");
    Ok(fleet.cfg.heartbeat.interval as u32)
}

/// Records a heartbeat; a heartbeat heals an unhealthy node.
pub fn heartbeat(fleet: &Fleet, node: &str, hb: &Heartbeat) -> Result<()> {
    if hb.node != node {
        return Err(FleetError::Denied(format!(
            "agent-{node} may not heartbeat for {:?}",
            hb.node
        )));
    }
    fleet.limits.check(
        node,
        "Heartbeat",
        fleet.cfg.registration.heartbeat_min_interval,
        Instant::now(),
    )?;
    let healed = fleet
        .nodes
        .update(node, |n| {
            let healed = !n.healthy;
            n.healthy = true;
            n.status_reason.clear();
            n.last_seen = now();
            n.load = hb.load.clone();
            if hb.cpus > 0 {
                n.cpus = hb.cpus;
            }
            healed
        })
        .ok_or_else(|| FleetError::NotFound(format!("node {node} is not registered: register first")))?;
    if healed {
        tracing::info!(%node, "node healthy again (heartbeat)");
        fleet.flush()?;
    }
    Ok(())
}
