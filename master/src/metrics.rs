//! The master's Prometheus metrics (`mcp_master_…`), served on `[metrics] listen`.
//!
//! Deploy and DNS counters are bumped where things happen; node and
//! placement gauges are computed from rows handed in at scrape time, so
//! this module observes the fleet without knowing its types.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use mcp_infra::metrics::{self as m, CounterFamily, DeployMetrics, GaugeFamily, Registry, labels, register};

use crate::db::{NodeRow, PlacementRow};
use crate::reports::Step;

struct Metrics {
    registry: Registry,
    deploys: DeployMetrics,
    dns_queries: CounterFamily,
    nodes: GaugeFamily,
    node_healthy: GaugeFamily,
    heartbeat_age: GaugeFamily,
    node_disk_total: GaugeFamily,
    node_disk_available: GaugeFamily,
    placements: GaugeFamily,
    info: GaugeFamily,
}

/// Placement states, each exported even at 0.
const PLACEMENT_STATES: [&str; 5] = ["deploying", "deployed", "failed", "stopped", "unknown"];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::default();
    Metrics {
        deploys: DeployMetrics::register(
            &mut r,
            "mcp_master",
            &[
                DeployResult::Success.label(),
                DeployResult::Failed.label(),
                DeployResult::Rejected.label(),
            ],
            (
                "Deploys coordinated by the master, by result (success, failed, rejected)",
                "Duration of deploy steps as reported by the agents (and the edge step), by step",
            ),
        ),
        dns_queries: register(
            &mut r,
            "mcp_master_dns_queries",
            "DNS queries answered by the master's internal zone, by response code",
            CounterFamily::default(),
        ),
        nodes: register(
            &mut r,
            "mcp_master_nodes",
            "Nodes of the fleet, by status",
            GaugeFamily::default(),
        ),
        node_healthy: register(
            &mut r,
            "mcp_master_node_healthy",
            "1 when a node is healthy (heartbeating or answering probes), else 0, by node and role",
            GaugeFamily::default(),
        ),
        heartbeat_age: register(
            &mut r,
            "mcp_master_node_heartbeat_age_seconds",
            "Seconds since a node's last heartbeat or registration, by node",
            GaugeFamily::default(),
        ),
        node_disk_total: register(
            &mut r,
            "mcp_master_node_disk_total_bytes",
            "Disk size a node reported in its last heartbeat, by node",
            GaugeFamily::default(),
        ),
        node_disk_available: register(
            &mut r,
            "mcp_master_node_disk_available_bytes",
            "Disk space available a node reported in its last heartbeat, by node",
            GaugeFamily::default(),
        ),
        placements: register(
            &mut r,
            "mcp_master_placements",
            "Placed services, by placement state (deploying, deployed, failed, stopped, unknown)",
            GaugeFamily::default(),
        ),
        info: register(
            &mut r,
            "mcp_master_build_info",
            "Always 1; labels carry the master's version",
            GaugeFamily::default(),
        ),
        registry: r,
    }
});

/// How a deploy the master coordinated ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployResult {
    Success,
    /// The agent failed it, or it could not be sent.
    Failed,
    /// Refused before anything was sent (bad input, fleet state).
    Rejected,
}

impl DeployResult {
    fn label(self) -> &'static str {
        match self {
            DeployResult::Success => "success",
            DeployResult::Failed => "failed",
            DeployResult::Rejected => "rejected",
        }
    }
}

/// Counts a finished deploy and observes the durations of the steps that
/// ran (the agent's and the edge step), on success and on a failed step alike.
pub fn deploy_finished(result: DeployResult, steps: &[Step]) {
    let ran = steps.iter().filter(|s| !s.skipped);
    METRICS
        .deploys
        .record(result.label(), ran.map(|s| (s.step.as_str(), s.duration_ms)));
}

/// Counts a DNS answer by its response code (`NOERROR`, `NXDOMAIN`, …).
pub fn dns_query(rcode: &str) {
    METRICS.dns_queries.get_or_create(&labels(&[("rcode", rcode)])).inc();
}

/// Refreshes the scrape-time gauges from `nodes` and (when they could be
/// read) `placements` at `now` (Unix seconds), and encodes everything.
pub fn render(nodes: &[NodeRow], placements: Option<&[PlacementRow]>, now: i64) -> String {
    let x = &*METRICS;
    x.info
        .get_or_create(&labels(&[
            ("version", mcp_infra::VERSION),
            ("commit", mcp_infra::GIT_COMMIT),
        ]))
        .set(1.0);
    x.node_healthy.clear();
    x.heartbeat_age.clear();
    x.node_disk_total.clear();
    x.node_disk_available.clear();
    let mut healthy = 0;
    for n in nodes {
        healthy += usize::from(n.healthy);
        let node = labels(&[("node", &n.name)]);
        x.node_healthy
            .get_or_create(&labels(&[("node", &n.name), ("role", &n.role)]))
            .set(if n.healthy { 1.0 } else { 0.0 });
        x.heartbeat_age
            .get_or_create(&node)
            .set((now - n.last_seen).max(0) as f64);
        x.node_disk_total.get_or_create(&node).set(n.load.disk_total as f64);
        x.node_disk_available
            .get_or_create(&node)
            .set(n.load.disk_available as f64);
    }
    x.nodes
        .get_or_create(&labels(&[("status", "healthy")]))
        .set(healthy as f64);
    x.nodes
        .get_or_create(&labels(&[("status", "unhealthy")]))
        .set((nodes.len() - healthy) as f64);
    if let Some(placements) = placements {
        x.placements.clear();
        for state in PLACEMENT_STATES {
            x.placements.get_or_create(&labels(&[("state", state)])).set(0.0);
        }
        for p in placements {
            x.placements.get_or_create(&labels(&[("state", &p.state)])).inc();
        }
    }
    m::encode(&x.registry)
}

/// Starts the metrics listener on `listen`, answering every scrape with
/// what `scrape` renders; returns the bound address.
pub async fn start(
    listen: SocketAddr,
    scrape: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let scrape = Arc::new(scrape);
    let render: m::Render = Arc::new(move || {
        let text = scrape();
        Box::pin(async move { text })
    });
    m::start(listen, render).await
}
