//! What the CLI shows: the answers of the master and the agents as plain
//! values, independent of the wire format (`client::convert` builds them).
//! Types that `--json` prints whole serialize to exactly the keys it prints
//! (scripts parse them: a renamed field is a breaking change).
//!
//! These are plain data declarations and deliberately look alike: one
//! struct per answer, with the fields the CLI shows. Several mirror the
//! master's own domain types (`master::reports`, `sync`, `migrate`) field
//! for field, on purpose: each side owns its types, so the CLI's JSON
//! cannot change because the master's model did, and the two meet only in
//! the wire messages.

use serde::Serialize;

/// An operation on a deployed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Stop,
    Start,
    Restart,
    Undeploy,
}

impl Op {
    /// The command word: "stop".
    pub fn verb(self) -> &'static str {
        match self {
            Op::Stop => "stop",
            Op::Start => "start",
            Op::Restart => "restart",
            Op::Undeploy => "undeploy",
        }
    }

    /// The command word for progress messages: "stopping".
    pub fn doing(self) -> &'static str {
        match self {
            Op::Stop => "stopping",
            Op::Start => "starting",
            Op::Restart => "restarting",
            Op::Undeploy => "undeploying",
        }
    }
}

/// Outcome of one step of an operation (ports, certificates, containers…).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Step {
    pub step: String,
    pub success: bool,
    pub error: String,
    /// What the step did ("assigned 3 ports").
    pub detail: String,
    /// The step had nothing to do or is not configured on the node.
    pub skipped: bool,
    pub duration_ms: u64,
}

/// One component's container.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Component {
    pub name: String,
    pub container: String,
    pub image: String,
    /// running | stopped | ignore
    pub desired_state: String,
    /// running | exited | created | paused | missing | unknown
    #[serde(rename = "state")]
    pub observed_state: String,
    /// Unix seconds of the last start; 0 when not running.
    pub started_at: i64,
    /// Image tag (or short digest).
    pub version: String,
    pub container_id: String,
    pub restart_count: u32,
}

/// A route of a component, with the host port it was given.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Route {
    pub component: String,
    pub name: String,
    pub port: u32,
    pub mode: String,
    pub hostname: String,
    pub public: bool,
    pub host_port: u32,
}

/// A service as a node's registry records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub active: bool,
    pub components: Vec<Component>,
    pub routes: Vec<Route>,
    pub node: String,
    /// Unix seconds of the last recorded change.
    pub updated_at: i64,
}

/// Something that happened to a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Event {
    pub time_ms: i64,
    pub component: String,
    pub kind: String,
    pub message: String,
}

/// `mcp status <svc>`: the service and its recent events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStatus {
    pub service: Option<Service>,
    pub events: Vec<Event>,
}

/// Per-step results of a deploy, stop, start, restart or undeploy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Operation {
    pub steps: Vec<Step>,
    /// State after the operation (none after undeploy).
    pub service: Option<Service>,
    /// False when the request changed nothing.
    pub changed: bool,
    pub warnings: Vec<String>,
}

impl Operation {
    /// Whether every step succeeded.
    pub fn succeeded(&self) -> bool {
        self.steps.iter().all(|s| s.success)
    }
}

/// An operation and where it ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placed {
    pub node: String,
    /// Why the master chose the node ("pinned", "kept on rift"); empty when
    /// the operator named it (direct mode).
    pub placement: String,
    pub result: Option<Operation>,
}

/// One node's services, or why it did not answer.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeServices {
    pub node: String,
    pub services: Result<Vec<Service>, String>,
}

/// `mcp ps`: every node's services.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub nodes: Vec<NodeServices>,
    /// Placed services their node does not report (master only).
    pub missing: Vec<String>,
    /// Services running where the master did not place them (master only).
    pub orphans: Vec<String>,
}

/// A boot stage of an agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BootStage {
    #[serde(rename = "stage")]
    pub name: String,
    pub state: String,
    pub detail: String,
    pub services: Vec<String>,
}

/// What an agent reports about its node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeStatus {
    pub version: String,
    #[serde(rename = "commit")]
    pub git_commit: String,
    pub arch: String,
    pub uptime_seconds: u64,
    #[serde(rename = "podman")]
    pub podman_version: String,
    pub services: u32,
    pub containers: u32,
    pub containers_running: u32,
    pub cpus: u32,
    pub load1: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub cgroup_version: u32,
    pub limits_enforced: bool,
    pub boot: Vec<BootStage>,
    pub monitor_last_run: i64,
    pub drifted: u32,
}

impl NodeStatus {
    /// "0.1.0 (commit abc)", as `mcp-agent --version` prints it.
    pub fn long_version(&self) -> String {
        format!("{} (commit {})", self.version, self.git_commit)
    }
}

