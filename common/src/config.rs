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
    /// The fleet master; absent for a stand-alone agent (`--direct` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<AgentMasterSection>,
    /// Accept MCIAS bearer tokens besides client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcias: Option<crate::mcias::MciasConfig>,
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

/// `[metrics]`: the Prometheus `/metrics` listener of a daemon (agent or
/// master). Plain HTTP without authentication, so it is off unless this
/// section is present, and belongs on loopback or a management network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the listener, e.g. `127.0.0.1:9464`.
    pub listen: SocketAddr,
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
    crate::service::DEFAULT_ZONE.to_string()
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

/// Parses `90`, `90s`, `2m`, `1h` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 2m or 1h"))
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
        check_log(path, &self.log)?;
        if let Some(m) = &self.master
            && !matches!(m.role.as_str(), "worker" | "edge" | "master")
        {
            return Err(ConfigError::new(
                path,
                "master.role",
                "expected \"worker\", \"edge\" or \"master\"",
            ));
        }
        crate::service::check_hostname(&self.network.zone).map_err(|r| ConfigError::new(path, "network.zone", r))?;
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
                crate::service::check_hostname(d)
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
            crate::service::check_name(&st.name)
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

fn check_log(path: &Path, log: &LogSection) -> Result<(), ConfigError> {
    if log.format != "text" && log.format != "json" {
        return Err(ConfigError::new(path, "log.format", "expected \"text\" or \"json\""));
    }
    Ok(())
}

/// `mcp-master` configuration (`/srv/mcp-master/mcp-master.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    pub master: MasterSection,
    pub tls: TlsFiles,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    #[serde(default)]
    pub registration: RegistrationSection,
    #[serde(default)]
    pub reconcile: ReconcileSection,
    #[serde(default)]
    pub log: LogSection,
    /// Accept MCIAS bearer tokens besides client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcias: Option<crate::mcias::MciasConfig>,
    /// The internal zone the master serves.
    #[serde(default)]
    pub dns: DnsSection,
    /// Prometheus `/metrics` listener; absent: no metrics listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSection>,
    /// Scheduled snapshots of service data and their retention.
    #[serde(default)]
    pub snapshots: SnapshotsSection,
}

/// `[snapshots]` of the master (SPEC §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsSection {
    /// How often every placed service with volumes is snapshotted: `off`,
    /// `hourly`, `daily`, `weekly` or `<n>s|m|h|d`.
    #[serde(default = "default_snapshot_schedule")]
    pub schedule: String,
    /// Snapshots kept per service; older ones are deleted.
    #[serde(default = "default_snapshot_retention")]
    pub retention: u32,
}

fn default_snapshot_schedule() -> String {
    "daily".to_string()
}
fn default_snapshot_retention() -> u32 {
    7
}

impl Default for SnapshotsSection {
    fn default() -> Self {
        SnapshotsSection {
            schedule: default_snapshot_schedule(),
            retention: default_snapshot_retention(),
        }
    }
}

impl SnapshotsSection {
    /// Interval between scheduled snapshots in seconds; `None` when off.
    pub fn interval(&self) -> Option<u64> {
        crate::snapshot::parse_schedule(&self.schedule).ok().flatten()
    }
}

/// `[dns]` of the master: the internal zone, served authoritatively.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// UDP+TCP addresses to serve on, e.g. `127.0.0.1:5353`; empty: not
    /// served. Specific addresses, never an implied `0.0.0.0:53` (a local
    /// resolver often holds port 53 on localhost).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// The zone (no trailing dot needed).
    #[serde(default = "default_zone")]
    pub zone: String,
    /// TTL of every record, and the negative-caching TTL (SOA minimum).
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
    /// NS names of the zone; empty: `ns1.<zone>`.
    #[serde(default)]
    pub ns: Vec<String>,
    /// Addresses of the NS names that lie inside the zone (glue).
    #[serde(default)]
    pub ns_addresses: Vec<std::net::Ipv4Addr>,
    /// SOA RNAME, as a name or a mail address; empty: `hostmaster.<zone>`.
    #[serde(default)]
    pub admin: String,
}

fn default_dns_ttl() -> u32 {
    60
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            listen: Vec::new(),
            zone: default_zone(),
            ttl: default_dns_ttl(),
            ns: Vec::new(),
            ns_addresses: Vec::new(),
            admin: String::new(),
        }
    }
}

/// `[master]`: identity and state of the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterSection {
    /// Node the master runs on (its agent hosts the `core` tier).
    pub node: String,
    /// gRPC listen address.
    #[serde(default = "default_master_listen")]
    pub listen: SocketAddr,
    /// Fleet database, CA and snapshots live here.
    #[serde(default = "default_master_dir")]
    pub data_dir: PathBuf,
}

