//! The agent's gRPC client of the master (`McpRegistrationService`): one
//! connection kept and reused (made again after the master went away), the
//! `mcp-node` metadata on every call, and one classification of failures,
//! [`MasterError`]. Callers pass and get domain values (names, PEM text,
//! [`Registration`], [`Load`]); only this module knows the wire types.
//!
//! The certificate files are read on each new connection, so one made after
//! a renewal presents the new certificate.

use std::net::Ipv4Addr;
use std::time::Duration;

use mcp_infra::tls::{self, TlsFiles};
use mcp_model::identity::{Identity, NODE_METADATA};
use mcp_model::join::JoinToken;
use mcp_proto::{self as proto, mcp_registration_service_client::McpRegistrationServiceClient};
use tonic::transport::Channel;

use crate::node::{Load, Registration};

type Client = McpRegistrationServiceClient<Channel>;

/// Bound on connecting to the master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of a join: the node is new and the master may be far away.
const JOIN_TIMEOUTS: tls::Timeouts = tls::Timeouts {
    connect: Duration::from_secs(10),
    request: Some(Duration::from_secs(30)),
};

/// How a call that reached the master (or the way to it) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Unavailable, DeadlineExceeded, Unknown: the call may succeed later.
    Unavailable,
    /// ResourceExhausted: too many calls in too little time.
    RateLimited,
    /// Any other code: the master refused the call.
    Refused,
}

impl Fault {
    /// The fault a gRPC status code stands for.
    pub fn of(code: tonic::Code) -> Fault {
        match code {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => Fault::Unavailable,
            tonic::Code::ResourceExhausted => Fault::RateLimited,
            _ => Fault::Refused,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Fault::Unavailable => "could not take",
            Fault::RateLimited | Fault::Refused => "refused",
        }
    }
}

/// Why a call to the master failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    /// This agent cannot make the call: its TLS files cannot be used.
    #[error("{0}")]
    Local(String),
    /// No connection to the master.
    #[error("master {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The call failed; `what` names it ("the registration").
    #[error("master {} {what}: {message} ({code})", fault.verb())]
    Call {
        what: &'static str,
        fault: Fault,
        message: String,
        code: String,
    },
}

impl MasterError {
    /// Whether the same call may succeed later (the master is down or unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MasterError::Unreachable { .. }
                | MasterError::Call {
                    fault: Fault::Unavailable,
                    ..
                }
        )
    }

    /// Whether the master turned the call away for coming too soon.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            MasterError::Call {
                fault: Fault::RateLimited,
                ..
            }
        )
    }

    fn call(what: &'static str, status: &tonic::Status) -> MasterError {
        MasterError::Call {
            what,
            fault: Fault::of(status.code()),
            message: status.message().to_string(),
            code: format!("{:?}", status.code()),
        }
    }
}

/// What a join brings back.
pub struct Joined {
    /// The agent's certificate chain.
    pub chain_pem: String,
    /// The fleet CA.
    pub ca_pem: String,
}

/// Exchanges a join token and a CSR for the agent's certificate. The master
/// is verified against the CA fingerprint the token carries; no client
/// certificate is presented (the token authenticates).
pub async fn join(master: &str, token: &JoinToken, csr_pem: String) -> Result<Joined, MasterError> {
    let config = tls::pinned_client_config(&token.ca_fingerprint, Identity::Master)
        .map_err(|e| MasterError::Local(e.to_string()))?;
    let (channel, _) = tls::connect(&[master.to_string()], config, JOIN_TIMEOUTS)
        .await
        .map_err(|e| MasterError::Unreachable {
            address: master.to_string(),
            reason: e.to_string(),
        })?;
    let msg = proto::JoinRequest {
        name: token.node.clone(),
        token: token.to_string(),
        csr_pem,
    };
    let resp = Client::new(channel)
        .join(msg)
        .await
        .map_err(|s| MasterError::call("the join", &s))?
        .into_inner();
    Ok(Joined {
        chain_pem: resp.cert_chain_pem,
        ca_pem: resp.ca_pem,
    })
}

