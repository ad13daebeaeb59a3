//! Configuration files of the agent and the CLI (TOML, unknown keys refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tls::TlsFiles;

/// Why a configuration file could not be used; names file, field, reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {field}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    /// A problem with one field.
    pub fn new(path: &Path, field: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.display().to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// Parses TOML into `T`, reporting the dotted path and line of a bad field.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    let located = |field: &str, e: &toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let field = match (field, line) {
            ("" | ".", Some(l)) => format!("line {l}"),
            ("" | ".", None) => "(document)".to_string(),
            (f, Some(l)) => format!("{f} (line {l})"),
            (f, None) => f.to_string(),
        };
        (field, e.message().trim().to_string())
    };
    let de = toml::Deserializer::parse(text).map_err(|e| located("", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| located(&e.path().to_string(), e.inner()))
}

/// Reads and parses a TOML configuration file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, "(file)", e.to_string()))?;
    parse_toml(&text).map_err(|(field, reason)| ConfigError {
        path: path.display().to_string(),
        field,
        reason,
    })
}

/// `mcp-agent` configuration (`/srv/mcp/mcp-agent.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub tls: TlsFiles,
    #[serde(default)]
    pub podman: PodmanSection,
    #[serde(default)]
    pub ports: PortsSection,
    #[serde(default)]
    pub log: LogSection,
}

/// `[agent]`: who this node is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Node name; the agent's identity is `agent-<name>`.
    pub name: String,
    /// gRPC listen address.
    #[serde(default = "default_agent_listen")]
    pub listen: SocketAddr,
    /// Address other nodes and the proxy use to reach this node's ports.
    #[serde(default = "default_node_address")]
    pub address: String,
    /// Registry database, certificates and service data live here.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

/// `[podman]`: how to reach podman's Docker-compatible API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodmanSection {
    /// API socket; default `$XDG_RUNTIME_DIR/podman/podman.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Start `podman system service` on the socket when nothing answers there.
    #[serde(default = "default_true")]
    pub start_service: bool,
    /// `podman` binary used to start the API service.
    #[serde(default = "default_podman_binary")]
    pub binary: PathBuf,
    /// Seconds `podman stop` waits before killing a container.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u32,
}

/// `[ports]`: host ports the agent hands out to routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsSection {
    #[serde(default = "default_port_min")]
    pub min: u16,
    #[serde(default = "default_port_max")]
    pub max: u16,
}

/// `[log]`: log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// tracing filter, e.g. `info` or `mcp_agent=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_true() -> bool {
    true
}
fn default_agent_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9444))
}
fn default_node_address() -> String {
    "127.0.0.1".to_string()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/srv/mcp")
}
fn default_podman_binary() -> PathBuf {
    PathBuf::from("podman")
}
fn default_stop_timeout() -> u32 {
    10
}
fn default_port_min() -> u16 {
    10000
}
fn default_port_max() -> u16 {
    60000
}
fn default_log_format() -> String {
    "text".to_string()
}
fn default_log_level() -> String {
    "info".to_string()
}

impl Default for PodmanSection {
    fn default() -> Self {
        PodmanSection {
            socket: None,
            start_service: true,
            binary: default_podman_binary(),
            stop_timeout: default_stop_timeout(),
        }
    }
}

impl Default for PortsSection {
    fn default() -> Self {
        PortsSection {
            min: default_port_min(),
            max: default_port_max(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

impl AgentConfig {
    /// Loads and checks an agent configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = load(path)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        crate::service::check_name(&self.agent.name).map_err(|r| ConfigError::new(path, "agent.name", r))?;
        if !self.agent.data_dir.is_absolute() {
            return Err(ConfigError::new(path, "agent.data_dir", "must be an absolute path"));
        }
        if self.ports.min == 0 || self.ports.min > self.ports.max {
            return Err(ConfigError::new(
                path,
                "ports",
                format!(
                    "min {} and max {} do not form a port range",
                    self.ports.min, self.ports.max
                ),
            ));
        }
        if self.log.format != "text" && self.log.format != "json" {
            return Err(ConfigError::new(path, "log.format", "expected \"text\" or \"json\""));
        }
        Ok(())
    }

    /// Path of the registry database.
    pub fn registry_path(&self) -> PathBuf {
        self.agent.data_dir.join("mcp.db")
    }
}

/// `mcp` CLI configuration (`~/.config/mcp/mcp.toml`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    #[serde(default)]
    pub master: Option<MasterRef>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub services: ServicesSection,
    #[serde(default)]
    pub nodes: Vec<NodeRef>,
}

/// `[master]`: where the master listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterRef {
    pub address: String,
}

/// `[auth]`: the operator's credentials.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Client certificate (chain) identifying the operator.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (must be mode 0600).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// CA that signs the agents' and master's certificates.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// MCIAS bearer token file (alternative to a client certificate).
    #[serde(default)]
    pub token_path: Option<PathBuf>,
}

/// `[services]`: where service definitions live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesSection {
    #[serde(default = "default_services_dir")]
    pub dir: PathBuf,
}

fn default_services_dir() -> PathBuf {
    PathBuf::from("~/.config/mcp/services")
}

impl Default for ServicesSection {
    fn default() -> Self {
        ServicesSection {
            dir: default_services_dir(),
        }
    }
}

