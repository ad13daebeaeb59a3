//! The agent's SQLite registry (`<data_dir>/mcp.db`): services, components
//! with their full runtime spec, routes with host ports, and events. It is
//! the source of truth for recovery.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use mcp_model::service::ServiceDef;
use mcp_store::{self as db, DbError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::runtime::spec::ContainerSpec;

/// Schema migrations; index i brings version i to i + 1.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE services (
    name        TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    active      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE components (
    service        TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    container      TEXT NOT NULL UNIQUE,
    image          TEXT NOT NULL,
    spec           TEXT NOT NULL,
    spec_hash      TEXT NOT NULL,
    desired_state  TEXT NOT NULL CHECK (desired_state IN ('running', 'stopped', 'ignore')),
    observed_state TEXT NOT NULL DEFAULT 'unknown',
    container_id   TEXT NOT NULL DEFAULT '',
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (service, name)
);
CREATE TABLE routes (
    service    TEXT NOT NULL,
    component  TEXT NOT NULL,
    name       TEXT NOT NULL,
    port       INTEGER NOT NULL,
    mode       TEXT NOT NULL CHECK (mode IN ('l4', 'l7')),
    hostname   TEXT NOT NULL,
    public     INTEGER NOT NULL,
    host_port  INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (service, component, name),
    FOREIGN KEY (service, component) REFERENCES components(service, name) ON DELETE CASCADE
);
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    service    TEXT NOT NULL,
    component  TEXT NOT NULL DEFAULT '',
    time       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL
);
CREATE INDEX events_by_service ON events (service, component, time);
"#,
    r#"
CREATE TABLE edge_routes (
    hostname          TEXT NOT NULL,
    port              INTEGER NOT NULL,
    service           TEXT NOT NULL,
    backend_hostname  TEXT NOT NULL,
    backend_port      INTEGER NOT NULL,
    backend_address   TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (hostname, port)
);
"#,
];

/// Desired state of a component (SPEC §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    Stopped,
    /// Left alone by the agent (neither started nor repaired).
    Ignore,
}

impl Desired {
    /// Registry spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
            Desired::Ignore => "ignore",
        }
    }

    fn parse(s: &str) -> Desired {
        match s {
            "running" => Desired::Running,
            "stopped" => Desired::Stopped,
            _ => Desired::Ignore,
        }
    }
}

/// A component as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentRecord {
    pub name: String,
    pub spec: ContainerSpec,
    pub desired: Desired,
    pub observed: String,
    pub container_id: String,
}

/// A route with its assigned host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    pub component: String,
    /// Empty for a single unnamed route.
    pub name: String,
    pub port: u16,
    pub mode: String,
    pub hostname: String,
    pub public: bool,
    pub host_port: u16,
}

/// A service as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub def: ServiceDef,
    pub components: Vec<ComponentRecord>,
    pub routes: Vec<RouteRecord>,
    pub updated_at: i64,
}

impl ServiceRecord {
    /// Whether any component should run.
    pub fn wants_running(&self) -> bool {
        self.components.iter().any(|c| c.desired == Desired::Running)
    }

