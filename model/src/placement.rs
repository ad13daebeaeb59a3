//! Placement (SPEC §7): which node runs a service.
//!
//! A pure function of the definition and what the master knows about the
//! nodes; it does no IO, so the master, `mcp sync --dry-run` and the tests all
//! get the same answer for the same inputs.

use crate::service::{ServiceDef, Tier, parse_memory};

/// Role of a node in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Worker,
    Edge,
    Master,
}

impl NodeRole {
    /// Wire/config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Edge => "edge",
            NodeRole::Master => "master",
        }
    }

    /// Parses the wire/config spelling.
    pub fn parse(s: &str) -> Option<NodeRole> {
        match s {
            "worker" => Some(NodeRole::Worker),
            "edge" => Some(NodeRole::Edge),
            "master" => Some(NodeRole::Master),
            _ => None,
        }
    }
}

/// What placement knows about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub role: NodeRole,
    pub healthy: bool,
    /// Containers reported by the last heartbeat.
    pub containers: u32,
    /// CPU count; 0 = unknown.
    pub cpus: u32,
    /// Bytes; 0 = unknown.
    pub memory_available: u64,
    /// Bytes declared (components' `memory`) by services already placed
    /// here, excluding the one being placed.
    pub committed_memory: u64,
    /// CPUs declared by services already placed here, excluding the one
    /// being placed.
    pub committed_cpus: f64,
}

/// Where a service goes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub node: String,
    /// Human text such as `pinned` or `fewest containers (3)`.
    pub reason: String,
}

/// Why a service cannot be placed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("service {service} is pinned to node {node}, which is not registered")]
    UnknownNode { service: String, node: String },
    #[error("service {service} is pinned to node {node}, which is unhealthy")]
    Unhealthy { service: String, node: String },
    #[error("service {service} is pinned to node {node}, an edge node: edge nodes run no containers")]
    EdgeNode { service: String, node: String },
    #[error("service {service} is core tier but the master's node is not known")]
    NoMasterNode { service: String },
    #[error("service {service} is core tier but the master's node {node} is not registered")]
    UnknownMasterNode { service: String, node: String },
    #[error("service {service} is core tier but the master's node {node} is unhealthy")]
    UnhealthyMasterNode { service: String, node: String },
    #[error(
        "service {service} is core tier but the master's node {node} is an edge node: edge nodes run no containers"
    )]
    EdgeMasterNode { service: String, node: String },
    #[error("no node can run service {service}: {}", no_candidates(.reasons))]
    NoCandidates {
        service: String,
        /// One `<node>: <why>` per node, sorted by node name.
        reasons: Vec<String>,
    },
}

fn no_candidates(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "no nodes are registered".to_string()
    } else {
        reasons.join("; ")
    }
}

/// Resource demand of a service: total `memory` bytes and `cpus` of its components.
///
/// A `memory` that does not parse counts as 0: validation refuses it before
/// a definition reaches placement.
pub fn demand(def: &ServiceDef) -> (u64, f64) {
    def.components.iter().fold((0, 0.0), |(mem, cpus), c| {
        let m = c.memory.as_deref().and_then(|m| parse_memory(m).ok()).unwrap_or(0);
        (mem.saturating_add(m), cpus + c.cpus.unwrap_or(0.0))
    })
}

