//! Unit-test support: a recording fake of the agents and a [`Fleet`] on an
//! in-memory database, so subsystems run without any agent or network.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use mcp_infra::pki::Ca;
use mcp_infra::tls::TlsFiles;
use mcp_model::service::ServiceDef;
use tokio::sync::Semaphore;

use crate::agents::{
    AgentClient, DataStream, EdgeRouteOrder, ImportHeader, LogStream, LogsQuery, Operation, ServiceOrder, Target,
};
use crate::config::{MasterConfig, MasterSection, TimeoutsSection};
use crate::db::{FleetDb, NodeRow, PlacementRow};
use crate::error::{FleetError, Result};
use crate::fleet::Fleet;
use crate::reports::{
    AgentError, ComponentInfo, EdgeCert, ErrorCode, ImportReport, OperationReport, ProxyRoutes, Recovery, Rendered,
    ServiceInfo, ServiceStatus, Step,
};

/// How a scripted call ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The agent did it.
    Done,
    /// The agent answered with an error of this code.
    Refused(ErrorCode),
    /// No answer within the deadline.
    NoAnswer,
}

impl Outcome {
    fn result<T>(&self, node: &str, ok: T) -> Result<T> {
        match self {
            Outcome::Done => Ok(ok),
            Outcome::Refused(code) => Err(FleetError::Agent {
                node: node.to_string(),
                error: AgentError {
                    steps: vec![Step {
                        step: "containers".into(),
                        error: "scripted failure".into(),
                        duration_ms: 5,
                        ..Default::default()
                    }],
                    ..AgentError::new(*code, "scripted failure")
                },
            }),
            Outcome::NoAnswer => Err(FleetError::Unreachable {
                node: node.to_string(),
                reason: "no answer within 5 s".into(),
            }),
        }
    }
}

/// Agents that answer from a script and record every call.
#[derive(Default)]
pub struct FakeAgents {
    calls: Mutex<Vec<String>>,
    /// What each node runs (ListServices); a node without an entry runs nothing.
    services: Mutex<HashMap<String, Vec<ServiceInfo>>>,
    /// Nodes that answer nothing at all.
    down: Mutex<HashSet<String>>,
    /// Outcomes of the next deploys, in order; then `Done`.
    deploys: Mutex<VecDeque<Outcome>>,
    /// When set, each deploy takes a permit before it answers.
    gate: Mutex<Option<Arc<Semaphore>>>,
}

