//! The gRPC client side of the CLI, the only part that knows the wire
//! types: connections with the operator's credentials, a client for the
//! master and one for an agent (plain arguments in, `view` types out), and
//! `convert`, the one proto ⇄ view conversion module.

#[macro_use]
mod calls;
mod agent;
mod conn;
mod convert;
mod error;
mod logs;
mod master;

pub use agent::AgentClient;
pub use conn::Connector;
pub use error::{ConnectError, RpcError};
pub use logs::LogStream;
pub use master::MasterClient;

/// A short random id correlating CLI, master and agent logs.
pub fn request_id() -> String {
    mcp_infra::random::random_bytes::<8>()
        .map(hex::encode)
        .unwrap_or_else(|_| "0000000000000000".into())
}
