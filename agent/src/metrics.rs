//! The agent's Prometheus metrics (`mcp_agent_…`), served on `[metrics] listen`.
//!
//! Counters are bumped where things happen (deploys at the gRPC edge,
//! events through the registry's observer, proxy connections and requests
//! through the proxy's); gauges that
//! describe the present (certificate expiry, disk, containers up) are
//! computed at scrape time.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use mcp_infra::metrics::{self as m, CounterFamily, DeployMetrics, GaugeF64, GaugeFamily, Registry, labels, register};

use crate::handle::Agent;
use crate::outcome::{OpError, Outcome};
use crate::registry::Desired;

struct Metrics {
    registry: Registry,
    deploys: DeployMetrics,
    restarts: CounterFamily,
    drift: CounterFamily,
    flaps: CounterFamily,
    repairs: CounterFamily,
    proxy_connections: CounterFamily,
    proxy_requests: CounterFamily,
    cert_expiry: GaugeFamily,
    container_up: GaugeFamily,
    disk_total: GaugeF64,
    disk_available: GaugeF64,
    info: GaugeFamily,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::default();
    Metrics {
        deploys: DeployMetrics::register(
            &mut r,
            "mcp_agent",
            &["success", "unchanged", "failed", "rejected"],
            (
                "Deploys run by this agent, by result (success, unchanged, failed, rejected)",
                "Duration of the deploy pipeline's steps that ran (not skipped), by step",
            ),
        ),
        restarts: register(
            &mut r,
            "mcp_agent_container_restarts",
            "Containers restarted by the agent's monitor, by service and component",
            CounterFamily::default(),
        ),
        drift: register(
            &mut r,
            "mcp_agent_drift_events",
            "Drift detected between the registry and podman, by service, component and kind (missing, exited, image, ports)",
            CounterFamily::default(),
        ),
        flaps: register(
            &mut r,
            "mcp_agent_flap_events",
            "Components found flapping (restarting too often), by service and component",
            CounterFamily::default(),
        ),
        repairs: register(
            &mut r,
            "mcp_agent_repairs",
            "Repairs of drifted components, by service and component",
            CounterFamily::default(),
        ),
        proxy_connections: register(
            &mut r,
            "mcp_agent_proxy_connections",
            "Connections accepted by the built-in proxy for a route, by route hostname and mode (l4, l7)",
            CounterFamily::default(),
        ),
        proxy_requests: register(
            &mut r,
            "mcp_agent_proxy_requests",
            "HTTP requests answered by the built-in proxy's L7 routes, by route hostname (empty: no route) and status code",
            CounterFamily::default(),
        ),
        cert_expiry: register(
            &mut r,
            "mcp_agent_cert_expiry_seconds",
            "Seconds until a certificate expires (negative: expired), by kind (service, agent) and name",
            GaugeFamily::default(),
        ),
        container_up: register(
            &mut r,
            "mcp_agent_container_up",
            "1 when a component that should run is running, else 0, by service and component",
            GaugeFamily::default(),
        ),
        disk_total: register(
            &mut r,
            "mcp_agent_disk_total_bytes",
            "Size of the filesystem holding the agent's data directory",
            GaugeF64::default(),
        ),
        disk_available: register(
            &mut r,
            "mcp_agent_disk_available_bytes",
            "Bytes available to the agent on the filesystem holding its data directory",
            GaugeF64::default(),
        ),
        info: register(
            &mut r,
            "mcp_agent_build_info",
            "Always 1; labels carry the agent's node name and version",
            GaugeFamily::default(),
        ),
        registry: r,
    }
});

/// Counts a finished deploy and observes the durations of its steps.
pub fn deploy_finished(result: &Result<Outcome, OpError>) {
    let (label, outcome) = match result {
        Ok(o) if o.changed => ("success", Some(o)),
        Ok(o) => ("unchanged", Some(o)),
        Err(OpError::StepFailed { outcome, .. } | OpError::PortsExhausted { outcome, .. }) => {
            ("failed", Some(&**outcome))
        }
        Err(OpError::Invalid(_) | OpError::Conflict(_) | OpError::NotFound(_)) => ("rejected", None),
        Err(_) => ("failed", None),
    };
    let steps = outcome.iter().flat_map(|o| &o.steps).filter(|s| !s.skipped);
    METRICS.deploys.record(label, steps.map(|s| (s.name, s.duration_ms)));
}

/// Counts `n` restarts of a component's container (called by the monitor
/// when it restarts a container, or when podman reports restarts).
pub fn container_restarts(service: &str, component: &str, n: u64) {
    METRICS
        .restarts
        .get_or_create(&labels(&[("service", service), ("component", component)]))
        .inc_by(n);
}

