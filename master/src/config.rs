//! `mcp-master`'s configuration file (`/srv/mcp-master/mcp-master.toml`):
//! its schema, defaults and checks (unknown keys refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mcp_infra::config::{ConfigError, LogSection, MetricsSection};
use mcp_infra::tls::TlsFiles;
use serde::{Deserialize, Serialize};

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
    pub mcias: Option<mcp_infra::mcias::MciasConfig>,
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
#[serde(default, deny_unknown_fields)]
pub struct SnapshotsSection {
    /// How often every placed service with volumes is snapshotted: `off`,
    /// `hourly`, `daily`, `weekly` or `<n>s|m|h|d`.
    pub schedule: String,
    /// Snapshots kept per service; older ones are deleted.
    pub retention: u32,
}

impl Default for SnapshotsSection {
    fn default() -> Self {
        SnapshotsSection {
            schedule: "daily".to_string(),
            retention: 7,
        }
    }
}

impl SnapshotsSection {
    /// Interval between scheduled snapshots in seconds; `None` when off.
    pub fn interval(&self) -> Option<u64> {
        mcp_model::snapshot::parse_schedule(&self.schedule).ok().flatten()
    }
}

/// `[dns]` of the master: the internal zone, served authoritatively.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// UDP+TCP addresses to serve on, e.g. `127.0.0.1:5353`; empty: not
    /// served. Specific addresses, never an implied `0.0.0.0:53` (a local
    /// resolver often holds port 53 on localhost).
    pub listen: Vec<SocketAddr>,
    /// The zone (no trailing dot needed).
    pub zone: String,
    /// TTL of every record, and the negative-caching TTL (SOA minimum).
    pub ttl: u32,
    /// NS names of the zone; empty: `ns1.<zone>`.
    pub ns: Vec<String>,
    /// Addresses of the NS names that lie inside the zone (glue).
    pub ns_addresses: Vec<std::net::Ipv4Addr>,
    /// SOA RNAME, as a name or a mail address; empty: `hostmaster.<zone>`.
    pub admin: String,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            listen: Vec::new(),
            zone: mcp_model::service::DEFAULT_ZONE.to_string(),
            ttl: 60,
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
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsSection {
    /// A deploy, stop, start or restart on an agent; also the longest wait
    /// for a service's lock.
    pub deploy: u64,
    /// An undeploy on an agent.
    pub undeploy: u64,
    /// Probes, status and listings; also dialling an agent.
    pub health_check: u64,
    /// Setting up or removing an edge route.
    pub edge_route: u64,
    /// A whole snapshot export or import.
    pub snapshot: u64,
}

/// `[heartbeat]` in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSection {
    /// How often agents heartbeat.
    pub interval: u64,
    /// Silence after which the master probes a node.
    pub silent_after: u64,
    /// How often the master looks for silent nodes.
    pub check_every: u64,
}

/// `[registration]`: who may join and how often agents may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationSection {
    /// Node names allowed to register; empty allows any joined node.
    pub allowlist: Vec<String>,
    /// Most nodes the fleet may have; 0 for no limit.
    pub max_nodes: u32,
    /// Minimum seconds between two Register calls of a node.
    pub register_interval: u64,
    /// Minimum seconds between two Heartbeat calls of a node.
    pub heartbeat_min_interval: u64,
    /// Lifetime of a join token, seconds.
    pub join_token_ttl: u64,
    /// Lifetime of agent certificates, days.
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

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            deploy: 300,
            undeploy: 120,
            health_check: 5,
            edge_route: 30,
            snapshot: 600,
        }
    }
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            interval: 30,
            silent_after: 90,
            check_every: 10,
        }
    }
}

impl Default for RegistrationSection {
    fn default() -> Self {
        RegistrationSection {
            allowlist: Vec::new(),
            max_nodes: 0,
            register_interval: 60,
            heartbeat_min_interval: 10,
            join_token_ttl: 3600,
            cert_days: 90,
        }
    }
}

impl MasterConfig {
    /// The master `master` with its certificate `tls`, every other section
    /// at its default.
    pub fn new(master: MasterSection, tls: TlsFiles) -> MasterConfig {
        MasterConfig {
            master,
            tls,
            timeouts: TimeoutsSection::default(),
            heartbeat: HeartbeatSection::default(),
            registration: RegistrationSection::default(),
            reconcile: ReconcileSection::default(),
            log: LogSection::default(),
            mcias: None,
            dns: DnsSection::default(),
            metrics: None,
            snapshots: SnapshotsSection::default(),
        }
    }

    /// Loads and checks a master configuration file.
    pub fn load(path: &Path) -> Result<MasterConfig, ConfigError> {
        let cfg: MasterConfig = mcp_infra::config::load(path)?;
        mcp_model::service::check_name(&cfg.master.node).map_err(|r| ConfigError::new(path, "master.node", r))?;
        if !cfg.master.data_dir.is_absolute() {
            return Err(ConfigError::new(path, "master.data_dir", "must be an absolute path"));
        }
        for (i, n) in cfg.registration.allowlist.iter().enumerate() {
            mcp_model::service::check_name(n)
                .map_err(|r| ConfigError::new(path, &format!("registration.allowlist[{i}]"), r))?;
        }
        if cfg.heartbeat.interval == 0 || cfg.heartbeat.silent_after <= cfg.heartbeat.interval {
            return Err(ConfigError::new(
                path,
                "heartbeat.silent_after",
                "must be longer than heartbeat.interval (which must be > 0)",
            ));
        }
        cfg.log.check(path)?;
        mcp_model::snapshot::parse_schedule(&cfg.snapshots.schedule)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_cover_every_key() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
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
            mcias: Some(mcp_infra::mcias::MciasConfig {
                ca: Some("/ca".into()),
                ..mcp_infra::mcias::MciasConfig::new("https://mcias:8443")
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
        let missing = mcp_infra::config::undocumented_keys(doc.split("## Master").nth(1).unwrap_or_default(), &master);
        assert!(missing.is_empty(), "docs/configuration.md misses {missing:?}");
    }
}
