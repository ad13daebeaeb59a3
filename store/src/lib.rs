//! SQLite helpers: every database is a private file in WAL mode with
//! foreign keys on, a 5 s busy timeout, and migrations versioned in code.

use std::path::Path;

use rusqlite::Connection;

use mcp_infra::fsutil::{self, FileError};

/// Why a database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: schema version {found} is newer than this binary knows ({known}); upgrade mcp")]
    TooNew { path: String, found: usize, known: usize },
}

/// Opens (creating with mode 0600 if needed) and migrates a database file.
/// `migrations[i]` brings the schema from version `i` to `i + 1`.
pub fn open(path: &Path, migrations: &[&str]) -> Result<Connection, DbError> {
    fsutil::ensure_private_file(path)?;
    let shown = path.display().to_string();
    let sql = |source| DbError::Sqlite {
        path: shown.clone(),
        source,
    };
    let mut conn = Connection::open(path).map_err(sql)?;
    configure(&conn).map_err(sql)?;
    migrate(&mut conn, &shown, migrations)?;
    Ok(conn)
}

/// An in-memory database with the same schema, for unit tests.
pub fn open_in_memory(migrations: &[&str]) -> Result<Connection, DbError> {
    let sql = |source| DbError::Sqlite {
        path: ":memory:".into(),
        source,
    };
    let mut conn = Connection::open_in_memory().map_err(sql)?;
    configure(&conn).map_err(sql)?;
    migrate(&mut conn, ":memory:", migrations)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if mode != "wal" && mode != "memory" {
        tracing::warn!(%mode, "sqlite refused WAL mode");
    }
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
}

fn migrate(conn: &mut Connection, shown: &str, migrations: &[&str]) -> Result<(), DbError> {
    let sql = |source| DbError::Sqlite {
        path: shown.to_string(),
        source,
    };
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(sql)? as usize;
    if version > migrations.len() {
        return Err(DbError::TooNew {
            path: shown.to_string(),
            found: version,
            known: migrations.len(),
        });
    }
    for (i, m) in migrations.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(m).map_err(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        tracing::info!(db = shown, version = i + 1, "migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn opens_private_wal_and_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        let migs = ["CREATE TABLE a (x INTEGER);", "ALTER TABLE a ADD COLUMN y TEXT;"];
        let c = open(&p, &migs[..1]).unwrap();
        c.execute("INSERT INTO a (x) VALUES (1)", []).unwrap();
        drop(c);
        let c = open(&p, &migs).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let n: i64 = c
            .query_row("SELECT count(*) FROM a WHERE y IS NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        drop(c);
        let err = open(&p, &migs[..1]).unwrap_err().to_string();
        assert!(err.contains("newer than this binary"), "{err}");
    }
}
