//! The snapshot archive: a service's data directory as one tar.zst
//! stream, written and verified-then-swapped in (SPEC §11).
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

use mcp_model::snapshot::glob_matches;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::volumes::Volume;

/// Size of the chunks an export sends.
pub const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the archiver and the gRPC stream.
pub const IN_FLIGHT: usize = 4;
/// zstd level: fast, still a good ratio for databases and text.
const ZSTD_LEVEL: i32 = 3;
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

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
pub fn extract(vols: &[Volume], rx: mpsc::Receiver<Vec<u8>>, sha256: &str, size: u64) -> Result<Imported, ImportError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::Volume;

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
