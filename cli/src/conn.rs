//! Configuration, credentials and connections to agents and the master.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CliConfig, NodeRef};
use anyhow::{Context, Result};
use mcp_infra::tls;
use mcp_model::identity::Identity;
use mcp_proto::{
    self as proto, mcp_agent_service_client::McpAgentServiceClient, mcp_master_service_client::McpMasterServiceClient,
};
use prost::Message;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::UsageError;
use crate::output::Out;

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

/// Client of an agent.
pub type AgentClient = McpAgentServiceClient<InterceptedService<Channel, Bearer>>;
/// Client of the master.
pub type MasterClient = McpMasterServiceClient<InterceptedService<Channel, Bearer>>;

/// Everything a command needs.
pub struct Ctx {
    pub cfg: CliConfig,
    pub path: PathBuf,
    pub out: Out,
}

/// Where the CLI config is, and whether it was named explicitly.
pub fn config_path(explicit: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = explicit {
        return (p.to_path_buf(), true);
    }
    if let Some(p) = std::env::var_os("MCP_CONFIG") {
        return (PathBuf::from(p), true);
    }
    (crate::config::expand_home(Path::new("~/.config/mcp/mcp.toml")), false)
}

impl Ctx {
    fn tls(&self, expect: Identity) -> Result<(Arc<rustls::ClientConfig>, Bearer)> {
        let a = &self.cfg.auth;
        let Some(ca) = &a.ca else {
            crate::usage!(
                "{}: [auth] ca is required to verify agents and the master",
                self.path.display()
            );
        };
        match (&a.cert, &a.key, &a.token_path) {
            (Some(cert), Some(key), _) => Ok((
                tls::client_config_for(ca, Some((cert, key)), Some(expect))?,
                Bearer(None),
            )),
            (None, None, Some(token_path)) => {
                let raw = mcp_infra::fsutil::read_private(token_path)?;
                let token = String::from_utf8(raw)
                    .map_err(|_| anyhow::anyhow!("{}: the token is not text", token_path.display()))?;
                let value: MetadataValue<Ascii> = format!("Bearer {}", token.trim()).parse().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: the token has characters a header cannot carry",
                        token_path.display()
                    )
                })?;
                Ok((tls::client_config_for(ca, None, Some(expect))?, Bearer(Some(value))))
            }
            _ => crate::usage!(
                "{}: [auth] needs cert and key (mutual TLS) or token_path (MCIAS)",
                self.path.display()
            ),
        }
    }

    async fn channel(
        &self,
        addrs: &[String],
        expect: Identity,
        timeout: Duration,
        what: &str,
    ) -> Result<(Channel, Bearer)> {
        let (config, bearer) = self.tls(expect)?;
        let timeouts = tls::Timeouts {
            connect: Duration::from_secs(3),
            request: Some(timeout),
        };
        let (channel, _) = tls::connect(addrs, config, timeouts)
            .await
            .with_context(|| what.to_string())?;
        Ok((channel, bearer))
    }

    /// Connects to an agent (fallback addresses in order).
    pub async fn agent(&self, node: &NodeRef, timeout: Duration) -> Result<AgentClient> {
        let (ch, bearer) = self
            .channel(
                &node.address.list(),
                Identity::Agent(node.name.clone()),
                timeout,
                &format!("node {}", node.name),
            )
            .await?;
        Ok(McpAgentServiceClient::with_interceptor(ch, bearer))
    }

    /// Connects to the master.
    pub async fn master(&self, timeout: Duration) -> Result<MasterClient> {
        let Some(m) = &self.cfg.master else {
            crate::usage!("{}: no [master] configured", self.path.display());
        };
        let (ch, bearer) = self
            .channel(std::slice::from_ref(&m.address), Identity::Master, timeout, "master")
            .await?;
        Ok(McpMasterServiceClient::with_interceptor(ch, bearer))
    }

    /// The configured node called `name` (usage error if unknown).
    pub fn node(&self, name: &str) -> Result<&NodeRef> {
        match self.cfg.node(name) {
            Some(n) => Ok(n),
            None => {
                let known: Vec<&str> = self.cfg.nodes.iter().map(|n| n.name.as_str()).collect();
                crate::usage!("unknown node {name:?}; configured nodes: {}", known.join(", "))
            }
        }
    }

    /// Converts a gRPC error to a CLI error, printing any step results
    /// carried in its details first. `who` is "node x" or "master".
    pub fn rpc_error(&self, who: &str, s: tonic::Status) -> anyhow::Error {
        if let Ok(resp) = proto::OperationResponse::decode(s.details())
            && !resp.steps.is_empty()
        {
            self.out.operation(who, &resp, false);
        }
        let msg = format!("{who}: {}", s.message());
        match s.code() {
            tonic::Code::InvalidArgument | tonic::Code::NotFound => anyhow::Error::new(UsageError(msg)),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                anyhow::anyhow!("{msg} (unreachable or overloaded)")
            }
            _ => anyhow::anyhow!("{msg}"),
        }
    }
}

/// A short random id correlating CLI, master and agent logs.
pub fn request_id() -> String {
    mcp_infra::random::random_bytes::<8>()
        .map(hex::encode)
        .unwrap_or_else(|_| "0000000000000000".into())
}