    /// The recorded component called `name`.
    pub fn component(&self, name: &str) -> Option<&ComponentRecord> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Unix milliseconds.
    pub time: i64,
    pub service: String,
    pub component: String,
    pub kind: String,
    pub message: String,
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Open(#[from] DbError),
    #[error("registry: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("registry: corrupt row for {what}: {reason}")]
    Corrupt { what: String, reason: String },
}

type Result<T> = std::result::Result<T, RegistryError>;

/// The registry; one connection behind a mutex (operations are short).
pub struct Registry {
    conn: Mutex<Connection>,
    /// Told of every event recorded with [`Registry::event`] (metrics count
    /// them); the registry itself knows nothing of who listens.
    on_event: Option<EventHook>,
}

/// Called with (service, component, kind) of each recorded event.
pub type EventHook = fn(&str, &str, &str);

/// An edge route this (edge) node serves: a public hostname proxied over
/// TLS to a service's internal name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRoute {
    pub hostname: String,
    pub port: u32,
    pub service: String,
    pub backend_hostname: String,
    pub backend_port: u32,
    /// Where to dial, when not the backend hostname (edges dial a worker's
    /// proxy by address and verify it by name).
    pub backend_address: String,
    pub backend_tls: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Registry {
    /// Opens (creating, 0600, WAL) and migrates the registry at `path`.
    pub fn open(path: &Path) -> Result<Registry> {
        Ok(Registry {
            conn: Mutex::new(db::open(path, MIGRATIONS)?),
            on_event: None,
        })
    }

    /// The same registry, telling `hook` of every event it records.
    pub fn observed(mut self, hook: EventHook) -> Registry {
        self.on_event = Some(hook);
        self
    }

    /// An in-memory registry for unit tests.
    #[cfg(test)]
    pub fn in_memory() -> Registry {
        Registry {
            conn: Mutex::new(db::open_in_memory(MIGRATIONS).expect("an in-memory database opens")),
            on_event: None,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each
        // write is a transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One service with its components and routes.
    pub fn service(&self, name: &str) -> Result<Option<ServiceRecord>> {
        let conn = self.conn();
        load_service(&conn, name)
    }

    /// Every service, by name.
    pub fn services(&self) -> Result<Vec<ServiceRecord>> {
        let conn = self.conn();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM services ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        let mut out = Vec::new();
        for n in names {
            if let Some(s) = load_service(&conn, &n)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Host ports held by any route.
    pub fn used_ports(&self) -> Result<HashSet<u16>> {
        let conn = self.conn();
        let ports = conn
            .prepare("SELECT host_port FROM routes")?
            .query_map([], |r| r.get::<_, u16>(0))?
            .collect::<std::result::Result<_, _>>()?;
        Ok(ports)
    }

    /// The service that owns the container called `container`, if any.
    pub fn container_owner(&self, container: &str) -> Result<Option<String>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT service FROM components WHERE container = ?1",
                [container],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records a service's full state in one transaction: definition,
    /// components (replacing those recorded), routes, and an event.
    pub fn save(&self, rec: &ServiceRecord, event: (&str, &str)) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms() / 1000;
        let definition = serde_json::to_string(&rec.def).map_err(|e| RegistryError::Corrupt {
            what: rec.def.name.clone(),
            reason: e.to_string(),
        })?;
        tx.execute(
            "INSERT INTO services (name, definition, active, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (name) DO UPDATE SET definition = ?2, active = ?3, updated_at = ?4",
            params![rec.def.name, definition, rec.def.active, now],
        )?;
        tx.execute("DELETE FROM components WHERE service = ?1", [&rec.def.name])?;
        for c in &rec.components {
            let spec = serde_json::to_string(&c.spec).expect("a ContainerSpec always serializes");
            tx.execute(
                "INSERT INTO components (service, name, container, image, spec, spec_hash, desired_state,
                                         observed_state, container_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    rec.def.name,
                    c.name,
                    c.spec.name,
                    c.spec.image,
                    spec,
                    c.spec.hash(),
                    c.desired.as_str(),
                    c.observed,
                    c.container_id,
                    now
                ],
            )?;
        }
        for r in &rec.routes {
            tx.execute(
                "INSERT INTO routes (service, component, name, port, mode, hostname, public, host_port)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    rec.def.name,
                    r.component,
                    r.name,
                    r.port,
                    r.mode,
                    r.hostname,
                    r.public,
                    r.host_port
                ],
            )?;
        }
        insert_event(&tx, &rec.def.name, "", event.0, event.1)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the desired state of some components (all when `components` is
    /// empty) and records an event.
    pub fn set_desired(
        &self,
        service: &str,
        components: &[String],
        desired: Desired,
        event: (&str, &str),
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms() / 1000;
        if components.is_empty() {
            tx.execute(
                "UPDATE components SET desired_state = ?2, updated_at = ?3 WHERE service = ?1",
                params![service, desired.as_str(), now],
            )?;
        } else {
            for c in components {
                tx.execute(
                    "UPDATE components SET desired_state = ?3, updated_at = ?4 WHERE service = ?1 AND name = ?2",
                    params![service, c, desired.as_str(), now],
                )?;
            }
        }
        tx.execute(
            "UPDATE services SET updated_at = ?2 WHERE name = ?1",
            params![service, now],
        )?;
        insert_event(&tx, service, "", event.0, event.1)?;
        tx.commit()?;
        Ok(())
    }

    /// Records what podman reported for a component.
    pub fn set_observed(&self, service: &str, component: &str, observed: &str, container_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE components SET observed_state = ?3, container_id = ?4 WHERE service = ?1 AND name = ?2",
            params![service, component, observed, container_id],
        )?;
        Ok(())
    }

    /// Deletes a service with its components and routes (ports released).
    pub fn delete(&self, service: &str, event: (&str, &str)) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM routes WHERE service = ?1", [service])?;
        tx.execute("DELETE FROM services WHERE name = ?1", [service])?;
        insert_event(&tx, service, "", event.0, event.1)?;
        tx.commit()?;
        Ok(())
    }

    /// Records an edge route this (edge) node serves.
    pub fn save_edge(&self, r: &EdgeRoute) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO edge_routes (hostname, port, service, backend_hostname, backend_port,
                                                 backend_address, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.hostname,
                r.port,
                r.service,
                r.backend_hostname,
                r.backend_port,
                r.backend_address,
                now_ms() / 1000
            ],
        )?;
        Ok(())
    }

