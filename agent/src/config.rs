//! `mcp-agent`'s configuration file (`/srv/mcp/mcp-agent.toml`): its
//! schema, defaults and checks (unknown keys refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mcp_infra::config::{ConfigError, LogSection, MetricsSection, parse_duration};
use mcp_infra::tls::TlsFiles;
use serde::{Deserialize, Serialize};

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
    /// The fleet master; absent for a stand-alone agent (`--direct` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<AgentMasterSection>,
    /// Accept MCIAS bearer tokens besides client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcias: Option<mcp_infra::mcias::MciasConfig>,
    #[serde(default)]
    pub network: NetworkSection,
    /// The reverse proxy that serves routes; absent: routes are recorded
    /// but not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
    /// Edge nodes: which public domains they may serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeSection>,
    /// MCNS, when `network.dns = "mcns"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcns: Option<McnsConfig>,
    /// Metacrypt, when `network.ca = "metacrypt"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metacrypt: Option<MetacryptConfig>,
    #[serde(default)]
    pub monitor: MonitorSection,
    #[serde(default)]
    pub boot: BootSection,
    /// Prometheus `/metrics` listener; absent: no metrics listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSection>,
}

/// `[network]`: certificates and DNS names of services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Internal zone: services are `<service>.<zone>`.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Where service certificates go (`<service>.pem`, `.key`); default
    /// `<agent.data_dir>/certs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<PathBuf>,
    /// Certificate authority: `master` (the fleet CA over gRPC),
    /// `metacrypt` (needs `[metacrypt]`) or `none`; default `master` when
    /// `[master]` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// DNS registration: `master` (the master's zone) or `none`; default
    /// `master` when `[master]` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Days before expiry a service certificate is renewed (and below which
    /// a deploy issues a new one instead of reusing it).
    #[serde(default = "default_renew_days")]
    pub renew_days: i64,
}

fn default_zone() -> String {
    mcp_model::service::DEFAULT_ZONE.to_string()
}
/// TTL of the records the agent registers with MCNS.
fn default_dns_ttl() -> u32 {
    60
}
fn default_renew_days() -> i64 {
    30
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            zone: default_zone(),
            certs_dir: None,
            ca: None,
            dns: None,
            renew_days: default_renew_days(),
        }
    }
}

/// `[mcns]`: the Metacircular name service, when `network.dns = "mcns"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McnsConfig {
    /// Base URL of the MCNS REST API, e.g. `https://mcns.example:8443`; `http` only to loopback.
    pub url: String,
    /// File holding the MCIAS bearer token of the agent (read on every call).
    pub token_path: PathBuf,
    /// PEM file of the CA that signs the MCNS certificate; required for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The zone records are published in.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// TTL of the records created.
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
}

impl McnsConfig {
    /// Configuration for `url` and `token_path` with every other field at its default.
    pub fn new(url: &str, token_path: &Path) -> McnsConfig {
        McnsConfig {
            url: url.to_string(),
            token_path: token_path.to_path_buf(),
            ca: None,
            zone: default_zone(),
            ttl: default_dns_ttl(),
        }
    }
}

/// `[metacrypt]`: the Metacircular CA, when `network.ca = "metacrypt"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetacryptConfig {
    /// Base URL of the Metacrypt API, e.g. `https://metacrypt.example:8443`; `http` only to loopback.
    pub url: String,
    /// File holding the MCIAS bearer token of the agent (read on every call).
    pub token_path: PathBuf,
    /// PEM file of the CA that signs the Metacrypt certificate; required for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Mount of the CA engine.
    #[serde(default = "default_metacrypt_mount")]
    pub mount: String,
    /// Issuer (intermediate CA) that signs service certificates.
    #[serde(default = "default_metacrypt_issuer")]
    pub issuer: String,
    /// Certificate profile: `server` or `peer` (server and client).
    #[serde(default = "default_metacrypt_profile")]
    pub profile: String,
    /// Lifetime asked for, in days.
    #[serde(default = "default_metacrypt_ttl_days")]
    pub ttl_days: u32,
}

fn default_metacrypt_mount() -> String {
    "pki".into()
}
fn default_metacrypt_issuer() -> String {
    "services".into()
}
fn default_metacrypt_profile() -> String {
    "server".into()
}
fn default_metacrypt_ttl_days() -> u32 {
    90
}

