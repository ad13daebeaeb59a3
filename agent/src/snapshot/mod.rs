//! Service data export and import (SPEC §11).
//!
//! A service's **data directory** is the set of host-side sources of its
//! components' volumes ([`crate::volumes`]). Export streams them as one
//! tar.zst archive ([`archive`]): entries are named by the source path
//! without its leading `/` (`srv/web/app.db`), so an archive fits any node
//! that runs the same definition. SQLite databases are copied with `VACUUM
//! INTO`, a consistent snapshot even under concurrent writes. Nothing is
//! held in memory beyond a few 256 KiB chunks: tar and zstd run in a
//! blocking task that writes into a bounded channel.
//!
//! Import receives a header (definition, `force`, SHA-256 and size) and the
//! archive, and unpacks it into a staging directory next to each volume
//! (same file system) while hashing every byte. Only when the whole stream
//! has arrived and its size and SHA-256 match does it swap the staged
//! directories in with two renames per volume; otherwise the staging
//! directories are removed and the node's data is untouched.

pub mod archive;

use std::time::Instant;

use futures::{Stream, StreamExt};
use mcp_model::service::{self, ServiceDef};
use mcp_model::snapshot::Method;
use tokio::sync::mpsc;

use crate::handle::Agent;
use crate::outcome::OpError;
use crate::volumes::{Volume, volumes};
use archive::{ChunkSender, IN_FLIGHT, ImportError, Imported, extract, write_archive};

/// One item of an export stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportItem {
    /// The next bytes of the tar.zst archive.
    Data(Vec<u8>),
    /// The end: SHA-256 and size of the whole stream, and what was noted.
    Done {
        sha256: String,
        size: u64,
        warnings: Vec<String>,
    },
}

/// What an import is asked to do before its bytes arrive.
#[derive(Debug, Clone)]
pub struct ImportHeader {
    /// The service whose volumes receive the data.
    pub def: ServiceDef,
    /// Replace data the volumes already hold.
    pub force: bool,
    /// Expected SHA-256 (hex) and size of the stream.
    pub sha256: String,
    pub size: u64,
}

impl Agent {
    /// The service's volumes on this host.
    pub fn data_volumes(&self, def: &ServiceDef) -> Vec<Volume> {
        volumes(def, self.cfg.agent.volumes_root.as_deref())
    }

    /// Streams the service's data as tar.zst chunks; the last item has
    /// `done`, the SHA-256 and the size.
    pub async fn export_data(&self, name: &str) -> Result<mpsc::Receiver<Result<ExportItem, OpError>>, OpError> {
        let rec = self.recorded(name)?;
        let def = rec.def.clone();
        let vols = self.data_volumes(&def);
        if vols.is_empty() {
            return Err(OpError::Invalid(format!(
                "service {name} has no volumes: it has no data to export"
            )));
        }
        let snap = def.snapshot.clone().unwrap_or_default();
        let mut notes = Vec::new();
        if let Method::Exec(cmd) = snap.method() {
            let comp = snap.component.clone().unwrap_or_else(|| def.components[0].name.clone());
            let container = def.container_name(&comp);
            let running = self.runtime.inspect(&container).await?.is_some_and(|o| o.running());
            if running {
                let (code, output) = self.runtime.exec(&container, &cmd).await?;
                if code != 0 {
                    return Err(OpError::Conflict(format!(
                        "snapshot command in {container} exited with {code}: {output}"
                    )));
                }
                tracing::info!(service = name, %container, "snapshot command ran");
            } else {
                // A stopped service's files are at rest: archive them as they are.
                notes.push(format!("{container} is not running: snapshot command skipped"));
            }
        }
        let tmp = self.cfg.agent.data_dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| OpError::Invalid(format!("{}: {e}", tmp.display())))?;
        let (data_tx, mut data_rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel(IN_FLIGHT);
        let started = Instant::now();
        let service = name.to_string();
        let task =
            tokio::task::spawn_blocking(move || write_archive(&vols, &snap.exclude, &tmp, ChunkSender::new(data_tx)));
        tokio::spawn(async move {
            while let Some(data) = data_rx.recv().await {
                if out_tx.send(Ok(ExportItem::Data(data))).await.is_err() {
                    // The caller went away; the archiver stops on its next send.
                    return;
                }
            }
            let last = match task.await {
                Ok(Ok(mut a)) => {
                    notes.append(&mut a.warnings);
                    a.warnings = notes;
                    tracing::info!(%service, bytes = a.size, entries = a.entries, ms = started.elapsed().as_millis() as u64, "data exported");
                    Ok(ExportItem::Done {
                        sha256: a.sha256,
                        size: a.size,
                        warnings: a.warnings,
                    })
                }
                Ok(Err(e)) => Err(OpError::Conflict(format!("export of {service} failed: {e}"))),
                Err(e) => Err(OpError::Conflict(format!("export of {service} failed: {e}"))),
            };
            let _ = out_tx.send(last).await;
        });
        Ok(out_rx)
    }

