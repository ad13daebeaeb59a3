//! The master's gRPC edge, the only place that knows mcp.v1 messages:
//!
//! - `server`: both services (CLI-facing `McpMasterService`, agent-facing
//!   `McpRegistrationService`) and the one `FleetError → Status` mapping;
//! - `agent`: the real agent client, behind `agents::AgentClient`;
//! - `convert`: messages ⇄ domain types.

pub mod agent;
pub mod convert;
pub mod server;

use std::future::Future;
use std::sync::Arc;

use futures::Stream;
use mcp_infra::tls::AuthzLayer;
use mcp_proto::mcp_master_service_server::McpMasterServiceServer;
use mcp_proto::mcp_registration_service_server::McpRegistrationServiceServer;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::server::Connected;

use crate::fleet::Fleet;

/// Serves both services on `incoming` (TLS connections), every call
/// authenticated and authorized by `layer`, until `shutdown` resolves.
pub async fn serve<I, IO, IE>(
    fleet: Arc<Fleet>,
    layer: AuthzLayer,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(McpMasterServiceServer::new(server::MasterService::new(fleet.clone())))
        .add_service(McpRegistrationServiceServer::new(server::RegistrationService::new(
            fleet,
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
