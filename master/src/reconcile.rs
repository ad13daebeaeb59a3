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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::now;
    use crate::testing::{add_node, def, fleet, place, placement};

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Keep => "keep",
            Verdict::Deployed(_) => "deployed",
            Verdict::Failed(_) => "failed",
            Verdict::Drop(_) => "drop",
            Verdict::Unknown(_) => "unknown",
        }
    }

    #[test]
    fn settle_by_state_and_what_runs() {
        let same = ServiceInfo {
            name: "web".into(),
            components: vec![crate::reports::ComponentInfo {
                name: "app".into(),
                image: "web:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let other = ServiceInfo {
            components: vec![crate::reports::ComponentInfo {
                name: "app".into(),
                image: "web:0".into(),
                ..Default::default()
            }],
            ..same.clone()
        };
        // (placement state, what its node runs, verdict)
        let cases = [
            ("deploying", Some(&same), "deployed"),
            ("unknown", Some(&same), "deployed"),
            ("deploying", Some(&other), "failed"),
            ("unknown", Some(&other), "failed"),
            ("deployed", Some(&other), "keep"),
            ("stopped", Some(&same), "keep"),
            ("failed", Some(&same), "keep"),
            ("deploying", None, "drop"),
            ("deployed", None, "unknown"),
            ("stopped", None, "unknown"),
            ("failed", None, "unknown"),
            ("unknown", None, "unknown"),
        ];
        for (state, running, want) in cases {
            let p = PlacementRow {
                service: "web".into(),
                node: "n1".into(),
                def: def("web", "web:1"),
                state: state.into(),
                detail: String::new(),
                request_id: "r1".into(),
                updated_at: 0,
            };
            assert_eq!(kind(&settle(&p, running)), want, "{state} with {running:?}");
        }
    }

    #[tokio::test]
    async fn records_follow_what_the_nodes_answer() {
        let (fleet, agents, _dir) = fleet();
        for (node, role) in [("n1", "worker"), ("n2", "worker"), ("e1", "edge")] {
            add_node(&fleet, node, role, now());
        }
        agents.take_down("n2");
        agents.runs(
            "n1",
            &[
                ("a", &[("app", "a:1")]),
                ("b", &[("app", "b:0")]),
                ("e", &[("app", "e:1")]),
                ("f", &[("app", "f:1")]),
                ("stray", &[("app", "s:1")]),
            ],
        );
        let placed = [
            ("a", "n1", "deploying"),
            ("b", "n1", "unknown"),
            ("c", "n1", "deploying"),
            ("d", "n1", "deployed"),
            ("e", "n1", "deployed"),
            ("f", "n2", "deploying"),
        ];
        for (service, node, state) in placed {
            place(&fleet, &def(service, &format!("{service}:1")), node, state, "r7");
        }
        let report = reconcile(&fleet).await.expect("reconcile");
        let state = |s: &str| placement(&fleet, s).map(|p| (p.1, p.2));
        assert_eq!(
            state("a"),
            Some(("deployed".into(), "confirmed by reconciliation".into()))
        );
        let (b, why) = state("b").expect("b stays");
        assert_eq!(b, "failed");
        assert!(why.starts_with("deploy r7 did not complete: n1 runs"), "{why}");
        assert_eq!(state("c"), None, "never reached its node: dropped");
        assert_eq!(
            state("d"),
            Some((
                "unknown".into(),
                "n1 does not run it (was deployed); re-deploy it".into()
            ))
        );
        assert_eq!(state("e").map(|s| s.0), Some("deployed".into()), "in order: untouched");
        assert_eq!(
            state("f").map(|s| s.0),
            Some("deploying".into()),
            "its node did not answer"
        );
        assert_eq!(fleet.orphans(), ["n1/f", "n1/stray"]);
        let n2 = fleet.nodes.get("n2").expect("n2");
        assert!(!n2.healthy);
        assert!(
            n2.status_reason.starts_with("unreachable when the master started: "),
            "{}",
            n2.status_reason
        );
        assert!(
            !fleet
                .db
                .nodes()
                .expect("read")
                .iter()
                .any(|n| n.name == "n2" && n.healthy)
        );
        assert_eq!(agents.count("list e1"), 0, "edge nodes run no services");
        assert_eq!(report.len(), 7, "{report:#?}");
        assert!(report.contains(&"c: deploy r7 never reached n1; placement dropped".to_string()));
        assert!(report.contains(&"orphan: n1/stray runs but the master did not place it there".to_string()));
    }
}