/// A node as the master knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetNode {
    pub name: String,
    /// worker | edge | master
    pub role: String,
    pub address: String,
    pub arch: String,
    pub version: String,
    /// healthy | unhealthy | unknown
    pub status: String,
    /// Unix seconds of the last heartbeat or registration.
    pub last_seen: i64,
    pub containers: u32,
    pub cpu_load: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub cpus: u32,
    pub status_reason: String,
}

/// A one-time join token for a new node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JoinToken {
    #[serde(rename = "node")]
    pub name: String,
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A record of the internal zone.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DnsRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub ttl: u32,
    pub node: String,
    pub service: String,
}

/// The internal zone the master serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DnsZone {
    pub zone: String,
    pub records: Vec<DnsRecord>,
    /// Where the zone is served; empty: not served.
    pub listen: Vec<String>,
}

/// A route a node's proxy serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProxyRoute {
    pub service: String,
    pub listener_port: u32,
    /// Address the listener is bound to.
    pub listener: String,
    pub hostname: String,
    pub mode: String,
    pub backend: String,
    pub backend_tls: bool,
    pub cert: String,
}

/// One node's proxy routes, or why it did not answer (`error` non-empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeRoutes {
    pub node: String,
    pub error: String,
    pub routes: Vec<ProxyRoute>,
}

/// A public route on an edge node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EdgeRoute {
    pub hostname: String,
    pub service: String,
    pub edge_node: String,
    pub backend_hostname: String,
    pub backend_port: u32,
    pub cert_serial: String,
    /// Unix seconds.
    pub cert_expires_at: i64,
    /// What the edge serves now: ok | missing | unreachable.
    pub state: String,
}

/// One service's part of `mcp sync`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncAction {
    pub service: String,
    /// deploy | redeploy | undeploy | unchanged
    pub action: String,
    pub node: String,
    /// For redeploy: the fields that changed.
    pub changed: Vec<String>,
    pub success: bool,
    pub error: String,
}

/// The plan, and with it the results, of `mcp sync`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    pub actions: Vec<SyncAction>,
    pub dry_run: bool,
}

/// One service brought back by a recovery.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecoveredService {
    pub service: String,
    pub stage: String,
    pub success: bool,
    pub detail: String,
    pub duration_ms: u64,
}

/// What a recovery of one node did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recovery {
    pub services: Vec<RecoveredService>,
    pub duration_ms: u64,
    /// Containers created (they were gone) and started.
    pub created: u32,
    pub started: u32,
}

/// One node's recovery, or why it could not run (`error` non-empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRecovery {
    pub node: String,
    pub error: String,
    pub result: Option<Recovery>,
}

/// `mcp render`: the `podman run` commands that reproduce a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rendered {
    pub service: String,
    /// Shell commands, in start order.
    pub commands: Vec<String>,
}

/// `mcp adopt`: the containers now recorded, and why others were not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adopted {
    pub service: String,
    pub adopted: Vec<String>,
    /// "<container>: <reason>".
    pub refused: Vec<String>,
}

/// A stored snapshot of a service's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub service: String,
    /// UTC timestamp naming the file: 20261125T153000.123Z.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    pub sha256: String,
    pub size: u64,
    /// Node the data came from.
    pub node: String,
    /// Path of the archive on the master.
    pub path: String,
}

/// `mcp snapshot <svc>`: the new snapshot and what retention removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnapshotTaken {
    pub snapshot: Snapshot,
    pub pruned: Vec<String>,
    pub warnings: Vec<String>,
}

/// `mcp snapshot restore`: the snapshot restored and the steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    pub snapshot: Snapshot,
    pub node: String,
    pub steps: Vec<Step>,
}

/// What `mcp migrate` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoveRequest {
    /// Empty with `all`.
    pub service: String,
    pub to: String,
    pub force: bool,
    /// Every migratable service of `from`.
    pub all: bool,
    pub from: String,
}

/// One service's migration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Migration {
    pub service: String,
    pub from: String,
    pub to: String,
    pub success: bool,
    /// Where the service is now and what to do, on failure.
    pub error: String,
    pub steps: Vec<Step>,
    pub snapshot: Option<Snapshot>,
}

/// What `mcp logs` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogsQuery {
    pub service: String,
    /// None: every component, each line prefixed with its name.
    pub component: Option<String>,
    pub follow: bool,
    /// Lines from the end; 0 means all.
    pub tail: u32,
}

/// A piece of a container's output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogChunk {
    pub component: String,
    pub data: Vec<u8>,
    pub stderr: bool,
}