/// `[timeouts]` in seconds (SPEC §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    #[serde(default = "default_deploy_timeout")]
    pub deploy: u64,
    #[serde(default = "default_undeploy_timeout")]
    pub undeploy: u64,
    #[serde(default = "default_health_timeout")]
    pub health_check: u64,
    #[serde(default = "default_edge_timeout")]
    pub edge_route: u64,
    #[serde(default = "default_snapshot_timeout")]
    pub snapshot: u64,
}

/// `[heartbeat]` in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSection {
    /// How often agents heartbeat.
    #[serde(default = "default_heartbeat_interval")]
    pub interval: u64,
    /// Silence after which the master probes a node.
    #[serde(default = "default_silent_after")]
    pub silent_after: u64,
    /// How often the master looks for silent nodes.
    #[serde(default = "default_check_every")]
    pub check_every: u64,
}

/// `[registration]`: who may join and how often agents may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSection {
    /// Node names allowed to register; empty allows any joined node.
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// Most nodes the fleet may have; 0 for no limit.
    #[serde(default)]
    pub max_nodes: u32,
    /// Minimum seconds between two Register calls of a node.
    #[serde(default = "default_register_interval")]
    pub register_interval: u64,
    /// Minimum seconds between two Heartbeat calls of a node.
    #[serde(default = "default_heartbeat_min")]
    pub heartbeat_min_interval: u64,
    /// Lifetime of a join token, seconds.
    #[serde(default = "default_join_ttl")]
    pub join_token_ttl: u64,
    /// Lifetime of agent certificates, days.
    #[serde(default = "default_cert_days")]
    pub cert_days: i64,
}

/// `[reconcile]`: what the master does on start.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSection {
    /// Also repair what it can (else it only reports and fixes its own records).
    #[serde(default)]
    pub repair: bool,
}

fn default_master_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9555))
}
fn default_master_dir() -> PathBuf {
    PathBuf::from("/srv/mcp-master")
}
fn default_deploy_timeout() -> u64 {
    300
}
fn default_undeploy_timeout() -> u64 {
    120
}
fn default_health_timeout() -> u64 {
    5
}
fn default_edge_timeout() -> u64 {
    30
}
fn default_snapshot_timeout() -> u64 {
    600
}
fn default_heartbeat_interval() -> u64 {
    30
}
fn default_silent_after() -> u64 {
    90
}
fn default_check_every() -> u64 {
    10
}
fn default_register_interval() -> u64 {
    60
}
fn default_heartbeat_min() -> u64 {
    10
}
fn default_join_ttl() -> u64 {
    3600
}
fn default_cert_days() -> i64 {
    90
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            deploy: default_deploy_timeout(),
            undeploy: default_undeploy_timeout(),
            health_check: default_health_timeout(),
            edge_route: default_edge_timeout(),
            snapshot: default_snapshot_timeout(),
        }
    }
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            interval: default_heartbeat_interval(),
            silent_after: default_silent_after(),
            check_every: default_check_every(),
        }
    }
}

impl Default for RegistrationSection {
    fn default() -> Self {
        RegistrationSection {
            allowlist: Vec::new(),
            max_nodes: 0,
            register_interval: default_register_interval(),
            heartbeat_min_interval: default_heartbeat_min(),
            join_token_ttl: default_join_ttl(),
            cert_days: default_cert_days(),
        }
    }
}

impl MasterConfig {
    /// Loads and checks a master configuration file.
    pub fn load(path: &Path) -> Result<MasterConfig, ConfigError> {
        let cfg: MasterConfig = load(path)?;
        crate::service::check_name(&cfg.master.node).map_err(|r| ConfigError::new(path, "master.node", r))?;
        if !cfg.master.data_dir.is_absolute() {
            return Err(ConfigError::new(path, "master.data_dir", "must be an absolute path"));
        }
        for (i, n) in cfg.registration.allowlist.iter().enumerate() {
            crate::service::check_name(n)
                .map_err(|r| ConfigError::new(path, &format!("registration.allowlist[{i}]"), r))?;
        }
        if cfg.heartbeat.interval == 0 || cfg.heartbeat.silent_after <= cfg.heartbeat.interval {
            return Err(ConfigError::new(
                path,
                "heartbeat.silent_after",
                "must be longer than heartbeat.interval (which must be > 0)",
            ));
        }
        check_log(path, &cfg.log)?;
        crate::snapshot::parse_schedule(&cfg.snapshots.schedule)
            .map_err(|r| ConfigError::new(path, "snapshots.schedule", r))?;
        if cfg.snapshots.retention == 0 {
            return Err(ConfigError::new(
                path,
                "snapshots.retention",
                "must keep at least one snapshot",
            ));
        }
        Ok(cfg)
    }