/// The master, called as `agent-<node>`.
pub struct MasterClient {
    address: String,
    node: String,
    tls: TlsFiles,
    request_timeout: Duration,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl MasterClient {
    /// A client of the master at `address` for `node`, presenting the
    /// certificate in `tls`, each call bounded by `request_timeout`.
    /// Connects on the first call.
    pub fn new(address: &str, node: &str, tls: &TlsFiles, request_timeout: Duration) -> MasterClient {
        MasterClient {
            address: address.to_string(),
            node: node.to_string(),
            tls: tls.clone(),
            request_timeout,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// Drops the connection: the next call connects again.
    pub async fn disconnect(&self) {
        *self.channel.lock().await = None;
    }

    /// Registers the node; the heartbeat interval the master expects (1 s at least).
    pub async fn register(&self, r: &Registration) -> Result<Duration, MasterError> {
        let msg = proto::RegisterRequest {
            name: self.node.clone(),
            role: r.role.clone(),
            address: r.address.clone(),
            arch: r.arch.clone(),
            version: r.version.clone(),
            cpus: r.cpus,
            memory_total_bytes: r.memory_total_bytes,
        };
        let result = self.client().await?.register(self.request(msg)).await;
        let seconds = self.settle("the registration", result).await?.heartbeat_seconds;
        Ok(Duration::from_secs(u64::from(seconds.max(1))))
    }

    /// Reports the node's load.
    pub async fn heartbeat(&self, l: &Load) -> Result<(), MasterError> {
        let msg = proto::HeartbeatRequest {
            name: self.node.clone(),
            cpu_load: l.cpu_load,
            memory_total_bytes: l.memory_total_bytes,
            memory_available_bytes: l.memory_available_bytes,
            disk_total_bytes: l.disk_total_bytes,
            disk_available_bytes: l.disk_available_bytes,
            containers: l.containers,
            cpus: l.cpus,
        };
        let result = self.client().await?.heartbeat(self.request(msg)).await;
        self.settle("the heartbeat", result).await.map(drop)
    }

    /// The agent's own certificate chain for a new CSR.
    pub async fn renew_certificate(&self, csr_pem: String) -> Result<String, MasterError> {
        let msg = proto::IssueCertificateRequest {
            name: self.node.clone(),
            csr_pem,
        };
        let result = self.client().await?.issue_certificate(self.request(msg)).await;
        Ok(self.settle("the renewal", result).await?.cert_chain_pem)
    }

    /// A certificate chain for `hostnames` of `service`, signed by the fleet CA.
    pub async fn issue_service_certificate(
        &self,
        service: &str,
        hostnames: &[String],
        csr_pem: String,
    ) -> Result<String, MasterError> {
        let msg = proto::IssueServiceCertificateRequest {
            name: self.node.clone(),
            service: service.to_string(),
            hostnames: hostnames.to_vec(),
            csr_pem,
        };
        let mut client = self.client().await?;
        let result = client.issue_service_certificate(self.request(msg)).await;
        Ok(self.settle("the certificate", result).await?.cert_chain_pem)
    }

    /// Publishes `hostname` → `address` for `service` in the master's zone.
    pub async fn register_dns(&self, service: &str, hostname: &str, address: Ipv4Addr) -> Result<(), MasterError> {
        let msg = self.dns_record(service, hostname, address.to_string());
        let result = self.client().await?.register_dns_record(self.request(msg)).await;
        self.settle("the DNS record", result).await.map(drop)
    }

    /// Withdraws the record of `service`.
    pub async fn remove_dns(&self, service: &str, hostname: &str) -> Result<(), MasterError> {
        let msg = self.dns_record(service, hostname, String::new());
        let result = self.client().await?.remove_dns_record(self.request(msg)).await;
        self.settle("the DNS removal", result).await.map(drop)
    }

    fn dns_record(&self, service: &str, hostname: &str, address: String) -> proto::DnsRecordRequest {
        proto::DnsRecordRequest {
            name: self.node.clone(),
            service: service.to_string(),
            hostname: hostname.to_string(),
            address,
        }
    }

    /// The kept connection, or a new one.
    async fn client(&self) -> Result<Client, MasterError> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref() {
            return Ok(Client::new(ch.clone()));
        }
        // Read the certificate files on each new connection: they renew.
        let config =
            tls::client_config(&self.tls, Some(Identity::Master)).map_err(|e| MasterError::Local(e.to_string()))?;
        let timeouts = tls::Timeouts {
            connect: CONNECT_TIMEOUT,
            request: Some(self.request_timeout),
        };
        let (ch, _) = tls::connect(std::slice::from_ref(&self.address), config, timeouts)
            .await
            .map_err(|e| MasterError::Unreachable {
                address: self.address.clone(),
                reason: e.to_string(),
            })?;
        *slot = Some(ch.clone());
        Ok(Client::new(ch))
    }

    /// Adds the `mcp-node` metadata every registration RPC needs.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.node.parse() {
            r.metadata_mut().insert(NODE_METADATA, v);
        }
        r
    }

