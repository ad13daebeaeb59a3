//! Service data export and import (SPEC §11).
//!
//! A service's **data directory** is the set of host-side sources of its
//! components' volumes (resolved under `agent.volumes_root` when set).
//! Export streams them as one tar.zst archive: entries are named by the
//! source path without its leading `/` (`srv/web/app.db`), so an archive
//! fits any node that runs the same definition. SQLite databases (files
//! starting with `SQLite format 3\0`) are copied with `VACUUM INTO`, a
//! consistent snapshot even under concurrent writes; their `-wal`, `-shm`
//! and `-journal` files are left out. Nothing is held in memory beyond a
//! few 256 KiB chunks: tar and zstd run in a blocking task that writes into
//! a bounded channel.
//!
//! Import receives a header (definition, `force`, SHA-256 and size) and the
//! archive, and unpacks it into a staging directory next to each volume
//! (same file system) while hashing every byte. Only when the whole stream
//! has arrived and its size and SHA-256 match does it swap the staged
//! directories in with two renames per volume; otherwise the staging
//! directories are removed and the node's data is untouched.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::{Stream, StreamExt};
use mcp_model::service::{self, ServiceDef};
use mcp_model::snapshot::{Method, glob_matches};
use mcp_proto as proto;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::ops::{Agent, OpError};

/// Size of the chunks an export sends.
pub const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the archiver and the gRPC stream.
const IN_FLIGHT: usize = 4;
/// zstd level: fast, still a good ratio for databases and text.
const ZSTD_LEVEL: i32 = 3;
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// One volume source of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Source as written, without the leading `/` (`srv/web`): the archive
    /// name of its root.
    pub rel: String,
    /// Where it is on this host.
    pub host: PathBuf,
}

/// Resolves a definition's volume source on this host.
pub fn host_source(source: &str, root: Option<&Path>) -> PathBuf {
    match root {
        Some(r) => r.join(source.trim_start_matches('/')),
        None => PathBuf::from(source),
    }
}

/// A volume string (`src:dst[:opts]`) with its source resolved on this host.
pub fn host_volume(vol: &str, root: Option<&Path>) -> String {
    match (root, vol.split_once(':')) {
        (Some(_), Some((src, rest))) => format!("{}:{rest}", host_source(src, root).display()),
        _ => vol.to_string(),
    }
}

