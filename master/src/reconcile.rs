//! Reconciliation, when the master starts: every worker is asked what it
//! runs, and the master's own records are settled from the answers
//! (agents are not touched):
//!
//! - `deploying` / `unknown` placements the node runs become `deployed` if
//!   its images are the definition's, else `failed`;
//! - a `deploying` placement the node lacks is dropped (the deploy never
//!   reached it); any other placement it lacks becomes `unknown`;
//! - services running where nobody placed them are reported as orphans;
//! - nodes that do not answer start `unhealthy`.

use std::collections::{BTreeMap, HashMap};

use crate::db::PlacementRow;
use crate::error::Result;
use crate::fanout;
use crate::fleet::Fleet;
use crate::reports::ServiceInfo;

/// What to do with one placement, given what its node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Keep,
    Deployed(String),
    Failed(String),
    Drop(String),
    Unknown(String),
}

/// Settles one placement against `running`, its node's service of the same
/// name (`None`: the node does not run it). Pure.
fn settle(p: &PlacementRow, running: Option<&ServiceInfo>) -> Verdict {
    let in_flight = p.state == "deploying" || p.state == "unknown";
    match running {
        Some(info) if in_flight => {
            let want: BTreeMap<&str, &str> = p
                .def
                .components
                .iter()
                .map(|c| (c.name.as_str(), c.image.as_str()))
                .collect();
            let have: BTreeMap<&str, &str> = info
                .components
                .iter()
                .map(|c| (c.name.as_str(), c.image.as_str()))
                .collect();
            if want == have {
                Verdict::Deployed(format!("deploy {} completed on {}", p.request_id, p.node))
            } else {
                Verdict::Failed(format!(
                    "deploy {} did not complete: {} runs {:?}, the definition wants {:?}; re-run the deploy",
                    p.request_id, p.node, have, want
                ))
            }
        }
        Some(_) => Verdict::Keep,
        None if p.state == "deploying" => Verdict::Drop(format!(
            "deploy {} never reached {}; placement dropped",
            p.request_id, p.node
        )),
        None => Verdict::Unknown(format!("{} does not run it (was {}); re-deploy it", p.node, p.state)),
    }
}

/// Asks every worker what it runs, settles the placements left in flight,
/// reports stale placements and orphans. Returns the report, one line each.
pub async fn reconcile(fleet: &Fleet) -> Result<Vec<String>> {
    let mut report = Vec::new();
    let mut answered: HashMap<String, Vec<ServiceInfo>> = HashMap::new();
    for (node, r) in fanout::list_workers(fleet).await {
        match r {
            Ok(services) => {
                answered.insert(node, services);
            }
            Err(e) => {
                fleet.nodes.update(&node, |n| {
                    n.healthy = false;
                    n.status_reason = format!("unreachable when the master started: {e}");
                });
                report.push(format!("node {node} unreachable: {e}"));
            }
        }
    }
    fleet.flush()?;
    let placements = fleet.db.placements()?;
    for p in &placements {
        let Some(services) = answered.get(&p.node) else {
            continue;
        };
        let running = services.iter().find(|s| s.name == p.service);
        match settle(p, running) {
            Verdict::Keep => {}
            Verdict::Deployed(line) => {
                fleet
                    .db
                    .set_placement_state(&p.service, "deployed", "confirmed by reconciliation")?;
                report.push(format!("{}: {line}", p.service));
            }
            Verdict::Failed(detail) => {
                fleet.db.set_placement_state(&p.service, "failed", &detail)?;
                report.push(format!("{}: {detail}", p.service));
            }
            Verdict::Drop(line) => {
                fleet.db.delete_placement(&p.service)?;
                report.push(format!("{}: {line}", p.service));
            }
            Verdict::Unknown(detail) => {
                fleet.db.set_placement_state(&p.service, "unknown", &detail)?;
                report.push(format!("{}: stale placement: {detail}", p.service));
            }
        }
    }
    let orphans = orphans(&answered, &placements);
    for o in &orphans {
        report.push(format!("orphan: {o} runs but the master did not place it there"));
    }
    fleet.set_orphans(orphans);
    for line in &report {
        tracing::warn!("reconcile: {line}");
    }
    Ok(report)
}

/// `node/service` for every service a node runs that is not placed there, sorted.
fn orphans(answered: &HashMap<String, Vec<ServiceInfo>>, placements: &[PlacementRow]) -> Vec<String> {
    let mut orphans: Vec<String> = answered
        .iter()
        .flat_map(|(node, services)| {
            services
                .iter()
                .filter(move |s| !placements.iter().any(|p| p.service == s.name && &p.node == node))
                .map(move |s| format!("{node}/{}", s.name))
        })
        .collect();
    orphans.sort();
    orphans
}
