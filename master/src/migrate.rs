//! `mcp migrate`: moves a service, data and placement, to another node.
//! Stop on the source (so no write is lost) → snapshot → import on the
//! target → placement and DNS move → deploy on the target → undeploy on the
//! source. A failure before the target took over restarts the service on
//! the source and says where it runs.

use std::time::Instant;

use mcp_model::placement::NodeRole;
use mcp_model::service::{ServiceDef, Tier};

use crate::agents::{Operation, ServiceOrder};
use crate::db::{PlacementRow, SnapshotRow};
use crate::deploy::agent_op;
use crate::edge;
use crate::error::{FleetError, Result};
use crate::fleet::Fleet;
use crate::reports::Step;
use crate::snapshots;
use crate::zone;

/// What to migrate where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateOrder {
    /// Empty with `all`.
    pub service: String,
    pub to: String,
    /// Source unreachable: use the latest snapshot instead of a fresh one.
    pub force: bool,
    pub request_id: String,
    /// Every migratable service placed on `from`.
    pub all: bool,
    pub from: String,
}

/// How the migration of one service went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Migration {
    pub service: String,
    /// The source node.
    pub from: String,
    /// The target node.
    pub to: String,
    /// The service runs on the target.
    pub success: bool,
    /// Where the service is now and what to do, on failure.
    pub error: String,
    /// What was done, in order.
    pub steps: Vec<Step>,
    /// The snapshot that carried the data, if the service has any.
    pub snapshot: Option<SnapshotRow>,
}

impl Migration {
    fn new(service: &str, from: &str, to: &str) -> Migration {
        Migration {
            service: service.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            ..Default::default()
        }
    }

    fn failed(service: &str, from: &str, to: &str, error: String) -> Migration {
        Migration {
            error,
            ..Migration::new(service, from, to)
        }
    }
}

/// Checks that `to` can take `def` from `from`.
fn check_migration(fleet: &Fleet, def: &ServiceDef, from: &str, to: &str) -> Result<()> {
    if def.tier() == Tier::Core {
        return Err(FleetError::Precondition(format!(
            "service {} is core tier: core services run on the master's node and are not migratable",
            def.name
        )));
    }
    if let Some(pin) = &def.node {
        return Err(FleetError::Precondition(format!(
            "service {} is pinned to node {pin}: change its `node` to {to} and redeploy instead",
            def.name
        )));
    }
    if from == to {
        return Err(FleetError::Invalid(format!(
            "service {} already runs on {to}",
            def.name
        )));
    }
    let n = fleet
        .nodes
        .get(to)
        .ok_or_else(|| FleetError::Invalid(format!("unknown node {to:?}")))?;
    if NodeRole::parse(&n.role) == Some(NodeRole::Edge) {
        return Err(FleetError::Precondition(format!(
            "node {to} is an edge node: edges are never migration targets"
        )));
    }
    if !n.healthy {
        return Err(FleetError::Precondition(format!(
            "node {to} is unhealthy ({}): pick a healthy target",
            n.status_reason
        )));
    }
    Ok(())
}

/// `mcp migrate`: one service, or `--all` from a node.
pub async fn migrate(fleet: &Fleet, order: &MigrateOrder) -> Result<Vec<Migration>> {
    if order.to.is_empty() {
        return Err(FleetError::Invalid("migrate needs a target node (--to)".into()));
    }
    if !order.all {
        return Ok(vec![migrate_one(fleet, &order.service, order).await?]);
    }
    if !order.service.is_empty() || order.from.is_empty() {
        return Err(FleetError::Invalid("--all takes --from <node> and no service".into()));
    }
    let placed: Vec<PlacementRow> = fleet
        .db
        .placements()?
        .into_iter()
        .filter(|p| p.node == order.from)
        .collect();
    let mut results = Vec::new();
    for p in placed {
        let result = if p.def.tier() == Tier::Core || p.def.node.is_some() {
            Err(match check_migration(fleet, &p.def, &p.node, &order.to) {
                Err(e) => format!("skipped: {e}"),
                Ok(()) => "skipped".into(),
            })
        } else {
            migrate_one(fleet, &p.service, order).await.map_err(|e| e.to_string())
        };
        results.push(result.unwrap_or_else(|error| Migration::failed(&p.service, &p.node, &order.to, error)));
    }
    Ok(results)
}