/// `[[nodes]]`: a node the CLI can reach directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    pub name: String,
    /// `host:port`, or a list tried in order.
    pub address: Addresses,
    #[serde(default)]
    pub ssh: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
}

/// One address or several fallbacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Addresses {
    One(String),
    Many(Vec<String>),
}

impl Addresses {
    /// Addresses in the order they are tried.
    pub fn list(&self) -> Vec<String> {
        match self {
            Addresses::One(a) => vec![a.clone()],
            Addresses::Many(v) => v.clone(),
        }
    }
}

impl CliConfig {
    /// Loads the CLI config; `~` in paths is expanded. A missing file at the
    /// default location yields the defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<CliConfig, ConfigError> {
        if !must_exist && !path.exists() {
            return Ok(CliConfig::default().expanded());
        }
        let cfg: CliConfig = load(path)?;
        let mut names = std::collections::BTreeSet::new();
        for (i, n) in cfg.nodes.iter().enumerate() {
            crate::service::check_name(&n.name).map_err(|r| ConfigError::new(path, &format!("nodes[{i}].name"), r))?;
            if !names.insert(n.name.clone()) {
                return Err(ConfigError::new(
                    path,
                    &format!("nodes[{i}].name"),
                    format!("duplicate node {:?}", n.name),
                ));
            }
            if n.address.list().is_empty() {
                return Err(ConfigError::new(path, &format!("nodes[{i}].address"), "no address"));
            }
            if let Some(arch) = &n.arch
                && arch != "amd64"
                && arch != "arm64"
            {
                return Err(ConfigError::new(
                    path,
                    &format!("nodes[{i}].arch"),
                    "expected \"amd64\" or \"arm64\"",
                ));
            }
        }
        Ok(cfg.expanded())
    }

    fn expanded(mut self) -> CliConfig {
        self.services.dir = expand_home(&self.services.dir);
        for p in [
            &mut self.auth.cert,
            &mut self.auth.key,
            &mut self.auth.ca,
            &mut self.auth.token_path,
        ]
        .into_iter()
        .flatten()
        {
            *p = expand_home(p);
        }
        self
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeRef> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Replaces a leading `~` with `$HOME`.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn agent_config_defaults_and_errors() {
        let base = "[agent]\nname = \"rift\"\n[tls]\ncert = \"/a\"\nkey = \"/b\"\nca = \"/c\"\n";
        let (_d, p) = write(base);
        let cfg = AgentConfig::load(&p).unwrap();
        assert_eq!(cfg.agent.listen.port(), 9444);
        assert_eq!(cfg.registry_path(), PathBuf::from("/srv/mcp/mcp.db"));
        let cases = [
            (format!("{base}[ports]\nmin = 5\nmax = 4\n"), "ports"),
            (format!("{base}[podman]\nsockit = \"/x\"\n"), "podman.sockit"),
            (base.replace("rift", "Rift"), "agent.name"),
            (format!("{base}[log]\nformat = \"xml\"\n"), "log.format"),
        ];
        for (text, field) in cases {
            let (_d, p) = write(&text);
            let e = AgentConfig::load(&p).unwrap_err();
            assert!(e.field.starts_with(field), "{text}: {e}");
        }
    }

    #[test]
    fn cli_config_addresses() {
        let (_d, p) = write(
            "[[nodes]]\nname = \"a\"\naddress = \"1.2.3.4:9444\"\n[[nodes]]\nname = \"b\"\naddress = [\"x:1\", \"y:2\"]\narch = \"arm64\"\n",
        );
        let cfg = CliConfig::load(&p, true).unwrap();
        assert_eq!(cfg.node("b").unwrap().address.list(), ["x:1", "y:2"]);
        let (_d, p) = write("[[nodes]]\nname = \"a\"\naddress = \"x:1\"\narch = \"sparc\"\n");
        assert_eq!(CliConfig::load(&p, true).unwrap_err().field, "nodes[0].arch");
    }

    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(&p, v, out);
                }
            }
            toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => {
                keys(&format!("{prefix}[]"), &a[0], out)
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn docs_cover_every_key() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
        let agent = AgentConfig {
            agent: AgentSection {
                name: "n".into(),
                listen: default_agent_listen(),
                address: default_node_address(),
                data_dir: default_data_dir(),
            },
            tls: TlsFiles {
                cert: "/c".into(),
                key: "/k".into(),
                ca: "/a".into(),
            },
            podman: PodmanSection {
                socket: Some("/s".into()),
                ..Default::default()
            },
            ports: PortsSection::default(),
            log: LogSection::default(),
        };
        let cli = CliConfig {
            master: Some(MasterRef { address: "m:1".into() }),
            auth: AuthSection {
                cert: Some("/c".into()),
                key: Some("/k".into()),
                ca: Some("/a".into()),
                token_path: Some("/t".into()),
            },
            services: ServicesSection::default(),
            nodes: vec![NodeRef {
                name: "n".into(),
                address: Addresses::One("a:1".into()),
                ssh: Some("s".into()),
                arch: Some("amd64".into()),
            }],
        };
        let mut all = Vec::new();
        keys("", &toml::Value::try_from(&agent).unwrap(), &mut all);
        keys("", &toml::Value::try_from(&cli).unwrap(), &mut all);
        let missing: Vec<_> = all.iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
        assert!(missing.is_empty(), "docs/configuration.md misses {missing:?}");
        assert!(all.len() > 20, "{all:?}");
    }
}
