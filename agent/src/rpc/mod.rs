//! The agent's gRPC edge: the only place the `mcp.v1` wire types are named.

pub mod master;
