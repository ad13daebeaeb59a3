//! Snapshots (SPEC §11): the master pulls a service's data from its node
//! into `<data_dir>/snapshots/<service>/<name>.tar.zst`, checking size and
//! SHA-256 end to end, keeps `snapshots.retention` of them, restores them,
//! and takes them on a schedule.
//!
//! Archives stream through in chunks: neither the master nor the agents
//! hold a whole archive in memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use futures::stream::BoxStream;
use mcp_model::service::ServiceDef;
use mcp_model::snapshot;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agents::{ImportHeader, Operation, ServiceOrder};
use crate::db::{PlacementRow, SnapshotRow, now};
use crate::deploy::agent_op;
use crate::error::{FleetError, Result};
use crate::fleet::{Fleet, secs};
use crate::reports::{AgentError, ErrorCode, ImportReport, Step};

/// Chunk size of archives read from disk and streamed to agents.
const CHUNK: usize = 256 * 1024;

/// A snapshot just taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTaken {
    pub snapshot: SnapshotRow,
    /// Older snapshots removed by the retention rule.
    pub pruned: Vec<String>,
    /// Things the agent skipped while archiving.
    pub warnings: Vec<String>,
}

/// A restore that went through.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub snapshot: SnapshotRow,
    pub node: String,
    pub steps: Vec<Step>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SHA-256 and size of a file, read in chunks.
async fn file_digest(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// An export that broke off or does not add up: the node's fault, said as
/// an agent's data-loss error.
fn data_loss(node: &str, message: String) -> FleetError {
    FleetError::Agent {
        node: node.to_string(),
        error: AgentError::new(ErrorCode::DataLoss, message),
    }
}

fn snapshot_dir(fleet: &Fleet, service: &str) -> PathBuf {
    fleet.cfg.snapshots_dir().join(service)
}

/// `mcp snapshot <svc>`: archives the service's data from its node.
pub async fn create(fleet: &Fleet, service: &str, request_id: &str) -> Result<SnapshotTaken> {
    let _guard = fleet.locks.lock(service).await?;
    let p = fleet.placement_of(service)?;
    let (snapshot, warnings) = pull(fleet, &p.node, service, request_id).await?;
    let pruned = prune(fleet, service)?;
    Ok(SnapshotTaken {
        snapshot,
        pruned,
        warnings,
    })
}

/// Streams the service's data from `node` into a new archive file and
/// records it; returns it with the agent's warnings. The caller holds the
/// service's lock.
pub async fn pull(fleet: &Fleet, node: &str, service: &str, request_id: &str) -> Result<(SnapshotRow, Vec<String>)> {
    let dir = snapshot_dir(fleet, service);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| FleetError::Internal(format!("{}: {e}", dir.display())))?;
    let mut ms = now_ms();
    let existing: Vec<String> = fleet.db.snapshots(Some(service))?.into_iter().map(|r| r.name).collect();
    let mut name = snapshot::snapshot_name(ms);
    while existing.contains(&name) {
        ms += 1;
        name = snapshot::snapshot_name(ms);
    }
    let path = dir.join(format!("{name}.tar.zst"));
    let partial = dir.join(format!(".{name}.tar.zst.partial"));
    let timeout = secs(fleet.cfg.timeouts.snapshot);
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, receive(fleet, node, service, request_id, &partial)).await;
    let (sha256, size, warnings) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        Err(_) => {
            let _ = tokio::fs::remove_file(&partial).await;
            fleet.agents.forget(node).await;
            return Err(FleetError::Unreachable {
                node: node.to_string(),
                reason: format!("snapshot of {service} did not finish within {} s", timeout.as_secs()),
            });
        }
    };
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|e| FleetError::Internal(format!("{}: {e}", path.display())))?;
    let mut row = SnapshotRow {
        id: 0,
        service: service.to_string(),
        name,
        path: path.display().to_string(),
        sha256,
        size,
        created_at: ms / 1000,
        node: node.to_string(),
    };
    row.id = fleet.db.add_snapshot(&row)?;
    tracing::info!(%service, %node, name = %row.name, size, ms = started.elapsed().as_millis() as u64, %request_id, "snapshot stored");
    Ok((row, warnings))
}

