//! Deploy coordination: validate, take the service's lock, place, record
//! the placement `deploying`, forward to the node's agent, then settle the
//! record from the outcome:
//!
//! - success → `deployed` (then the edge side of public routes);
//! - a definite failure (the agent refused or rolled back) → the previous
//!   record back, or none if there was none;
//! - anything else (no answer, a broken connection) → `unknown`, with the
//!   request id, until a re-run or reconciliation settles it.
//!
//! Also the other operations on a placed service: stop, start, restart,
//! undeploy, status, logs and render, each forwarded to its node.

use std::collections::HashMap;

use mcp_model::placement::{self, NodeRole, NodeView};
use mcp_model::service::{self, ServiceDef};

use crate::agents::{LogStream, LogsQuery, Operation, ServiceOrder};
use crate::db::PlacementRow;
use crate::edge;
use crate::error::{FleetError, Result};
use crate::fleet::Fleet;
use crate::metrics::{self, DeployResult};
use crate::reports::{OperationReport, Rendered, ServiceStatus};
use crate::zone;

/// What an operation on a placed service did, and where.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetOperation {
    pub node: String,
    pub report: OperationReport,
    /// The placement decision (deploys only), e.g. "kept on rift".
    pub placement: String,
}

/// Placement inputs: every node with the resources already committed to
/// services placed on it (other than `except`).
fn views(fleet: &Fleet, except: &str) -> Result<Vec<NodeView>> {
    let mut committed: HashMap<String, (u64, f64)> = HashMap::new();
    for p in fleet.db.placements()? {
        if p.service != except {
            let (m, c) = placement::demand(&p.def);
            let e = committed.entry(p.node).or_default();
            e.0 += m;
            e.1 += c;
        }
    }
    Ok(fleet
        .nodes
        .all()
        .into_iter()
        .map(|n| {
            let (m, c) = committed.get(&n.name).copied().unwrap_or_default();
            NodeView {
                role: NodeRole::parse(&n.role).unwrap_or(NodeRole::Worker),
                healthy: n.healthy,
                containers: n.load.containers,
                cpus: n.cpus,
                memory_available: n.load.memory_available,
                committed_memory: m,
                committed_cpus: c,
                name: n.name,
            }
        })
        .collect())
}

/// Deploys a service (or one `component` of it): validate, lock, place,
/// forward, record. Every outcome is counted in the metrics.
pub async fn deploy(fleet: &Fleet, def: ServiceDef, component: String, request_id: String) -> Result<FleetOperation> {
    let result = deploy_placed(fleet, def, component, request_id).await;
    let (outcome, steps) = match &result {
        Ok(op) => (DeployResult::Success, &op.report.steps[..]),
        Err(FleetError::Invalid(_) | FleetError::Precondition(_) | FleetError::NotFound(_)) => {
            (DeployResult::Rejected, &[][..])
        }
        Err(FleetError::Agent { error, .. }) => (DeployResult::Failed, &error.steps[..]),
        Err(_) => (DeployResult::Failed, &[][..]),
    };
    metrics::deploy_finished(outcome, steps);
    result
}

async fn deploy_placed(
    fleet: &Fleet,
    def: ServiceDef,
    component: String,
    request_id: String,
) -> Result<FleetOperation> {
    service::check("deploy request", &def).map_err(|e| FleetError::Invalid(e.to_string()))?;
    if !component.is_empty() && def.component(&component).is_none() {
        return Err(FleetError::Invalid(format!(
            "service {} has no component {component:?}",
            def.name
        )));
    }
    let _guard = fleet.locks.lock(&def.name).await?;
    let current = fleet.db.placement(&def.name)?;
    let placed = placement::place(
        &def,
        &views(fleet, &def.name)?,
        Some(&fleet.cfg.master.node),
        current.as_ref().map(|c| c.node.as_str()),
    )
    .map_err(|e| match e {
        // Naming a node that does not exist is bad input; the rest is the
        // fleet's state.
        placement::PlacementError::UnknownNode { .. } => FleetError::Invalid(e.to_string()),
        _ => FleetError::Precondition(e.to_string()),
    })?;
    if let Some(c) = &current
        && c.node != placed.node
    {
        return Err(FleetError::Precondition(format!(
            "service {} runs on {}; placing it on {} would move it: use `mcp migrate {} --to {}`",
            def.name, c.node, placed.node, def.name, placed.node
        )));
    }
    let node = placed.node.clone();
    fleet.db.save_placement(&PlacementRow {
        service: def.name.clone(),
        node: node.clone(),
        def: def.clone(),
        state: "deploying".into(),
        detail: format!("deploy {request_id} in progress"),
        request_id: request_id.clone(),
        updated_at: 0,
    })?;
    tracing::info!(service = %def.name, %node, reason = %placed.reason, %request_id, "deploying");
    let sent = match fleet.target(&node, fleet.cfg.timeouts.deploy) {
        Ok(to) => fleet.agents.deploy(&to, &def, &component, &request_id).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(mut report) => {
            fleet
                .db
                .set_placement_state(&def.name, "deployed", &format!("deployed by {request_id}"))?;
            // Public routes: the edge side, after the worker side is up.
            if let Some(step) = edge::sync_edge(fleet, &def, &node).await {
                if !step.success {
                    let detail = format!("edge route failed: {}", step.error);
                    fleet.db.set_placement_state(&def.name, "deployed", &detail)?;
                }
                report.steps.push(step);
            }
            if current.is_none() {
                // Until the next heartbeat, count the new containers so
                // placements in quick succession spread out.
                fleet
                    .nodes
                    .update(&node, |n| n.load.containers += def.components.len() as u32);
            }
            Ok(FleetOperation {
                node,
                report,
                placement: placed.reason,
            })
        }
        Err(e) => {
            let definite = matches!(&e, FleetError::Agent { error, .. } if error.is_definite());
            match (definite, current) {
                // The agent refused or rolled back: what ran before runs still.
                (true, Some(mut old)) => {
                    old.detail = format!("last deploy {request_id} failed: {e}");
                    fleet.db.save_placement(&old)?;
                }
                (true, None) => fleet.db.delete_placement(&def.name)?,
                (false, _) => fleet.db.set_placement_state(
                    &def.name,
                    "unknown",
                    &format!("outcome of deploy {request_id} unknown ({e}); re-run the deploy"),
                )?,
            }
            Err(e)
        }
    }
}

