//! Why a master operation failed: one enum for every subsystem, turned into
//! a gRPC status in one place at the edge (`rpc::server`).

use crate::db::FleetDbError;
use crate::reports::{AgentError, ErrorCode};

/// Why a master operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The fleet is not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// Another operation on the same service holds its lock.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    /// A limit (rate, fleet size) was reached.
    #[error("{0}")]
    Exhausted(String),
    /// An agent answered with an error; passed through with its details.
    #[error("node {node}: {}", error.message)]
    Agent { node: String, error: AgentError },
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    #[error(transparent)]
    Db(#[from] FleetDbError),
    #[error("{0}")]
    Internal(String),
}

impl FleetError {
    /// Whether the error means the node could not be reached (no answer,
    /// or an answer that says so).
    pub fn is_unreachable(&self) -> bool {
        match self {
            FleetError::Unreachable { .. } => true,
            FleetError::Agent { error, .. } => {
                matches!(error.code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded)
            }
            _ => false,
        }
    }

    /// The code of the agent's answer, if this is one.
    pub fn agent_code(&self) -> Option<ErrorCode> {
        match self {
            FleetError::Agent { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// The result of a master operation.
pub type Result<T> = std::result::Result<T, FleetError>;