/// Migrates `service` as `order` says. Refusals come back as errors; a
/// failure after the first step as a result with `success = false` that
/// says where the service runs now.
async fn migrate_one(fleet: &Fleet, service: &str, order: &MigrateOrder) -> Result<Migration> {
    let (to, force, request_id) = (order.to.as_str(), order.force, order.request_id.as_str());
    let _guard = fleet.locks.lock(service).await?;
    let p = fleet.placement_of(service)?;
    let from = p.node.clone();
    check_migration(fleet, &p.def, &from, to)?;
    let has_data = p.def.components.iter().any(|c| !c.volumes.is_empty());
    let svc = ServiceOrder::new(service, request_id);
    let mut r = Migration::new(service, &from, to);
    tracing::info!(%service, %from, %to, force, %request_id, "migrating");

    // 1. Stop on the source. With --force an unreachable source is
    //    tolerated: its latest snapshot stands in for its data.
    let t = Instant::now();
    let source_up = match agent_op(fleet, &from, Operation::Stop, &svc).await {
        Ok(_) => {
            r.steps.push(Step::timed("stop", t, Ok(format!("stopped on {from}"))));
            true
        }
        Err(e) if force && e.is_unreachable() => {
            r.steps
                .push(Step::timed("stop", t, Err(format!("{e}; continuing (--force)"))));
            false
        }
        Err(e) if e.is_unreachable() => {
            return Err(FleetError::Precondition(format!(
                "{e}; nothing was changed. If {from} is down for good, `mcp migrate {service} --to {to} --force` \
                 moves the service using its latest snapshot"
            )));
        }
        Err(e) => return Err(e),
    };

    // 2. Data: a fresh snapshot from the stopped source, or the latest.
    let t = Instant::now();
    let data = if !has_data {
        r.steps
            .push(Step::timed("snapshot", t, Ok("no volumes: nothing to move".into())));
        None
    } else {
        let taken = if source_up {
            snapshots::pull(fleet, &from, service, request_id)
                .await
                .map(|(row, _)| {
                    let _ = snapshots::prune(fleet, service);
                    let detail = format!("{} ({} bytes) from {from}", row.name, row.size);
                    (row, detail)
                })
        } else {
            snapshots::verified(fleet, service, "").await.map(|row| {
                let detail = format!(
                    "latest stored snapshot {} ({} bytes, from {})",
                    row.name, row.size, row.node
                );
                (row, detail)
            })
        };
        match taken {
            Ok((row, detail)) => {
                r.steps.push(Step::timed("snapshot", t, Ok(detail)));
                Some(row)
            }
            Err(e) => {
                r.steps.push(Step::timed("snapshot", t, Err(e.to_string())));
                let why = if source_up {
                    format!("snapshot failed: {e}")
                } else {
                    format!("no usable snapshot: {e}")
                };
                return Ok(abort(fleet, r, &p, source_up, request_id, why).await);
            }
        }
    };
    r.snapshot = data.clone();

    // 3. Import on the target (verified there before anything changes).
    if let Some(row) = &data {
        let t = Instant::now();
        match snapshots::push(fleet, to, &p.def, row, force, request_id).await {
            Ok(done) => r.steps.push(Step::timed(
                "import",
                t,
                Ok(format!("{} bytes, {} entries on {to}", done.bytes, done.entries)),
            )),
            Err(e) => {
                r.steps.push(Step::timed("import", t, Err(e.to_string())));
                let why = format!("import on {to} failed: {e}");
                return Ok(abort(fleet, r, &p, source_up, request_id, why).await);
            }
        }
    }

    // 4. Placement and DNS move, then deploy on the target (which
    //    registers the service's DNS record and routes there).
    let t = Instant::now();
    zone::withdraw(fleet, service)?;
    fleet.db.save_placement(&PlacementRow {
        service: service.to_string(),
        node: to.to_string(),
        def: p.def.clone(),
        state: "deploying".into(),
        detail: format!("migration {request_id} from {from} in progress"),
        request_id: request_id.to_string(),
        updated_at: 0,
    })?;
    let deployed = match fleet.target(to, fleet.cfg.timeouts.deploy) {
        Ok(target) => fleet.agents.deploy(&target, &p.def, "", request_id).await,
        Err(e) => Err(e),
    };
    match deployed {
        Ok(report) => {
            let failed: Vec<String> = report
                .steps
                .iter()
                .filter(|s| !s.success)
                .map(|s| format!("{}: {}", s.step, s.error))
                .collect();
            let detail = if failed.is_empty() {
                format!("deployed on {to}")
            } else {
                format!("deployed on {to} ({})", failed.join("; "))
            };
            r.steps.push(Step::timed("deploy", t, Ok(detail)));
        }
        Err(e) => {
            r.steps.push(Step::timed("deploy", t, Err(e.to_string())));
            // Best effort: the target's agent rolled back its deploy;
            // leave nothing of the service there.
            let _ = agent_op(fleet, to, Operation::Undeploy, &svc).await;
            fleet.db.save_placement(&p)?;
            let why = format!("deploy on {to} failed: {e}");
            return Ok(abort(fleet, r, &p, source_up, request_id, why).await);
        }
    }
    fleet
        .db
        .set_placement_state(service, "deployed", &format!("migrated from {from} by {request_id}"))?;
    if let Some(step) = edge::sync_edge(fleet, &p.def, to).await {
        r.steps.push(step);
    }

    // 5. Undeploy on the source (its data stays on disk there).
    let t = Instant::now();
    let undeployed = if source_up {
        agent_op(fleet, &from, Operation::Undeploy, &svc)
            .await
            .map(|_| format!("removed from {from}"))
            .map_err(|e| format!("{e}; the service runs on {to}: remove it from {from} by hand"))
    } else {
        Err(format!(
            "{from} is unreachable: its containers of {service} may still exist; \
             undeploy them there with `mcp undeploy {service} --direct --node {from}` when it is back"
        ))
    };
    r.steps.push(Step::timed("undeploy", t, undeployed));
    r.success = true;
    tracing::info!(%service, %from, %to, %request_id, "migrated");
    Ok(r)
}