/// Receives an export into `partial` (0600), verifying what the agent says
/// it sent: (SHA-256, size, warnings).
async fn receive(
    fleet: &Fleet,
    node: &str,
    service: &str,
    request_id: &str,
    partial: &Path,
) -> Result<(String, u64, Vec<String>)> {
    let internal = |e: std::io::Error| FleetError::Internal(format!("{}: {e}", partial.display()));
    let to = fleet.target(node, fleet.cfg.timeouts.snapshot)?;
    let mut stream = fleet.agents.export(&to, service, request_id).await?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)
        .await
        .map_err(internal)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let Some(chunk) = stream.next().await.transpose()? else {
            return Err(data_loss(
                node,
                format!("export of {service} ended after {size} bytes without its checksum"),
            ));
        };
        if !chunk.data.is_empty() {
            hasher.update(&chunk.data);
            size += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(internal)?;
        }
        if chunk.done {
            let got = hex::encode(hasher.finalize());
            if got != chunk.sha256 || size != chunk.size {
                return Err(data_loss(
                    node,
                    format!(
                        "export of {service}: received {size} bytes with SHA-256 {got}, \
                         the agent sent {} bytes with {}",
                        chunk.size, chunk.sha256
                    ),
                ));
            }
            file.sync_all().await.map_err(internal)?;
            return Ok((got, size, chunk.warnings));
        }
    }
}

/// Deletes the oldest snapshots of `service` beyond the retention; returns
/// their names.
pub fn prune(fleet: &Fleet, service: &str) -> Result<Vec<String>> {
    let rows = fleet.db.snapshots(Some(service))?;
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let doomed = snapshot::prune(&names, fleet.cfg.snapshots.retention as usize);
    for r in rows.iter().filter(|r| doomed.contains(&r.name)) {
        if let Err(e) = std::fs::remove_file(&r.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %r.path, error = %e, "cannot remove old snapshot");
            continue;
        }
        fleet.db.delete_snapshot(r.id)?;
        tracing::info!(%service, name = %r.name, "old snapshot removed (retention)");
    }
    Ok(doomed)
}

/// `mcp snapshot list [svc]` (every service when `service` is empty).
pub fn list(fleet: &Fleet, service: &str) -> Result<Vec<SnapshotRow>> {
    let filter = (!service.is_empty()).then_some(service);
    Ok(fleet.db.snapshots(filter)?)
}

/// The snapshot of `service` selected by `at` (latest when empty), with its
/// file checked against the recorded size and SHA-256.
pub async fn verified(fleet: &Fleet, service: &str, at: &str) -> Result<SnapshotRow> {
    if !at.is_empty() {
        snapshot::check_selector(at).map_err(FleetError::Invalid)?;
    }
    let rows = fleet.db.snapshots(Some(service))?;
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let Some(name) = snapshot::select(&names, at) else {
        return Err(FleetError::NotFound(if at.is_empty() {
            format!("service {service} has no snapshot")
        } else {
            format!("service {service} has no snapshot matching {at:?}")
        }));
    };
    let row = rows
        .into_iter()
        .find(|r| &r.name == name)
        .expect("selected from these rows");
    let (sha, size) = file_digest(Path::new(&row.path))
        .await
        .map_err(|e| FleetError::Precondition(format!("snapshot {} of {service}: {}: {e}", row.name, row.path)))?;
    if sha != row.sha256 || size != row.size {
        return Err(FleetError::Precondition(format!(
            "snapshot {} of {service} is damaged: {} has {size} bytes with SHA-256 {sha}, \
             recorded {} bytes with {}; nothing was changed",
            row.name, row.path, row.size, row.sha256
        )));
    }
    Ok(row)
}

/// The chunks of a file, read as the stream is polled (a read error ends it
/// early; the import then fails its size check).
fn file_chunks(file: tokio::fs::File) -> BoxStream<'static, Vec<u8>> {
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((buf, Some(file)))
            }
        }
    })
    .boxed()
}

/// Streams a stored snapshot into `node`'s import.
pub async fn push(
    fleet: &Fleet,
    node: &str,
    def: &ServiceDef,
    row: &SnapshotRow,
    force: bool,
    request_id: &str,
) -> Result<ImportReport> {
    let header = ImportHeader {
        def: def.clone(),
        force,
        sha256: row.sha256.clone(),
        size: row.size,
        request_id: request_id.to_string(),
    };
    let file = tokio::fs::File::open(&row.path)
        .await
        .map_err(|e| FleetError::Internal(format!("{}: {e}", row.path)))?;
    let to = fleet.target(node, fleet.cfg.timeouts.snapshot)?;
    fleet.agents.import(&to, &header, file_chunks(file)).await
}

