//! Why a call to the master or an agent failed: no connection could be made
//! ([`ConnectError`]), or the RPC failed ([`RpcError`]).

use std::path::PathBuf;

use mcp_infra::fsutil::FileError;
use mcp_infra::tls::TlsError;
use mcp_proto as proto;
use prost::Message;

use crate::view::Operation;

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{}: [auth] ca is required to verify agents and the master", .config.display())]
    NoCa { config: PathBuf },
    #[error("{}: [auth] needs cert and key (mutual TLS) or token_path (MCIAS)", .config.display())]
    NoCredentials { config: PathBuf },
    #[error("{}: no [master] configured", .config.display())]
    NoMaster { config: PathBuf },
    #[error("{}: {problem}", .token.display())]
    Token { token: PathBuf, problem: &'static str },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `who` ("node rift", "master") did not answer on any address.
    #[error("{who}")]
    Unreachable {
        who: String,
        #[source]
        source: TlsError,
    },
}

impl ConnectError {
    /// Whether the operator's configuration is at fault (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ConnectError::NoCa { .. } | ConnectError::NoCredentials { .. } | ConnectError::NoMaster { .. }
        )
    }
}

/// What an RPC's status code says about the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request names something that does not exist or makes no sense (exit 2).
    Usage,
    /// The peer is down, unreachable or overloaded.
    Unreachable,
    /// Anything else.
    Failed,
}

impl Kind {
    /// The kind of a gRPC status code.
    pub fn of(code: tonic::Code) -> Kind {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::NotFound => Kind::Usage,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Kind::Unreachable,
            _ => Kind::Failed,
        }
    }
}

/// An RPC the master or an agent refused or could not complete.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// "node rift" or "master".
    pub who: String,
    pub kind: Kind,
    pub message: String,
    /// The steps that ran before the failure, when the peer sent them.
    pub operation: Option<Box<Operation>>,
}

impl RpcError {
    /// The error `who` answered with `status`; the steps that ran travel in
    /// the status details.
    pub fn new(who: &str, status: tonic::Status) -> RpcError {
        let operation = proto::OperationResponse::decode(status.details())
            .ok()
            .filter(|r| !r.steps.is_empty())
            .map(|r| Box::new(Operation::from(r)));
        RpcError {
            who: who.to_string(),
            kind: Kind::of(status.code()),
            message: status.message().to_string(),
            operation,
        }
    }
}

impl RpcError {
    /// Whether the request itself was wrong (exit 2).
    pub fn is_usage(&self) -> bool {
        self.kind == Kind::Usage
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.who, self.message)?;
        if self.kind == Kind::Unreachable {
            f.write_str(" (unreachable or overloaded)")?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// The answer of an RPC made by `who`, converted by `convert`.
pub fn reply<T, V>(
    who: &str,
    r: Result<tonic::Response<T>, tonic::Status>,
    convert: impl FnOnce(T) -> V,
) -> Result<V, RpcError> {
    r.map(|r| convert(r.into_inner())).map_err(|s| RpcError::new(who, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_kinds() {
        for (code, kind) in [
            (tonic::Code::InvalidArgument, Kind::Usage),
            (tonic::Code::NotFound, Kind::Usage),
            (tonic::Code::Unavailable, Kind::Unreachable),
            (tonic::Code::DeadlineExceeded, Kind::Unreachable),
            (tonic::Code::FailedPrecondition, Kind::Failed),
            (tonic::Code::PermissionDenied, Kind::Failed),
            (tonic::Code::Internal, Kind::Failed),
        ] {
            assert_eq!(Kind::of(code), kind, "{code:?}");
        }
    }

    #[test]
    fn messages_name_the_peer() {
        for (code, want) in [
            (tonic::Code::NotFound, "node rift: no service web"),
            (
                tonic::Code::Unavailable,
                "node rift: no service web (unreachable or overloaded)",
            ),
            (tonic::Code::Internal, "node rift: no service web"),
        ] {
            let e = RpcError::new("node rift", tonic::Status::new(code, "no service web"));
            assert_eq!(e.to_string(), want);
            assert_eq!(e.operation, None);
        }
    }

    #[test]
    fn steps_in_the_details_are_kept() {
        let resp = proto::OperationResponse {
            steps: vec![proto::StepResult {
                step: "containers".into(),
                error: "pull failed".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let status = tonic::Status::with_details(tonic::Code::Internal, "deploy failed", resp.encode_to_vec().into());
        let e = RpcError::new("master", status);
        let op = e.operation.expect("steps were sent");
        assert_eq!(op.steps.len(), 1);
        assert_eq!(op.steps[0].error, "pull failed");
        // Details without steps carry nothing worth printing.
        let empty = tonic::Status::with_details(
            tonic::Code::Internal,
            "x",
            proto::OperationResponse::default().encode_to_vec().into(),
        );
        assert_eq!(RpcError::new("master", empty).operation, None);
    }
}
