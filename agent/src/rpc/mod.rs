//! The agent's gRPC edge, the only place the `mcp.v1` wire types are named:
//! the `McpAgentService` server, the agent's client of the master, and the
//! one conversion between domain and wire types.

pub mod convert;
pub mod master;
pub mod server;
