//! Channels to the master and the agents: TLS 1.3 with the operator's
//! credentials from `[auth]` (a client certificate, or an MCIAS bearer
//! token sent with every request), fallback addresses tried in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_infra::tls;
use mcp_model::identity::Identity;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;

use super::error::ConnectError;
use crate::config::CliConfig;

/// Adds `authorization: Bearer <token>` when the CLI authenticates with an
/// MCIAS token instead of a client certificate.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connection that carries the operator's credentials.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// Opens channels as the CLI configuration says.
pub struct Connector<'a> {
    pub cfg: &'a CliConfig,
    /// The configuration file, named in errors.
    pub path: &'a Path,
}

impl Connector<'_> {
    /// The client side of TLS for `expect`, and the bearer token if any.
    /// Credentials are read for every connection: a renewed token is picked up.
    fn credentials(&self, expect: Identity) -> Result<(Arc<rustls::ClientConfig>, Bearer), ConnectError> {
        let auth = &self.cfg.auth;
        let Some(ca) = &auth.ca else {
            return Err(ConnectError::NoCa {
                config: self.path.to_path_buf(),
            });
        };
        match (&auth.cert, &auth.key, &auth.token_path) {
            (Some(cert), Some(key), _) => Ok((
                tls::client_config_for(ca, Some((cert, key)), Some(expect))?,
                Bearer(None),
            )),
            (None, None, Some(token_path)) => {
                let token_error = |problem| ConnectError::Token {
                    token: token_path.clone(),
                    problem,
                };
                let raw = mcp_infra::fsutil::read_private(token_path)?;
                let token = String::from_utf8(raw).map_err(|_| token_error("the token is not text"))?;
                let value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| token_error("the token has characters a header cannot carry"))?;
                Ok((tls::client_config_for(ca, None, Some(expect))?, Bearer(Some(value))))
            }
            _ => Err(ConnectError::NoCredentials {
                config: self.path.to_path_buf(),
            }),
        }
    }

    /// Connects to `who` ("node rift", "master") at the first of `addrs`
    /// that answers; every request on the channel may take up to `timeout`.
    pub async fn channel(
        &self,
        addrs: &[String],
        expect: Identity,
        timeout: Duration,
        who: &str,
    ) -> Result<Channel, ConnectError> {
        let (tls_config, bearer) = self.credentials(expect)?;
        let timeouts = tls::Timeouts {
            connect: Duration::from_secs(3),
            request: Some(timeout),
        };
        let (channel, _) =
            tls::connect(addrs, tls_config, timeouts)
                .await
                .map_err(|source| ConnectError::Unreachable {
                    who: who.to_string(),
                    source,
                })?;
        Ok(InterceptedService::new(channel, bearer))
    }
}
