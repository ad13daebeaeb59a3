//! The master's side effect on the fleet: asking agents to act. Behind the
//! [`AgentClient`] trait, whose one real implementation is the gRPC client
//! in `rpc::agent` (connection cache, deadlines, one retry on a stale
//! connection); unit tests use a recording fake.

use std::time::Duration;

use futures::stream::BoxStream;
use mcp_model::service::ServiceDef;

use crate::error::Result;
use crate::reports::{
    AgentError, DataChunk, EdgeCert, ImportReport, LogChunk, OperationReport, ProxyRoutes, Recovery, Rendered,
    ServiceInfo, ServiceStatus,
};

/// Where a call goes and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    /// host:port of the node's agent, as it registered.
    pub address: String,
    pub timeout: Duration,
}

/// An operation on a placed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Stop,
    Start,
    Restart,
    Undeploy,
}

impl Operation {
    /// Lower-case name, as logged and recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Stop => "stop",
            Operation::Start => "start",
            Operation::Restart => "restart",
            Operation::Undeploy => "undeploy",
        }
    }
}

/// A service (or one of its components) to act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOrder {
    pub name: String,
    /// Empty: every component.
    pub component: String,
    pub request_id: String,
}

impl ServiceOrder {
    /// The whole service `name`.
    pub fn new(name: &str, request_id: &str) -> ServiceOrder {
        ServiceOrder {
            name: name.to_string(),
            component: String::new(),
            request_id: request_id.to_string(),
        }
    }
}

/// Which container output to relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsQuery {
    pub service: String,
    pub component: String,
    pub follow: bool,
    /// Lines from the end; 0: all.
    pub tail: u32,
}

/// A public hostname for an edge node to serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeRouteOrder {
    pub hostname: String,
    /// `<service>.<zone>`.
    pub backend_hostname: String,
    /// The route's port on the worker's proxy.
    pub backend_port: u16,
    pub backend_tls: bool,
    pub service: String,
    /// Listener port on the edge.
    pub port: u16,
    /// host:port of the worker's proxy listener.
    pub backend_address: String,
}

/// What an import receives before the archive.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportHeader {
    /// The definition whose volumes receive the data.
    pub def: ServiceDef,
    /// Overwrite data the node already has.
    pub force: bool,
    pub sha256: String,
    pub size: u64,
    pub request_id: String,
}

/// A stream of an agent's container output.
pub type LogStream = BoxStream<'static, std::result::Result<LogChunk, AgentError>>;

/// A stream of an exported archive.
pub type DataStream = BoxStream<'static, Result<DataChunk>>;

/// The calls the master makes to agents. Errors: `FleetError::Agent` (the
/// agent answered with an error) or `FleetError::Unreachable`.
#[async_trait::async_trait]
pub trait AgentClient: Send + Sync {
    /// Runs the deploy pipeline for `def` (or one `component` of it).
    async fn deploy(&self, to: &Target, def: &ServiceDef, component: &str, request_id: &str)
    -> Result<OperationReport>;
    /// Stops, starts, restarts or undeploys a service.
    async fn operate(&self, to: &Target, op: Operation, order: &ServiceOrder) -> Result<OperationReport>;
    /// Every service the node runs.
    async fn list_services(&self, to: &Target) -> Result<Vec<ServiceInfo>>;
    /// One service with its events.
    async fn status(&self, to: &Target, service: &str) -> Result<ServiceStatus>;
    /// Whether the agent answers at all.
    async fn live_check(&self, to: &Target) -> Result<()>;
    /// A service's container output (no deadline: it may follow).
    async fn logs(&self, to: &Target, query: &LogsQuery) -> Result<LogStream>;
    /// The routes the node's proxy serves.
    async fn proxy_routes(&self, to: &Target) -> Result<ProxyRoutes>;
    /// Makes an edge node serve a public hostname.
    async fn setup_edge_route(&self, to: &Target, order: &EdgeRouteOrder) -> Result<EdgeCert>;
    /// Makes an edge node stop serving a public hostname.
    async fn remove_edge_route(&self, to: &Target, hostname: &str, port: u16) -> Result<()>;
    /// Recreates every container of the node from its registry.
    async fn recover(&self, to: &Target) -> Result<Recovery>;
    /// The `podman run` commands of a service.
    async fn render(&self, to: &Target, service: &str) -> Result<Rendered>;
    /// Starts an export of a service's data (the caller bounds the time).
    async fn export(&self, to: &Target, service: &str, request_id: &str) -> Result<DataStream>;
    /// Streams an archive into the node's import, within `to.timeout`.
    async fn import(
        &self,
        to: &Target,
        header: &ImportHeader,
        data: BoxStream<'static, Vec<u8>>,
    ) -> Result<ImportReport>;
    /// Drops any cached connection to `node` (after a call was abandoned).
    async fn forget(&self, node: &str);
}