/// Counts a recorded event by its kind: `drift-<what>` → drift events,
/// `flapping` → flap events, `repaired` → repairs; other kinds are not counted.
pub fn event(service: &str, component: &str, kind: &str) {
    if let Some(what) = kind.strip_prefix("drift-") {
        METRICS
            .drift
            .get_or_create(&labels(&[
                ("service", service),
                ("component", component),
                ("kind", what),
            ]))
            .inc();
    } else if kind == "flapping" {
        METRICS
            .flaps
            .get_or_create(&labels(&[("service", service), ("component", component)]))
            .inc();
    } else if kind == "repaired" {
        METRICS
            .repairs
            .get_or_create(&labels(&[("service", service), ("component", component)]))
            .inc();
    }
}

/// Counts a proxy connection that matched a route.
pub fn proxy_connection(route: &str, mode: &str) {
    METRICS
        .proxy_connections
        .get_or_create(&labels(&[("route", route), ("mode", mode)]))
        .inc();
}

/// Counts an HTTP request answered by the L7 proxy (`route` empty when no
/// route matched: the label set stays bounded by the configured routes).
pub fn proxy_request(route: &str, status: u16) {
    METRICS
        .proxy_requests
        .get_or_create(&labels(&[("route", route), ("status", &status.to_string())]))
        .inc();
}

/// Counts the built-in proxy's connections and requests.
pub struct ProxyTraffic;

impl mcp_proxy::Observer for ProxyTraffic {
    fn connection(&self, hostname: &str, mode: mcp_proxy::Mode) {
        proxy_connection(hostname, mode.as_str());
    }

    fn request(&self, hostname: &str, status: u16) {
        proxy_request(hostname, status);
    }
}

/// Refreshes the scrape-time gauges and encodes everything.
pub async fn render(agent: &Agent) -> String {
    let x = &*METRICS;
    x.info
        .get_or_create(&labels(&[
            ("node", agent.name()),
            ("version", mcp_infra::VERSION),
            ("commit", mcp_infra::GIT_COMMIT),
        ]))
        .set(1.0);
    // Certificates: the agent's own and every service certificate.
    x.cert_expiry.clear();
    if let Some(s) = std::fs::read_to_string(&agent.cfg.tls.cert)
        .ok()
        .and_then(|p| mcp_infra::pki::seconds_until_expiry(&p))
    {
        x.cert_expiry
            .get_or_create(&labels(&[("kind", "agent"), ("name", agent.name())]))
            .set(s as f64);
    }
    if let Ok(dir) = std::fs::read_dir(agent.cfg.certs_dir()) {
        for e in dir.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "pem") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if let Some(s) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|p| mcp_infra::pki::seconds_until_expiry(&p))
            {
                x.cert_expiry
                    .get_or_create(&labels(&[("kind", "service"), ("name", name)]))
                    .set(s as f64);
            }
        }
    }
    let (total, available) = crate::node::disk(&agent.cfg.agent.data_dir);
    x.disk_total.set(total as f64);
    x.disk_available.set(available as f64);
    // Components that should run: are they running? (Unreadable state
    // leaves the previous values rather than claiming everything is down.)
    if let (Ok(records), Ok(listed)) = (agent.registry.services(), agent.runtime.list_managed().await) {
        x.container_up.clear();
        for r in records {
            for c in r.components.iter().filter(|c| c.desired == Desired::Running) {
                let up = listed.get(&c.spec.name).is_some_and(|o| o.running());
                x.container_up
                    .get_or_create(&labels(&[("service", &r.def.name), ("component", &c.name)]))
                    .set(if up { 1.0 } else { 0.0 });
            }
        }
    }
    m::encode(&x.registry)
}

/// Starts the metrics listener when `[metrics]` is configured.
pub async fn start(agent: &Arc<Agent>) -> Result<Option<SocketAddr>, String> {
    let a = agent.clone();
    let render: m::Render = Arc::new(move || {
        let a = a.clone();
        Box::pin(async move { render(&a).await })
    });
    m::start_configured(agent.cfg.metrics.as_ref(), render).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_by_kind_prefix() {
        event("svc-ev", "web", "drift-exited");
        event("svc-ev", "web", "drift-exited");
        event("svc-ev", "web", "flapping");
        event("svc-ev", "web", "repaired");
        event("svc-ev", "web", "deploy");
        container_restarts("svc-ev", "web", 3);
        let text = m::encode(&METRICS.registry);
        assert!(
            text.contains(r#"mcp_agent_drift_events_total{service="svc-ev",component="web",kind="exited"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_agent_flap_events_total{service="svc-ev",component="web"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_agent_repairs_total{service="svc-ev",component="web"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_agent_container_restarts_total{service="svc-ev",component="web"} 3"#),
            "{text}"
        );
        assert!(!text.contains(r#"kind="deploy""#), "{text}");
    }
}
