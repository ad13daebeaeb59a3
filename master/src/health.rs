//! Node health: a node silent for longer than `heartbeat.silent_after` is
//! probed (`LiveCheck`); a failed probe makes it unhealthy, which takes it
//! out of placement until it heartbeats or registers again (`admission`).

use crate::db::now;
use crate::error::Result;
use crate::fleet::Fleet;

/// Probes the silent healthy nodes and records what the probes found.
pub async fn check_health(fleet: &Fleet) {
    let silent_since = now() - fleet.cfg.heartbeat.silent_after as i64;
    let silent = fleet.nodes.names(|n| n.healthy && n.last_seen < silent_since);
    // Nothing changed: heartbeats are left to the batched writer. A flush
    // here would run SQLite (and a WAL checkpoint's fsync) on an async
    // worker and stall the requests queued behind it.
    if silent.is_empty() {
        return;
    }
    let probes = fleet
        .each(&silent, fleet.cfg.timeouts.health_check, |agents, to| async move {
            agents.live_check(&to).await
        })
        .await;
    for (node, probe) in probes {
        record_probe(fleet, &node, probe, now());
    }
    if let Err(e) = fleet.flush() {
        tracing::error!(error = %e, "cannot write node states");
    }
}

/// Records one probe of a silent node at `now` (Unix seconds).
fn record_probe(fleet: &Fleet, node: &str, probe: Result<()>, now: i64) {
    fleet.nodes.update(node, |n| {
        let silent = now - n.last_seen;
        match &probe {
            Ok(()) => n.status_reason = format!("no heartbeat for {silent} s (but answers probes)"),
            Err(e) => {
                n.healthy = false;
                n.status_reason = format!("no heartbeat for {silent} s and health check failed: {e}");
                tracing::warn!(%node, reason = %n.status_reason, "node unhealthy");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{self, Heartbeat, Registration};
    use crate::testing::{add_node, fleet};

    #[tokio::test]
    async fn silent_nodes_are_probed_and_fail_into_unhealthy() {
        let (fleet, agents, _dir) = fleet();
        let t = now();
        // (node, seconds since its last heartbeat, healthy before, answers probes,
        //  probed, healthy after, its reason ends with)
        let cases = [
            ("fresh", 10, true, false, false, true, ""),
            ("quiet", 120, true, true, true, true, "s (but answers probes)"),
            (
                "gone",
                120,
                true,
                false,
                true,
                false,
                "health check failed: node gone is unreachable: no answer within 5 s",
            ),
            ("sick", 120, false, false, false, false, "earlier"),
        ];
        for (node, silent, healthy, answers, ..) in cases {
            add_node(&fleet, node, "worker", t - silent);
            if !healthy {
                fleet.nodes.update(node, |n| {
                    n.healthy = false;
                    n.status_reason = "earlier".into();
                });
            }
            if !answers {
                agents.take_down(node);
            }
        }
        check_health(&fleet).await;
        let saved = fleet.db.nodes().expect("read nodes");
        for (node, silent, _, _, probed, healthy, reason) in cases {
            assert_eq!(
                agents.count(&format!("live {node}")),
                usize::from(probed),
                "{node} probed"
            );
            let n = fleet.nodes.get(node).expect("node");
            assert_eq!(n.healthy, healthy, "{node}: {}", n.status_reason);
            assert!(n.status_reason.ends_with(reason), "{node}: {}", n.status_reason);
            if probed {
                assert!(
                    n.status_reason.starts_with(&format!("no heartbeat for {silent} s"))
                        || n.status_reason
                            .starts_with(&format!("no heartbeat for {} s", silent + 1)),
                    "{node}: {}",
                    n.status_reason
                );
            }
            let row = saved.iter().find(|r| r.name == node).expect("saved");
            assert_eq!(row.healthy, healthy, "{node} written to the database");
        }
    }

    #[tokio::test]
    async fn a_heartbeat_or_a_registration_heals() {
        let (fleet, agents, _dir) = fleet();
        for node in ["a", "b"] {
            add_node(&fleet, node, "worker", now() - 600);
            agents.take_down(node);
        }
        check_health(&fleet).await;
        assert!(fleet.nodes.all().iter().all(|n| !n.healthy), "both fail their probes");
        let hb = Heartbeat {
            node: "a".into(),
            load: crate::db::NodeLoad {
                containers: 2,
                ..Default::default()
            },
            cpus: 0,
        };
        admission::heartbeat(&fleet, "a", &hb).expect("heartbeat");
        let reg = Registration {
            role: "worker".into(),
            address: "10.0.0.9:9444".into(),
            ..Default::default()
        };
        admission::register(&fleet, "b", &reg).expect("register");
        for node in ["a", "b"] {
            let n = fleet.nodes.get(node).expect("node");
            assert!(n.healthy && n.status_reason.is_empty(), "{node}: {}", n.status_reason);
            let row = fleet.db.nodes().expect("read").into_iter().find(|r| r.name == node);
            assert!(row.expect("saved").healthy, "{node}: healing is written at once");
        }
        assert_eq!(fleet.nodes.get("a").expect("a").load.containers, 2);
        // Healthy again and heard from: no probe on the next check.
        let probes = agents.count("live");
        check_health(&fleet).await;
        assert_eq!(agents.count("live"), probes);
    }
}
