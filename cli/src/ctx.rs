//! What every command gets: the configuration, the output mode, and
//! connections to the agents and the master.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::client::{AgentClient, ConnectError, Connector, MasterClient};
use crate::config::{CliConfig, NodeRef};
use crate::error::usage;
use crate::output::Out;

/// Everything a command needs.
pub struct Ctx {
    pub cfg: CliConfig,
    /// Where `cfg` was read from, named in errors.
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
    fn connector(&self) -> Connector<'_> {
        Connector {
            cfg: &self.cfg,
            path: &self.path,
        }
    }

    /// Connects to an agent (fallback addresses in order).
    pub async fn agent(&self, node: &NodeRef, timeout: Duration) -> Result<AgentClient, ConnectError> {
        AgentClient::connect(&self.connector(), node, timeout).await
    }

    /// Connects to the master.
    pub async fn master(&self, timeout: Duration) -> Result<MasterClient, ConnectError> {
        MasterClient::connect(&self.connector(), timeout).await
    }

    /// The configured node called `name` (usage error if unknown).
    pub fn node(&self, name: &str) -> Result<&NodeRef> {
        match self.cfg.node(name) {
            Some(n) => Ok(n),
            None => {
                let known: Vec<&str> = self.cfg.nodes.iter().map(|n| n.name.as_str()).collect();
                usage!("unknown node {name:?}; configured nodes: {}", known.join(", "))
            }
        }
    }
}
