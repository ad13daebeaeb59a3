//! The two ways to reach the fleet: through the master, or straight to the
//! agents of the `[[nodes]]` list (`--direct`, or no `[master]`). The
//! commands both modes share are written once against [`Target`];
//! `fleet::Master` and `direct::Agents` are its two implementations.

use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use mcp_model::service::ServiceDef;

use crate::client::{LogStream, RpcError};
use crate::view::{Listing, LogsQuery, NodeRecovery, NodeRoutes, Op, Placed, Rendered, ServiceStatus};

/// Quick reads.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Deploys pull images and wait for health (SPEC §7: 5 min).
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// Undeploys stop containers and withdraw routes, DNS and certificates.
pub const UNDEPLOY_TIMEOUT: Duration = Duration::from_secs(120);
/// Recovery recreates containers (and may pull images): give it time.
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(900);
/// The master waits for the agent as long as the CLI would: give it a
/// little longer to answer.
pub const MASTER_SLACK: Duration = Duration::from_secs(10);

/// How long `op` may take on the agent.
pub fn op_timeout(op: Op) -> Duration {
    if op == Op::Undeploy {
        UNDEPLOY_TIMEOUT
    } else {
        DEPLOY_TIMEOUT
    }
}

/// A followed log stream has no deadline.
pub fn logs_timeout(follow: bool) -> Duration {
    if follow {
        Duration::from_secs(86400 * 365)
    } else {
        READ_TIMEOUT
    }
}

/// Names a failed deploy and its request id, to find it in the logs.
pub fn deploy_failed(service: &str, request_id: &str) -> impl FnOnce(RpcError) -> anyhow::Error {
    let context = format!("deploy {service} (request {request_id})");
    move |e| anyhow::Error::new(e).context(context)
}

/// The master, or the agents: where the commands about services go.
/// `node` is the operator's `--node`.
#[async_trait(?Send)]
pub trait Target {
    /// Refuses a `--node` on deploy when the target places services itself
    /// (checked before the definition is read).
    fn check_deploy_node(&self, node: Option<&str>) -> Result<()>;

    /// Deploys `def` (or one component) where it belongs.
    async fn deploy(&self, def: &ServiceDef, component: Option<&str>, node: Option<String>) -> Result<Placed>;

    /// Stops, starts, restarts or undeploys a service (or one component).
    async fn operate(&self, op: Op, name: &str, component: Option<&str>, node: Option<String>) -> Result<Placed>;

    /// Every node's services; a node that does not answer is reported, not an error.
    async fn services(&self) -> Result<Listing>;

    /// One service, its events and its node.
    async fn status(&self, name: &str, node: Option<String>) -> Result<(String, Option<ServiceStatus>)>;

    /// Container output of a service.
    async fn logs(&self, query: &LogsQuery, node: Option<String>) -> Result<LogStream>;

    /// Every node's proxy routes.
    async fn routes(&self) -> Result<Vec<NodeRoutes>>;

    /// Recovers `node`, or every node.
    async fn recover(&self, node: Option<String>) -> Result<Vec<NodeRecovery>>;

    /// The `podman run` commands that reproduce a service.
    async fn render(&self, name: &str, node: Option<String>) -> Result<Rendered>;
}