impl FakeAgents {
    /// Every call so far, as `method node [service]`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("test lock").clone()
    }

    /// Calls so far whose text starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.calls().iter().filter(|c| c.starts_with(prefix)).count()
    }

    /// Makes `node` run `services` (name, images by component).
    pub fn runs(&self, node: &str, services: &[(&str, &[(&str, &str)])]) {
        let infos = services
            .iter()
            .map(|(name, components)| ServiceInfo {
                name: name.to_string(),
                components: components
                    .iter()
                    .map(|(c, image)| ComponentInfo {
                        name: c.to_string(),
                        image: image.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        self.services.lock().expect("test lock").insert(node.to_string(), infos);
    }

    /// Makes `node` answer nothing.
    pub fn take_down(&self, node: &str) {
        self.down.lock().expect("test lock").insert(node.to_string());
    }

    /// Scripts the next deploy.
    pub fn next_deploy(&self, outcome: Outcome) {
        self.deploys.lock().expect("test lock").push_back(outcome);
    }

    /// Holds every deploy until the returned semaphore gets permits.
    pub fn gate_deploys(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.gate.lock().expect("test lock") = Some(gate.clone());
        gate
    }

    fn record(&self, call: String) {
        self.calls.lock().expect("test lock").push(call);
    }

    /// Records the call and fails it if its node is down.
    fn reach(&self, to: &Target, call: String) -> Result<()> {
        self.record(call);
        if self.down.lock().expect("test lock").contains(&to.node) {
            return Outcome::NoAnswer.result(&to.node, ());
        }
        Ok(())
    }

    fn unscripted<T>(&self, what: &str) -> Result<T> {
        Err(FleetError::Internal(format!("the fake agent has no script for {what}")))
    }
}

#[async_trait::async_trait]
impl AgentClient for FakeAgents {
    async fn deploy(&self, to: &Target, def: &ServiceDef, _: &str, request_id: &str) -> Result<OperationReport> {
        self.reach(to, format!("deploy {} {} {request_id}", to.node, def.name))?;
        let gate = self.gate.lock().expect("test lock").clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("the test keeps the gate open").forget();
        }
        self.record(format!("deployed {} {} {request_id}", to.node, def.name));
        let outcome = self.deploys.lock().expect("test lock").pop_front();
        let report = OperationReport {
            steps: vec![Step {
                step: "containers".into(),
                success: true,
                duration_ms: 7,
                ..Default::default()
            }],
            changed: true,
            ..Default::default()
        };
        outcome.unwrap_or(Outcome::Done).result(&to.node, report)
    }

    async fn operate(&self, to: &Target, op: Operation, order: &ServiceOrder) -> Result<OperationReport> {
        self.reach(to, format!("{} {} {}", op.as_str(), to.node, order.name))?;
        Ok(OperationReport::default())
    }

    async fn list_services(&self, to: &Target) -> Result<Vec<ServiceInfo>> {
        self.reach(to, format!("list {}", to.node))?;
        let services = self.services.lock().expect("test lock");
        Ok(services.get(&to.node).cloned().unwrap_or_default())
    }

    async fn status(&self, to: &Target, service: &str) -> Result<ServiceStatus> {
        self.reach(to, format!("status {} {service}", to.node))?;
        self.unscripted("status")
    }

    async fn live_check(&self, to: &Target) -> Result<()> {
        self.reach(to, format!("live {}", to.node))
    }

    async fn logs(&self, to: &Target, query: &LogsQuery) -> Result<LogStream> {
        self.reach(to, format!("logs {} {}", to.node, query.service))?;
        self.unscripted("logs")
    }

    async fn proxy_routes(&self, to: &Target) -> Result<ProxyRoutes> {
        self.reach(to, format!("routes {}", to.node))?;
        Ok(ProxyRoutes::default())
    }

    async fn setup_edge_route(&self, to: &Target, order: &EdgeRouteOrder) -> Result<EdgeCert> {
        self.reach(to, format!("edge {} {}", to.node, order.hostname))?;
        self.unscripted("edge routes")
    }

    async fn remove_edge_route(&self, to: &Target, hostname: &str, _: u16) -> Result<()> {
        self.reach(to, format!("unedge {} {hostname}", to.node))
    }

    async fn recover(&self, to: &Target) -> Result<Recovery> {
        self.reach(to, format!("recover {}", to.node))?;
        self.unscripted("recover")
    }

    async fn render(&self, to: &Target, service: &str) -> Result<Rendered> {
        self.reach(to, format!("render {} {service}", to.node))?;
        self.unscripted("render")
    }

    async fn export(&self, to: &Target, service: &str, _: &str) -> Result<DataStream> {
        self.reach(to, format!("export {} {service}", to.node))?;
        self.unscripted("export")
    }

    async fn import(&self, to: &Target, h: &ImportHeader, _: BoxStream<'static, Vec<u8>>) -> Result<ImportReport> {
        self.reach(to, format!("import {} {}", to.node, h.def.name))?;
        self.unscripted("import")
    }

    async fn forget(&self, node: &str) {
        self.record(format!("forget {node}"));
    }
}

/// A configuration with its state under `dir`: deploys (and the service
/// locks) wait at most 5 s, silent nodes are probed after 90 s.
pub fn config(dir: &Path) -> MasterConfig {
    let master = MasterSection {
        node: "m1".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_path_buf(),
    };
    let tls = TlsFiles {
        cert: dir.join("master.pem"),
        key: dir.join("master.key"),
        ca: Ca::cert_path(&dir.join("ca")),
    };
    MasterConfig {
        timeouts: TimeoutsSection {
            deploy: 5,
            ..Default::default()
        },
        ..MasterConfig::new(master, tls)
    }
}

/// A fleet with no node yet, its agents faked; keep the directory alive.
pub fn fleet() -> (Fleet, Arc<FakeAgents>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).expect("ca dir");
    let ca = Ca::create(&ca_dir, "test").expect("test CA");
    let agents = Arc::new(FakeAgents::default());
    let fleet = Fleet::new(config(dir.path()), FleetDb::in_memory(), ca, agents.clone()).expect("fleet");
    (fleet, agents, dir)
}

/// Adds a healthy node last seen at `last_seen` (Unix seconds), in memory
/// and in the database (placements refer to it).
pub fn add_node(fleet: &Fleet, name: &str, role: &str, last_seen: i64) {
    let row = NodeRow {
        role: role.into(),
        address: format!("10.0.0.{}:9444", fleet.nodes.len() + 1),
        ..NodeRow::new(name, last_seen)
    };
    fleet.nodes.upsert(name, |_| row);
    fleet.flush().expect("save nodes");
}

/// A definition of `name` with one component `app` running `image`.
pub fn def(name: &str, image: &str) -> ServiceDef {
    let text = format!("name = \"{name}\"\n[[components]]\nname = \"app\"\nimage = \"{image}\"\n");
    mcp_model::service::parse("test", &text).expect("valid definition")
}

/// Records a placement of `def` on `node` in `state`, made by `request_id`.
pub fn place(fleet: &Fleet, def: &ServiceDef, node: &str, state: &str, request_id: &str) {
    fleet
        .db
        .save_placement(&PlacementRow {
            service: def.name.clone(),
            node: node.into(),
            def: def.clone(),
            state: state.into(),
            detail: String::new(),
            request_id: request_id.into(),
            updated_at: 0,
        })
        .expect("save placement");
}

/// The placement of `service` as (node, state, detail), if any.
pub fn placement(fleet: &Fleet, service: &str) -> Option<(String, String, String)> {
    let p = fleet.db.placement(service).expect("read placement")?;
    Some((p.node, p.state, p.detail))
}