    /// The answer, or the error it stands for; a connection the master
    /// dropped is not kept.
    async fn settle<T>(
        &self,
        what: &'static str,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, MasterError> {
        match result {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                if s.code() == tonic::Code::Unavailable {
                    self.disconnect().await;
                }
                Err(MasterError::call(what, &s))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fleet CA in `dir` and a fresh certificate of `agent-<node>` from it.
    pub(crate) fn agent_files(dir: &std::path::Path, node: &str) -> TlsFiles {
        let ca = mcp_infra::pki::Ca::create(&dir.join("ca"), "test").expect("create CA");
        let out = dir.join("agent");
        std::fs::create_dir(&out).expect("agent dir");
        ca.write_client(&Identity::Agent(node.into()), &out, 90).expect("issue");
        TlsFiles {
            cert: out.join("cert.pem"),
            key: out.join("key.pem"),
            ca: out.join("ca.pem"),
        }
    }

    #[test]
    fn codes_map_to_faults() {
        use tonic::Code::*;
        for (code, fault) in [
            (Ok, Fault::Refused),
            (Cancelled, Fault::Refused),
            (Unknown, Fault::Unavailable),
            (InvalidArgument, Fault::Refused),
            (DeadlineExceeded, Fault::Unavailable),
            (NotFound, Fault::Refused),
            (AlreadyExists, Fault::Refused),
            (PermissionDenied, Fault::Refused),
            (ResourceExhausted, Fault::RateLimited),
            (FailedPrecondition, Fault::Refused),
            (Aborted, Fault::Refused),
            (OutOfRange, Fault::Refused),
            (Unimplemented, Fault::Refused),
            (Internal, Fault::Refused),
            (Unavailable, Fault::Unavailable),
            (DataLoss, Fault::Refused),
            (Unauthenticated, Fault::Refused),
        ] {
            assert_eq!(Fault::of(code), fault, "{code:?}");
        }
    }

    #[test]
    fn errors_say_what_failed_and_whether_to_retry() {
        let call = |code| MasterError::call("the DNS record", &tonic::Status::new(code, "no"));
        let unreachable = MasterError::Unreachable {
            address: "m:9443".into(),
            reason: "cannot reach m:9443: refused".into(),
        };
        for (e, text, unavailable, rate_limited) in [
            (
                call(tonic::Code::Unavailable),
                "master could not take the DNS record: no (Unavailable)",
                true,
                false,
            ),
            (
                call(tonic::Code::DeadlineExceeded),
                "master could not take the DNS record: no (DeadlineExceeded)",
                true,
                false,
            ),
            (
                call(tonic::Code::PermissionDenied),
                "master refused the DNS record: no (PermissionDenied)",
                false,
                false,
            ),
            (
                call(tonic::Code::ResourceExhausted),
                "master refused the DNS record: no (ResourceExhausted)",
                false,
                true,
            ),
            (unreachable, "master m:9443: cannot reach m:9443: refused", true, false),
            (
                MasterError::Local("ca.pem: missing".into()),
                "ca.pem: missing",
                false,
                false,
            ),
        ] {
            assert_eq!(e.to_string(), text);
            assert_eq!(
                (e.is_unavailable(), e.is_rate_limited()),
                (unavailable, rate_limited),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_master_is_unavailable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = agent_files(dir.path(), "n1");
        // Nothing listens on port 1.
        let client = MasterClient::new("127.0.0.1:1", "n1", &tls, Duration::from_secs(1));
        let err = client
            .register(&crate::node::registration("worker", "127.0.0.1:9444"))
            .await
            .expect_err("nobody listens");
        assert!(
            err.is_unavailable() && err.to_string().starts_with("master 127.0.0.1:1: "),
            "{err}"
        );

        let missing = TlsFiles {
            cert: dir.path().join("none.pem"),
            ..tls
        };
        let err = MasterClient::new("127.0.0.1:1", "n1", &missing, Duration::from_secs(1))
            .remove_dns("web", "web.svc.mcp")
            .await
            .expect_err("no certificate");
        assert!(matches!(err, MasterError::Local(_)) && !err.is_unavailable(), "{err}");
    }
}
