//! The fleet database (`<data_dir>/fleet.db`): nodes, placements, edge
//! routes, snapshots, DNS records and join tokens.

use std::path::Path;
use std::sync::Mutex;

use mcp_model::service::ServiceDef;
use mcp_store::{self as db, DbError};
use rusqlite::{Connection, OptionalExtension, params};

/// Schema migrations; index i brings version i to i + 1.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE nodes (
    name             TEXT PRIMARY KEY,
    role             TEXT NOT NULL CHECK (role IN ('worker', 'edge', 'master')),
    address          TEXT NOT NULL,
    arch             TEXT NOT NULL DEFAULT '',
    version          TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL DEFAULT 'healthy' CHECK (status IN ('healthy', 'unhealthy')),
    status_reason    TEXT NOT NULL DEFAULT '',
    registered_at    INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL,
    cpus             INTEGER NOT NULL DEFAULT 0,
    cpu_load         REAL NOT NULL DEFAULT 0,
    memory_total     INTEGER NOT NULL DEFAULT 0,
    memory_available INTEGER NOT NULL DEFAULT 0,
    disk_total       INTEGER NOT NULL DEFAULT 0,
    disk_available   INTEGER NOT NULL DEFAULT 0,
    containers       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE placements (
    service     TEXT PRIMARY KEY,
    node        TEXT NOT NULL REFERENCES nodes(name),
    definition  TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('deploying', 'deployed', 'failed', 'stopped', 'unknown')),
    detail      TEXT NOT NULL DEFAULT '',
    request_id  TEXT NOT NULL DEFAULT '',
    updated_at  INTEGER NOT NULL
);
CREATE TABLE edge_routes (
    hostname          TEXT PRIMARY KEY,
    service           TEXT NOT NULL,
    edge_node         TEXT NOT NULL REFERENCES nodes(name),
    backend_hostname  TEXT NOT NULL,
    backend_port      INTEGER NOT NULL,
    cert_serial       TEXT NOT NULL DEFAULT '',
    cert_expires_at   INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL
);
CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service     TEXT NOT NULL,
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX snapshots_by_service ON snapshots (service, created_at);
CREATE TABLE dns_records (
    name     TEXT NOT NULL,
    type     TEXT NOT NULL CHECK (type IN ('A', 'AAAA', 'CNAME')),
    value    TEXT NOT NULL,
    ttl      INTEGER NOT NULL,
    node     TEXT NOT NULL,
    service  TEXT NOT NULL,
    PRIMARY KEY (name, type, value)
);
CREATE TABLE join_tokens (
    secret_hash  TEXT PRIMARY KEY,
    node         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
);
"#,
    // 2: snapshots know the node their data came from and their name
    // (a UTC timestamp with milliseconds, unique per service).
    r#"
ALTER TABLE snapshots ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN name TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX snapshots_by_name ON snapshots (service, name);
"#,
];

/// A node as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub name: String,
    pub role: String,
    pub address: String,
    pub arch: String,
    pub version: String,
    pub healthy: bool,
    pub status_reason: String,
    pub registered_at: i64,
    pub last_seen: i64,
    pub cpus: u32,
    pub load: NodeLoad,
}

/// What a node reports in each heartbeat: load, memory, disk, containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLoad {
    pub cpu_load: f64,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub containers: u32,
}

impl NodeRow {
    /// A node that registered at `t` and has reported nothing yet.
    pub fn new(name: &str, t: i64) -> NodeRow {
        NodeRow {
            name: name.to_string(),
            role: String::new(),
            address: String::new(),
            arch: String::new(),
            version: String::new(),
            healthy: true,
            status_reason: String::new(),
            registered_at: t,
            last_seen: t,
            cpus: 0,
            load: NodeLoad::default(),
        }
    }
}

/// Where a service is placed, with the definition last sent there.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRow {
    pub service: String,
    pub node: String,
    pub def: ServiceDef,
    /// deploying | deployed | failed | stopped | unknown
    pub state: String,
    pub detail: String,
    pub request_id: String,
    pub updated_at: i64,
}

/// A DNS record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRow {
    pub name: String,
    pub kind: String,
    pub value: String,
    pub ttl: u32,
    pub node: String,
    pub service: String,
}

/// A public route served by an edge node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRow {
    pub hostname: String,
    pub service: String,
    pub edge_node: String,
    pub backend_hostname: String,
    pub backend_port: u16,
    pub cert_serial: String,
    pub cert_expires_at: i64,
}

/// A stored snapshot archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: i64,
    pub service: String,
    /// `20261125T153000.123Z`
    pub name: String,
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub node: String,
}

