//! [`Agent`], the small handle every part of the agent shares: its
//! configuration, registry, container runtime and platform services, the
//! per-service operation locks and the host ports in-flight deploys hold.
//! Subsystems add their operations in their own modules (`deploy`,
//! `lifecycle`, `wiring`, …); this module imports none of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use mcp_model::service::{ComponentDef, ServiceDef};

use crate::config::AgentConfig;
use crate::platform::ProxyBackend;
use crate::platform::{CertAuthority, DnsRegistrar};
use crate::registry::Registry;
use crate::runtime::ContainerRuntime;
use crate::runtime::spec::ContainerSpec;

/// Agent state shared by all requests and background work.
pub struct Agent {
    pub cfg: AgentConfig,
    pub registry: Registry,
    /// The container runtime (rootless podman in production).
    pub runtime: Arc<dyn ContainerRuntime>,
    pub started: Instant,
    /// The runtime's version, read once at start (podman's /version call is slow).
    pub runtime_version: String,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Host ports handed out by deploys still in flight.
    pub(crate) reserved: std::sync::Mutex<HashSet<u16>>,
    /// Where service certificates come from (none: L7 deploys fail).
    pub ca: Option<Arc<dyn CertAuthority>>,
    /// Where DNS records go (none: skipped).
    pub dns: Option<Arc<dyn DnsRegistrar>>,
    /// The proxy routes go to (none: recorded only).
    pub proxy: Option<Arc<dyn ProxyBackend>>,
    /// Services whose DNS registration was deferred (DNS down); the
    /// monitor retries them.
    pub(crate) dns_pending: std::sync::Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.name())
            .finish_non_exhaustive()
    }
}

/// The platform services an agent wires services into.
#[derive(Default)]
pub struct Platform {
    pub ca: Option<Arc<dyn CertAuthority>>,
    pub dns: Option<Arc<dyn DnsRegistrar>>,
    pub proxy: Option<Arc<dyn ProxyBackend>>,
}

impl Agent {
    /// Assembles the agent.
    pub fn new(
        cfg: AgentConfig,
        registry: Registry,
        runtime: Arc<dyn ContainerRuntime>,
        runtime_version: String,
        platform: Platform,
    ) -> Agent {
        Agent {
            cfg,
            registry,
            runtime,
            runtime_version,
            started: Instant::now(),
            locks: Default::default(),
            reserved: Default::default(),
            ca: platform.ca,
            dns: platform.dns,
            proxy: platform.proxy,
            dns_pending: Default::default(),
        }
    }

    /// Node name.
    pub fn name(&self) -> &str {
        &self.cfg.agent.name
    }

    /// Whether an operation on `service` is in flight.
    pub fn busy(&self, service: &str) -> bool {
        let locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.get(service).is_some_and(|m| m.try_lock().is_err())
    }

    /// Waits for and takes the operation lock of `service`.
    pub(crate) async fn lock(&self, service: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(service.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Records an event of a service, logs it, and alerts when asked.
    pub fn report(&self, service: &str, component: &str, kind: &str, message: &str, alert: bool) {
        if let Err(e) = self.registry.event(service, component, kind, message) {
            tracing::error!(%service, error = %e, "cannot record event {kind}");
        }
        if alert {
            self.alert(service, component, kind, message);
        } else {
            tracing::info!(%service, %component, event = kind, %message, "event");
        }
    }

    /// Sends an alert (log and `monitor.alert_command`) without recording it.
    pub fn alert(&self, service: &str, component: &str, kind: &str, message: &str) {
        crate::alerts::send(
            &self.cfg.monitor.alert_command,
            self.name(),
            service,
            component,
            kind,
            message,
        );
    }

    /// Drops events older than `monitor.event_retention_days`.
    pub fn prune_events(&self) {
        let days = self.cfg.monitor.event_retention_days;
        match self.registry.prune_events(days) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, days, "pruned old events"),
            Err(e) => tracing::warn!(error = %e, "cannot prune events"),
        }
    }

    /// The container spec of `component`, its volume sources resolved
    /// under `agent.volumes_root`.
    pub(crate) fn container_spec(
        &self,
        def: &ServiceDef,
        component: &ComponentDef,
        ports: &BTreeMap<String, u16>,
    ) -> ContainerSpec {
        let mut spec = ContainerSpec::build(def, component, ports, self.name());
        let root = self.cfg.agent.volumes_root.as_deref();
        spec.volumes = spec
            .volumes
            .iter()
            .map(|v| crate::volumes::host_volume(v, root))
            .collect();
        spec
    }
}