/// A migration failed before the target took over: restart the service on
/// the source (when it was stopped there) and say where it is.
async fn abort(
    fleet: &Fleet,
    mut r: Migration,
    p: &PlacementRow,
    source_up: bool,
    request_id: &str,
    why: String,
) -> Migration {
    let service = &p.service;
    let from = &p.node;
    r.success = false;
    if !source_up {
        r.error = format!(
            "{why}. Service {service} is not running anywhere: {from} is unreachable and {} has nothing; \
             its placement still says {from}",
            r.to
        );
        return r;
    }
    if p.state == "stopped" {
        r.error = format!("{why}. Service {service} stays on {from}, stopped as it was");
        return r;
    }
    let t = Instant::now();
    match agent_op(fleet, from, Operation::Start, &ServiceOrder::new(service, request_id)).await {
        Ok(_) => {
            r.steps
                .push(Step::timed("restart-source", t, Ok(format!("started again on {from}"))));
            r.error = format!("{why}. Service {service} is running on {from} again, unchanged");
        }
        Err(e) => {
            r.steps.push(Step::timed("restart-source", t, Err(e.to_string())));
            let _ = fleet.db.set_placement_state(
                service,
                "stopped",
                &format!("migration {request_id} failed; restart failed: {e}"),
            );
            r.error = format!(
                "{why}. Restarting {service} on {from} failed too ({e}): it is stopped there; run `mcp start {service}`"
            );
        }
    }
    r
}
