//! `mcp sync`: plans making the fleet match a set of definitions (the
//! plan itself is `mcp_model::sync`, pure) and, unless it is a dry run,
//! applies it one service at a time through deploy coordination.

use std::collections::{BTreeMap, HashSet};

use mcp_model::service::{self, ServiceDef};
use mcp_model::sync::{self as syncplan, SyncAction};

use crate::agents::ServiceOrder;
use crate::deploy;
use crate::error::{FleetError, Result};
use crate::fleet::Fleet;

/// One planned (and, unless a dry run, applied) action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncRow {
    pub service: String,
    /// deploy | redeploy | undeploy | unchanged
    pub action: String,
    pub node: String,
    /// For redeploy: which fields changed.
    pub changed: Vec<String>,
    pub success: bool,
    pub error: String,
}

/// Checks every definition, reporting all problems at once.
fn check_all(defs: &[ServiceDef]) -> Result<()> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for def in defs {
        if let Err(e) = service::check(&format!("service {}", def.name), def) {
            problems.push(e.to_string());
        }
        if !names.insert(def.name.clone()) {
            problems.push(format!("service {} is given twice", def.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FleetError::Invalid(problems.join("\n")))
    }
}

/// Plans (and unless `dry_run`, applies) making the fleet match `defs`.
pub async fn sync(fleet: &Fleet, defs: Vec<ServiceDef>, dry_run: bool, request_id: &str) -> Result<Vec<SyncRow>> {
    check_all(&defs)?;
    let placements = fleet.db.placements()?;
    let deployed: BTreeMap<String, ServiceDef> =
        placements.iter().map(|p| (p.service.clone(), p.def.clone())).collect();
    let plan = syncplan::plan(&defs, &deployed);
    let mut out = Vec::new();
    for action in plan {
        let node = placements
            .iter()
            .find(|p| p.service == action.service())
            .map(|p| p.node.clone())
            .unwrap_or_default();
        let changed = match &action {
            SyncAction::Redeploy { changed, .. } => changed.clone(),
            _ => vec![],
        };
        let mut row = SyncRow {
            service: action.service().to_string(),
            action: action.kind().to_string(),
            node,
            changed,
            success: true,
            error: String::new(),
        };
        if !dry_run {
            match apply(fleet, &action, &defs, request_id).await {
                Ok(Some(node)) => row.node = node,
                Ok(None) => {}
                Err(e) => {
                    row.success = false;
                    row.error = e.to_string();
                }
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// Applies one action; returns the node the service is on now, if it changed.
async fn apply(fleet: &Fleet, action: &SyncAction, defs: &[ServiceDef], request_id: &str) -> Result<Option<String>> {
    let op = match action {
        SyncAction::Deploy { service } | SyncAction::Redeploy { service, .. } => {
            let def = defs
                .iter()
                .find(|d| &d.name == service)
                .cloned()
                .expect("the plan is made from these definitions");
            deploy::deploy(fleet, def, String::new(), format!("{request_id}/{service}")).await?
        }
        SyncAction::Undeploy { service } => {
            deploy::undeploy(fleet, ServiceOrder::new(service, &format!("{request_id}/{service}"))).await?
        }
        SyncAction::Unchanged { .. } => return Ok(None),
    };
    Ok(Some(op.node))
}