    /// Directory of stored snapshots: `<data_dir>/snapshots/<service>/`.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.master.data_dir.join("snapshots")
    }

    /// Path of the fleet database.
    pub fn db_path(&self) -> PathBuf {
        self.master.data_dir.join("fleet.db")
    }

    /// Directory of the fleet CA.
    pub fn ca_dir(&self) -> PathBuf {
        self.master.data_dir.join("ca")
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
    #[serde(default)]
    pub ssh: SshSection,
    #[serde(default)]
    pub upgrade: UpgradeSection,
    #[serde(default)]
    pub provision: ProvisionSection,
}

/// `[ssh]`: how `mcp agent upgrade` and `mcp node provision` reach nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    /// OpenSSH known_hosts file the host keys are checked against.
    #[serde(default = "default_known_hosts")]
    pub known_hosts: PathBuf,
    /// Private key for public-key authentication (OpenSSH format).
    #[serde(default = "default_ssh_identity")]
    pub identity: PathBuf,
    /// Seconds to wait for the TCP connection and the SSH handshake.
    #[serde(default = "default_ssh_connect_timeout")]
    pub connect_timeout: u64,
}

fn default_known_hosts() -> PathBuf {
    PathBuf::from("~/.ssh/known_hosts")
}
fn default_ssh_identity() -> PathBuf {
    PathBuf::from("~/.ssh/id_ed25519")
}
fn default_ssh_connect_timeout() -> u64 {
    10
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            known_hosts: default_known_hosts(),
            identity: default_ssh_identity(),
            connect_timeout: default_ssh_connect_timeout(),
        }
    }
}

/// `[upgrade]`: `mcp agent upgrade`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSection {
    /// Release directory with `<arch>/mcp-agent` (what `dev/release` writes).
    #[serde(default = "default_dist")]
    pub dist: PathBuf,
    /// Nodes upgraded at the same time.
    #[serde(default = "default_upgrade_parallel")]
    pub parallel: usize,
    /// Seconds to wait for a restarted agent to answer with the new version
    /// before rolling back.
    #[serde(default = "default_upgrade_wait")]
    pub wait: u64,
}

fn default_dist() -> PathBuf {
    PathBuf::from("dist")
}
fn default_upgrade_parallel() -> usize {
    8
}
fn default_upgrade_wait() -> u64 {
    60
}

impl Default for UpgradeSection {
    fn default() -> Self {
        UpgradeSection {
            dist: default_dist(),
            parallel: default_upgrade_parallel(),
            wait: default_upgrade_wait(),
        }
    }
}

/// `[provision]`: what `mcp node provision` sets up on a Debian host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionSection {
    /// The rootless podman user the agent runs as.
    #[serde(default = "default_provision_user")]
    pub user: String,
    /// Its UID (pinned: a rootless user's UID is never changed).
    #[serde(default = "default_provision_uid")]
    pub uid: u32,
    /// Debian packages the agent needs.
    #[serde(default = "default_provision_packages")]
    pub packages: Vec<String>,
    /// Where the systemd unit is written.
    #[serde(default = "default_unit_dir")]
    pub unit_dir: PathBuf,
    /// Resolver file that must list the fallback resolvers.
    #[serde(default = "default_resolv_conf")]
    pub resolv_conf: PathBuf,
    /// Resolvers kept besides the internal DNS (SPEC §14).
    #[serde(default)]
    pub fallback_dns: Vec<String>,
}

fn default_provision_user() -> String {
    "mcp".into()
}
fn default_provision_uid() -> u32 {
    850
}
fn default_provision_packages() -> Vec<String> {
    ["podman", "uidmap", "slirp4netns", "fuse-overlayfs", "dbus-user-session"]
        .map(String::from)
        .to_vec()
}
fn default_unit_dir() -> PathBuf {
    PathBuf::from("/etc/systemd/system")
}
fn default_resolv_conf() -> PathBuf {
    PathBuf::from("/etc/resolv.conf")
}

impl Default for ProvisionSection {
    fn default() -> Self {
        ProvisionSection {
            user: default_provision_user(),
            uid: default_provision_uid(),
            packages: default_provision_packages(),
            unit_dir: default_unit_dir(),
            resolv_conf: default_resolv_conf(),
            fallback_dns: Vec::new(),
        }
    }
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
    /// SSH port (default 22).
    #[serde(default)]
    pub ssh_port: Option<u16>,
    /// Directory holding `mcp-agent` on the node (default `/srv/mcp`).
    #[serde(default)]
    pub install_dir: Option<PathBuf>,
    /// Command (run over SSH) that restarts the agent (default
    /// `sudo -n systemctl restart mcp-agent`; `doas …` on NixOS).
    #[serde(default)]
    pub restart: Option<String>,
}

