//! The full runtime spec of one container, derived from a component
//! definition and its assigned host ports. It is what the registry stores
//! (the source of truth for recovery) and what podman is asked to create;
//! its hash decides whether a redeploy must recreate the container.

use std::collections::BTreeMap;

use mcp_model::service::{self, ComponentDef, ServiceDef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Label keys put on every container the agent creates.
pub const LABEL_SERVICE: &str = "mcp.service";
pub const LABEL_COMPONENT: &str = "mcp.component";
pub const LABEL_NODE: &str = "mcp.node";
pub const LABEL_HASH: &str = "mcp.spec-hash";

/// Default restart policy when the definition sets none.
pub const DEFAULT_RESTART: &str = "unless-stopped";

/// Everything podman needs to (re)create a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    /// Definition env followed by the `PORT*` variables.
    pub env: Vec<String>,
    /// Host ports published to the same container port.
    pub ports: Vec<u16>,
    pub volumes: Vec<String>,
    pub network: Option<String>,
    pub user: Option<String>,
    pub restart: String,
    pub memory: Option<u64>,
    pub nano_cpus: Option<i64>,
    /// Identification labels (service, component, node); the hash label is
    /// added on top by [`ContainerSpec::with_hash_label`].
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
impl ContainerSpec {
    /// A bare spec for unit tests: no ports, env, volumes or limits.
    pub(crate) fn bare(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            cmd: vec![],
            env: vec![],
            ports: vec![],
            volumes: vec![],
            network: None,
            user: None,
            restart: "unless-stopped".into(),
            memory: None,
            nano_cpus: None,
            labels: BTreeMap::new(),
        }
    }
}

impl ContainerSpec {
    /// Builds the spec of `component`; `ports` maps route key → host port.
    pub fn build(
        def: &ServiceDef,
        component: &ComponentDef,
        ports: &BTreeMap<String, u16>,
        node: &str,
    ) -> ContainerSpec {
        let mut env = component.env.clone();
        let mut host_ports = Vec::new();
        for r in &component.routes {
            if let Some(p) = ports.get(r.key()) {
                env.push(format!("{}={p}", service::port_env_name(r.key())));
                host_ports.push(*p);
            }
        }
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_SERVICE.to_string(), def.name.clone());
        labels.insert(LABEL_COMPONENT.to_string(), component.name.clone());
        labels.insert(LABEL_NODE.to_string(), node.to_string());
        ContainerSpec {
            name: def.container_name(&component.name),
            image: component.image.clone(),
            cmd: component.cmd.clone(),
            env,
            ports: host_ports,
            volumes: component.volumes.clone(),
            network: component.network.clone(),
            user: component.user.clone(),
            restart: component.restart.clone().unwrap_or_else(|| DEFAULT_RESTART.to_string()),
            memory: component.memory.as_deref().and_then(|m| service::parse_memory(m).ok()),
            nano_cpus: component.cpus.map(|c| (c * 1e9).round() as i64),
            labels,
        }
    }

    /// SHA-256 over the canonical JSON of the spec.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a ContainerSpec always serializes");
        hex::encode(Sha256::digest(&json))
    }

    /// The spec with the `mcp.spec-hash` label set, as sent to podman.
    pub fn with_hash_label(&self) -> ContainerSpec {
        let mut s = self.clone();
        s.labels.insert(LABEL_HASH.to_string(), self.hash());
        s
    }

    /// Fields that differ from `other`, for plans and events.
    pub fn diff(&self, other: &ContainerSpec) -> Vec<&'static str> {
        let mut d = Vec::new();
        macro_rules! cmp {
            ($($f:ident),*) => { $( if self.$f != other.$f { d.push(stringify!($f)); } )* };
        }
        cmp!(
            name, image, cmd, env, ports, volumes, network, user, restart, memory, nano_cpus, labels
        );
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ServiceDef {
        service::parse(
            "t",
            r#"
name = "web"
[[components]]
name = "api"
image = "r/web:v1"
env = ["A=1"]
cpus = 1.5
memory = "64M"
[[components.routes]]
name = "rest"
port = 8443
[[components.routes]]
name = "admin-api"
port = 9000
hostname = "a.example.net"
[[components]]
name = "web"
image = "r/web:v1"
[[components.routes]]
port = 80
"#,
        )
        .unwrap()
    }

    #[test]
    fn env_ports_and_names() {
        let d = def();
        let ports = BTreeMap::from([("rest".to_string(), 10001), ("admin-api".to_string(), 10002)]);
        let s = ContainerSpec::build(&d, &d.components[0], &ports, "rift");
        assert_eq!(s.name, "web-api");
        assert_eq!(s.env, ["A=1", "PORT_REST=10001", "PORT_ADMIN_API=10002"]);
        assert_eq!(s.ports, [10001, 10002]);
        assert_eq!(s.nano_cpus, Some(1_500_000_000));
        assert_eq!(s.memory, Some(64 << 20));
        assert_eq!(s.restart, "unless-stopped");
        let single = ContainerSpec::build(&d, &d.components[1], &BTreeMap::from([(String::new(), 10003)]), "rift");
        assert_eq!(single.name, "web");
        assert_eq!(single.env, ["PORT=10003"]);
    }

    #[test]
    fn hash_follows_content() {
        let d = def();
        let ports = BTreeMap::from([("rest".to_string(), 10001), ("admin-api".to_string(), 10002)]);
        let a = ContainerSpec::build(&d, &d.components[0], &ports, "rift");
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.image = "r/web:v2".into();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.diff(&b), ["image"]);
        assert_eq!(a.with_hash_label().labels[LABEL_HASH], a.hash());
    }
}