/// Places `def`; `current` is the node the service is placed on now, if any.
pub fn place(
    def: &ServiceDef,
    nodes: &[NodeView],
    master_node: Option<&str>,
    current: Option<&str>,
) -> Result<Placement, PlacementError> {
    let service = || def.name.clone();
    let find = |name: &str| nodes.iter().find(|n| n.name == name);

    if let Some(pin) = def.node.as_deref() {
        let node = || pin.to_string();
        return match find(pin) {
            None => Err(PlacementError::UnknownNode {
                service: service(),
                node: node(),
            }),
            Some(n) if !n.healthy => Err(PlacementError::Unhealthy {
                service: service(),
                node: node(),
            }),
            Some(n) if n.role == NodeRole::Edge => Err(PlacementError::EdgeNode {
                service: service(),
                node: node(),
            }),
            Some(_) => Ok(Placement {
                node: node(),
                reason: "pinned".into(),
            }),
        };
    }

    if def.tier() == Tier::Core {
        let Some(master) = master_node else {
            return Err(PlacementError::NoMasterNode { service: service() });
        };
        let node = || master.to_string();
        return match find(master) {
            None => Err(PlacementError::UnknownMasterNode {
                service: service(),
                node: node(),
            }),
            Some(n) if !n.healthy => Err(PlacementError::UnhealthyMasterNode {
                service: service(),
                node: node(),
            }),
            Some(n) if n.role == NodeRole::Edge => Err(PlacementError::EdgeMasterNode {
                service: service(),
                node: node(),
            }),
            Some(_) => Ok(Placement {
                node: node(),
                reason: "core tier: master's node".into(),
            }),
        };
    }

    let (mem, cpus) = demand(def);
    if let Some(n) = current.and_then(find)
        && n.healthy
        && n.role != NodeRole::Edge
        && misfit(n, mem, cpus).is_empty()
    {
        return Ok(Placement {
            node: n.name.clone(),
            reason: format!("kept on {}", n.name),
        });
    }

    let mut reasons = Vec::new();
    let mut best: Option<&NodeView> = None;
    for n in nodes {
        let why = if n.role == NodeRole::Edge {
            vec!["edge node".to_string()]
        } else if !n.healthy {
            vec!["unhealthy".to_string()]
        } else {
            misfit(n, mem, cpus)
        };
        if !why.is_empty() {
            reasons.push((n.name.as_str(), why.join(", ")));
            continue;
        }
        if best.is_none_or(|b| rank(n) < rank(b)) {
            best = Some(n);
        }
    }
    match best {
        Some(n) if n.role == NodeRole::Worker => Ok(Placement {
            node: n.name.clone(),
            reason: format!("fewest containers ({})", n.containers),
        }),
        Some(n) => Ok(Placement {
            node: n.name.clone(),
            reason: format!("master's node: no worker fits ({} containers)", n.containers),
        }),
        None => {
            reasons.sort();
            Err(PlacementError::NoCandidates {
                service: service(),
                reasons: reasons.into_iter().map(|(n, why)| format!("{n}: {why}")).collect(),
            })
        }
    }
}

/// Order of preference among candidates: workers before the master's node,
/// then fewest containers, then name.
fn rank(n: &NodeView) -> (bool, u32, &str) {
    (n.role != NodeRole::Worker, n.containers, &n.name)
}

/// Why `n` cannot take `mem` bytes and `cpus` more; empty when it can.
/// Unknown capacity (0) and no demand never limit.
fn misfit(n: &NodeView, mem: u64, cpus: f64) -> Vec<String> {
    let mut why = Vec::new();
    if mem > 0 && n.memory_available > 0 && n.committed_memory.saturating_add(mem) > n.memory_available {
        why.push(format!(
            "not enough memory ({} committed + {} needed > {} available)",
            fmt_bytes(n.committed_memory),
            fmt_bytes(mem),
            fmt_bytes(n.memory_available)
        ));
    }
    // The slack absorbs float rounding so that e.g. 0.1 + 0.2 fits in 0.3.
    if cpus > 0.0 && n.cpus > 0 && n.committed_cpus + cpus > f64::from(n.cpus) + 1e-9 {
        why.push(format!(
            "not enough cpus ({} committed + {} needed > {} available)",
            n.committed_cpus, cpus, n.cpus
        ));
    }
    why
}

/// `1.5G`, `512M`, `100K`, `17B`: short and exact enough for a message.
fn fmt_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (size, unit) in UNITS {
        if b >= size {
            let v = format!("{:.1}", b as f64 / size as f64);
            return format!("{}{unit}", v.trim_end_matches(".0"));
        }
    }
    format!("{b}B")
}

#[cfg(test)]
mod tests {
    //! Table-driven: a service and nodes are written in a small notation, the
    //! expectation is `<node>: <reason>` or `error: <message>`.

    use super::*;
    use crate::service::ComponentDef;

