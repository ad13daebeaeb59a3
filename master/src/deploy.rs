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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::db::now;
    use crate::reports::ErrorCode;
    use crate::testing::{Outcome, add_node, def, fleet, place, placement};

    /// Waits (a few ms at a time) until the fake agents saw `call`.
    async fn until_called(agents: &crate::testing::FakeAgents, call: &str) {
        for _ in 0..1000 {
            if agents.count(call) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no call {call:?}; calls: {:?}", agents.calls());
    }

    #[tokio::test]
    async fn placement_is_deploying_while_the_agent_works_then_deployed() {
        let (fleet, agents, _dir) = fleet();
        add_node(&fleet, "n1", "worker", now());
        let fleet = Arc::new(fleet);
        let gate = agents.gate_deploys();
        let f = fleet.clone();
        let task = tokio::spawn(async move { deploy(&f, def("web", "web:1"), String::new(), "r1".into()).await });
        until_called(&agents, "deploy n1 web r1").await;
        assert_eq!(
            placement(&fleet, "web"),
            Some(("n1".into(), "deploying".into(), "deploy r1 in progress".into()))
        );
        gate.add_permits(1);
        let op = task.await.expect("deploy task").expect("deploy succeeds");
        assert_eq!((op.node.as_str(), op.report.steps.len()), ("n1", 1));
        assert!(!op.placement.is_empty(), "the placement decision is reported");
        assert_eq!(
            placement(&fleet, "web"),
            Some(("n1".into(), "deployed".into(), "deployed by r1".into()))
        );
        assert_eq!(
            fleet.nodes.get("n1").expect("node").load.containers,
            1,
            "counted until the next heartbeat"
        );
    }

    /// (a placement before, how the deploy ends, the record after: (state, detail, image)).
    type Case = (bool, Outcome, Option<(&'static str, String, &'static str)>);

    #[tokio::test]
    async fn failures_restore_the_previous_record_or_leave_it_unknown() {
        let unknown = |e: &str| format!("outcome of deploy r1 unknown ({e}); re-run the deploy");
        let refused = "node n1: scripted failure";
        let silent = "node n1 is unreachable: no answer within 5 s";
        let cases: Vec<Case> = vec![
            (false, Outcome::Refused(ErrorCode::InvalidArgument), None),
            (false, Outcome::Refused(ErrorCode::FailedPrecondition), None),
            (
                true,
                Outcome::Refused(ErrorCode::FailedPrecondition),
                Some(("deployed", format!("last deploy r1 failed: {refused}"), "web:1")),
            ),
            (
                true,
                Outcome::Refused(ErrorCode::ResourceExhausted),
                Some(("deployed", format!("last deploy r1 failed: {refused}"), "web:1")),
            ),
            (
                true,
                Outcome::Refused(ErrorCode::NotFound),
                Some(("deployed", format!("last deploy r1 failed: {refused}"), "web:1")),
            ),
            (false, Outcome::NoAnswer, Some(("unknown", unknown(silent), "web:2"))),
            (true, Outcome::NoAnswer, Some(("unknown", unknown(silent), "web:2"))),
            (
                true,
                Outcome::Refused(ErrorCode::Unavailable),
                Some(("unknown", unknown(refused), "web:2")),
            ),
            (
                false,
                Outcome::Refused(ErrorCode::Internal),
                Some(("unknown", unknown(refused), "web:2")),
            ),
            (
                true,
                Outcome::Refused(ErrorCode::Unknown),
                Some(("unknown", unknown(refused), "web:2")),
            ),
        ];
        for (i, (before, outcome, after)) in cases.into_iter().enumerate() {
            let (fleet, agents, _dir) = fleet();
            add_node(&fleet, "n1", "worker", now());
            if before {
                place(&fleet, &def("web", "web:1"), "n1", "deployed", "r0");
            }
            agents.next_deploy(outcome.clone());
            let err = deploy(&fleet, def("web", "web:2"), String::new(), "r1".into())
                .await
                .expect_err("the deploy fails");
            match &outcome {
                Outcome::Refused(code) => assert_eq!(err.agent_code(), Some(*code), "case {i}"),
                _ => assert!(matches!(err, FleetError::Unreachable { .. }), "case {i}: {err:?}"),
            }
            let got = fleet.db.placement("web").expect("read placement").map(|p| {
                let image = p.def.components[0].image.clone();
                (p.state, p.detail, image)
            });
            let want = after.map(|(s, d, i)| (s.to_string(), d, i.to_string()));
            assert_eq!(got, want, "case {i}: {outcome:?} with a placement before: {before}");
        }
    }

    #[tokio::test]
    async fn refused_requests_reach_no_agent() {
        let (fleet, agents, _dir) = fleet();
        add_node(&fleet, "n1", "worker", now());
        let mut pinned = def("web", "web:1");
        pinned.node = Some("ghost".into());
        let cases = [(def("web", "web:1"), "nope", "has no component"), (pinned, "", "ghost")];
        for (d, component, says) in cases {
            let err = deploy(&fleet, d, component.into(), "r1".into())
                .await
                .expect_err("refused");
            assert!(matches!(err, FleetError::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains(says), "{err}");
        }
        assert_eq!(placement(&fleet, "web"), None);
        assert!(agents.calls().is_empty(), "{:?}", agents.calls());
    }

    #[tokio::test]
    async fn deploys_of_one_service_run_one_after_the_other() {
        let (fleet, agents, _dir) = fleet();
        add_node(&fleet, "n1", "worker", now());
        let fleet = Arc::new(fleet);
        let gate = agents.gate_deploys();
        let spawn = |service: &'static str, request: &'static str| {
            let f = fleet.clone();
            tokio::spawn(async move { deploy(&f, def(service, "i:1"), String::new(), request.into()).await })
        };
        let first = spawn("web", "r1");
        until_called(&agents, "deploy n1 web r1").await;
        let second = spawn("web", "r2");
        // Another service is not held up by the first one's lock.
        let other = spawn("db", "r3");
        until_called(&agents, "deploy n1 db r3").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(agents.count("deploy n1 web r2"), 0, "the second waits for the lock");
        gate.add_permits(3);
        for t in [first, second, other] {
            t.await.expect("deploy task").expect("deploy succeeds");
        }
        let calls = agents.calls();
        let at = |c: &str| calls.iter().position(|x| x == c).expect("called");
        assert!(at("deployed n1 web r1") < at("deploy n1 web r2"), "{calls:?}");
        assert_eq!(
            placement(&fleet, "web").map(|p| p.2),
            Some("deployed by r2".to_string())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deploy_that_waits_too_long_for_the_lock_is_refused() {
        let (fleet, agents, _dir) = fleet();
        add_node(&fleet, "n1", "worker", now());
        let fleet = Arc::new(fleet);
        let gate = agents.gate_deploys();
        let f = fleet.clone();
        let first = tokio::spawn(async move { deploy(&f, def("web", "i:1"), String::new(), "r1".into()).await });
        until_called(&agents, "deploy n1 web r1").await;
        // The lock waits `timeouts.deploy` (5 s); paused time jumps there.
        let err = deploy(&fleet, def("web", "i:2"), String::new(), "r2".into())
            .await
            .expect_err("refused while the first runs");
        assert!(matches!(err, FleetError::Busy(_)), "{err:?}");
        assert_eq!(
            placement(&fleet, "web").map(|p| p.2),
            Some("deploy r1 in progress".to_string()),
            "the refused deploy changed nothing"
        );
        gate.add_permits(1);
        first.await.expect("deploy task").expect("the first deploy succeeds");
    }
}
