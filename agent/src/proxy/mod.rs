//! Where a service's routes go (SPEC §5): the built-in proxy
//! ([`mcp_proxy::BuiltinProxy`]) or mc-proxy ([`McProxy`]), both behind
//! [`ProxyBackend`].

mod mcproxy;

pub use mcp_proxy::{BuiltinProxy, Mode, ProxyConfig, ProxyRoute};
pub use mcproxy::{McProxy, McProxyConfig};

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
    #[error("mc-proxy at {socket}: {op}: {reason}")]
    McProxy { socket: String, op: String, reason: String },
}

#[tonic::async_trait]
impl ProxyBackend for BuiltinProxy {
    async fn set_routes(&self, service: &str, routes: Vec<ProxyRoute>) -> Result<(), ProxyError> {
        Ok(BuiltinProxy::set_routes(self, service, routes).await?)
    }

    async fn remove_routes(&self, service: &str) -> Result<(), ProxyError> {
        Ok(BuiltinProxy::remove_routes(self, service).await?)
    }

    async fn routes(&self) -> Result<Vec<ProxyRoute>, ProxyError> {
        Ok(BuiltinProxy::routes(self).await?)
    }
}