/// Default `nodes[].install_dir`.
pub const DEFAULT_INSTALL_DIR: &str = "/srv/mcp";
/// Default `nodes[].restart`.
pub const DEFAULT_RESTART: &str = "sudo -n systemctl restart mcp-agent";

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
            if let Some(ssh) = &n.ssh
                && (ssh.is_empty() || ssh.starts_with('@') || ssh.ends_with('@') || ssh.contains(char::is_whitespace))
            {
                return Err(ConfigError::new(
                    path,
                    &format!("nodes[{i}].ssh"),
                    "expected \"user@host\" or \"host\"",
                ));
            }
            if n.install_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
                return Err(ConfigError::new(
                    path,
                    &format!("nodes[{i}].install_dir"),
                    "must be an absolute path",
                ));
            }
        }
        if cfg.upgrade.parallel == 0 {
            return Err(ConfigError::new(path, "upgrade.parallel", "must be at least 1"));
        }
        if cfg.provision.uid == 0 {
            return Err(ConfigError::new(path, "provision.uid", "must not be 0 (root)"));
        }
        crate::service::check_name(&cfg.provision.user).map_err(|r| ConfigError::new(path, "provision.user", r))?;
        for (i, r) in cfg.provision.fallback_dns.iter().enumerate() {
            if r.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::new(
                    path,
                    &format!("provision.fallback_dns[{i}]"),
                    "expected an IP address",
                ));
            }
        }
        Ok(cfg.expanded())
    }

    fn expanded(mut self) -> CliConfig {
        self.services.dir = expand_home(&self.services.dir);
        self.ssh.known_hosts = expand_home(&self.ssh.known_hosts);
        self.ssh.identity = expand_home(&self.ssh.identity);
        self.upgrade.dist = expand_home(&self.upgrade.dist);
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
        let master = MasterConfig {
            master: MasterSection {
                node: "n".into(),
                listen: default_master_listen(),
                data_dir: default_master_dir(),
            },
            tls: TlsFiles {
                cert: "/c".into(),
                key: "/k".into(),
                ca: "/a".into(),
            },
            timeouts: TimeoutsSection::default(),
            heartbeat: HeartbeatSection::default(),
            registration: RegistrationSection {
                allowlist: vec!["n".into()],
                ..Default::default()
            },
            reconcile: ReconcileSection::default(),
            log: LogSection::default(),
            mcias: Some(crate::mcias::MciasConfig {
                ca: Some("/ca".into()),
                ..crate::mcias::MciasConfig::new("https://mcias:8443")
            }),
            dns: DnsSection {
                listen: vec!["127.0.0.1:5353".parse().unwrap()],
                ns: vec!["ns1.example.net".into()],
                ns_addresses: vec!["127.0.0.1".parse().unwrap()],
                admin: "hostmaster.example.net".into(),
                ..Default::default()
            },
            metrics: Some(MetricsSection {
                listen: "127.0.0.1:9465".parse().unwrap(),
            }),
            snapshots: SnapshotsSection::default(),
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
                ssh_port: Some(22),
                install_dir: Some("/srv/mcp".into()),
                restart: Some("sudo -n systemctl restart mcp-agent".into()),
            }],
            ssh: SshSection::default(),
            upgrade: UpgradeSection::default(),
            provision: ProvisionSection {
                fallback_dns: vec!["9.9.9.9".into()],
                ..Default::default()
            },
        };
        let mut all = Vec::new();
        let mut master_keys = Vec::new();
        keys("", &toml::Value::try_from(&master).unwrap(), &mut master_keys);
        all.extend(master_keys.into_iter().map(|k| format!("mcp-master.toml: {k}")));
        keys("", &toml::Value::try_from(&agent).unwrap(), &mut all);
        keys("", &toml::Value::try_from(&cli).unwrap(), &mut all);
        // Master keys are listed in their own table as `key` too; look them
        // up under their section of the document.
        let master_doc = doc.split("## Master").nth(1).unwrap_or_default();
        let missing: Vec<_> = all
            .iter()
            .filter(|k| match k.strip_prefix("mcp-master.toml: ") {
                Some(key) => !master_doc.contains(&format!("`{key}`")),
                None => !doc.contains(&format!("`{k}`")),
            })
            .collect();
        assert!(missing.is_empty(), "docs/configuration.md misses {missing:?}");
        assert!(all.len() > 20, "{all:?}");
    }
}
