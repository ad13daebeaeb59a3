//! What agents report, as plain domain types: the master reads some of it
//! (steps, images, proxy listeners, archive checksums) and relays the rest
//! to the CLI unchanged. The gRPC edge converts these to and from messages.
//! The CLI declares its own views of the same answers (`cli::view`); the
//! parallel declarations are deliberate (each side owns its types).

use std::time::Instant;

/// Outcome of one pipeline step (an agent's, or the master's own edge step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// ports | certificates | containers | routes | dns | registry | edge | …
    pub step: String,
    pub success: bool,
    pub error: String,
    /// Human-readable summary.
    pub detail: String,
    /// The step had nothing to do.
    pub skipped: bool,
    pub duration_ms: u64,
}

impl Step {
    /// A step named `name` that started at `started` and ended with `result`
    /// (its detail on success, its error on failure).
    pub fn timed(name: &str, started: Instant, result: Result<String, String>) -> Step {
        let (success, detail, error) = match result {
            Ok(d) => (true, d, String::new()),
            Err(e) => (false, String::new(), e),
        };
        Step {
            step: name.to_string(),
            success,
            error,
            detail,
            skipped: false,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// What an agent answers to deploy, stop, start, restart and undeploy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationReport {
    pub steps: Vec<Step>,
    /// State after the operation (absent after undeploy).
    pub service: Option<ServiceInfo>,
    /// False when the request changed nothing.
    pub changed: bool,
    pub warnings: Vec<String>,
}

/// A service as an agent runs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    /// False for a service the definition marks inactive.
    pub active: bool,
    /// One per container, with what podman reports of it.
    pub components: Vec<ComponentInfo>,
    /// Routes with the host ports the agent assigned.
    pub routes: Vec<RouteInfo>,
    /// The node that runs it.
    pub node: String,
    /// Unix seconds of the last change in the agent's registry.
    pub updated_at: i64,
}

/// One container of a service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentInfo {
    pub name: String,
    pub container: String,
    pub image: String,
    pub desired_state: String,
    pub observed_state: String,
    pub started_at: i64,
    pub version: String,
    pub container_id: String,
    pub restart_count: u32,
}

/// One route of a service with its host port.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteInfo {
    pub component: String,
    pub name: String,
    pub port: u32,
    pub mode: String,
    pub hostname: String,
    pub public: bool,
    pub host_port: u32,
}

/// An event from an agent's registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// Unix milliseconds.
    pub time: i64,
    pub service: String,
    pub component: String,
    pub kind: String,
    pub message: String,
}

/// One service with its recent events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStatus {
    pub service: Option<ServiceInfo>,
    pub events: Vec<Event>,
}

/// A route a node's proxy serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyRoute {
    pub service: String,
    pub listener_port: u32,
    /// Address the listener is bound to on the node.
    pub listener: String,
    pub hostname: String,
    pub mode: String,
    pub backend: String,
    pub backend_tls: bool,
    pub cert: String,
}

/// Every route a node's proxy serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyRoutes {
    pub node: String,
    pub routes: Vec<ProxyRoute>,
    /// builtin | mc-proxy | none
    pub backend: String,
}

/// What a node's recovery did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    pub node: String,
    pub services: Vec<RecoveredService>,
    pub duration_ms: u64,
    pub created: u32,
    pub started: u32,
}

/// One service brought back by a recovery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveredService {
    pub service: String,
    pub stage: String,
    pub success: bool,
    pub detail: String,
    pub duration_ms: u64,
}

/// The `podman run` commands that reproduce a service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    pub service: String,
    pub commands: Vec<String>,
}

/// A piece of a service's container output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogChunk {
    pub component: String,
    pub data: Vec<u8>,
    pub stderr: bool,
}

/// A piece of an exported archive; the last one is `done` and carries the
/// SHA-256 and size of everything sent before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataChunk {
    /// Archive bytes; empty in the last chunk.
    pub data: Vec<u8>,
    /// The last chunk.
    pub done: bool,
    /// Hex SHA-256 of the whole archive (last chunk only).
    pub sha256: String,
    /// Bytes of the whole archive (last chunk only).
    pub size: u64,
    /// Things skipped while archiving (last chunk only).
    pub warnings: Vec<String>,
}

/// What an import wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    pub bytes: u64,
    /// Files and directories written.
    pub entries: u64,
    /// Host paths that were replaced.
    pub volumes: Vec<String>,
}

/// The certificate an edge node got for a public hostname.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeCert {
    pub cert_serial: String,
    /// Unix seconds.
    pub cert_expires_at: i64,
}

/// The kind of error an agent answered with (the gRPC status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// An error an agent answered with. The master decides on its code and
/// counts its steps; the caller gets it back unchanged, details included.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
    /// The steps the agent reported with the error (a failed pipeline).
    pub steps: Vec<Step>,
    /// The error's details exactly as the agent sent them; only the gRPC
    /// edge reads them.
    pub details: Vec<u8>,
}

impl AgentError {
    /// An error the master makes up on an agent's behalf (no details).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> AgentError {
        AgentError {
            code,
            message: message.into(),
            steps: Vec::new(),
            details: Vec::new(),
        }
    }

    /// The agent refused or rolled back: what ran before runs still.
    pub fn is_definite(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::InvalidArgument
                | ErrorCode::FailedPrecondition
                | ErrorCode::ResourceExhausted
                | ErrorCode::NotFound
        )
    }
}
