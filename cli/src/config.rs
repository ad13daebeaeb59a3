//! The `mcp` CLI's configuration file (`~/.config/mcp/mcp.toml`): its
//! schema, defaults and checks (unknown keys refused).

use std::path::{Path, PathBuf};

use mcp_infra::config::ConfigError;
use serde::{Deserialize, Serialize};

/// `mcp` CLI configuration (`~/.config/mcp/mcp.toml`). A section or key
/// left out takes its value from the `Default` impls (a `[[nodes]]` entry
/// needs its name and address).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CliConfig {
    pub master: Option<MasterRef>,
    pub auth: AuthSection,
    pub services: ServicesSection,
    pub nodes: Vec<NodeRef>,
    pub ssh: SshSection,
    pub upgrade: UpgradeSection,
    pub provision: ProvisionSection,
}

/// `[ssh]`: how `mcp agent upgrade` and `mcp node provision` reach nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSection {
    /// OpenSSH known_hosts file the host keys are checked against.
    pub known_hosts: PathBuf,
    /// Private key for public-key authentication (OpenSSH format).
    pub identity: PathBuf,
    /// Seconds to wait for the TCP connection and the SSH handshake.
    pub connect_timeout: u64,
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            known_hosts: PathBuf::from("~/.ssh/known_hosts"),
            identity: PathBuf::from("~/.ssh/id_ed25519"),
            connect_timeout: 10,
        }
    }
}

/// `[upgrade]`: `mcp agent upgrade`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeSection {
    /// Release directory with `<arch>/mcp-agent` (what `dev/release` writes).
    pub dist: PathBuf,
    /// Nodes upgraded at the same time.
    pub parallel: usize,
    /// Seconds to wait for a restarted agent to answer with the new version
    /// before rolling back.
    pub wait: u64,
}

impl Default for UpgradeSection {
    fn default() -> Self {
        UpgradeSection {
            dist: PathBuf::from("dist"),
            parallel: 8,
            wait: 60,
        }
    }
}

/// `[provision]`: what `mcp node provision` sets up on a Debian host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionSection {
    /// The rootless podman user the agent runs as.
    pub user: String,
    /// Its UID (pinned: a rootless user's UID is never changed).
    pub uid: u32,
    /// Debian packages the agent needs.
    pub packages: Vec<String>,
    /// Where the systemd unit is written.
    pub unit_dir: PathBuf,
    /// Resolver file that must list the fallback resolvers.
    pub resolv_conf: PathBuf,
    /// Resolvers kept besides the internal DNS (SPEC §14).
    pub fallback_dns: Vec<String>,
}

impl Default for ProvisionSection {
    fn default() -> Self {
        let packages = ["podman", "uidmap", "slirp4netns", "fuse-overlayfs", "dbus-user-session"];
        ProvisionSection {
            user: "mcp".into(),
            uid: 850,
            packages: packages.map(String::from).to_vec(),
            unit_dir: PathBuf::from("/etc/systemd/system"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
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
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Client certificate (chain) identifying the operator.
    pub cert: Option<PathBuf>,
    /// Its private key (must be mode 0600).
    pub key: Option<PathBuf>,
    /// CA that signs the agents' and master's certificates.
    pub ca: Option<PathBuf>,
    /// MCIAS bearer token file (alternative to a client certificate).
    pub token_path: Option<PathBuf>,
}

/// `[services]`: where service definitions live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesSection {
    pub dir: PathBuf,
}

impl Default for ServicesSection {
    fn default() -> Self {
        ServicesSection {
            dir: PathBuf::from("~/.config/mcp/services"),
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
        let cfg: CliConfig = mcp_infra::config::load(path)?;
        let mut names = std::collections::BTreeSet::new();
        for (i, n) in cfg.nodes.iter().enumerate() {
            mcp_model::service::check_name(&n.name)
                .map_err(|r| ConfigError::new(path, &format!("nodes[{i}].name"), r))?;
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
        mcp_model::service::check_name(&cfg.provision.user).map_err(|r| ConfigError::new(path, "provision.user", r))?;
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
    fn cli_config_addresses() {
        let (_d, p) = write(
            "[[nodes]]\nname = \"a\"\naddress = \"1.2.3.4:9444\"\n[[nodes]]\nname = \"b\"\naddress = [\"x:1\", \"y:2\"]\narch = \"arm64\"\n",
        );
        let cfg = CliConfig::load(&p, true).unwrap();
        assert_eq!(cfg.node("b").unwrap().address.list(), ["x:1", "y:2"]);
        let (_d, p) = write("[[nodes]]\nname = \"a\"\naddress = \"x:1\"\narch = \"sparc\"\n");
        assert_eq!(CliConfig::load(&p, true).unwrap_err().field, "nodes[0].arch");
    }

    #[test]
    fn keys_left_out_take_the_defaults() {
        let (_d, p) = write("[upgrade]\nparallel = 2\n[provision]\nuid = 900\n[ssh]\nconnect_timeout = 3\n");
        let cfg = CliConfig::load(&p, true).unwrap();
        let want = CliConfig {
            upgrade: UpgradeSection {
                parallel: 2,
                ..UpgradeSection::default()
            },
            provision: ProvisionSection {
                uid: 900,
                ..ProvisionSection::default()
            },
            ssh: SshSection {
                connect_timeout: 3,
                ..SshSection::default()
            },
            ..CliConfig::default()
        };
        assert_eq!(cfg, want.expanded());
        assert_eq!((cfg.upgrade.wait, cfg.provision.user.as_str()), (60, "mcp"));
        let (_d, p) = write("[upgrade]\nparalel = 2\n");
        assert_eq!(CliConfig::load(&p, true).unwrap_err().field, "upgrade.paralel (line 2)");
    }

    #[test]
    fn docs_cover_every_key() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
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
        let missing = mcp_infra::config::undocumented_keys(&doc, &cli);
        assert!(missing.is_empty(), "docs/configuration.md misses {missing:?}");
    }
}
