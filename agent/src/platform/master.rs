//! The master as certificate authority and DNS registrar (the embedded
//! defaults of SPEC §5), over gRPC with the agent's identity.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use super::{CertAuthority, DnsRegistrar, ServiceCert, UNAVAILABLE_PREFIX};
use crate::config::AgentConfig;
use mcp_infra::tls;
use mcp_model::identity::{Identity, NODE_METADATA};
use mcp_proto::{self as proto, mcp_registration_service_client::McpRegistrationServiceClient};
use tonic::transport::Channel;

/// The master as CA and DNS registrar, called with the agent's identity.
pub struct Master {
    cfg: AgentConfig,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl Master {
    /// For an agent with `[master]`.
    pub fn new(cfg: &AgentConfig) -> Option<Arc<Master>> {
        cfg.master.as_ref().map(|_| {
            Arc::new(Master {
                cfg: cfg.clone(),
                channel: tokio::sync::Mutex::new(None),
            })
        })
    }

    async fn client(&self) -> Result<McpRegistrationServiceClient<Channel>, String> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref() {
            return Ok(McpRegistrationServiceClient::new(ch.clone()));
        }
        let address = self.cfg.master.as_ref().map(|m| m.address.clone()).unwrap_or_default();
        // Read the certificate files on each new connection: they renew.
        let config = tls::client_config(&self.cfg.tls, Some(Identity::Master)).map_err(|e| e.to_string())?;
        let timeouts = tls::Timeouts {
            connect: Duration::from_secs(5),
            request: Some(Duration::from_secs(30)),
        };
        let (ch, _) = tls::connect(&[address.clone()], config, timeouts)
            .await
            .map_err(|e| format!("{UNAVAILABLE_PREFIX}master {address}: {e}"))?;
        *slot = Some(ch.clone());
        Ok(McpRegistrationServiceClient::new(ch))
    }

    async fn forget(&self) {
        *self.channel.lock().await = None;
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.cfg.agent.name.parse() {
            r.metadata_mut().insert(NODE_METADATA, v);
        }
        r
    }

    /// Error text for a failed call; [`UNAVAILABLE_PREFIX`] marks those
    /// that may succeed later (master down or unreachable).
    fn failed(&self, what: &str, s: tonic::Status) -> String {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                format!(
                    "{UNAVAILABLE_PREFIX}master could not take {what}: {} ({:?})",
                    s.message(),
                    s.code()
                )
            }
            _ => format!("master refused {what}: {} ({:?})", s.message(), s.code()),
        }
    }
}

#[tonic::async_trait]
impl CertAuthority for Master {
    async fn issue(&self, service: &str, hostnames: &[String]) -> Result<ServiceCert, String> {
        let req = mcp_infra::pki::make_service_csr(hostnames).map_err(|e| e.to_string())?;
        let mut client = self.client().await?;
        let msg = proto::IssueServiceCertificateRequest {
            name: self.cfg.agent.name.clone(),
            service: service.to_string(),
            hostnames: hostnames.to_vec(),
            csr_pem: req.csr_pem,
        };
        match client.issue_service_certificate(self.request(msg)).await {
            Ok(r) => Ok(ServiceCert {
                chain_pem: r.into_inner().cert_chain_pem,
                key_pem: req.key_pem,
            }),
            Err(s) => {
                if s.code() == tonic::Code::Unavailable {
                    self.forget().await;
                }
                Err(self.failed("the certificate", s))
            }
        }
    }
}

#[tonic::async_trait]
impl DnsRegistrar for Master {
    async fn register(&self, service: &str, hostname: &str, address: Ipv4Addr) -> Result<(), String> {
        let mut client = self.client().await?;
        let msg = proto::DnsRecordRequest {
            name: self.cfg.agent.name.clone(),
            service: service.to_string(),
            hostname: hostname.to_string(),
            address: address.to_string(),
        };
        let r = client.register_dns_record(self.request(msg)).await;
        if matches!(&r, Err(s) if s.code() == tonic::Code::Unavailable) {
            self.forget().await;
        }
        r.map(|_| ()).map_err(|s| self.failed("the DNS record", s))
    }

    async fn remove(&self, service: &str, hostname: &str) -> Result<(), String> {
        let mut client = self.client().await?;
        let msg = proto::DnsRecordRequest {
            name: self.cfg.agent.name.clone(),
            service: service.to_string(),
            hostname: hostname.to_string(),
            address: String::new(),
        };
        let r = client.remove_dns_record(self.request(msg)).await;
        if matches!(&r, Err(s) if s.code() == tonic::Code::Unavailable) {
            self.forget().await;
        }
        r.map(|_| ()).map_err(|s| self.failed("the DNS removal", s))
    }
}
