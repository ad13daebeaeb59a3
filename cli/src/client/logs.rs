//! A stream of container output relayed by an agent or the master.

use mcp_proto as proto;

use super::error::RpcError;
use crate::view::LogChunk;

/// Container output as it arrives.
pub struct LogStream {
    inner: tonic::Streaming<proto::LogChunk>,
    who: String,
}

impl LogStream {
    /// The stream `who` answered with.
    pub fn new(who: String, inner: tonic::Streaming<proto::LogChunk>) -> LogStream {
        LogStream { inner, who }
    }

    /// The next chunk; None at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<LogChunk>, RpcError> {
        match self.inner.message().await {
            Ok(chunk) => Ok(chunk.map(LogChunk::from)),
            Err(s) => Err(RpcError::new(&self.who, s)),
        }
    }
}
