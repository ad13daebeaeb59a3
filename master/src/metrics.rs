//! The master's Prometheus metrics (`mcp_master_…`), served on `[metrics] listen`.
//!
//! Deploy and DNS counters are bumped where things happen; node and
//! placement gauges are computed from the master's state at scrape time.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use mcp_infra::metrics::{self as m, CounterFamily, GaugeFamily, HistogramFamily, Registry, labels};
use mcp_proto as proto;
use prost::Message;

use crate::fleet::{FleetError, Master};

struct Metrics {
    registry: Registry,
    deploys: CounterFamily,
    step_duration: HistogramFamily,
    dns_queries: CounterFamily,
    nodes: GaugeFamily,
    node_healthy: GaugeFamily,
    heartbeat_age: GaugeFamily,
    node_disk_total: GaugeFamily,
    node_disk_available: GaugeFamily,
    placements: GaugeFamily,
    info: GaugeFamily,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let x = Metrics {
        deploys: Default::default(),
        step_duration: m::seconds_histogram_family(),
        dns_queries: Default::default(),
        nodes: Default::default(),
        node_healthy: Default::default(),
        heartbeat_age: Default::default(),
        node_disk_total: Default::default(),
        node_disk_available: Default::default(),
        placements: Default::default(),
        info: Default::default(),
        registry: Registry::default(),
    };
    registry.register(
        "mcp_master_deploys",
        "Deploys coordinated by the master, by result (success, failed, rejected)",
        x.deploys.clone(),
    );
    registry.register(
        "mcp_master_deploy_step_duration_seconds",
        "Duration of deploy steps as reported by the agents (and the edge step), by step",
        x.step_duration.clone(),
    );
    registry.register(
        "mcp_master_dns_queries",
        "DNS queries answered by the master's internal zone, by response code",
        x.dns_queries.clone(),
    );
    registry.register("mcp_master_nodes", "Nodes of the fleet, by status", x.nodes.clone());
    registry.register(
        "mcp_master_node_healthy",
        "1 when a node is healthy (heartbeating or answering probes), else 0, by node and role",
        x.node_healthy.clone(),
    );
    registry.register(
        "mcp_master_node_heartbeat_age_seconds",
        "Seconds since a node's last heartbeat or registration, by node",
        x.heartbeat_age.clone(),
    );
    registry.register(
        "mcp_master_node_disk_total_bytes",
        "Disk size a node reported in its last heartbeat, by node",
        x.node_disk_total.clone(),
    );
    registry.register(
        "mcp_master_node_disk_available_bytes",
        "Disk space available a node reported in its last heartbeat, by node",
        x.node_disk_available.clone(),
    );
    registry.register(
        "mcp_master_placements",
        "Placed services, by placement state (deploying, deployed, failed, stopped, unknown)",
        x.placements.clone(),
    );
    registry.register(
        "mcp_master_build_info",
        "Always 1; labels carry the master's version",
        x.info.clone(),
    );
    // Every result from the start, so `increase()` sees the first one.
    for r in ["success", "failed", "rejected"] {
        let _ = x.deploys.get_or_create(&labels(&[("result", r)]));
    }
    Metrics { registry, ..x }
});

/// Counts a finished deploy and observes the durations of the steps the
/// agent (and the edge) reported, on success and on a failed step alike.
pub fn deploy_finished(result: &Result<proto::FleetOperationResponse, FleetError>) {
    let (label, steps) = match result {
        Ok(r) => (
            "success",
            r.result.as_ref().map(|o| o.steps.clone()).unwrap_or_default(),
        ),
        Err(FleetError::Invalid(_) | FleetError::Precondition(_) | FleetError::NotFound(_)) => ("rejected", Vec::new()),
        Err(FleetError::Agent { status, .. }) => (
            "failed",
            proto::OperationResponse::decode(status.details())
                .map(|o| o.steps)
                .unwrap_or_default(),
        ),
        Err(_) => ("failed", Vec::new()),
    };
    METRICS.deploys.get_or_create(&labels(&[("result", label)])).inc();
    for s in steps.iter().filter(|s| !s.skipped) {
        METRICS
            .step_duration
            .get_or_create(&labels(&[("step", &s.step)]))
            .observe(s.duration_ms as f64 / 1000.0);
    }
}

/// Counts a DNS answer by its response code (`NOERROR`, `NXDOMAIN`, …).
pub fn dns_query(rcode: &str) {
    METRICS.dns_queries.get_or_create(&labels(&[("rcode", rcode)])).inc();
}

/// Refreshes the scrape-time gauges and encodes everything.
pub fn render(master: &Master) -> String {
    let x = &*METRICS;
    x.info
        .get_or_create(&labels(&[
            ("version", mcp_infra::VERSION),
            ("commit", mcp_infra::GIT_COMMIT),
        ]))
        .set(1.0);
    let now = crate::db::now();
    let nodes = master.nodes();
    x.node_healthy.clear();
    x.heartbeat_age.clear();
    x.node_disk_total.clear();
    x.node_disk_available.clear();
    let mut healthy = 0;
    for n in &nodes {
        healthy += usize::from(n.healthy);
        let node = labels(&[("node", &n.name)]);
        x.node_healthy
            .get_or_create(&labels(&[("node", &n.name), ("role", &n.role)]))
            .set(if n.healthy { 1.0 } else { 0.0 });
        x.heartbeat_age
            .get_or_create(&node)
            .set((now - n.last_seen).max(0) as f64);
        x.node_disk_total.get_or_create(&node).set(n.disk_total as f64);
        x.node_disk_available.get_or_create(&node).set(n.disk_available as f64);
    }
    x.nodes
        .get_or_create(&labels(&[("status", "healthy")]))
        .set(healthy as f64);
    x.nodes
        .get_or_create(&labels(&[("status", "unhealthy")]))
        .set((nodes.len() - healthy) as f64);
    if let Ok(placements) = master.db.placements() {
        x.placements.clear();
        for state in ["deploying", "deployed", "failed", "stopped", "unknown"] {
            x.placements.get_or_create(&labels(&[("state", state)])).set(0.0);
        }
        for p in placements {
            x.placements.get_or_create(&labels(&[("state", &p.state)])).inc();
        }
    }
    m::encode(&x.registry)
}

/// Starts the metrics listener when `[metrics]` is configured.
pub async fn start(master: &Arc<Master>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(cfg) = &master.cfg.metrics else {
        return Ok(None);
    };
    let mm = master.clone();
    let render: m::Render = Arc::new(move || {
        let text = render(&mm);
        Box::pin(async move { text })
    });
    let addr = m::start(cfg.listen, render)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen {}: {e}", cfg.listen))?;
    Ok(Some(addr))
}