    /// Forgets an edge route.
    pub fn delete_edge(&self, hostname: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM edge_routes WHERE hostname = ?1", [hostname])?;
        Ok(())
    }

    /// Edge routes this node serves, as the requests that set them up.
    pub fn edges(&self) -> Result<Vec<EdgeRoute>> {
        let conn = self.conn();
        let rows = conn
            .prepare(
                "SELECT hostname, port, service, backend_hostname, backend_port, backend_address
                 FROM edge_routes ORDER BY hostname",
            )?
            .query_map([], |r| {
                Ok(EdgeRoute {
                    hostname: r.get(0)?,
                    port: r.get(1)?,
                    service: r.get(2)?,
                    backend_hostname: r.get(3)?,
                    backend_port: r.get(4)?,
                    backend_address: r.get(5)?,
                    backend_tls: true,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(rows)
    }

    /// Appends an event.
    pub fn event(&self, service: &str, component: &str, kind: &str, message: &str) -> Result<()> {
        insert_event(&self.conn(), service, component, kind, message)?;
        if let Some(hook) = self.on_event {
            hook(service, component, kind);
        }
        Ok(())
    }

    /// Deletes events older than `days` days; returns how many.
    pub fn prune_events(&self, days: u64) -> Result<usize> {
        let cutoff = now_ms() - (days as i64) * 86_400_000;
        Ok(self.conn().execute("DELETE FROM events WHERE time < ?1", [cutoff])?)
    }

    /// The newest `limit` events of a service, oldest first.
    pub fn events(&self, service: &str, limit: u32) -> Result<Vec<EventRecord>> {
        let conn = self.conn();
        let mut rows: Vec<EventRecord> = conn
            .prepare(
                "SELECT time, service, component, kind, message FROM events WHERE service = ?1
                 ORDER BY time DESC, id DESC LIMIT ?2",
            )?
            .query_map(params![service, limit], |r| {
                Ok(EventRecord {
                    time: r.get(0)?,
                    service: r.get(1)?,
                    component: r.get(2)?,
                    kind: r.get(3)?,
                    message: r.get(4)?,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }
}

fn insert_event(conn: &Connection, service: &str, component: &str, kind: &str, message: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO events (service, component, time, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![service, component, now_ms(), kind, message],
    )?;
    Ok(())
}

fn load_service(conn: &Connection, name: &str) -> Result<Option<ServiceRecord>> {
    let row: Option<(String, i64)> = conn
        .query_row(
            "SELECT definition, updated_at FROM services WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((definition, updated_at)) = row else {
        return Ok(None);
    };
    let corrupt = |reason: String| RegistryError::Corrupt {
        what: name.to_string(),
        reason,
    };
    let def: ServiceDef = serde_json::from_str(&definition).map_err(|e| corrupt(e.to_string()))?;
    let mut components = Vec::new();
    let mut stmt = conn
        .prepare("SELECT name, spec, desired_state, observed_state, container_id FROM components WHERE service = ?1")?;
    let rows = stmt.query_map([name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        let (cname, spec, desired, observed, container_id) = row?;
        let spec: ContainerSpec = serde_json::from_str(&spec).map_err(|e| corrupt(format!("{cname}: {e}")))?;
        components.push(ComponentRecord {
            name: cname,
            spec,
            desired: Desired::parse(&desired),
            observed,
            container_id,
        });
    }
    // Keep the definition's order, which is the start order.
    components.sort_by_key(|c| {
        def.components
            .iter()
            .position(|d| d.name == c.name)
            .unwrap_or(usize::MAX)
    });
    let routes = conn
        .prepare(
            "SELECT component, name, port, mode, hostname, public, host_port FROM routes WHERE service = ?1
             ORDER BY component, name",
        )?
        .query_map([name], |r| {
            Ok(RouteRecord {
                component: r.get(0)?,
                name: r.get(1)?,
                port: r.get(2)?,
                mode: r.get(3)?,
                hostname: r.get(4)?,
                public: r.get(5)?,
                host_port: r.get(6)?,
            })
        })?
        .collect::<std::result::Result<_, _>>()?;
    Ok(Some(ServiceRecord {
        def,
        components,
        routes,
        updated_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record() -> ServiceRecord {
        let def = mcp_model::service::parse(
            "t",
            "name = \"web\"\n[[components]]\nname = \"api\"\nimage = \"r/w:v1\"\n[[components.routes]]\nport = 80\n",
        )
        .unwrap();
        let spec = ContainerSpec::build(&def, &def.components[0], &BTreeMap::from([(String::new(), 10001)]), "n");
        ServiceRecord {
            components: vec![ComponentRecord {
                name: "api".into(),
                spec,
                desired: Desired::Running,
                observed: "running".into(),
                container_id: "abc".into(),
            }],
            routes: vec![RouteRecord {
                component: "api".into(),
                name: String::new(),
                port: 80,
                mode: "l4".into(),
                hostname: "web.svc.x".into(),
                public: false,
                host_port: 10001,
            }],
            def,
            updated_at: 0,
        }
    }

    #[test]
    fn save_load_stop_delete() {
        let reg = Registry::in_memory();
        let rec = record();
        reg.save(&rec, ("deployed", "first")).unwrap();
        let got = reg.service("web").unwrap().unwrap();
        assert_eq!(got.components, rec.components);
        assert_eq!(got.routes, rec.routes);
        assert_eq!(reg.used_ports().unwrap(), HashSet::from([10001]));
        assert_eq!(reg.container_owner("web-api").unwrap().as_deref(), Some("web"));
        reg.set_desired("web", &[], Desired::Stopped, ("stopped", "by operator"))
            .unwrap();
        assert_eq!(
            reg.service("web").unwrap().unwrap().components[0].desired,
            Desired::Stopped
        );
        reg.delete("web", ("undeployed", "")).unwrap();
        assert!(reg.service("web").unwrap().is_none());
        assert!(reg.used_ports().unwrap().is_empty());
        let kinds: Vec<_> = reg.events("web", 10).unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["deployed", "stopped", "undeployed"]);
    }

    #[test]
    fn host_ports_are_unique_across_services() {
        let reg = Registry::in_memory();
        reg.save(&record(), ("deployed", "")).unwrap();
        let mut other = record();
        other.def.name = "web2".into();
        other.components[0].spec.name = "web2-api".into();
        assert!(reg.save(&other, ("deployed", "")).is_err());
        assert!(reg.service("web2").unwrap().is_none(), "failed save left a row");
    }
}