/// Why a join token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown join token")]
    Unknown,
    #[error("join token was already used")]
    Used,
    #[error("join token expired")]
    Expired,
    #[error("join token is for node {token_node:?}, not {asked:?}")]
    WrongNode { token_node: String, asked: String },
}

/// Fleet database errors.
#[derive(Debug, thiserror::Error)]
pub enum FleetDbError {
    #[error(transparent)]
    Open(#[from] DbError),
    #[error("fleet database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("fleet database: corrupt definition of {0}: {1}")]
    Corrupt(String, String),
}

type Result<T> = std::result::Result<T, FleetDbError>;

/// The fleet database; one connection behind a mutex.
pub struct FleetDb {
    conn: Mutex<Connection>,
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn node_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        name: r.get(0)?,
        role: r.get(1)?,
        address: r.get(2)?,
        arch: r.get(3)?,
        version: r.get(4)?,
        healthy: r.get::<_, String>(5)? == "healthy",
        status_reason: r.get(6)?,
        registered_at: r.get(7)?,
        last_seen: r.get(8)?,
        cpus: r.get(9)?,
        load: NodeLoad {
            cpu_load: r.get(10)?,
            memory_total: r.get::<_, i64>(11)? as u64,
            memory_available: r.get::<_, i64>(12)? as u64,
            disk_total: r.get::<_, i64>(13)? as u64,
            disk_available: r.get::<_, i64>(14)? as u64,
            containers: r.get(15)?,
        },
    })
}

/// A row mapper that fills the named fields of `$row` from the selected
/// columns, in order (the `SELECT` lists them in the same order). A field
/// written `field as T` is read as a `T` (SQLite integers are `i64`) and cast.
macro_rules! columns {
    ($row:ident { $($field:ident $(as $sql:ty)?),* $(,)? }) => {
        |r: &rusqlite::Row<'_>| {
            let mut column = 0usize..;
            Ok($row {
                $($field: columns!(@get r, column $(, $sql)?),)*
            })
        }
    };
    (@get $r:ident, $column:ident) => {
        $r.get($column.next().expect("an endless range"))?
    };
    (@get $r:ident, $column:ident, $sql:ty) => {
        $r.get::<_, $sql>($column.next().expect("an endless range"))? as _
    };
}

const NODE_COLUMNS: &str = "name, role, address, arch, version, status, status_reason, registered_at, last_seen, \
     cpus, cpu_load, memory_total, memory_available, disk_total, disk_available, containers";

