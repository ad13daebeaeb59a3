//! The agent's gRPC edge: the `McpAgentService` server and the one
//! conversion between domain and wire types. Nothing below this module
//! names a `mcp_proto` type.

pub mod convert;
pub mod server;