/// The service's data directory: the distinct volume sources of all its
/// components, a source inside another one counted once (with the outer).
pub fn volumes(def: &ServiceDef, root: Option<&Path>) -> Vec<Volume> {
    let mut rels: Vec<String> = def
        .components
        .iter()
        .flat_map(|c| c.volumes.iter())
        .filter_map(|v| v.split(':').next())
        .map(|s| {
            Path::new(s)
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => n.to_str(),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .filter(|s| !s.is_empty())
        .collect();
    rels.sort();
    rels.dedup();
    let nested = |r: &String, all: &[String]| all.iter().any(|o| o != r && r.starts_with(&format!("{o}/")));
    let outer: Vec<String> = rels.iter().filter(|r| !nested(r, &rels)).cloned().collect();
    outer
        .into_iter()
        .map(|rel| Volume {
            host: host_source(&format!("/{rel}"), root),
            rel,
        })
        .collect()
}

fn is_sqlite(path: &Path) -> bool {
    let mut magic = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == SQLITE_MAGIC
}

/// `-wal`, `-shm` and `-journal` files of a SQLite database are not data:
/// the `VACUUM INTO` copy already contains what they hold.
fn is_sqlite_sidecar(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    ["-wal", "-shm", "-journal"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|db| !db.is_empty() && is_sqlite(&path.with_file_name(db)))
    })
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sends fixed-size chunks into a bounded channel (blocking: backpressure
/// from the gRPC stream reaches the archiver).
pub struct ChunkSender {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    pub fn new(tx: mpsc::Sender<Vec<u8>>) -> ChunkSender {
        ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver went away"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads exactly `len` bytes: a file that shrank while being archived is
/// padded with zeros, one that grew is cut, so the tar stays well-formed.
struct Exact<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = match self.inner.read(buf)? {
            0 => {
                let n = buf.len().min(self.left as usize);
                buf[..n].fill(0);
                n
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// What an export produced.
#[derive(Debug, Default)]
pub struct Archived {
    pub sha256: String,
    pub size: u64,
    pub entries: u64,
    pub warnings: Vec<String>,
}

/// Writes the tar.zst archive of `vols` into `out`. `tmp` is a private
/// directory for the `VACUUM INTO` copies.
pub fn write_archive<W: Write>(vols: &[Volume], exclude: &[String], tmp: &Path, out: W) -> io::Result<Archived> {
    let counted = Hashing {
        inner: out,
        hasher: Sha256::new(),
        count: 0,
    };
    let enc = zstd::Encoder::new(counted, ZSTD_LEVEL)?;
    let mut tar = tar::Builder::new(enc);
    tar.follow_symlinks(false);
    let mut st = Archived::default();
    for v in vols {
        let meta = match std::fs::symlink_metadata(&v.host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                st.warnings
                    .push(format!("{} does not exist: nothing archived for it", v.host.display()));
                continue;
            }
            Err(e) => return Err(at(&v.host, e)),
        };
        if meta.is_dir() {
            tar.append_dir(&v.rel, &v.host).map_err(|e| at(&v.host, e))?;
            st.entries += 1;
            walk(&mut tar, v, &v.host, "", exclude, tmp, &mut st)?;
        } else {
            add_file(&mut tar, &v.host, &v.rel, &meta, tmp, &mut st)?;
        }
    }
    let enc = tar.into_inner()?;
    let counted = enc.finish()?;
    let Hashing {
        mut inner,
        hasher,
        count,
    } = counted;
    inner.flush()?;
    st.sha256 = hex::encode(hasher.finalize());
    st.size = count;
    Ok(st)
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn walk<W: Write>(
    tar: &mut tar::Builder<W>,
    v: &Volume,
    dir: &Path,
    sub: &str,
    exclude: &[String],
    tmp: &Path,
    st: &mut Archived,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| at(dir, e))?
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| at(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            st.warnings
                .push(format!("{}: file name is not UTF-8, skipped", e.path().display()));
            continue;
        };
        let rel_in_vol = if sub.is_empty() {
            name.to_string()
        } else {
            format!("{sub}/{name}")
        };
        if exclude.iter().any(|g| glob_matches(g, &rel_in_vol)) {
            continue;
        }
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| at(&path, e))?;
        let archived = format!("{}/{rel_in_vol}", v.rel);
        let ft = meta.file_type();
        if ft.is_dir() {
            tar.append_dir(&archived, &path).map_err(|e| at(&path, e))?;
            st.entries += 1;
            walk(tar, v, &path, &rel_in_vol, exclude, tmp, st)?;
        } else if ft.is_file() {
            if is_sqlite_sidecar(&path) {
                continue;
            }
            add_file(tar, &path, &archived, &meta, tmp, st)?;
        } else if ft.is_symlink() {
            tar.append_path_with_name(&path, &archived).map_err(|e| at(&path, e))?;
            st.entries += 1;
        } else {
            st.warnings
                .push(format!("{}: not a file, directory or symlink, skipped", path.display()));
        }
    }
    Ok(())
}

static COPY_SEQ: AtomicU64 = AtomicU64::new(0);

fn add_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    archived: &str,
    meta: &std::fs::Metadata,
    tmp: &Path,
    st: &mut Archived,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata(meta);
    if is_sqlite(path) {
        let copy = tmp.join(format!(
            "vacuum-{}-{}.db",
            std::process::id(),
            COPY_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        vacuum_into(path, &copy).map_err(|e| io::Error::other(format!("{}: VACUUM INTO: {e}", path.display())))?;
        let result = (|| {
            let f = std::fs::File::open(&copy)?;
            let len = f.metadata()?.len();
            header.set_size(len);
            header.set_cksum();
            tar.append_data(&mut header, archived, f)
        })();
        let _ = std::fs::remove_file(&copy);
        result.map_err(|e| at(path, e))?;
    } else {
        let f = std::fs::File::open(path).map_err(|e| at(path, e))?;
        let len = meta.len();
        header.set_size(len);
        header.set_cksum();
        let exact = Exact {
            inner: f.take(len),
            left: len,
        };
        tar.append_data(&mut header, archived, exact).map_err(|e| at(path, e))?;
    }
    st.entries += 1;
    Ok(())
}

/// A consistent copy of a live SQLite database (WAL or not).
fn vacuum_into(db: &Path, copy: &Path) -> rusqlite::Result<()> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])?;
    Ok(())
}

// ------------------------------------------------------------------ import

/// Reads what arrives on a channel, counting and hashing every byte.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(next) => {
                    self.count += next.len() as u64;
                    if self.count > self.limit {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("more data than the {} bytes announced", self.limit),
                        ));
                    }
                    self.hasher.update(&next);
                    self.cur = next;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Why an import was refused.