/// Stops, starts or restarts a placed service.
pub async fn operate(fleet: &Fleet, op: Operation, order: ServiceOrder) -> Result<FleetOperation> {
    let _guard = fleet.locks.lock(&order.name).await?;
    let p = fleet.placement_of(&order.name)?;
    let report = agent_op(fleet, &p.node, op, &order).await?;
    let state = if op == Operation::Stop { "stopped" } else { "deployed" };
    fleet
        .db
        .set_placement_state(&order.name, state, &format!("{} ok", op.as_str()))?;
    Ok(FleetOperation {
        node: p.node,
        report,
        placement: String::new(),
    })
}

/// Forwards an operation to `node`'s agent within its timeout (undeploy has
/// its own; the others take the deploy timeout).
pub async fn agent_op(fleet: &Fleet, node: &str, op: Operation, order: &ServiceOrder) -> Result<OperationReport> {
    let timeout = match op {
        Operation::Undeploy => fleet.cfg.timeouts.undeploy,
        _ => fleet.cfg.timeouts.deploy,
    };
    fleet.agents.operate(&fleet.target(node, timeout)?, op, order).await
}

/// Undeploys a placed service and forgets the placement, its edge routes
/// and its record.
pub async fn undeploy(fleet: &Fleet, order: ServiceOrder) -> Result<FleetOperation> {
    let _guard = fleet.locks.lock(&order.name).await?;
    let name = order.name.clone();
    let p = fleet.placement_of(&name)?;
    let mut report = match agent_op(fleet, &p.node, Operation::Undeploy, &order).await {
        Ok(r) => r,
        // The node no longer has it: the placement was stale.
        Err(e) if e.agent_code() == Some(crate::reports::ErrorCode::NotFound) => OperationReport {
            warnings: vec![format!("node {} did not have service {name}", p.node)],
            ..Default::default()
        },
        Err(e) => return Err(e),
    };
    fleet.db.delete_placement(&name)?;
    // The worker side is gone: now the edge, then any record left over.
    report.warnings.extend(edge::remove_edges_of(fleet, &name).await);
    zone::withdraw(fleet, &name)?;
    Ok(FleetOperation {
        node: p.node,
        report,
        placement: String::new(),
    })
}

/// `mcp render`: the `podman run` commands of a placed service, from its
/// node's registry.
pub async fn render(fleet: &Fleet, name: &str) -> Result<Rendered> {
    let p = fleet.placement_of(name)?;
    let to = fleet.target(&p.node, fleet.cfg.timeouts.health_check.max(10))?;
    fleet.agents.render(&to, name).await
}

/// The container output stream of a placed service, from its node.
pub async fn logs(fleet: &Fleet, query: LogsQuery) -> Result<LogStream> {
    let p = fleet.placement_of(&query.service)?;
    let to = fleet.target(&p.node, fleet.cfg.timeouts.health_check)?;
    fleet.agents.logs(&to, &query).await
}

/// Status of a placed service from its node: (node, status).
pub async fn status(fleet: &Fleet, name: &str) -> Result<(String, ServiceStatus)> {
    let p = fleet.placement_of(name)?;
    let to = fleet.target(&p.node, fleet.cfg.timeouts.health_check)?;
    match fleet.agents.status(&to, name).await {
        Ok(status) => Ok((p.node, status)),
        Err(FleetError::Unreachable { node, reason }) => Err(FleetError::Unreachable {
            node,
            reason: format!("{reason}; the master records {name} as {} ({})", p.state, p.detail),
        }),
        Err(e) => Err(e),
    }
}
