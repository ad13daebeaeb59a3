//! The wire types of mcp: the generated `mcp.v1` messages, clients and
//! servers, and [`convert`], the one place where model types become
//! messages and back. Outside this crate, only each binary's gRPC edge
//! (its server and client modules and its own conversion module) names
//! these types.

pub use v1::*;

mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mcp.v1");
}

pub mod convert;

/// Encoded `google.protobuf.FileDescriptorSet` of every mcp proto: lets
/// tests enumerate each service's RPCs from what was compiled.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mcp_descriptor.bin"));