#[derive(Debug)]
pub enum ImportError {
    /// The archive does not match its announced checksum or size.
    Corrupt(String),
    /// The archive is well-formed but not acceptable (entry outside the
    /// volumes, hard link, device).
    Refused(String),
    Io(String),
}

/// Staged copies, removed unless committed.
struct Staging {
    /// (volume index, staged path)
    staged: Vec<(usize, PathBuf)>,
    id: String,
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (_, p) in &self.staged {
            remove_any(p);
        }
    }
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn sibling(host: &Path, tag: &str, id: &str) -> PathBuf {
    let name = host.file_name().and_then(|n| n.to_str()).unwrap_or("volume");
    host.with_file_name(format!(".{name}.mcp-{tag}-{id}"))
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub bytes: u64,
    pub entries: u64,
    pub volumes: Vec<String>,
}

/// Unpacks the archive read from `rx` into staging directories next to
/// `vols`, verifies size and SHA-256, then swaps them in. Blocking.
fn extract(vols: &[Volume], rx: mpsc::Receiver<Vec<u8>>, sha256: &str, size: u64) -> Result<Imported, ImportError> {
    let mut reader = ChannelReader {
        rx,
        cur: Vec::new(),
        pos: 0,
        hasher: Sha256::new(),
        count: 0,
        limit: size,
    };
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut staging = Staging {
        staged: Vec::new(),
        id: format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)),
    };
    let unpacked = unpack(vols, &mut reader, &mut staging);
    // Hash every byte, also after an early error: a checksum mismatch is
    // the better explanation of a broken archive than a decoder error.
    let drained = io::copy(&mut reader, &mut io::sink());
    let got = hex::encode(reader.hasher.clone().finalize());
    if reader.count != size || got != sha256 || drained.is_err() {
        let why = match drained {
            Err(e) => e.to_string(),
            Ok(_) if reader.count != size => format!("received {} of {size} bytes (truncated)", reader.count),
            Ok(_) => format!("SHA-256 is {got}, expected {sha256} (corrupted)"),
        };
        return Err(ImportError::Corrupt(format!(
            "archive refused: {why}; nothing was changed"
        )));
    }
    let entries = unpacked?;
    // Verified: swap each staged volume in (two renames on one file system).
    let mut replaced = Vec::new();
    for (i, stage) in std::mem::take(&mut staging.staged) {
        let host = &vols[i].host;
        let old = sibling(host, "old", &staging.id);
        let existed = std::fs::symlink_metadata(host).is_ok();
        if existed {
            std::fs::rename(host, &old).map_err(|e| ImportError::Io(format!("{}: {e}", host.display())))?;
        }
        if let Err(e) = std::fs::rename(&stage, host) {
            if existed {
                let _ = std::fs::rename(&old, host);
            }
            remove_any(&stage);
            return Err(ImportError::Io(format!("{}: {e}", host.display())));
        }
        if existed {
            remove_any(&old);
        }
        replaced.push(host.display().to_string());
    }
    Ok(Imported {
        bytes: reader.count,
        entries,
        volumes: replaced,
    })
}