    /// Words: `node=<pin>`, `tier=<tier>`, and one `c=<memory|->/<cpus|->`
    /// per component (none = one component without limits).
    fn service(spec: &str) -> ServiceDef {
        let mut def = ServiceDef {
            name: "web".into(),
            node: None,
            tier: None,
            active: true,
            path: None,
            build: None,
            snapshot: None,
            components: Vec::new(),
        };
        for word in spec.split_whitespace() {
            let (key, value) = word.split_once('=').expect("service word is key=value");
            match key {
                "node" => def.node = Some(value.into()),
                "tier" => def.tier = Some(value.into()),
                "c" => {
                    let (mem, cpus) = value.split_once('/').expect("component is <memory>/<cpus>");
                    def.components.push(ComponentDef {
                        name: format!("c{}", def.components.len()),
                        image: "registry.example.net/web:v1".into(),
                        memory: (mem != "-").then(|| mem.to_string()),
                        cpus: (cpus != "-").then(|| cpus.parse().expect("cpus is a number")),
                        ..ComponentDef::default()
                    });
                }
                _ => panic!("unknown service word {word:?}"),
            }
        }
        if def.components.is_empty() {
            def.components.push(ComponentDef {
                name: "c0".into(),
                image: "registry.example.net/web:v1".into(),
                ..ComponentDef::default()
            });
        }
        def
    }

    /// `<name> <role> <containers>` then any of `down`, `cpus=<n>`,
    /// `mem=<size>`, `used=<memory|->/<cpus|->`.
    fn node(spec: &str) -> NodeView {
        let mut words = spec.split_whitespace();
        let mut next = |what: &str| {
            words
                .next()
                .unwrap_or_else(|| panic!("node spec {spec:?} lacks {what}"))
        };
        let mut n = NodeView {
            name: next("a name").into(),
            role: NodeRole::parse(next("a role")).expect("valid role"),
            healthy: true,
            containers: next("a container count").parse().expect("container count"),
            cpus: 0,
            memory_available: 0,
            committed_memory: 0,
            committed_cpus: 0.0,
        };
        for word in words {
            match word.split_once('=') {
                None if word == "down" => n.healthy = false,
                Some(("cpus", v)) => n.cpus = v.parse().expect("cpus"),
                Some(("mem", v)) => n.memory_available = parse_memory(v).expect("mem"),
                Some(("used", v)) => {
                    let (mem, cpus) = v.split_once('/').expect("used is <memory>/<cpus>");
                    if mem != "-" {
                        n.committed_memory = parse_memory(mem).expect("used memory");
                    }
                    if cpus != "-" {
                        n.committed_cpus = cpus.parse().expect("used cpus");
                    }
                }
                _ => panic!("unknown node word {word:?}"),
            }
        }
        n
    }