    /// Imports an archive into the volumes of `header.def`, verified end
    /// to end before anything on the node changes.
    pub async fn import_data<S>(&self, header: ImportHeader, mut chunks: S) -> Result<Imported, OpError>
    where
        S: Stream<Item = Result<Vec<u8>, String>> + Unpin,
    {
        let def = header.def;
        service::check("import request", &def).map_err(|e| OpError::Invalid(e.to_string()))?;
        if header.sha256.len() != 64 || !header.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OpError::Invalid(format!(
                "import header: sha256 {:?} is not a hex SHA-256",
                header.sha256
            )));
        }
        let vols = self.data_volumes(&def);
        if vols.is_empty() {
            return Err(OpError::Invalid(format!(
                "service {} has no volumes: there is nowhere to import data to",
                def.name
            )));
        }
        let _guard = self.lock(&def.name).await;
        // Never swap data under a running container.
        if let Some(rec) = self.registry.service(&def.name)? {
            for c in &rec.components {
                if self.runtime.inspect(&c.spec.name).await?.is_some_and(|o| o.running()) {
                    return Err(OpError::Conflict(format!(
                        "service {} is running on this node ({}); stop it before importing data",
                        def.name, c.spec.name
                    )));
                }
            }
        }
        if !header.force {
            for v in &vols {
                let has_data = match std::fs::symlink_metadata(&v.host) {
                    Ok(m) if m.is_dir() => std::fs::read_dir(&v.host)
                        .map(|mut d| d.next().is_some())
                        .unwrap_or(true),
                    Ok(_) => true,
                    Err(_) => false,
                };
                if has_data {
                    return Err(OpError::Conflict(format!(
                        "{} already holds data; import with force to replace it",
                        v.host.display()
                    )));
                }
            }
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let (sha, size) = (header.sha256.to_ascii_lowercase(), header.size);
        let task = tokio::task::spawn_blocking(move || extract(&vols, rx, &sha, size));
        let mut broken = None;
        while let Some(item) = chunks.next().await {
            match item {
                Ok(data) => {
                    if tx.send(data).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let result = task
            .await
            .map_err(|e| OpError::Conflict(format!("import task failed: {e}")))?;
        match result {
            Ok(done) => {
                let _ = self.registry.event(
                    &def.name,
                    "",
                    "imported",
                    &format!(
                        "{} bytes, {} entries into {}",
                        done.bytes,
                        done.entries,
                        done.volumes.join(", ")
                    ),
                );
                tracing::info!(service = %def.name, bytes = done.bytes, entries = done.entries, "data imported");
                Ok(done)
            }
            Err(ImportError::Corrupt(m)) => {
                let m = match broken {
                    Some(b) => format!("{m} (the stream broke: {b})"),
                    None => m,
                };
                Err(OpError::Corrupt(m))
            }
            Err(ImportError::Refused(m)) => Err(OpError::Invalid(format!("{m}; nothing was changed"))),
            Err(ImportError::Io(m)) => Err(OpError::Conflict(format!("import failed: {m}"))),
        }
    }
}
