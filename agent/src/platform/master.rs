//! The master as certificate authority and DNS registrar (the embedded
//! defaults of SPEC §5), over [`MasterClient`]: service certificates from
//! the fleet CA for a CSR made here (the key never leaves the node), records
//! in the master's zone. Errors from a master that is down or unreachable
//! carry [`UNAVAILABLE_PREFIX`](super::UNAVAILABLE_PREFIX).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use super::{CertAuthority, DnsRegistrar, ServiceCert, failure};
use crate::config::AgentConfig;
use crate::rpc::master::{MasterClient, MasterError};

/// Bound on one call (issuing a certificate signs on the master).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The master as CA and DNS registrar, called with the agent's identity.
pub struct Master {
    client: MasterClient,
}

impl Master {
    /// For an agent with `[master]`.
    pub fn new(cfg: &AgentConfig) -> Option<Arc<Master>> {
        let m = cfg.master.as_ref()?;
        let client = MasterClient::new(&m.address, &cfg.agent.name, &cfg.tls, REQUEST_TIMEOUT);
        Some(Arc::new(Master { client }))
    }
}

fn failed(e: MasterError) -> String {
    failure(&e, e.is_unavailable())
}

#[tonic::async_trait]
impl CertAuthority for Master {
    async fn issue(&self, service: &str, hostnames: &[String]) -> Result<ServiceCert, String> {
        let req = mcp_infra::pki::make_service_csr(hostnames).map_err(|e| e.to_string())?;
        let chain_pem = self
            .client
            .issue_service_certificate(service, hostnames, req.csr_pem)
            .await
            .map_err(failed)?;
        Ok(ServiceCert {
            chain_pem,
            key_pem: req.key_pem,
        })
    }
}

#[tonic::async_trait]
impl DnsRegistrar for Master {
    async fn register(&self, service: &str, hostname: &str, address: Ipv4Addr) -> Result<(), String> {
        self.client
            .register_dns(service, hostname, address)
            .await
            .map_err(failed)
    }

    async fn remove(&self, service: &str, hostname: &str) -> Result<(), String> {
        self.client.remove_dns(service, hostname).await.map_err(failed)
    }
}
