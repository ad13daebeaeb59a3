//! Platform services a deploy wires a service into (SPEC §5): a certificate
//! authority, a DNS registrar and a proxy, each a small trait with the
//! embedded default and an adapter for the Metacircular service.
//!
//! | trait             | embedded default                  | adapter                    |
//! |-------------------|-----------------------------------|----------------------------|
//! | [`CertAuthority`] | [`Master`]: the fleet CA          | [`Metacrypt`] (REST)       |
//! | [`DnsRegistrar`]  | [`Master`]: the master's zone     | [`Mcns`] (REST)            |
//! | [`ProxyBackend`]  | [`BuiltinProxy`], in this process | [`McProxy`] (gRPC, socket) |
//!
//! The REST adapters share one client shape, [`rest::RestClient`]; the master
//! is reached through [`crate::rpc::master`]. Each adapter documents the
//! wire contract it assumes at its top.

mod builtin;
pub mod master;
pub mod mcns;
pub mod mcproxy;
pub mod metacrypt;
pub mod rest;
#[cfg(test)]
mod testing;

use std::net::Ipv4Addr;

pub use master::Master;
pub use mcns::Mcns;
pub use mcp_proxy::{BuiltinProxy, Mode, ProxyConfig, ProxyRoute};
pub use mcproxy::{McProxy, McProxyConfig};
pub use metacrypt::Metacrypt;

/// Start of a [`CertAuthority`] or [`DnsRegistrar`] error that may go away on
/// retry (the service was down): a deploy then defers the DNS step instead of
/// failing. Only [`Master`] marks its errors so; an MCNS or Metacrypt outage
/// fails the step.
pub const UNAVAILABLE_PREFIX: &str = "unavailable: ";

/// The error text of a platform call that failed: marked with
/// [`UNAVAILABLE_PREFIX`] when it `may_succeed_later`.
pub fn failure(error: impl std::fmt::Display, may_succeed_later: bool) -> String {
    if may_succeed_later {
        format!("{UNAVAILABLE_PREFIX}{error}")
    } else {
        error.to_string()
    }
}

/// A freshly issued service certificate.
pub struct ServiceCert {
    /// The leaf first, then its issuers.
    pub chain_pem: String,
    pub key_pem: String,
}

/// Issues TLS certificates for services.
#[tonic::async_trait]
pub trait CertAuthority: Send + Sync {
    /// A certificate for exactly `hostnames` of `service`, with its key.
    async fn issue(&self, service: &str, hostnames: &[String]) -> Result<ServiceCert, String>;
}

/// Publishes service names in DNS.
#[tonic::async_trait]
pub trait DnsRegistrar: Send + Sync {
    /// `hostname` → `address` for `service`.
    async fn register(&self, service: &str, hostname: &str, address: Ipv4Addr) -> Result<(), String>;
    /// Withdraws the record of `service`.
    async fn remove(&self, service: &str, hostname: &str) -> Result<(), String>;
}

/// Where routes go: the built-in proxy, or mc-proxy.
#[tonic::async_trait]
pub trait ProxyBackend: Send + Sync {
    /// Replaces all routes of `service` (new connections see either the old
    /// or the new set; established connections are not dropped when their
    /// route changes or goes away).
    async fn set_routes(&self, service: &str, routes: Vec<ProxyRoute>) -> Result<(), ProxyError>;
    /// Removes every route of `service` (none is not an error).
    async fn remove_routes(&self, service: &str) -> Result<(), ProxyError>;
    /// Every route, ordered by listener port then hostname.
    async fn routes(&self) -> Result<Vec<ProxyRoute>, ProxyError>;
}

/// Why a proxy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The routes themselves, or the built-in proxy, refused.
    #[error(transparent)]
    Route(#[from] mcp_proxy::ProxyError),
    /// mc-proxy failed or could not be reached.
    #[error("mc-proxy at {socket}: {op}: {reason}")]
    McProxy { socket: String, op: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_marked_when_they_may_pass() {
        for (later, text) in [(true, "unavailable: master m: down"), (false, "master m: down")] {
            let e = failure("master m: down", later);
            assert_eq!(e, text);
            assert_eq!(e.starts_with(UNAVAILABLE_PREFIX), later);
        }
    }
}