fn unpack(vols: &[Volume], reader: &mut ChannelReader, staging: &mut Staging) -> Result<u64, ImportError> {
    let io_err = |e: io::Error| ImportError::Corrupt(format!("archive unreadable: {e}"));
    let dec = zstd::Decoder::new(&mut *reader).map_err(io_err)?;
    let mut archive = tar::Archive::new(dec);
    let mut entries = 0;
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(ImportError::Refused(format!(
                "archive entry {} is a {kind:?}; only files, directories and symlinks are imported",
                path.display()
            )));
        }
        let parts: Vec<&str> = path
            .components()
            .map(|c| match c {
                Component::Normal(n) => n.to_str().ok_or(()),
                _ => Err(()),
            })
            .collect::<Result<_, _>>()
            .map_err(|_| {
                ImportError::Refused(format!("archive entry {} is not a plain relative path", path.display()))
            })?;
        let name = parts.join("/");
        let Some((i, v)) = vols
            .iter()
            .enumerate()
            .find(|(_, v)| name == v.rel || name.starts_with(&format!("{}/", v.rel)))
        else {
            return Err(ImportError::Refused(format!(
                "archive entry {name} is outside the service's volumes ({})",
                vols.iter()
                    .map(|v| format!("/{}", v.rel))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let stage = match staging.staged.iter().find(|(j, _)| *j == i) {
            Some((_, p)) => p.clone(),
            None => {
                let p = sibling(&v.host, "import", &staging.id);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| ImportError::Io(format!("{}: {e}", parent.display())))?;
                }
                remove_any(&p);
                staging.staged.push((i, p.clone()));
                p
            }
        };
        let rest = name[v.rel.len()..].trim_start_matches('/');
        let dst = if rest.is_empty() {
            stage.clone()
        } else {
            stage.join(rest)
        };
        // No symlink on the way down: an archive must not write outside
        // its staging directory through a link it planted.
        let mut at = stage.clone();
        for part in Path::new(rest).components() {
            if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(ImportError::Refused(format!(
                    "archive entry {name} passes through a symlink"
                )));
            }
            at.push(part);
        }
        if let Some(parent) = dst.parent()
            && dst != stage
        {
            std::fs::create_dir_all(parent).map_err(|e| ImportError::Io(format!("{}: {e}", parent.display())))?;
        }
        if kind.is_dir() {
            std::fs::create_dir_all(&dst).map_err(|e| ImportError::Io(format!("{}: {e}", dst.display())))?;
            if let Ok(mode) = entry.header().mode() {
                use std::os::unix::fs::PermissionsExt;
                // Keep directories writable for the agent while it fills them.
                let _ = std::fs::set_permissions(&dst, std::fs::Permissions::from_mode((mode & 0o7777) | 0o700));
            }
        } else {
            entry.unpack(&dst).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof {
                    io_err(e)
                } else {
                    ImportError::Io(format!("{}: {e}", dst.display()))
                }
            })?;
        }
        entries += 1;
    }
    Ok(entries)
}

// ---------------------------------------------------------------- the agent

impl Agent {
    /// The service's volumes on this host.
    pub fn data_volumes(&self, def: &ServiceDef) -> Vec<Volume> {
        volumes(def, self.cfg.agent.volumes_root.as_deref())
    }

