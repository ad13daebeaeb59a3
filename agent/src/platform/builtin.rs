//! The built-in proxy ([`BuiltinProxy`], crate `mcp-proxy`) as a
//! [`ProxyBackend`]: the embedded default, serving in this process.

use super::{BuiltinProxy, ProxyBackend, ProxyError, ProxyRoute};

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
