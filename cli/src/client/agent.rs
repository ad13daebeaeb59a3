//! A connected agent: each call takes plain arguments and answers in view
//! types; its errors name the node.

use std::time::Duration;

use mcp_model::identity::Identity;
use mcp_proto::{self as proto, mcp_agent_service_client::McpAgentServiceClient};

use super::conn::{Channel, Connector};
use super::convert;
use super::error::ConnectError;
use crate::config::NodeRef;
use crate::view::{Adopted, NodeStatus, Operation, ProxyRoute, Recovery, Service, ServiceStatus};

/// Client of one agent.
pub struct AgentClient {
    inner: McpAgentServiceClient<Channel>,
    who: String,
}

impl AgentClient {
    /// Connects to `node` (fallback addresses in order); every call may take
    /// up to `timeout`.
    pub async fn connect(conn: &Connector<'_>, node: &NodeRef, timeout: Duration) -> Result<AgentClient, ConnectError> {
        let who = format!("node {}", node.name);
        let channel = conn
            .channel(&node.address.list(), Identity::Agent(node.name.clone()), timeout, &who)
            .await?;
        Ok(AgentClient {
            inner: McpAgentServiceClient::new(channel),
            who,
        })
    }

    service_calls!(Operation);

    rpcs! {
        /// Every service in the node's registry.
        pub fn services() -> Vec<Service> = list_services(proto::ListServicesRequest {}), |r| convert::all(r.services);

        /// One service with its recent events.
        pub fn status(name: &str) -> ServiceStatus =
            get_service_status(convert::service_request(name, None, "")), ServiceStatus::from;

        /// Version, arch, uptime and capacity of the node.
        pub fn node_status() -> NodeStatus = node_status(proto::NodeStatusRequest {}), NodeStatus::from;

        /// The routes the node's proxy serves.
        pub fn proxy_routes() -> Vec<ProxyRoute> =
            list_proxy_routes(proto::ListProxyRoutesRequest {}), |r| convert::all(r.routes);

        /// Recreates every container from the node's registry.
        pub fn recover(request_id: &str) -> Recovery =
            recover(proto::RecoverRequest { request_id: request_id.to_string() }), Recovery::from;

        /// Takes over running containers of `service` the registry does not know.
        pub fn adopt(service: &str) -> Adopted =
            adopt_containers(proto::AdoptRequest { service: service.to_string() }), Adopted::from;
    }
}