    /// Streams the service's data as tar.zst chunks; the last item has
    /// `done`, the SHA-256 and the size.
    pub async fn export_data(&self, name: &str) -> Result<mpsc::Receiver<Result<proto::DataChunk, OpError>>, OpError> {
        let rec = self
            .registry
            .service(name)?
            .ok_or_else(|| OpError::NotFound(name.to_string()))?;
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
            let running = self.podman.inspect(&container).await?.is_some_and(|o| o.running());
            if running {
                let (code, output) = self.podman.exec(&container, &cmd).await?;
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
                let chunk = proto::DataChunk {
                    data,
                    ..Default::default()
                };
                if out_tx.send(Ok(chunk)).await.is_err() {
                    // The caller went away; the archiver stops on its next send.
                    return;
                }
            }
            let last = match task.await {
                Ok(Ok(mut a)) => {
                    notes.append(&mut a.warnings);
                    a.warnings = notes;
                    tracing::info!(%service, bytes = a.size, entries = a.entries, ms = started.elapsed().as_millis() as u64, "data exported");
                    Ok(proto::DataChunk {
                        data: Vec::new(),
                        done: true,
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

    /// Imports an archive into the volumes of `header.service`, verified
    /// end to end before anything on the node changes.
    pub async fn import_data<S>(&self, header: proto::ImportHeader, mut chunks: S) -> Result<Imported, OpError>
    where
        S: Stream<Item = Result<Vec<u8>, String>> + Unpin,
    {
        let spec = header
            .service
            .as_ref()
            .ok_or_else(|| OpError::Invalid("import header has no service definition".into()))?;
        let def = ServiceDef::from(spec);
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
                if self.podman.inspect(&c.spec.name).await?.is_some_and(|o| o.running()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn def(vols: &[&str]) -> ServiceDef {
        let mut d = mcp_model::service::parse(
            "t",
            "name = \"db\"\n[[components]]\nname = \"db\"\nimage = \"r/x:v1\"\n",
        )
        .unwrap();
        d.components[0].volumes = vols.iter().map(|s| s.to_string()).collect();
        d
    }

    #[test]
    fn volumes_are_deduplicated_and_rooted() {
        let d = def(&[
            "/srv/db:/data",
            "/srv/db/sub:/sub:ro",
            "/etc/db.conf:/etc/db.conf:ro",
            "/srv/db:/again",
        ]);
        let v = volumes(&d, Some(Path::new("/r")));
        assert_eq!(
            v,
            vec![
                Volume {
                    rel: "etc/db.conf".into(),
                    host: "/r/etc/db.conf".into()
                },
                Volume {
                    rel: "srv/db".into(),
                    host: "/r/srv/db".into()
                },
            ]
        );
        assert_eq!(volumes(&d, None)[1].host, PathBuf::from("/srv/db"));
        assert_eq!(
            host_volume("/srv/db:/data:ro", Some(Path::new("/r"))),
            "/r/srv/db:/data:ro"
        );
        assert_eq!(host_volume("/srv/db:/data", None), "/srv/db:/data");
    }

    fn export(vols: &[Volume], exclude: &[String], tmp: &Path) -> (Vec<u8>, Archived) {
        let mut out = Vec::new();
        let a = write_archive(vols, exclude, tmp, &mut out).unwrap();
        (out, a)
    }

    fn import(vols: &[Volume], data: &[u8], sha: &str, size: u64) -> Result<Imported, ImportError> {
        let (tx, rx) = mpsc::channel(4);
        let chunks: Vec<Vec<u8>> = data.chunks(1000).map(|c| c.to_vec()).collect();
        let feeder = std::thread::spawn(move || {
            for c in chunks {
                if tx.blocking_send(c).is_err() {
                    break;
                }
            }
        });
        let r = extract(vols, rx, sha, size);
        feeder.join().unwrap();
        r
    }

    #[test]
    fn round_trip_with_sqlite_excludes_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a/srv/db");
        std::fs::create_dir_all(src.join("logs")).unwrap();
        std::fs::write(src.join("plain.txt"), "hello").unwrap();
        std::fs::write(src.join("logs/x.log"), "noise").unwrap();
        let db = src.join("app.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a'), ('b');")
            .unwrap();
        assert!(src.join("app.db-wal").exists());
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let a_vols = vec![Volume {
            rel: "srv/db".into(),
            host: src.clone(),
        }];
        let (data, a) = export(&a_vols, &["*.log".into()], &tmp);
        assert_eq!(a.size, data.len() as u64);
        drop(conn);

        let dst = dir.path().join("b/srv/db");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("old.txt"), "keep me").unwrap();
        let b_vols = vec![Volume {
            rel: "srv/db".into(),
            host: dst.clone(),
        }];
        // Truncated and corrupted archives are refused, nothing changes.
        let cut = &data[..data.len() / 2];
        assert!(
            matches!(import(&b_vols, cut, &a.sha256, a.size), Err(ImportError::Corrupt(m)) if m.contains("truncated"))
        );
        let mut bad = data.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(matches!(
            import(&b_vols, &bad, &a.sha256, a.size),
            Err(ImportError::Corrupt(_))
        ));
        assert_eq!(std::fs::read_to_string(dst.join("old.txt")).unwrap(), "keep me");
        let leftovers: Vec<_> = std::fs::read_dir(dst.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("db")], "staging left behind");

        let done = import(&b_vols, &data, &a.sha256, a.size)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert_eq!(done.volumes, vec![dst.display().to_string()]);
        assert!(!dst.join("old.txt").exists());
        assert!(!dst.join("app.db-wal").exists() && !dst.join("logs/x.log").exists());
        assert_eq!(std::fs::read_to_string(dst.join("plain.txt")).unwrap(), "hello");
        let conn = rusqlite::Connection::open(dst.join("app.db")).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);

        // An entry outside the volumes is refused.
        let other = vec![Volume {
            rel: "srv/other".into(),
            host: dir.path().join("c/srv/other"),
        }];
        assert!(
            matches!(import(&other, &data, &a.sha256, a.size), Err(ImportError::Refused(m)) if m.contains("outside"))
        );
    }
}
