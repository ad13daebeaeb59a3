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