/// `mcp snapshot restore <svc> [--at ts]`: stop, import (replacing the
/// data), start. A refused import leaves the old data, restarted.
pub async fn restore(fleet: &Fleet, service: &str, at: &str, request_id: &str) -> Result<Restored> {
    let _guard = fleet.locks.lock(service).await?;
    let p = fleet.placement_of(service)?;
    // Checked before anything stops: a damaged file changes nothing.
    let row = verified(fleet, service, at).await?;
    let order = ServiceOrder::new(service, request_id);
    let mut steps = Vec::new();
    let was_running = p.state != "stopped";
    let t = Instant::now();
    if was_running {
        agent_op(fleet, &p.node, Operation::Stop, &order).await?;
        steps.push(Step::timed("stop", t, Ok(format!("stopped on {}", p.node))));
    }
    let t = Instant::now();
    let imported = push(fleet, &p.node, &p.def, &row, true, request_id).await;
    let import_error = match &imported {
        Ok(r) => {
            let detail = format!("{} bytes, {} entries", r.bytes, r.entries);
            steps.push(Step::timed("import", t, Ok(detail)));
            None
        }
        Err(e) => {
            steps.push(Step::timed("import", t, Err(e.to_string())));
            Some(e.to_string())
        }
    };
    if was_running {
        let t = Instant::now();
        match agent_op(fleet, &p.node, Operation::Start, &order).await {
            Ok(_) => steps.push(Step::timed("start", t, Ok(format!("started on {}", p.node)))),
            Err(e) => {
                steps.push(Step::timed("start", t, Err(e.to_string())));
                fleet
                    .db
                    .set_placement_state(service, "stopped", &format!("restart after restore failed: {e}"))?;
                return Err(FleetError::Precondition(format!(
                    "restore of {service}: {}the service did not start again on {}: {e}",
                    import_error
                        .map(|i| format!("import failed ({i}); "))
                        .unwrap_or_default(),
                    p.node
                )));
            }
        }
    }
    if let Some(e) = import_error {
        let what = if was_running {
            "running again with its previous data"
        } else {
            "unchanged"
        };
        return Err(match imported {
            Err(FleetError::Agent { node, error }) => FleetError::Agent {
                node,
                error: AgentError::new(error.code, format!("{}; service {service} is {what}", error.message)),
            },
            _ => FleetError::Precondition(format!("restore of {service} failed: {e}; the service is {what}")),
        });
    }
    tracing::info!(%service, node = %p.node, snapshot = %row.name, %request_id, "snapshot restored");
    Ok(Restored {
        snapshot: row,
        node: p.node,
        steps,
    })
}

/// Whether the service of `p` is due for a scheduled snapshot at `now`
/// (Unix seconds): it has volumes, no deploy is under way, its node is
/// healthy, and its latest snapshot (if any) is at least `interval`
/// seconds old. Pure.
fn due(p: &PlacementRow, node_healthy: bool, latest: Option<i64>, now: i64, interval: u64) -> bool {
    let has_data = p.def.components.iter().any(|c| !c.volumes.is_empty());
    has_data && p.state != "deploying" && node_healthy && latest.is_none_or(|t| now - t >= interval as i64)
}

/// Scheduled snapshots: every placed service that is [`due`]. Fails only
/// when the placements cannot be read; a failed snapshot is logged and the
/// others go on.
pub async fn scheduled(fleet: &Fleet) -> Result<()> {
    let Some(interval) = fleet.cfg.snapshots.interval() else {
        return Ok(());
    };
    for p in fleet.db.placements()? {
        let healthy = fleet.nodes.get(&p.node).is_some_and(|n| n.healthy);
        let latest = fleet
            .db
            .snapshots(Some(&p.service))
            .ok()
            .and_then(|rows| rows.iter().map(|r| r.created_at).max());
        if !due(&p, healthy, latest, now(), interval) {
            continue;
        }
        match create(fleet, &p.service, "scheduled").await {
            Ok(r) => tracing::info!(service = %p.service, name = %r.snapshot.name, "scheduled snapshot"),
            Err(e) => tracing::warn!(service = %p.service, error = %e, "scheduled snapshot failed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::def;

    #[test]
    fn due_for_a_scheduled_snapshot() {
        let with_volume = |state: &str| {
            let mut d = def("db", "db:1");
            d.components[0].volumes = vec!["/srv/db:/data".into()];
            PlacementRow {
                service: "db".into(),
                node: "n1".into(),
                def: d,
                state: state.into(),
                detail: String::new(),
                request_id: String::new(),
                updated_at: 0,
            }
        };
        let no_volume = PlacementRow {
            def: def("web", "web:1"),
            ..with_volume("deployed")
        };
        let day = 86_400;
        let now = 10 * day;
        // (placement, node healthy, latest snapshot, due)
        let cases = [
            (with_volume("deployed"), true, None, true),
            (with_volume("deployed"), true, Some(now - day), true),
            (with_volume("deployed"), true, Some(now - day + 1), false),
            (with_volume("stopped"), true, Some(now - 2 * day), true),
            (with_volume("deploying"), true, None, false),
            (with_volume("deployed"), false, None, false),
            (no_volume, true, None, false),
        ];
        for (i, (p, healthy, latest, want)) in cases.into_iter().enumerate() {
            assert_eq!(due(&p, healthy, latest, now, day as u64), want, "case {i}");
        }
    }
}
