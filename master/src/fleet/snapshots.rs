//! Snapshots and migration (SPEC §11): the master pulls a service's data
//! from its node into `<data_dir>/snapshots/<service>/<name>.tar.zst`,
//! checking size and SHA-256 end to end, keeps `snapshots.retention` of
//! them, restores them, and moves services between nodes.
//!
//! Archives stream through in chunks: neither the master nor the agents
//! hold a whole archive in memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mcp_model::placement::NodeRole;
use mcp_model::service::{ServiceDef, Tier};
use mcp_model::snapshot;
use mcp_proto as proto;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use super::{FleetError, Master, Result};
use crate::db::{PlacementRow, SnapshotRow, now};

/// Chunk size of archives streamed to agents.
const CHUNK: usize = 256 * 1024;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn info(r: &SnapshotRow) -> proto::SnapshotInfo {
    proto::SnapshotInfo {
        service: r.service.clone(),
        name: r.name.clone(),
        created_at: r.created_at,
        sha256: r.sha256.clone(),
        size: r.size,
        node: r.node.clone(),
        path: r.path.clone(),
    }
}

fn step(name: &str, started: Instant, result: std::result::Result<String, String>) -> proto::StepResult {
    let (success, detail, error) = match result {
        Ok(d) => (true, d, String::new()),
        Err(e) => (false, String::new(), e),
    };
    proto::StepResult {
        step: name.to_string(),
        success,
        error,
        detail,
        skipped: false,
        duration_ms: started.elapsed().as_millis() as u64,
    }
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

fn short(e: &FleetError) -> String {
    e.to_string()
}

/// Whether a failed agent call means the node could not be reached.
fn unreachable(e: &FleetError) -> bool {
    match e {
        FleetError::Unreachable { .. } => true,
        FleetError::Agent { status, .. } => matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        _ => false,
    }
}

impl Master {
    fn snapshot_dir(&self, service: &str) -> PathBuf {
        self.cfg.snapshots_dir().join(service)
    }

    /// `mcp snapshot <svc>`: archives the service's data from its node.
    pub async fn create_snapshot(&self, service: &str, request_id: &str) -> Result<proto::CreateSnapshotResponse> {
        let _guard = self.lock(service).await?;
        let p = self.placement_of(service)?;
        let (row, warnings) = self.pull_snapshot(&p.node, service, request_id).await?;
        let pruned = self.prune(service)?;
        Ok(proto::CreateSnapshotResponse {
            snapshot: Some(info(&row)),
            pruned,
            warnings,
        })
    }

    /// Streams the service's data from `node` into a new archive file and
    /// records it. The caller holds the service's lock.
    async fn pull_snapshot(&self, node: &str, service: &str, request_id: &str) -> Result<(SnapshotRow, Vec<String>)> {
        let dir = self.snapshot_dir(service);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| FleetError::Internal(format!("{}: {e}", dir.display())))?;
        let mut ms = now_ms();
        let existing: Vec<String> = self.db.snapshots(Some(service))?.into_iter().map(|r| r.name).collect();
        let mut name = snapshot::snapshot_name(ms);
        while existing.contains(&name) {
            ms += 1;
            name = snapshot::snapshot_name(ms);
        }
        let path = dir.join(format!("{name}.tar.zst"));
        let partial = dir.join(format!(".{name}.tar.zst.partial"));
        let timeout = Duration::from_secs(self.cfg.timeouts.snapshot);
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.receive(node, service, request_id, &partial)).await;
        let (sha256, size, warnings) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            Err(_) => {
                let _ = tokio::fs::remove_file(&partial).await;
                self.forget_client(node).await;
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
        row.id = self.db.add_snapshot(&row)?;
        tracing::info!(%service, %node, name = %row.name, size, ms = started.elapsed().as_millis() as u64, %request_id, "snapshot stored");
        Ok((row, warnings))
    }

    /// Receives an export into `partial` (0600), verifying what the agent
    /// says it sent.
    async fn receive(
        &self,
        node: &str,
        service: &str,
        request_id: &str,
        partial: &Path,
    ) -> Result<(String, u64, Vec<String>)> {
        let internal = |e: std::io::Error| FleetError::Internal(format!("{}: {e}", partial.display()));
        let mut client = self.agent(node).await?;
        let req = proto::ExportServiceDataRequest {
            service: service.to_string(),
            request_id: request_id.to_string(),
        };
        let mut stream = match client.export_service_data(req).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                if matches!(status.code(), Code::Unavailable | Code::Unknown) {
                    self.forget_client(node).await;
                }
                return Err(FleetError::Agent {
                    node: node.to_string(),
                    status,
                });
            }
        };
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
            let msg = stream.message().await.map_err(|status| FleetError::Agent {
                node: node.to_string(),
                status,
            })?;
            let Some(chunk) = msg else {
                return Err(FleetError::Agent {
                    node: node.to_string(),
                    status: tonic::Status::data_loss(format!(
                        "export of {service} ended after {size} bytes without its checksum"
                    )),
                });
            };
            if !chunk.data.is_empty() {
                hasher.update(&chunk.data);
                size += chunk.data.len() as u64;
                file.write_all(&chunk.data).await.map_err(internal)?;
            }
            if chunk.done {
                let got = hex::encode(hasher.finalize());
                if got != chunk.sha256 || size != chunk.size {
                    return Err(FleetError::Agent {
                        node: node.to_string(),
                        status: tonic::Status::data_loss(format!(
                            "export of {service}: received {size} bytes with SHA-256 {got}, \
                             the agent sent {} bytes with {}",
                            chunk.size, chunk.sha256
                        )),
                    });
                }
                file.sync_all().await.map_err(internal)?;
                return Ok((got, size, chunk.warnings));
            }
        }
    }

    /// Deletes the oldest snapshots of `service` beyond the retention.
    fn prune(&self, service: &str) -> Result<Vec<String>> {
        let rows = self.db.snapshots(Some(service))?;
        let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
        let doomed = snapshot::prune(&names, self.cfg.snapshots.retention as usize);
        for r in rows.iter().filter(|r| doomed.contains(&r.name)) {
            if let Err(e) = std::fs::remove_file(&r.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %r.path, error = %e, "cannot remove old snapshot");
                continue;
            }
            self.db.delete_snapshot(r.id)?;
            tracing::info!(%service, name = %r.name, "old snapshot removed (retention)");
        }
        Ok(doomed)
    }

    /// `mcp snapshot list [svc]`.
    pub fn list_snapshots(&self, service: &str) -> Result<Vec<proto::SnapshotInfo>> {
        let filter = (!service.is_empty()).then_some(service);
        Ok(self.db.snapshots(filter)?.iter().map(info).collect())
    }

    /// The snapshot of `service` selected by `at` (latest when empty),
    /// with its file checked against the recorded size and SHA-256.
    async fn verified_snapshot(&self, service: &str, at: &str) -> Result<SnapshotRow> {
        if !at.is_empty() {
            snapshot::check_selector(at).map_err(FleetError::Invalid)?;
        }
        let rows = self.db.snapshots(Some(service))?;
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

    /// Streams a stored snapshot into `node`'s import.
    async fn push_snapshot(
        &self,
        node: &str,
        def: &ServiceDef,
        row: &SnapshotRow,
        force: bool,
        request_id: &str,
    ) -> Result<proto::ImportServiceDataResponse> {
        let header = proto::ImportHeader {
            service: Some(proto::ServiceSpec::from(def)),
            force,
            sha256: row.sha256.clone(),
            size: row.size,
            request_id: request_id.to_string(),
        };
        let file = tokio::fs::File::open(&row.path)
            .await
            .map_err(|e| FleetError::Internal(format!("{}: {e}", row.path)))?;
        let first = futures::stream::once(async move {
            proto::ImportServiceDataRequest {
                msg: Some(proto::import_service_data_request::Msg::Header(header)),
            }
        });
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    let msg = proto::ImportServiceDataRequest {
                        msg: Some(proto::import_service_data_request::Msg::Chunk(buf)),
                    };
                    Some((msg, Some(file)))
                }
            }
        });
        let mut client = self.agent(node).await?;
        let timeout = Duration::from_secs(self.cfg.timeouts.snapshot);
        let result = tokio::time::timeout(timeout, client.import_service_data(first.chain(chunks))).await;
        self.settle(node, result, || {
            format!("import did not finish within {} s", timeout.as_secs())
        })
        .await
    }

    async fn agent_op(
        &self,
        node: &str,
        op: &'static str,
        service: &str,
        request_id: &str,
    ) -> Result<proto::OperationResponse> {
        let req = proto::ServiceRequest {
            name: service.to_string(),
            component: String::new(),
            request_id: request_id.to_string(),
        };
        let timeout = match op {
            "undeploy" => self.cfg.timeouts.undeploy,
            _ => self.cfg.timeouts.deploy,
        };
        self.call(node, timeout, |mut c| {
            let req = req.clone();
            async move {
                match op {
                    "stop" => c.stop_service(req).await,
                    "start" => c.start_service(req).await,
                    _ => c.undeploy_service(req).await,
                }
            }
        })
        .await
    }

    /// `mcp snapshot restore <svc> [--at ts]`: stop, import (replacing the
    /// data), start. A refused import leaves the old data, restarted.
    pub async fn restore_snapshot(
        &self,
        service: &str,
        at: &str,
        request_id: &str,
    ) -> Result<proto::RestoreSnapshotResponse> {
        let _guard = self.lock(service).await?;
        let p = self.placement_of(service)?;
        // Checked before anything stops: a damaged file changes nothing.
        let row = self.verified_snapshot(service, at).await?;
        let mut steps = Vec::new();
        let was_running = p.state != "stopped";
        let t = Instant::now();
        if was_running {
            self.agent_op(&p.node, "stop", service, request_id).await?;
            steps.push(step("stop", t, Ok(format!("stopped on {}", p.node))));
        }
        let t = Instant::now();
        let imported = self.push_snapshot(&p.node, &p.def, &row, true, request_id).await;
        let import_error = match &imported {
            Ok(r) => {
                steps.push(step(
                    "import",
                    t,
                    Ok(format!("{} bytes, {} entries", r.bytes, r.entries)),
                ));
                None
            }
            Err(e) => {
                steps.push(step("import", t, Err(short(e))));
                Some(short(e))
            }
        };
        if was_running {
            let t = Instant::now();
            match self.agent_op(&p.node, "start", service, request_id).await {
                Ok(_) => steps.push(step("start", t, Ok(format!("started on {}", p.node)))),
                Err(e) => {
                    steps.push(step("start", t, Err(short(&e))));
                    self.db
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
                Err(FleetError::Agent { node, status }) => FleetError::Agent {
                    node,
                    status: tonic::Status::new(
                        status.code(),
                        format!("{}; service {service} is {what}", status.message()),
                    ),
                },
                _ => FleetError::Precondition(format!("restore of {service} failed: {e}; the service is {what}")),
            });
        }
        tracing::info!(%service, node = %p.node, snapshot = %row.name, %request_id, "snapshot restored");
        Ok(proto::RestoreSnapshotResponse {
            snapshot: Some(info(&row)),
            node: p.node,
            steps,
        })
    }

    /// Checks that `to` can take `def` from `from`.
    fn check_migration(&self, def: &ServiceDef, from: &str, to: &str) -> Result<()> {
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
        let nodes = self.read_nodes();
        let n = nodes
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
    pub async fn migrate(&self, req: proto::MigrateServiceRequest) -> Result<proto::MigrateServiceResponse> {
        if req.to.is_empty() {
            return Err(FleetError::Invalid("migrate needs a target node (--to)".into()));
        }
        if req.all {
            if !req.service.is_empty() || req.from.is_empty() {
                return Err(FleetError::Invalid("--all takes --from <node> and no service".into()));
            }
            let services: Vec<PlacementRow> = self
                .db
                .placements()?
                .into_iter()
                .filter(|p| p.node == req.from)
                .collect();
            let mut results = Vec::new();
            for p in services {
                if p.def.tier() == Tier::Core || p.def.node.is_some() {
                    results.push(proto::MigrationResult {
                        service: p.service.clone(),
                        from: p.node.clone(),
                        to: req.to.clone(),
                        success: false,
                        error: match self.check_migration(&p.def, &p.node, &req.to) {
                            Err(e) => format!("skipped: {e}"),
                            Ok(()) => "skipped".into(),
                        },
                        ..Default::default()
                    });
                    continue;
                }
                let r = match self.migrate_one(&p.service, &req.to, req.force, &req.request_id).await {
                    Ok(r) => r,
                    Err(e) => proto::MigrationResult {
                        service: p.service.clone(),
                        from: p.node.clone(),
                        to: req.to.clone(),
                        success: false,
                        error: e.to_string(),
                        ..Default::default()
                    },
                };
                results.push(r);
            }
            return Ok(proto::MigrateServiceResponse { results });
        }
        let r = self
            .migrate_one(&req.service, &req.to, req.force, &req.request_id)
            .await?;
        Ok(proto::MigrateServiceResponse { results: vec![r] })
    }

    /// Snapshot (after stopping the source, so no write is lost) → import
    /// on the target → placement and DNS move → deploy on the target →
    /// undeploy on the source. Refusals come back as errors; a failure
    /// after the first step as a result with `success = false` that says
    /// where the service runs now.
    async fn migrate_one(
        &self,
        service: &str,
        to: &str,
        force: bool,
        request_id: &str,
    ) -> Result<proto::MigrationResult> {
        let _guard = self.lock(service).await?;
        let p = self.placement_of(service)?;
        let from = p.node.clone();
        self.check_migration(&p.def, &from, to)?;
        let has_data = p.def.components.iter().any(|c| !c.volumes.is_empty());
        let mut r = proto::MigrationResult {
            service: service.to_string(),
            from: from.clone(),
            to: to.to_string(),
            ..Default::default()
        };
        tracing::info!(%service, %from, %to, force, %request_id, "migrating");

        // 1. Stop on the source. With --force an unreachable source is
        //    tolerated: its latest snapshot stands in for its data.
        let t = Instant::now();
        let source_up = match self.agent_op(&from, "stop", service, request_id).await {
            Ok(_) => {
                r.steps.push(step("stop", t, Ok(format!("stopped on {from}"))));
                true
            }
            Err(e) if force && unreachable(&e) => {
                r.steps.push(step("stop", t, Err(format!("{e}; continuing (--force)"))));
                false
            }
            Err(e) if unreachable(&e) => {
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
                .push(step("snapshot", t, Ok("no volumes: nothing to move".into())));
            None
        } else if source_up {
            match self.pull_snapshot(&from, service, request_id).await {
                Ok((row, _)) => {
                    let _ = self.prune(service);
                    r.steps.push(step(
                        "snapshot",
                        t,
                        Ok(format!("{} ({} bytes) from {from}", row.name, row.size)),
                    ));
                    Some(row)
                }
                Err(e) => {
                    r.steps.push(step("snapshot", t, Err(short(&e))));
                    return Ok(self
                        .abort(r, &p, source_up, request_id, format!("snapshot failed: {e}"))
                        .await);
                }
            }
        } else {
            match self.verified_snapshot(service, "").await {
                Ok(row) => {
                    r.steps.push(step(
                        "snapshot",
                        t,
                        Ok(format!(
                            "latest stored snapshot {} ({} bytes, from {})",
                            row.name, row.size, row.node
                        )),
                    ));
                    Some(row)
                }
                Err(e) => {
                    r.steps.push(step("snapshot", t, Err(short(&e))));
                    return Ok(self
                        .abort(r, &p, source_up, request_id, format!("no usable snapshot: {e}"))
                        .await);
                }
            }
        };
        if let Some(row) = &data {
            r.snapshot = Some(info(row));
        }

        // 3. Import on the target (verified there before anything changes).
        if let Some(row) = &data {
            let t = Instant::now();
            match self.push_snapshot(to, &p.def, row, force, request_id).await {
                Ok(done) => r.steps.push(step(
                    "import",
                    t,
                    Ok(format!("{} bytes, {} entries on {to}", done.bytes, done.entries)),
                )),
                Err(e) => {
                    r.steps.push(step("import", t, Err(short(&e))));
                    return Ok(self
                        .abort(r, &p, source_up, request_id, format!("import on {to} failed: {e}"))
                        .await);
                }
            }
        }

        // 4. Placement and DNS move, then deploy on the target (which
        //    registers the service's DNS record and routes there).
        let t = Instant::now();
        let record = format!("{service}.{}", self.zone);
        if self.db.remove_dns_records(&record)? > 0 {
            self.records.remove(&record);
        }
        self.db.save_placement(&PlacementRow {
            service: service.to_string(),
            node: to.to_string(),
            def: p.def.clone(),
            state: "deploying".into(),
            detail: format!("migration {request_id} from {from} in progress"),
            request_id: request_id.to_string(),
            updated_at: 0,
        })?;
        let deploy = proto::DeployRequest {
            service: Some(proto::ServiceSpec::from(&p.def)),
            component: String::new(),
            request_id: request_id.to_string(),
        };
        let deployed = self
            .call(to, self.cfg.timeouts.deploy, |mut c| {
                let req = deploy.clone();
                async move { c.deploy(req).await }
            })
            .await;
        match deployed {
            Ok(resp) => {
                let failed: Vec<String> = resp
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
                r.steps.push(step("deploy", t, Ok(detail)));
            }
            Err(e) => {
                r.steps.push(step("deploy", t, Err(short(&e))));
                // Best effort: the target's agent rolled back its deploy;
                // leave nothing of the service there.
                let _ = self.agent_op(to, "undeploy", service, request_id).await;
                self.db.save_placement(&p)?;
                return Ok(self
                    .abort(r, &p, source_up, request_id, format!("deploy on {to} failed: {e}"))
                    .await);
            }
        }
        self.db
            .set_placement_state(service, "deployed", &format!("migrated from {from} by {request_id}"))?;
        if let Some(edge) = self.sync_edge(&p.def, to).await {
            r.steps.push(edge);
        }

        // 5. Undeploy on the source (its data stays on disk there).
        let t = Instant::now();
        if source_up {
            match self.agent_op(&from, "undeploy", service, request_id).await {
                Ok(_) => r.steps.push(step("undeploy", t, Ok(format!("removed from {from}")))),
                Err(e) => r.steps.push(step(
                    "undeploy",
                    t,
                    Err(format!("{e}; the service runs on {to}: remove it from {from} by hand")),
                )),
            }
        } else {
            r.steps.push(step(
                "undeploy",
                t,
                Err(format!(
                    "{from} is unreachable: its containers of {service} may still exist; \
                     undeploy them there with `mcp undeploy {service} --direct --node {from}` when it is back"
                )),
            ));
        }
        r.success = true;
        tracing::info!(%service, %from, %to, %request_id, "migrated");
        Ok(r)
    }

    /// A migration failed before the target took over: restart the
    /// service on the source (when it was stopped there) and say where it
    /// is.
    async fn abort(
        &self,
        mut r: proto::MigrationResult,
        p: &PlacementRow,
        source_up: bool,
        request_id: &str,
        why: String,
    ) -> proto::MigrationResult {
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
        match self.agent_op(from, "start", service, request_id).await {
            Ok(_) => {
                r.steps
                    .push(step("restart-source", t, Ok(format!("started again on {from}"))));
                r.error = format!("{why}. Service {service} is running on {from} again, unchanged");
            }
            Err(e) => {
                r.steps.push(step("restart-source", t, Err(short(&e))));
                let _ = self.db.set_placement_state(
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

    /// Scheduled snapshots: every placed service with volumes whose latest
    /// snapshot is older than the schedule's interval.
    pub async fn scheduled_snapshots(&self) {
        let Some(interval) = self.cfg.snapshots.interval() else {
            return;
        };
        let placements = match self.db.placements() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "scheduled snapshots: cannot read placements");
                return;
            }
        };
        for p in placements {
            if !p.def.components.iter().any(|c| !c.volumes.is_empty()) || p.state == "deploying" {
                continue;
            }
            let healthy = self.read_nodes().get(&p.node).is_some_and(|n| n.healthy);
            if !healthy {
                continue;
            }
            let latest = self
                .db
                .snapshots(Some(&p.service))
                .ok()
                .and_then(|rows| rows.iter().map(|r| r.created_at).max());
            if latest.is_some_and(|t| now() - t < interval as i64) {
                continue;
            }
            match self.create_snapshot(&p.service, "scheduled").await {
                Ok(r) => {
                    tracing::info!(service = %p.service, name = %r.snapshot.map(|s| s.name).unwrap_or_default(), "scheduled snapshot")
                }
                Err(e) => tracing::warn!(service = %p.service, error = %e, "scheduled snapshot failed"),
            }
        }
    }
}