impl FleetDb {
    /// Opens (creating, 0600, WAL) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<FleetDb> {
        Ok(FleetDb {
            conn: Mutex::new(db::open(path, MIGRATIONS)?),
        })
    }

    /// An in-memory database for unit tests.
    #[cfg(test)]
    pub fn in_memory() -> FleetDb {
        FleetDb {
            conn: Mutex::new(db::open_in_memory(MIGRATIONS).expect("the migrations apply to an empty database")),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every row `sql` selects with `params`, each made by `row`.
    fn query<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(params, row)?.collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> Result<Vec<NodeRow>> {
        self.query(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"), [], node_row)
    }

    /// Writes nodes (insert or replace) in one transaction.
    pub fn save_nodes<'a>(&self, nodes: impl IntoIterator<Item = &'a NodeRow>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(&format!(
                "INSERT OR REPLACE INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ))?;
            for n in nodes {
                stmt.execute(params![
                    n.name,
                    n.role,
                    n.address,
                    n.arch,
                    n.version,
                    if n.healthy { "healthy" } else { "unhealthy" },
                    n.status_reason,
                    n.registered_at,
                    n.last_seen,
                    n.cpus,
                    n.load.cpu_load,
                    n.load.memory_total as i64,
                    n.load.memory_available as i64,
                    n.load.disk_total as i64,
                    n.load.disk_available as i64,
                    n.load.containers
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Number of known nodes.
    pub fn node_count(&self) -> Result<u32> {
        Ok(self.conn().query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))?)
    }

    /// Every placement, by service.
    pub fn placements(&self) -> Result<Vec<PlacementRow>> {
        let rows: Vec<(String, String, String, String, String, String, i64)> = self.query(
            "SELECT service, node, definition, state, detail, request_id, updated_at FROM placements ORDER BY service",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(service, node, definition, state, detail, request_id, updated_at)| {
                let def = serde_json::from_str(&definition)
                    .map_err(|e| FleetDbError::Corrupt(service.clone(), e.to_string()))?;
                Ok(PlacementRow {
                    service,
                    node,
                    def,
                    state,
                    detail,
                    request_id,
                    updated_at,
                })
            })
            .collect()
    }

    /// The placement of one service.
    pub fn placement(&self, service: &str) -> Result<Option<PlacementRow>> {
        Ok(self.placements()?.into_iter().find(|p| p.service == service))
    }

    /// Records (insert or replace) a placement.
    pub fn save_placement(&self, p: &PlacementRow) -> Result<()> {
        let definition = serde_json::to_string(&p.def).expect("a ServiceDef always serializes");
        self.conn().execute(
            "INSERT OR REPLACE INTO placements (service, node, definition, state, detail, request_id, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![p.service, p.node, definition, p.state, p.detail, p.request_id, now()],
        )?;
        Ok(())
    }

    /// Sets the state (and detail) of a placement.
    pub fn set_placement_state(&self, service: &str, state: &str, detail: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE placements SET state = ?2, detail = ?3, updated_at = ?4 WHERE service = ?1",
            params![service, state, detail, now()],
        )?;
        Ok(())
    }

    /// Forgets a placement.
    pub fn delete_placement(&self, service: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM placements WHERE service = ?1", [service])?;
        Ok(())
    }

    /// Replaces the records of `name` with one A record.
    pub fn set_dns_record(&self, name: &str, value: &str, ttl: u32, node: &str, service: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM dns_records WHERE name = ?1 AND type = 'A'", [name])?;
        tx.execute(
            "INSERT INTO dns_records (name, type, value, ttl, node, service) VALUES (?1, 'A', ?2, ?3, ?4, ?5)",
            params![name, value, ttl, node, service],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the records of `name`; returns how many went.
    pub fn remove_dns_records(&self, name: &str) -> Result<usize> {
        Ok(self.conn().execute("DELETE FROM dns_records WHERE name = ?1", [name])?)
    }

    /// Every DNS record: (name, type, value, ttl, node, service).
    pub fn dns_records(&self) -> Result<Vec<DnsRow>> {
        self.query(
            "SELECT name, type, value, ttl, node, service FROM dns_records ORDER BY name, value",
            [],
            columns!(DnsRow {
                name,
                kind,
                value,
                ttl,
                node,
                service
            }),
        )
    }

    /// Records (insert or replace) an edge route.
    pub fn save_edge_route(&self, e: &EdgeRow) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO edge_routes (hostname, service, edge_node, backend_hostname, backend_port,
                                                 cert_serial, cert_expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.hostname,
                e.service,
                e.edge_node,
                e.backend_hostname,
                e.backend_port,
                e.cert_serial,
                e.cert_expires_at,
                now()
            ],
        )?;
        Ok(())
    }

    /// Forgets an edge route.
    pub fn delete_edge_route(&self, hostname: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM edge_routes WHERE hostname = ?1", [hostname])?;
        Ok(())
    }

    /// Every edge route, by hostname.
    pub fn edge_routes(&self) -> Result<Vec<EdgeRow>> {
        self.query(
            "SELECT hostname, service, edge_node, backend_hostname, backend_port, cert_serial, cert_expires_at
             FROM edge_routes ORDER BY hostname",
            [],
            columns!(EdgeRow {
                hostname,
                service,
                edge_node,
                backend_hostname,
                backend_port,
                cert_serial,
                cert_expires_at
            }),
        )
    }

    /// Stores a new join token (hash of its secret only).
    pub fn add_join_token(&self, secret_hash: &str, node: &str, expires_at: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO join_tokens (secret_hash, node, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![secret_hash, node, now(), expires_at],
        )?;
        Ok(())
    }

    /// Consumes a join token for `node`, atomically: valid, unexpired,
    /// unused, and issued for that node. A refused token stays as it was.
    pub fn use_join_token(&self, secret_hash: &str, node: &str) -> Result<std::result::Result<(), TokenError>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT node, expires_at, used_at FROM join_tokens WHERE secret_hash = ?1",
                [secret_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let verdict = match row {
            None => Err(TokenError::Unknown),
            Some((_, _, Some(_))) => Err(TokenError::Used),
            Some((_, expires, None)) if expires <= now() => Err(TokenError::Expired),
            Some((token_node, _, None)) if token_node != node => Err(TokenError::WrongNode {
                token_node,
                asked: node.to_string(),
            }),
            Some(_) => Ok(()),
        };
        if verdict.is_ok() {
            tx.execute(
                "UPDATE join_tokens SET used_at = ?2 WHERE secret_hash = ?1",
                params![secret_hash, now()],
            )?;
        }
        tx.commit()?;
        Ok(verdict)
    }

    /// Puts a consumed token back (the join failed after it was taken).
    pub fn release_join_token(&self, secret_hash: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE join_tokens SET used_at = NULL WHERE secret_hash = ?1",
            [secret_hash],
        )?;
        Ok(())
    }
}

impl FleetDb {
    /// Records a stored snapshot; returns its id.
    pub fn add_snapshot(&self, r: &SnapshotRow) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO snapshots (service, path, sha256, size, created_at, node, name) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![r.service, r.path, r.sha256, r.size as i64, r.created_at, r.node, r.name],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Snapshots of `service` (all services when `None`), oldest first.
    pub fn snapshots(&self, service: Option<&str>) -> Result<Vec<SnapshotRow>> {
        self.query(
            "SELECT id, service, name, path, sha256, size, created_at, node FROM snapshots \
             WHERE ?1 IS NULL OR service = ?1 ORDER BY service, name",
            [service],
            columns!(SnapshotRow {
                id,
                service,
                name,
                path,
                sha256,
                size as i64,
                created_at,
                node
            }),
        )
    }

    /// Forgets a snapshot (its file is removed by the caller).
    pub fn delete_snapshot(&self, id: i64) -> Result<()> {
        self.conn().execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeRow {
        NodeRow {
            name: name.into(),
            role: "worker".into(),
            address: "127.0.0.1:9444".into(),
            arch: "amd64".into(),
            version: "0.1.0".into(),
            healthy: true,
            status_reason: String::new(),
            registered_at: 1,
            last_seen: 2,
            cpus: 2,
            load: NodeLoad {
                cpu_load: 0.5,
                memory_total: 10,
                memory_available: 5,
                disk_total: 100,
                disk_available: 50,
                containers: 3,
            },
        }
    }

    #[test]
    fn nodes_and_placements() {
        let db = FleetDb::in_memory();
        db.save_nodes([&node("a"), &node("b")]).unwrap();
        assert_eq!(db.nodes().unwrap(), vec![node("a"), node("b")]);
        let def =
            mcp_model::service::parse("t", "name = \"web\"\n[[components]]\nname = \"x\"\nimage = \"i:1\"\n").unwrap();
        let p = PlacementRow {
            service: "web".into(),
            node: "a".into(),
            def,
            state: "deploying".into(),
            detail: String::new(),
            request_id: "r1".into(),
            updated_at: 0,
        };
        db.save_placement(&p).unwrap();
        db.set_placement_state("web", "deployed", "ok").unwrap();
        let got = db.placement("web").unwrap().unwrap();
        assert_eq!((got.state.as_str(), got.node.as_str()), ("deployed", "a"));
        db.delete_placement("web").unwrap();
        assert!(db.placement("web").unwrap().is_none());
        let mut unknown = p.clone();
        unknown.node = "ghost".into();
        assert!(db.save_placement(&unknown).is_err(), "placement on an unknown node");
    }

    #[test]
    fn snapshots() {
        let db = FleetDb::in_memory();
        let row = |service: &str, name: &str| SnapshotRow {
            id: 0,
            service: service.into(),
            name: name.into(),
            path: format!("/s/{service}/{name}.tar.zst"),
            sha256: "ab".repeat(32),
            size: 42,
            created_at: 7,
            node: "a".into(),
        };
        let id = db.add_snapshot(&row("web", "2")).unwrap();
        db.add_snapshot(&row("web", "1")).unwrap();
        db.add_snapshot(&row("db", "3")).unwrap();
        assert!(
            db.add_snapshot(&row("web", "1")).is_err(),
            "names are unique per service"
        );
        let names = |s: Option<&str>| -> Vec<String> { db.snapshots(s).unwrap().into_iter().map(|r| r.name).collect() };
        assert_eq!(names(Some("web")), ["1", "2"]);
        assert_eq!(names(None), ["3", "1", "2"]);
        db.delete_snapshot(id).unwrap();
        assert_eq!(names(Some("web")), ["1"]);
        assert_eq!(db.snapshots(Some("db")).unwrap()[0].size, 42);
    }

    #[test]
    fn join_tokens_are_single_use_and_bound() {
        let db = FleetDb::in_memory();
        db.add_join_token("h1", "rift", now() + 60).unwrap();
        db.add_join_token("h2", "old", now() - 1).unwrap();
        assert_eq!(
            db.use_join_token("h1", "other").unwrap(),
            Err(TokenError::WrongNode {
                token_node: "rift".into(),
                asked: "other".into()
            })
        );
        assert_eq!(db.use_join_token("h1", "rift").unwrap(), Ok(()));
        assert_eq!(db.use_join_token("h1", "rift").unwrap(), Err(TokenError::Used));
        assert_eq!(db.use_join_token("h2", "old").unwrap(), Err(TokenError::Expired));
        assert_eq!(db.use_join_token("nope", "rift").unwrap(), Err(TokenError::Unknown));
        db.release_join_token("h1").unwrap();
        assert_eq!(db.use_join_token("h1", "rift").unwrap(), Ok(()));
    }
}