impl MetacryptConfig {
    /// Configuration for `url` and `token_path` with every other field at its default.
    pub fn new(url: &str, token_path: &Path) -> MetacryptConfig {
        MetacryptConfig {
            url: url.to_string(),
            token_path: token_path.to_path_buf(),
            ca: None,
            mount: default_metacrypt_mount(),
            issuer: default_metacrypt_issuer(),
            profile: default_metacrypt_profile(),
            ttl_days: default_metacrypt_ttl_days(),
        }
    }
}

/// `[monitor]`: the agent's watch over its containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    /// Seconds between two passes.
    #[serde(default = "default_monitor_interval")]
    pub interval: u64,
    /// Recreate or restart drifted containers from the registry (with
    /// backoff); otherwise only report.
    #[serde(default)]
    pub auto_repair: bool,
    /// Restarts within `flap_window` seconds that make a container flapping.
    #[serde(default = "default_flap_restarts")]
    pub flap_restarts: u32,
    /// Seconds of the flapping window.
    #[serde(default = "default_flap_window")]
    pub flap_window: u64,
    /// Alert command (program and arguments, no shell): gets the event as
    /// JSON on stdin and as `MCP_EVENT_*` variables.
    #[serde(default)]
    pub alert_command: Vec<String>,
    /// Days events are kept.
    #[serde(default = "default_event_retention")]
    pub event_retention_days: u64,
    /// Longest pause, in seconds, between two repairs of one container.
    #[serde(default = "default_repair_backoff")]
    pub repair_backoff_max: u64,
}

fn default_monitor_interval() -> u64 {
    30
}
fn default_flap_restarts() -> u32 {
    3
}
fn default_flap_window() -> u64 {
    300
}
fn default_event_retention() -> u64 {
    30
}
fn default_repair_backoff() -> u64 {
    300
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            interval: default_monitor_interval(),
            auto_repair: false,
            flap_restarts: default_flap_restarts(),
            flap_window: default_flap_window(),
            alert_command: Vec::new(),
            event_retention_days: default_event_retention(),
            repair_backoff_max: default_repair_backoff(),
        }
    }
}

/// `[boot]`: the order services come up in when the agent starts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSection {
    /// Stages, in order; services in no stage start last.
    #[serde(default)]
    pub sequence: Vec<BootStage>,
}

/// One `[[boot.sequence]]` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootStage {
    pub name: String,
    pub services: Vec<String>,
    /// How long the stage's health checks may take: `120s`, `2m`, `90`.
    #[serde(default = "default_stage_timeout")]
    pub timeout: String,
    /// Health check for services whose components declare none:
    /// `tcp`, `http` or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

fn default_stage_timeout() -> String {
    "120s".to_string()
}

/// `[proxy]`: the proxy routes are registered with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// `builtin` (in the agent) or `mc-proxy` (its admin socket).
    #[serde(default = "default_proxy_backend")]
    pub backend: String,
    /// mc-proxy admin socket.
    #[serde(default = "default_mc_proxy_socket")]
    pub socket: PathBuf,
    /// Listener port map: a route's `port` → the address the built-in proxy
    /// binds for it (ports below 1024 need CAP_NET_BIND_SERVICE).
    #[serde(default)]
    pub listeners: Vec<ListenerMap>,
    /// Seconds to connect to a backend.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u64,
    /// Seconds a connection may stay silent.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u64,
    /// Seconds a client has to complete its TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: u64,
    /// Concurrent connections per listener.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// One entry of the listener port map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerMap {
    pub port: u16,
    pub bind: SocketAddr,
}

fn default_proxy_backend() -> String {
    "builtin".to_string()
}
fn default_mc_proxy_socket() -> PathBuf {
    PathBuf::from("/srv/mc-proxy/mc-proxy.sock")
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_max_connections() -> usize {
    10_000
}

/// `[edge]`: public ingress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    /// Public domains this edge may serve (a hostname matches a domain
    /// label-wise: `a.example.net` matches `example.net`,
    /// `evilexample.net` does not).
    pub allowed_domains: Vec<String>,
}

/// `[master]` of an agent: where to register and heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMasterSection {
    /// Master's `host:port`.
    pub address: String,
    /// This node's role: `worker`, `edge` or `master`.
    #[serde(default = "default_role")]
    pub role: String,
    /// `host:port` the master dials to reach this agent; default
    /// `<agent.address>:<agent.listen port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
}