    fn check(svc: &str, nodes: &[&str], master: Option<&str>, current: Option<&str>, expected: &str) {
        let nodes: Vec<NodeView> = nodes.iter().map(|s| node(s)).collect();
        let got = match place(&service(svc), &nodes, master, current) {
            Ok(p) => format!("{}: {}", p.node, p.reason),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(
            got, expected,
            "service {svc:?} nodes {nodes:?} master {master:?} current {current:?}"
        );
    }

    const FLEET: &[&str] = &["mars master 5", "rift worker 3", "vade worker 1", "gate edge 0"];

    #[test]
    fn pinned() {
        check("node=rift", FLEET, Some("mars"), None, "rift: pinned");
        check("node=mars", FLEET, Some("mars"), None, "mars: pinned");
        // A pin wins over stickiness and ignores capacity.
        check("node=rift", FLEET, Some("mars"), Some("vade"), "rift: pinned");
        check(
            "node=rift c=4G/8",
            &["rift worker 9 mem=1G cpus=1"],
            None,
            None,
            "rift: pinned",
        );
        check(
            "node=nope",
            FLEET,
            Some("mars"),
            None,
            "error: service web is pinned to node nope, which is not registered",
        );
        check(
            "node=rift",
            &["rift worker 3 down", "vade worker 1"],
            None,
            None,
            "error: service web is pinned to node rift, which is unhealthy",
        );
        check(
            "node=gate",
            FLEET,
            Some("mars"),
            None,
            "error: service web is pinned to node gate, an edge node: edge nodes run no containers",
        );
    }

    #[test]
    fn core_tier() {
        check("tier=core", FLEET, Some("mars"), None, "mars: core tier: master's node");
        // Not sticky: core services follow the master.
        check(
            "tier=core",
            FLEET,
            Some("mars"),
            Some("rift"),
            "mars: core tier: master's node",
        );
        check(
            "tier=core c=64G/64",
            &["mars master 0 mem=1G cpus=1"],
            Some("mars"),
            None,
            "mars: core tier: master's node",
        );
        check(
            "tier=core",
            FLEET,
            None,
            None,
            "error: service web is core tier but the master's node is not known",
        );
        check(
            "tier=core",
            FLEET,
            Some("gone"),
            None,
            "error: service web is core tier but the master's node gone is not registered",
        );
        check(
            "tier=core",
            &["mars master 5 down", "rift worker 0"],
            Some("mars"),
            None,
            "error: service web is core tier but the master's node mars is unhealthy",
        );
        check(
            "tier=core",
            FLEET,
            Some("gate"),
            None,
            "error: service web is core tier but the master's node gate is an edge node: edge nodes run no containers",
        );
    }

    #[test]
    fn fewest_containers() {
        check("", FLEET, Some("mars"), None, "vade: fewest containers (1)");
        check("tier=worker", FLEET, Some("mars"), None, "vade: fewest containers (1)");
        check(
            "",
            &["a worker 7", "b worker 2", "c worker 4"],
            None,
            None,
            "b: fewest containers (2)",
        );
        // Ties go to the first name, whatever the input order.
        check(
            "",
            &["rift worker 2", "bolt worker 2", "vade worker 2"],
            None,
            None,
            "bolt: fewest containers (2)",
        );
        check(
            "",
            &["b worker 0", "a worker 0"],
            None,
            None,
            "a: fewest containers (0)",
        );
        // The edge node has the fewest containers but never gets any.
        check(
            "",
            &["gate edge 0", "rift worker 9"],
            None,
            None,
            "rift: fewest containers (9)",
        );
        // Unhealthy nodes are skipped, however empty.
        check(
            "",
            &["vade worker 0 down", "rift worker 9"],
            None,
            None,
            "rift: fewest containers (9)",
        );
    }

    #[test]
    fn workers_before_master() {
        // The master's node is emptier but a worker fits.
        check(
            "",
            &["mars master 0", "rift worker 9"],
            Some("mars"),
            None,
            "rift: fewest containers (9)",
        );
        // One-machine fleet.
        check(
            "",
            &["mars master 4"],
            Some("mars"),
            None,
            "mars: master's node: no worker fits (4 containers)",
        );
        check(
            "",
            &["mars master 4", "gate edge 0"],
            None,
            None,
            "mars: master's node: no worker fits (4 containers)",
        );
        // Workers exist but none is healthy or fits.
        check(
            "",
            &["mars master 4", "rift worker 0 down"],
            Some("mars"),
            None,
            "mars: master's node: no worker fits (4 containers)",
        );
        check(
            "c=2G/-",
            &["mars master 4 mem=16G", "rift worker 0 mem=1G"],
            Some("mars"),
            None,
            "mars: master's node: no worker fits (4 containers)",
        );
    }

    #[test]
    fn sticky() {
        // Kept although vade has fewer containers.
        check("", FLEET, Some("mars"), Some("rift"), "rift: kept on rift");
        // Kept on the master's node although a worker has joined since.
        check("", FLEET, Some("mars"), Some("mars"), "mars: kept on mars");
        // Kept when its own demand is not double counted: committed excludes it.
        check(
            "c=4G/2",
            &["rift worker 3 mem=8G cpus=4 used=4G/2", "vade worker 0"],
            None,
            Some("rift"),
            "rift: kept on rift",
        );
        // Moved when the current node is unhealthy, an edge, gone or full.
        check(
            "",
            &["rift worker 3 down", "vade worker 1"],
            None,
            Some("rift"),
            "vade: fewest containers (1)",
        );
        check("", FLEET, Some("mars"), Some("gate"), "vade: fewest containers (1)");
        check("", FLEET, Some("mars"), Some("gone"), "vade: fewest containers (1)");
        check(
            "c=4G/-",
            &["rift worker 0 mem=8G used=5G/-", "vade worker 1"],
            None,
            Some("rift"),
            "vade: fewest containers (1)",
        );
        check(
            "c=-/2",
            &["rift worker 0 cpus=4 used=-/3", "vade worker 1"],
            None,
            Some("rift"),
            "vade: fewest containers (1)",
        );
    }

    #[test]
    fn capacity() {
        // Memory: committed + demand must not exceed what is available.
        check(
            "c=2G/-",
            &["a worker 0 mem=1G", "b worker 5 mem=4G"],
            None,
            None,
            "b: fewest containers (5)",
        );
        check(
            "c=1G/- c=1G/-",
            &["a worker 0 mem=3G used=2G/-", "b worker 5"],
            None,
            None,
            "b: fewest containers (5)",
        );
        check(
            "c=1G/-",
            &["a worker 0 mem=3G used=2G/-", "b worker 5"],
            None,
            None,
            "a: fewest containers (0)",
        );
        // Cpus likewise, summed over components.
        check(
            "c=-/1.5 c=-/1",
            &["a worker 0 cpus=2", "b worker 5 cpus=4"],
            None,
            None,
            "b: fewest containers (5)",
        );
        check(
            "c=-/1",
            &["a worker 0 cpus=2 used=-/1", "b worker 5"],
            None,
            None,
            "a: fewest containers (0)",
        );
        check(
            "c=-/0.2",
            &["a worker 0 cpus=1 used=-/0.8", "b worker 5"],
            None,
            None,
            "a: fewest containers (0)",
        );
        check(
            "c=-/0.3",
            &["a worker 0 cpus=1 used=-/0.8", "b worker 5"],
            None,
            None,
            "b: fewest containers (5)",
        );
        // Unknown capacity does not limit.
        check(
            "c=64G/64",
            &["a worker 0 used=100G/100"],
            None,
            None,
            "a: fewest containers (0)",
        );
        // No demand is not limited by a full node.
        check(
            "",
            &["a worker 0 mem=1G cpus=1 used=1G/1"],
            None,
            None,
            "a: fewest containers (0)",
        );
        check(
            "c=-/1",
            &["a worker 0 mem=1G cpus=2 used=2G/-"],
            None,
            None,
            "a: fewest containers (0)",
        );
    }

    #[test]
    fn no_candidates() {
        check(
            "",
            &[],
            None,
            None,
            "error: no node can run service web: no nodes are registered",
        );
        check(
            "c=2G/3",
            &[
                "vade worker 0 mem=4G cpus=4 used=3G/2",
                "gate edge 0",
                "rift worker 0 down",
                "mars master 0 mem=1G",
                "bolt worker 0 cpus=2",
            ],
            Some("mars"),
            Some("vade"),
            "error: no node can run service web: \
             bolt: not enough cpus (0 committed + 3 needed > 2 available); \
             gate: edge node; \
             mars: not enough memory (0B committed + 2G needed > 1G available); \
             rift: unhealthy; \
             vade: not enough memory (3G committed + 2G needed > 4G available), \
             not enough cpus (2 committed + 3 needed > 4 available)",
        );
    }

    #[test]
    fn no_candidates_is_one_reason_per_node() {
        let nodes = [node("a edge 0"), node("b worker 0 down")];
        let err = place(&service(""), &nodes, None, None).expect_err("no candidates");
        assert_eq!(
            err,
            PlacementError::NoCandidates {
                service: "web".into(),
                reasons: vec!["a: edge node".into(), "b: unhealthy".into()],
            }
        );
    }

    fn check_demand(svc: &str, expected: (u64, f64)) {
        assert_eq!(demand(&service(svc)), expected, "service {svc:?}");
    }

    #[test]
    fn demand_sums_components() {
        check_demand("", (0, 0.0));
        check_demand("c=512M/-", (512 << 20, 0.0));
        check_demand("c=-/1.5", (0, 1.5));
        check_demand("c=512M/0.5 c=1G/- c=-/2", ((512 << 20) + (1 << 30), 2.5));
        check_demand("c=1Gi/1 c=1048576000/1", ((1 << 30) + 1_048_576_000, 2.0));
    }

    #[test]
    fn roles_round_trip() {
        for role in [NodeRole::Worker, NodeRole::Edge, NodeRole::Master] {
            assert_eq!(NodeRole::parse(role.as_str()), Some(role));
        }
        assert_eq!(NodeRole::parse("Worker"), None);
        assert_eq!(NodeRole::parse(""), None);
    }

    #[test]
    fn byte_format() {
        for (b, s) in [
            (0, "0B"),
            (17, "17B"),
            (1536, "1.5K"),
            (512 << 20, "512M"),
            (3 << 29, "1.5G"),
            (2 << 40, "2T"),
        ] {
            assert_eq!(fmt_bytes(b), s);
        }
    }
}