fn default_role() -> String {
    "worker".to_string()
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
    /// Host-side volume sources of service definitions are resolved under
    /// this directory (`/srv/web` → `<volumes_root>/srv/web`); unset: as
    /// written. Lets several agents share one host (tests) without sharing
    /// their services' data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes_root: Option<PathBuf>,
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

impl AgentConfig {
    /// Loads and checks an agent configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = mcp_infra::config::load(path)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        mcp_model::service::check_name(&self.agent.name).map_err(|r| ConfigError::new(path, "agent.name", r))?;
        if !self.agent.data_dir.is_absolute() {
            return Err(ConfigError::new(path, "agent.data_dir", "must be an absolute path"));
        }
        if let Some(root) = &self.agent.volumes_root
            && !root.is_absolute()
        {
            return Err(ConfigError::new(path, "agent.volumes_root", "must be an absolute path"));
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
        self.log.check(path)?;
        if let Some(m) = &self.master
            && !matches!(m.role.as_str(), "worker" | "edge" | "master")
        {
            return Err(ConfigError::new(
                path,
                "master.role",
                "expected \"worker\", \"edge\" or \"master\"",
            ));
        }
        mcp_model::service::check_hostname(&self.network.zone)
            .map_err(|r| ConfigError::new(path, "network.zone", r))?;
        match (self.network.ca.as_deref(), &self.metacrypt) {
            (None | Some("master") | Some("none"), _) => {}
            (Some("metacrypt"), Some(m)) if i64::from(m.ttl_days) <= self.network.renew_days => {
                return Err(ConfigError::new(
                    path,
                    "metacrypt.ttl_days",
                    format!(
                        "{} days is not more than network.renew_days ({}): every certificate would be renewed at once",
                        m.ttl_days, self.network.renew_days
                    ),
                ));
            }
            (Some("metacrypt"), Some(_)) => {}
            (Some("metacrypt"), None) => {
                return Err(ConfigError::new(
                    path,
                    "network.ca",
                    "\"metacrypt\" needs a [metacrypt] section",
                ));
            }
            (Some(_), _) => {
                return Err(ConfigError::new(
                    path,
                    "network.ca",
                    "expected \"master\", \"metacrypt\" or \"none\"",
                ));
            }
        }
        match self.network.dns.as_deref() {
            None | Some("master") | Some("none") => {}
            Some("mcns") if self.mcns.is_some() => {}
            Some("mcns") => {
                return Err(ConfigError::new(
                    path,
                    "network.dns",
                    "\"mcns\" needs an [mcns] section",
                ));
            }
            Some(_) => {
                return Err(ConfigError::new(
                    path,
                    "network.dns",
                    "expected \"master\", \"mcns\" or \"none\"",
                ));
            }
        }
        if let Some(p) = &self.proxy {
            if p.backend != "builtin" && p.backend != "mc-proxy" {
                return Err(ConfigError::new(
                    path,
                    "proxy.backend",
                    "expected \"builtin\" or \"mc-proxy\"",
                ));
            }
            let mut ports = std::collections::BTreeSet::new();
            for (i, l) in p.listeners.iter().enumerate() {
                if !ports.insert(l.port) {
                    return Err(ConfigError::new(
                        path,
                        &format!("proxy.listeners[{i}].port"),
                        "listed twice",
                    ));
                }
            }
        }
        if let Some(e) = &self.edge {
            for (i, d) in e.allowed_domains.iter().enumerate() {
                mcp_model::service::check_hostname(d)
                    .map_err(|r| ConfigError::new(path, &format!("edge.allowed_domains[{i}]"), r))?;
            }
        }
        if self.monitor.interval == 0 {
            return Err(ConfigError::new(path, "monitor.interval", "must be at least 1 second"));
        }
        if self.monitor.flap_restarts == 0 {
            return Err(ConfigError::new(path, "monitor.flap_restarts", "must be at least 1"));
        }
        let mut staged = std::collections::BTreeSet::new();
        for (i, st) in self.boot.sequence.iter().enumerate() {
            mcp_model::service::check_name(&st.name)
                .map_err(|r| ConfigError::new(path, &format!("boot.sequence[{i}].name"), r))?;
            parse_duration(&st.timeout)
                .map_err(|r| ConfigError::new(path, &format!("boot.sequence[{i}].timeout"), r))?;
            if let Some(h) = &st.health
                && !matches!(h.as_str(), "tcp" | "http" | "grpc")
            {
                return Err(ConfigError::new(
                    path,
                    &format!("boot.sequence[{i}].health"),
                    "expected \"tcp\", \"http\" or \"grpc\"",
                ));
            }
            for svc in &st.services {
                if !staged.insert(svc.clone()) {
                    return Err(ConfigError::new(
                        path,
                        &format!("boot.sequence[{i}].services"),
                        format!("{svc} is in two stages"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether service certificates come from the master.
    pub fn ca_from_master(&self) -> bool {
        match self.network.ca.as_deref() {
            Some(v) => v == "master",
            None => self.master.is_some(),
        }
    }

    /// Whether DNS records are registered with the master.
    pub fn dns_with_master(&self) -> bool {
        match self.network.dns.as_deref() {
            Some(v) => v == "master",
            None => self.master.is_some(),
        }
    }

    /// Directory of service certificates.
    pub fn certs_dir(&self) -> PathBuf {
        self.network
            .certs_dir
            .clone()
            .unwrap_or_else(|| self.agent.data_dir.join("certs"))
    }

    /// `host:port` the master should dial to reach this agent.
    pub fn advertised(&self) -> String {
        self.master
            .as_ref()
            .and_then(|m| m.advertise.clone())
            .unwrap_or_else(|| format!("{}:{}", self.agent.address, self.agent.listen.port()))
    }

    /// Path of the registry database.
    pub fn registry_path(&self) -> PathBuf {
        self.agent.data_dir.join("mcp.db")
    }
}

fn default_true() -> bool {
    true
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
            (format!("{base}[network]\nca = \"vault\"\n"), "network.ca"),
            (format!("{base}[network]\nca = \"metacrypt\"\n"), "network.ca"),
            (
                format!("{base}[network]\nca = \"metacrypt\"\n{METACRYPT}ttl_days = 30\n"),
                "metacrypt.ttl_days",
            ),
            (
                format!("{base}{METACRYPT}issuer_name = \"x\"\n"),
                "metacrypt.issuer_name",
            ),
        ];
        for (text, field) in cases {
            let (_d, p) = write(&text);
            let e = AgentConfig::load(&p).unwrap_err();
            assert!(e.field.starts_with(field), "{text}: {e}");
        }
        let (_d, p) = write(&format!("{base}[network]\nca = \"metacrypt\"\n{METACRYPT}"));
        let cfg = AgentConfig::load(&p).unwrap();
        assert!(!cfg.ca_from_master());
        assert_eq!(
            cfg.metacrypt,
            Some(MetacryptConfig::new("https://metacrypt:8443", Path::new("/t")))
        );
    }

    const METACRYPT: &str = "[metacrypt]\nurl = \"https://metacrypt:8443\"\ntoken_path = \"/t\"\n";

    #[test]
    fn docs_cover_every_key() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
        let agent = AgentConfig {
            agent: AgentSection {
                name: "n".into(),
                listen: default_agent_listen(),
                address: default_node_address(),
                data_dir: default_data_dir(),
                volumes_root: Some("/v".into()),
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
            master: Some(AgentMasterSection {
                address: "m:9555".into(),
                role: "worker".into(),
                advertise: Some("a:9444".into()),
            }),
            mcias: None,
            network: NetworkSection {
                certs_dir: Some("/c".into()),
                ca: Some("master".into()),
                dns: Some("master".into()),
                ..Default::default()
            },
            proxy: Some(ProxySection {
                backend: default_proxy_backend(),
                socket: default_mc_proxy_socket(),
                listeners: vec![ListenerMap {
                    port: 443,
                    bind: "0.0.0.0:443".parse().unwrap(),
                }],
                connect_timeout: 1,
                idle_timeout: 1,
                handshake_timeout: 1,
                max_connections: 1,
            }),
            edge: Some(EdgeSection {
                allowed_domains: vec!["example.net".into()],
            }),
            mcns: Some(McnsConfig {
                ca: Some("/ca".into()),
                ..McnsConfig::new("https://mcns:8443", Path::new("/token"))
            }),
            metacrypt: Some(MetacryptConfig {
                ca: Some("/ca".into()),
                ..MetacryptConfig::new("https://metacrypt:8443", Path::new("/token"))
            }),
            monitor: MonitorSection {
                alert_command: vec!["/bin/true".into()],
                ..Default::default()
            },
            boot: BootSection {
                sequence: vec![BootStage {
                    name: "foundation".into(),
                    services: vec!["mcias".into()],
                    timeout: "120s".into(),
                    health: Some("grpc".into()),
                }],
            },
            metrics: Some(MetricsSection {
                listen: "127.0.0.1:9464".parse().unwrap(),
            }),
        };
        let missing = mcp_infra::config::undocumented_keys(&doc, &agent);
        assert!(missing.is_empty(), "docs/configuration.md misses {missing:?}");
    }
}
