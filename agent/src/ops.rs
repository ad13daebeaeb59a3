//! The agent's operations: deploy pipeline (SPEC §4), stop, start, restart,
//! undeploy, and status. Plain async functions over [`Agent`]; the gRPC
//! layer only converts and dispatches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::config::AgentConfig;
use mcp_model::service::{self, ServiceDef};

use crate::plan::{self, Action, Seen};
use crate::podman::{LABEL_HASH, LABEL_SERVICE, Observed, Podman, PodmanError};
use crate::registry::{ComponentRecord, Desired, EventRecord, Registry, RegistryError, RouteRecord, ServiceRecord};
use crate::spec::ContainerSpec;

/// Pipeline step names, in deploy order.
pub mod step {
    pub const PORTS: &str = "ports";
    pub const CERTIFICATES: &str = "certificates";
    pub const CONTAINERS: &str = "containers";
    pub const ROUTES: &str = "routes";
    pub const DNS: &str = "dns";
    pub const REGISTRY: &str = "registry";
}

/// Outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub success: bool,
    pub skipped: bool,
    pub detail: String,
    pub error: String,
    pub duration_ms: u64,
}

/// Result of an operation that ran (it may have failed at a step).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub steps: Vec<Step>,
    pub changed: bool,
    pub warnings: Vec<String>,
    /// State after the operation, when the operation already knows it.
    pub view: Option<ServiceView>,
}

impl Outcome {
    fn ok(&mut self, name: &'static str, started: Instant, detail: impl Into<String>) {
        self.push(name, started, true, false, detail.into(), String::new());
    }
    fn skip(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Instant::now(), true, true, detail.into(), String::new());
    }
    fn fail(&mut self, name: &'static str, started: Instant, error: impl Into<String>) {
        self.push(name, started, false, false, String::new(), error.into());
    }
    fn push(
        &mut self,
        name: &'static str,
        started: Instant,
        success: bool,
        skipped: bool,
        detail: String,
        error: String,
    ) {
        self.steps.push(Step {
            name,
            success,
            skipped,
            detail,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }

    /// The first failed step, if any.
    pub fn failed(&self) -> Option<&Step> {
        self.steps.iter().find(|s| !s.success)
    }
}

/// Why an operation could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Bad request; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error("service {0:?} is not deployed on this node")]
    NotFound(String),
    /// Conflicts with existing state; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// A pipeline step failed; the outcome says which, and what was undone.
    #[error("{step} failed: {error}")]
    StepFailed {
        step: &'static str,
        error: String,
        outcome: Outcome,
    },
    #[error("no free host port in {min}-{max}")]
    PortsExhausted { min: u16, max: u16, outcome: Outcome },
    /// Data that failed its integrity check; nothing was changed.
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Podman(#[from] PodmanError),
}

impl OpError {
    fn from_outcome(outcome: Outcome) -> OpError {
        let failed = outcome.failed().cloned().expect("called with a failed step");
        OpError::StepFailed {
            step: failed.name,
            error: failed.error,
            outcome,
        }
    }
}

/// Observed view of one service for status and `ps`.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub record: ServiceRecord,
    /// Container name → what podman says (absent = missing).
    pub observed: HashMap<String, Observed>,
}

/// Suffix of the previous container kept while its replacement starts.
const PREV_SUFFIX: &str = "-mcp-prev";

/// Agent state shared by all requests.
pub struct Agent {
    pub cfg: AgentConfig,
    pub registry: Registry,
    pub podman: Podman,
    pub started: Instant,
    /// podman's version, read once at start (its /version call is slow).
    pub podman_version: String,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Host ports handed out by deploys still in flight.
    reserved: std::sync::Mutex<HashSet<u16>>,
    /// Where service certificates come from (none: L7 deploys fail).
    pub ca: Option<Arc<dyn crate::platform::CertAuthority>>,
    /// Where DNS records go (none: skipped).
    pub dns: Option<Arc<dyn crate::platform::DnsRegistrar>>,
    /// The proxy routes go to (none: recorded only).
    pub proxy: Option<Arc<dyn crate::platform::ProxyBackend>>,
    /// Boot sequence progress; one boot or recovery at a time.
    pub boot: crate::boot::BootState,
    /// What the monitor remembers between passes.
    pub monitor: crate::monitor::MonitorState,
    /// Services whose DNS registration was deferred (DNS down); the
    /// monitor retries them.
    pub(crate) dns_pending: std::sync::Mutex<HashSet<String>>,
}

/// The platform services an agent wires services into.
#[derive(Default)]
pub struct Platform {
    pub ca: Option<Arc<dyn crate::platform::CertAuthority>>,
    pub dns: Option<Arc<dyn crate::platform::DnsRegistrar>>,
    pub proxy: Option<Arc<dyn crate::platform::ProxyBackend>>,
}

impl Agent {
    /// Assembles the agent.
    pub fn new(
        cfg: AgentConfig,
        registry: Registry,
        podman: Podman,
        podman_version: String,
        platform: Platform,
    ) -> Agent {
        Agent {
            cfg,
            registry,
            podman,
            podman_version,
            started: Instant::now(),
            locks: Default::default(),
            reserved: Default::default(),
            ca: platform.ca,
            dns: platform.dns,
            proxy: platform.proxy,
            boot: Default::default(),
            monitor: Default::default(),
            dns_pending: Default::default(),
        }
    }

    /// Whether an operation on `service` is in flight.
    pub fn busy(&self, service: &str) -> bool {
        let locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.get(service).is_some_and(|m| m.try_lock().is_err())
    }

    /// Records an event of a service, logs it, and alerts when asked.
    pub fn report(&self, service: &str, component: &str, kind: &str, message: &str, alert: bool) {
        if let Err(e) = self.registry.event(service, component, kind, message) {
            tracing::error!(%service, error = %e, "cannot record event {kind}");
        }
        if alert {
            crate::monitor::alert(self, service, component, kind, message);
        } else {
            tracing::info!(%service, %component, event = kind, %message, "event");
        }
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

    /// Node name.
    pub fn name(&self) -> &str {
        &self.cfg.agent.name
    }

    /// The container spec of `component`, its volume sources resolved
    /// under `agent.volumes_root`.
    fn container_spec(
        &self,
        def: &ServiceDef,
        component: &service::ComponentDef,
        ports: &BTreeMap<String, u16>,
    ) -> ContainerSpec {
        let mut spec = ContainerSpec::build(def, component, ports, self.name());
        let root = self.cfg.agent.volumes_root.as_deref();
        spec.volumes = spec
            .volumes
            .iter()
            .map(|v| crate::snapshot::host_volume(v, root))
            .collect();
        spec
    }

    pub(crate) async fn lock(&self, service: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(service.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Runs the deploy pipeline for `def` (all components, or `only`).
    pub async fn deploy(&self, def: ServiceDef, only: Option<String>) -> Result<Outcome, OpError> {
        let result = self.deploy_pipeline(def, only).await;
        crate::metrics::deploy_finished(&result);
        result
    }

    async fn deploy_pipeline(&self, def: ServiceDef, only: Option<String>) -> Result<Outcome, OpError> {
        let begun = Instant::now();
        service::check("deploy request", &def).map_err(|e| OpError::Invalid(e.to_string()))?;
        if let Some(node) = &def.node
            && node != self.name()
        {
            return Err(OpError::Invalid(format!(
                "service {} is pinned to node {node:?}, this is {:?}",
                def.name,
                self.name()
            )));
        }
        if let Some(c) = &only
            && def.component(c).is_none()
        {
            return Err(OpError::Invalid(format!("service {} has no component {c:?}", def.name)));
        }
        for c in &def.components {
            let container = def.container_name(&c.name);
            if let Some(owner) = self.registry.container_owner(&container)?
                && owner != def.name
            {
                return Err(OpError::Conflict(format!(
                    "container name {container} is already used by service {owner}"
                )));
            }
        }
        let _guard = self.lock(&def.name).await;
        let old = self.registry.service(&def.name)?;
        let in_scope = |name: &str| only.as_deref().is_none_or(|o| o == name);
        let mut out = Outcome::default();

        // 1. Ports.
        let t = Instant::now();
        let ports = match self.assign_ports(&def, old.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                out.fail(step::PORTS, t, e.to_string());
                return Err(match e {
                    OpError::PortsExhausted { min, max, .. } => OpError::PortsExhausted { min, max, outcome: out },
                    _ => OpError::from_outcome(out),
                });
            }
        };
        let _release = Reservation {
            agent: self,
            ports: ports.fresh.clone(),
        };
        out.ok(
            step::PORTS,
            t,
            if ports.all.is_empty() {
                "no routes".to_string()
            } else {
                format!("{} host ports ({} new)", ports.total(), ports.fresh.len())
            },
        );

        crash_point(step::PORTS);
        // 2. Certificates: a failure here changes nothing.
        if crate::wiring::needs_cert(&def) && def.active {
            let t = Instant::now();
            match self.ensure_cert(&def).await {
                Ok(detail) => out.ok(step::CERTIFICATES, t, detail),
                Err(e) => {
                    out.fail(step::CERTIFICATES, t, format!("{e}; nothing was changed"));
                    let _ = self.registry.event(&def.name, "", "deploy-failed", &e);
                    return Err(OpError::from_outcome(out));
                }
            }
        } else {
            out.skip(step::CERTIFICATES, "no L7 routes");
        }

        crash_point(step::CERTIFICATES);
        // 3. Containers.
        let t = Instant::now();
        let wanted: Vec<(String, ContainerSpec)> = def
            .components
            .iter()
            .filter(|c| in_scope(&c.name))
            .map(|c| {
                let empty = BTreeMap::new();
                let p = ports.all.get(&c.name).unwrap_or(&empty);
                (c.name.clone(), self.container_spec(&def, c, p))
            })
            .collect();
        let recorded: BTreeMap<String, ContainerSpec> = old
            .iter()
            .flat_map(|o| o.components.iter().map(|c| (c.name.clone(), c.spec.clone())))
            .collect();
        let dropped: Vec<(String, String)> = match (&old, &only) {
            (Some(o), None) => o
                .components
                .iter()
                .filter(|c| def.component(&c.name).is_none())
                .map(|c| (c.name.clone(), c.spec.name.clone()))
                .collect(),
            _ => vec![],
        };
        let seen = self
            .seen(&def.name, wanted.iter().map(|(_, s)| s.name.as_str()))
            .await?;
        let actions = match plan::plan(&recorded, &wanted, &seen, def.active, &dropped) {
            Ok(a) => a,
            Err(e) => {
                out.fail(step::CONTAINERS, t, e.to_string());
                return Err(OpError::from_outcome(out));
            }
        };
        let containers_changed = actions.iter().any(Action::changes_something);
        let definition_changed = old.as_ref().is_none_or(|o| o.def != def);
        if !containers_changed && !definition_changed {
            out.steps
                .retain(|s| s.name == step::PORTS || s.name == step::CERTIFICATES);
            out.skip(step::CONTAINERS, "unchanged");
            out.skip(step::ROUTES, "unchanged");
            out.skip(step::DNS, "unchanged");
            out.skip(step::REGISTRY, "unchanged");
            return Ok(out);
        }
        let mut undo = Vec::new();
        let mut observed = HashMap::new();
        match self.apply(&actions, &mut undo, &mut out.warnings, &mut observed).await {
            Ok(summary) => out.ok(step::CONTAINERS, t, summary),
            Err(e) => {
                let rolled = self.rollback(undo).await;
                out.fail(step::CONTAINERS, t, format!("{e}; {rolled}"));
                let _ = self.registry.event(&def.name, "", "deploy-failed", &e.to_string());
                return Err(OpError::from_outcome(out));
            }
        }

        let record = self
            .record_for(&def, old.as_ref(), &wanted, &ports, &only, &mut observed)
            .await;

        crash_point(step::CONTAINERS);
        // 4. Routes.
        let t = Instant::now();
        let wiring = if def.active {
            self.apply_routes(&record).await
        } else {
            self.remove_routes(&def.name).await.map(|d| (d, Vec::new()))
        };
        let routes_before = match wiring {
            Ok((detail, before)) => {
                out.ok(step::ROUTES, t, detail);
                before
            }
            Err(e) => {
                let rolled = self.rollback(undo).await;
                out.fail(step::ROUTES, t, format!("{e}; {rolled}"));
                let _ = self.registry.event(&def.name, "", "deploy-failed", &e);
                return Err(OpError::from_outcome(out));
            }
        };

        crash_point(step::ROUTES);
        // 5. DNS.
        let t = Instant::now();
        let dns = if def.active {
            self.register_dns(&def.name).await
        } else {
            self.remove_dns(&def.name).await
        };
        match dns {
            Ok(detail) => out.ok(step::DNS, t, detail),
            Err(e) => {
                self.restore_routes(&def.name, routes_before).await;
                let rolled = self.rollback(undo).await;
                out.fail(step::DNS, t, format!("{e}; routes restored; {rolled}"));
                let _ = self.registry.event(&def.name, "", "deploy-failed", &e);
                return Err(OpError::from_outcome(out));
            }
        }

        crash_point(step::DNS);
        // 6. Registry.
        let t = Instant::now();
        let summary = actions
            .iter()
            .filter(|a| a.changes_something())
            .map(describe)
            .collect::<Vec<_>>()
            .join(", ");
        let kind = if old.is_some() { "redeployed" } else { "deployed" };
        if let Err(e) = self.registry.save(&record, (kind, &summary)) {
            let rolled = self.rollback(undo).await;
            out.fail(step::REGISTRY, t, format!("{e}; {rolled}"));
            return Err(OpError::from_outcome(out));
        }
        crash_point(step::REGISTRY);
        self.commit(&actions, undo, &mut out.warnings).await;
        out.ok(
            step::REGISTRY,
            t,
            format!(
                "{kind}: {}",
                if summary.is_empty() {
                    "definition updated"
                } else {
                    &summary
                }
            ),
        );
        out.changed = true;
        tracing::info!(service = %def.name, %summary, ms = begun.elapsed().as_millis() as u64, "{kind}");
        let mut record = record;
        record.updated_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        out.view = Some(ServiceView { record, observed });
        Ok(out)
    }

    /// Host ports per component and route: kept from the registry, new
    /// ones picked free both in the registry and on the host.
    fn assign_ports(&self, def: &ServiceDef, old: Option<&ServiceRecord>) -> Result<Ports, OpError> {
        let mut used = self.registry.used_ports()?;
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        used.extend(reserved.iter().copied());
        let mut ports = Ports::default();
        for c in &def.components {
            for r in &c.routes {
                let kept = old.and_then(|o| {
                    o.routes
                        .iter()
                        .find(|x| x.component == c.name && x.name == r.key())
                        .map(|x| x.host_port)
                });
                let port = match kept {
                    Some(p) => p,
                    None => {
                        let (min, max) = (self.cfg.ports.min, self.cfg.ports.max);
                        let p = crate::ports::choose(min, max, &used, crate::ports::free_on_host).ok_or(
                            OpError::PortsExhausted {
                                min,
                                max,
                                outcome: Outcome::default(),
                            },
                        )?;
                        used.insert(p);
                        ports.fresh.push(p);
                        p
                    }
                };
                ports
                    .all
                    .entry(c.name.clone())
                    .or_default()
                    .insert(r.key().to_string(), port);
            }
        }
        reserved.extend(ports.fresh.iter().copied());
        Ok(ports)
    }

    /// What podman says about the named containers, for planning.
    async fn seen<'a>(
        &self,
        service: &str,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, Seen>, OpError> {
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(o) = self.podman.inspect(name).await? {
                out.insert(
                    name.to_string(),
                    Seen {
                        running: o.running(),
                        hash: o.labels.get(LABEL_HASH).cloned().unwrap_or_default(),
                        // Adopted containers carry no mcp labels; the
                        // registry knows them.
                        ours: o.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service)
                            || self.registry.container_owner(name)?.as_deref() == Some(service),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Executes container actions, recording how to undo each. Images are
    /// pulled before anything is touched, so a missing image changes nothing.
    async fn apply(
        &self,
        actions: &[Action],
        undo: &mut Vec<Undo>,
        warnings: &mut Vec<String>,
        observed: &mut HashMap<String, Observed>,
    ) -> Result<String, PodmanError> {
        let mut pulled = Vec::new();
        for a in actions {
            if let Action::Create { spec, .. } | Action::Replace { spec, .. } = a {
                if self.podman.ensure_image(&spec.image).await? {
                    pulled.push(spec.image.clone());
                }
                if let Some(net) = &spec.network {
                    self.podman.ensure_network(net).await?;
                }
                if spec.memory.is_some() || spec.nano_cpus.is_some() {
                    let note = format!(
                        "{}: this host cannot enforce memory/cpu limits for rootless containers (cgroups v1); they are recorded but not applied",
                        spec.name
                    );
                    if crate::node::cgroup_version() < 2 && !warnings.contains(&note) {
                        warnings.push(note);
                    }
                }
            }
        }
        for a in actions {
            match a {
                Action::Keep { .. } | Action::Remove { .. } => {}
                Action::Start { spec, .. } => {
                    match self.podman.start(&spec.name).await {
                        Ok(()) => undo.push(Undo::Stop(spec.name.clone())),
                        Err(e) if e.is_wedged() => {
                            // Podman can neither start nor stop it (left
                            // "stopping" by an unclean shutdown): the
                            // registry has its spec, so make it again.
                            let note = format!("{}: {e}; recreated from the registry", spec.name);
                            tracing::warn!(container = %spec.name, error = %e, "recreating a container podman cannot start");
                            warnings.push(note);
                            self.podman.discard(&spec.name).await?;
                            self.podman.create(&spec.with_hash_label()).await?;
                            undo.push(Undo::Remove(spec.name.clone()));
                            self.podman.start(&spec.name).await?;
                        }
                        Err(e) => return Err(e),
                    }
                    observed.insert(spec.name.clone(), self.check_running(&spec.name).await?);
                }
                Action::Stop { container, .. } => {
                    self.podman.stop(container).await?;
                    undo.push(Undo::Start(container.clone()));
                }
                Action::Create { spec, .. } => {
                    self.podman.create(&spec.with_hash_label()).await?;
                    undo.push(Undo::Remove(spec.name.clone()));
                    self.podman.start(&spec.name).await?;
                    observed.insert(spec.name.clone(), self.check_running(&spec.name).await?);
                }
                Action::Replace { spec, .. } => {
                    let prev = format!("{}{PREV_SUFFIX}", spec.name);
                    let was_running = self.podman.inspect(&spec.name).await?.is_some_and(|o| o.running());
                    self.podman.remove(&prev).await?;
                    self.podman.stop(&spec.name).await?;
                    self.podman.rename(&spec.name, &prev).await?;
                    crash_point("renamed");
                    undo.push(Undo::Restore {
                        name: spec.name.clone(),
                        prev,
                        was_running,
                    });
                    self.podman.create(&spec.with_hash_label()).await?;
                    self.podman.start(&spec.name).await?;
                    observed.insert(spec.name.clone(), self.check_running(&spec.name).await?);
                }
            }
        }
        let changed: Vec<String> = actions.iter().filter(|a| a.changes_something()).map(describe).collect();
        let mut summary = if changed.is_empty() {
            "unchanged".to_string()
        } else {
            changed.join(", ")
        };
        if !pulled.is_empty() {
            summary.push_str(&format!("; pulled {}", pulled.join(", ")));
        }
        Ok(summary)
    }

    /// A container that exits at once is a failed start, not a success.
    async fn check_running(&self, name: &str) -> Result<Observed, PodmanError> {
        match self.podman.inspect(name).await? {
            Some(o) if o.running() => Ok(o),
            Some(o) => Err(PodmanError::Container {
                name: name.to_string(),
                action: "start",
                reason: format!("container is {} right after start", o.state),
            }),
            None => Err(PodmanError::Container {
                name: name.to_string(),
                action: "start",
                reason: "container vanished right after start".into(),
            }),
        }
    }

    /// Undoes applied actions in reverse; returns a summary for the error.
    async fn rollback(&self, undo: Vec<Undo>) -> String {
        if undo.is_empty() {
            return "nothing was changed".to_string();
        }
        let mut problems = Vec::new();
        for u in undo.into_iter().rev() {
            let r = match &u {
                Undo::Stop(name) => self.podman.stop(name).await,
                Undo::Start(name) => self.podman.start(name).await,
                Undo::Remove(name) => self.podman.remove(name).await,
                Undo::Restore {
                    name,
                    prev,
                    was_running,
                } => {
                    let mut r = self.podman.remove(name).await;
                    if r.is_ok() {
                        r = self.podman.rename(prev, name).await;
                    }
                    if r.is_ok() && *was_running {
                        r = self.podman.start(name).await;
                    }
                    r
                }
            };
            if let Err(e) = r {
                problems.push(e.to_string());
            }
        }
        if problems.is_empty() {
            "rolled back: the previous version is running".to_string()
        } else {
            format!("rollback incomplete: {}", problems.join("; "))
        }
    }

    /// After the registry recorded the new state: drop replaced containers
    /// and remove those of dropped components.
    async fn commit(&self, actions: &[Action], undo: Vec<Undo>, warnings: &mut Vec<String>) {
        for u in undo {
            if let Undo::Restore { prev, .. } = u
                && let Err(e) = self.podman.remove(&prev).await
            {
                warnings.push(format!("could not remove replaced container {prev}: {e}"));
            }
        }
        for a in actions {
            if let Action::Remove { container, .. } = a
                && let Err(e) = self.podman.remove(container).await
            {
                warnings.push(format!(
                    "could not remove container {container} of a dropped component: {e}"
                ));
            }
        }
    }

    /// The registry record after a successful deploy.
    async fn record_for(
        &self,
        def: &ServiceDef,
        old: Option<&ServiceRecord>,
        wanted: &[(String, ContainerSpec)],
        ports: &Ports,
        only: &Option<String>,
        observed: &mut HashMap<String, Observed>,
    ) -> ServiceRecord {
        let desired = if def.active { Desired::Running } else { Desired::Stopped };
        let mut components = Vec::new();
        let mut routes = Vec::new();
        for c in &def.components {
            let spec = match wanted.iter().find(|(n, _)| n == &c.name) {
                Some((_, s)) => s.clone(),
                None => match old.and_then(|o| o.component(&c.name)) {
                    // Out of scope of a single-component deploy: keep as recorded.
                    Some(rec) => {
                        components.push(rec.clone());
                        routes.extend(
                            old.into_iter()
                                .flat_map(|o| o.routes.iter())
                                .filter(|r| r.component == c.name)
                                .cloned(),
                        );
                        continue;
                    }
                    None => {
                        let empty = BTreeMap::new();
                        self.container_spec(def, c, ports.all.get(&c.name).unwrap_or(&empty))
                    }
                },
            };
            if !observed.contains_key(&spec.name)
                && let Ok(Some(o)) = self.podman.inspect(&spec.name).await
            {
                observed.insert(spec.name.clone(), o);
            }
            let seen = observed.get(&spec.name);
            let in_scope = only.as_deref().is_none_or(|o| o == c.name);
            components.push(ComponentRecord {
                name: c.name.clone(),
                desired: if in_scope { desired } else { Desired::Stopped },
                observed: seen.map(|o| o.state.clone()).unwrap_or_else(|| "missing".into()),
                container_id: seen.map(|o| o.id.clone()).unwrap_or_default(),
                spec,
            });
            for r in &c.routes {
                if let Some(p) = ports.all.get(&c.name).and_then(|m| m.get(r.key())) {
                    routes.push(RouteRecord {
                        component: c.name.clone(),
                        name: r.key().to_string(),
                        port: r.port as u16,
                        mode: r.mode().as_str().to_string(),
                        hostname: r.hostname_or_default(&def.name, &self.cfg.network.zone),
                        public: r.public,
                        host_port: *p,
                    });
                }
            }
        }
        ServiceRecord {
            def: def.clone(),
            components,
            routes,
            updated_at: 0,
        }
    }

    /// Stops a service (or one component): DNS, routes, then containers.
    pub async fn stop(&self, name: &str, only: Option<&str>) -> Result<Outcome, OpError> {
        let _guard = self.lock(name).await;
        let rec = self
            .registry
            .service(name)?
            .ok_or_else(|| OpError::NotFound(name.to_string()))?;
        let targets = select(&rec, only)?;
        let mut out = Outcome::default();
        self.unwire(&mut out, name, only.is_none()).await;
        let t = Instant::now();
        let mut stopped = Vec::new();
        for c in targets.iter().rev() {
            if let Err(e) = self.podman.stop(&c.spec.name).await {
                out.fail(step::CONTAINERS, t, e.to_string());
                return Err(OpError::from_outcome(out));
            }
            stopped.push(c.spec.name.clone());
        }
        out.ok(step::CONTAINERS, t, format!("stopped {}", stopped.join(", ")));
        let t = Instant::now();
        let names: Vec<String> = targets.iter().map(|c| c.name.clone()).collect();
        let scope = only.map(|o| format!(" component {o}")).unwrap_or_default();
        self.registry
            .set_desired(name, &names, Desired::Stopped, ("stopped", &format!("stopped{scope}")))?;
        self.refresh_observed(&rec).await;
        out.ok(step::REGISTRY, t, "desired state: stopped");
        out.changed = true;
        Ok(out)
    }

    /// Starts a service (or one component) from the registry: containers
    /// that are gone are recreated from their recorded spec.
    pub async fn start(&self, name: &str, only: Option<&str>) -> Result<Outcome, OpError> {
        let _guard = self.lock(name).await;
        let rec = self
            .registry
            .service(name)?
            .ok_or_else(|| OpError::NotFound(name.to_string()))?;
        if !rec.def.active {
            return Err(OpError::Conflict(format!(
                "service {name} is inactive (active = false); deploy it with active = true"
            )));
        }
        let targets = select(&rec, only)?;
        let mut out = Outcome::default();
        self.bring_up(&rec, &targets, &mut out).await?;
        let t = Instant::now();
        let names: Vec<String> = targets.iter().map(|c| c.name.clone()).collect();
        let scope = only.map(|o| format!(" component {o}")).unwrap_or_default();
        self.registry
            .set_desired(name, &names, Desired::Running, ("started", &format!("started{scope}")))?;
        self.refresh_observed(&rec).await;
        out.ok(step::REGISTRY, t, "desired state: running");
        out.changed = true;
        Ok(out)
    }

    /// Brings `targets` to their recorded spec and running, without
    /// touching desired states: certificate, then containers (created when
    /// gone, started when stopped, recreated when they drifted from the
    /// spec), then routes and DNS. Start, boot, recover and repair share it.
    async fn bring_up(
        &self,
        rec: &ServiceRecord,
        targets: &[&ComponentRecord],
        out: &mut Outcome,
    ) -> Result<Revived, OpError> {
        out.skip(
            step::PORTS,
            format!("{} host ports kept from the registry", rec.routes.len()),
        );
        if crate::wiring::needs_cert(&rec.def) {
            let t = Instant::now();
            match self.ensure_cert(&rec.def).await {
                Ok(detail) => out.ok(step::CERTIFICATES, t, detail),
                Err(e) => {
                    out.fail(step::CERTIFICATES, t, format!("{e}; nothing was started"));
                    return Err(OpError::from_outcome(std::mem::take(out)));
                }
            }
        } else {
            out.skip(step::CERTIFICATES, "no L7 routes");
        }
        let t = Instant::now();
        let wanted: Vec<(String, ContainerSpec)> = targets.iter().map(|c| (c.name.clone(), c.spec.clone())).collect();
        let recorded: BTreeMap<String, ContainerSpec> = wanted.iter().cloned().collect();
        let seen = self
            .seen(&rec.def.name, wanted.iter().map(|(_, s)| s.name.as_str()))
            .await?;
        let actions = match plan::plan(&recorded, &wanted, &seen, true, &[]) {
            Ok(a) => a,
            Err(e) => {
                out.fail(step::CONTAINERS, t, e.to_string());
                return Err(OpError::from_outcome(std::mem::take(out)));
            }
        };
        let mut undo = Vec::new();
        let mut warnings = Vec::new();
        let mut observed = HashMap::new();
        match self.apply(&actions, &mut undo, &mut warnings, &mut observed).await {
            Ok(summary) => out.ok(step::CONTAINERS, t, summary),
            Err(e) => {
                let rolled = self.rollback(undo).await;
                out.fail(step::CONTAINERS, t, format!("{e}; {rolled}"));
                return Err(OpError::from_outcome(std::mem::take(out)));
            }
        }
        self.commit(&actions, undo, &mut warnings).await;
        out.warnings.extend(warnings);
        let mut revived = Revived::default();
        for a in &actions {
            match a {
                Action::Create { .. } | Action::Replace { .. } => revived.created += 1,
                Action::Start { .. } => revived.started += 1,
                _ => {}
            }
        }
        let t = Instant::now();
        match self.apply_routes(rec).await {
            Ok((detail, _)) => out.ok(step::ROUTES, t, detail),
            Err(e) => out.fail(step::ROUTES, t, e),
        }
        let t = Instant::now();
        match self.register_dns(&rec.def.name).await {
            Ok(detail) => out.ok(step::DNS, t, detail),
            Err(e) => out.fail(step::DNS, t, e),
        }
        Ok(revived)
    }

    /// Brings back the components of a service whose desired state is
    /// running (all, or `only`), recording `kind` as the event. Desired
    /// states are not changed: a stopped service stays stopped.
    pub async fn revive(&self, name: &str, only: Option<&str>, kind: &str) -> Result<(Outcome, Revived), OpError> {
        let _guard = self.lock(name).await;
        let rec = self
            .registry
            .service(name)?
            .ok_or_else(|| OpError::NotFound(name.to_string()))?;
        let targets: Vec<&ComponentRecord> = select(&rec, only)?
            .into_iter()
            .filter(|c| c.desired == Desired::Running)
            .collect();
        let mut out = Outcome::default();
        if !rec.def.active || targets.is_empty() {
            out.skip(step::CONTAINERS, "nothing of it should run");
            return Ok((out, Revived::default()));
        }
        let res = self.bring_up(&rec, &targets, &mut out).await;
        self.refresh_observed(&rec).await;
        let detail = match &res {
            Ok(_) => out
                .steps
                .iter()
                .find(|s| s.name == step::CONTAINERS)
                .map(|s| s.detail.clone())
                .unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        // An event when something was brought back or failed; a pass that
        // found everything running leaves no trace.
        let component = only.unwrap_or_default();
        match &res {
            Ok(r) if r.created + r.started > 0 => {
                let _ = self.registry.event(name, component, kind, &detail);
            }
            Ok(_) => {}
            Err(_) => {
                let _ = self.registry.event(name, component, &format!("{kind}-failed"), &detail);
            }
        }
        res.map(|revived| {
            out.changed = revived.created + revived.started > 0;
            (out, revived)
        })
    }

    /// Stop followed by start.
    pub async fn restart(&self, name: &str, only: Option<&str>) -> Result<Outcome, OpError> {
        let mut out = self.stop(name, only).await?;
        let started = self.start(name, only).await?;
        out.steps.extend(started.steps);
        out.warnings.extend(started.warnings);
        Ok(out)
    }

    /// Full teardown: DNS, routes, containers, certificates, ports and rows.
    pub async fn undeploy(&self, name: &str) -> Result<Outcome, OpError> {
        let _guard = self.lock(name).await;
        let rec = self
            .registry
            .service(name)?
            .ok_or_else(|| OpError::NotFound(name.to_string()))?;
        let mut out = Outcome::default();
        self.unwire(&mut out, name, true).await;
        let t = Instant::now();
        let mut removed = Vec::new();
        for c in rec.components.iter().rev() {
            for container in [c.spec.name.clone(), format!("{}{PREV_SUFFIX}", c.spec.name)] {
                if let Err(e) = self.podman.remove(&container).await {
                    out.fail(step::CONTAINERS, t, e.to_string());
                    return Err(OpError::from_outcome(out));
                }
            }
            removed.push(c.spec.name.clone());
        }
        out.ok(step::CONTAINERS, t, format!("removed {}", removed.join(", ")));
        let t = Instant::now();
        let certs = self.remove_cert(name);
        out.ok(step::CERTIFICATES, t, certs);
        let t = Instant::now();
        self.registry
            .delete(name, ("undeployed", &format!("removed {}", removed.join(", "))))?;
        out.ok(step::PORTS, t, format!("released {} host ports", rec.routes.len()));
        out.ok(step::REGISTRY, t, "service removed");
        out.changed = true;
        tracing::info!(service = name, "undeployed");
        Ok(out)
    }

    /// Stop and undeploy, first steps: withdraw DNS, then routes. A failure
    /// is reported but does not keep the containers from stopping.
    async fn unwire(&self, out: &mut Outcome, service: &str, whole: bool) {
        if !whole {
            out.skip(step::DNS, "one component: the service keeps its name");
            out.skip(step::ROUTES, "one component: the service keeps its routes");
            return;
        }
        let t = Instant::now();
        match self.remove_dns(service).await {
            Ok(detail) => out.ok(step::DNS, t, detail),
            Err(e) => out.fail(step::DNS, t, e),
        }
        let t = Instant::now();
        match self.remove_routes(service).await {
            Ok(detail) => out.ok(step::ROUTES, t, detail),
            Err(e) => out.fail(step::ROUTES, t, e),
        }
    }

    async fn refresh_observed(&self, rec: &ServiceRecord) {
        for c in &rec.components {
            if let Ok(o) = self.podman.inspect(&c.spec.name).await {
                let (state, id) = o
                    .map(|o| (o.state, o.id))
                    .unwrap_or_else(|| ("missing".into(), String::new()));
                let _ = self.registry.set_observed(&rec.def.name, &c.name, &state, &id);
            }
        }
    }

    /// Every recorded service with what podman reports now.
    pub async fn list(&self) -> Result<Vec<ServiceView>, OpError> {
        let records = self.registry.services()?;
        let listed = self.podman.list_managed().await?;
        let mut views = Vec::new();
        for record in records {
            let mut observed = HashMap::new();
            for c in &record.components {
                if let Some(o) = listed.get(&c.spec.name) {
                    let full = if o.running() {
                        self.podman.inspect(&c.spec.name).await?.unwrap_or_else(|| o.clone())
                    } else {
                        o.clone()
                    };
                    observed.insert(c.spec.name.clone(), full);
                }
            }
            views.push(ServiceView { record, observed });
        }
        Ok(views)
    }

    /// One service with what podman reports now, and its recent events.
    pub async fn status(&self, name: &str) -> Result<(ServiceView, Vec<EventRecord>), OpError> {
        let record = self
            .registry
            .service(name)?
            .ok_or_else(|| OpError::NotFound(name.to_string()))?;
        let mut observed = HashMap::new();
        for c in &record.components {
            if let Some(o) = self.podman.inspect(&c.spec.name).await? {
                observed.insert(c.spec.name.clone(), o);
            }
        }
        let events = self.registry.events(name, 20)?;
        Ok((ServiceView { record, observed }, events))
    }

    /// Repairs what an interrupted deploy can leave behind: a replaced
    /// container renamed aside (`-mcp-prev`). If the deploy reached the
    /// registry the aside copy goes; otherwise the replacement goes and the
    /// previous container comes back, so podman matches the registry.
    pub async fn repair_interrupted(&self) -> Result<(), OpError> {
        let listed = self.podman.list_managed().await?;
        for rec in self.registry.services()? {
            for c in &rec.components {
                let prev = format!("{}{PREV_SUFFIX}", c.spec.name);
                if !listed.contains_key(&prev) {
                    continue;
                }
                // The deploy committed (the registry has the new spec) when
                // the running container carries the recorded hash; else it
                // never did, and the previous container is the truth.
                let committed = listed.get(&c.spec.name).is_some_and(|o| {
                    o.running() && o.labels.get(LABEL_HASH).map(String::as_str) == Some(c.spec.hash().as_str())
                });
                if committed {
                    tracing::info!(container = %prev, "removing container left by an interrupted deploy");
                    self.podman.remove(&prev).await?;
                } else {
                    tracing::warn!(container = %c.spec.name, "restoring previous container after an interrupted deploy");
                    self.podman.remove(&c.spec.name).await?;
                    self.podman.rename(&prev, &c.spec.name).await?;
                    if c.desired == Desired::Running {
                        self.podman.start(&c.spec.name).await?;
                    }
                    self.registry.event(
                        &rec.def.name,
                        &c.name,
                        "repaired",
                        "restored the previous container after an interrupted deploy",
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Fault injection for the resilience tests: with
/// `MCP_AGENT_CRASH_AFTER=<step>` in its environment the agent aborts (no
/// cleanup, like a power cut) right after that deploy step (`ports`,
/// `certificates`, `containers`, `routes`, `dns`, `registry`, or `renamed`:
/// a replaced container renamed aside, its replacement not yet created).
fn crash_point(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("MCP_AGENT_CRASH_AFTER").ok())
        .as_deref()
        == Some(step)
    {
        eprintln!("mcp-agent: MCP_AGENT_CRASH_AFTER={step}: aborting");
        std::process::abort();
    }
}

/// The recorded components an operation targets.
fn select<'a>(rec: &'a ServiceRecord, only: Option<&str>) -> Result<Vec<&'a ComponentRecord>, OpError> {
    match only {
        None => Ok(rec.components.iter().collect()),
        Some(o) => rec
            .component(o)
            .map(|c| vec![c])
            .ok_or_else(|| OpError::Invalid(format!("service {} has no component {o:?}", rec.def.name))),
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Keep { component } => format!("{component} unchanged"),
        Action::Start { component, .. } => format!("{component} started"),
        Action::Create { component, .. } => format!("{component} created"),
        Action::Replace { component, changed, .. } => format!("{component} recreated ({} changed)", changed.join(", ")),
        Action::Stop { component, .. } => format!("{component} stopped (inactive)"),
        Action::Remove { component, .. } => format!("{component} removed"),
    }
}

/// How to undo one applied container action.
enum Undo {
    Stop(String),
    Start(String),
    Remove(String),
    Restore {
        name: String,
        prev: String,
        was_running: bool,
    },
}

/// Containers a [`Agent::revive`] brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revived {
    /// Created (they were gone) or recreated (they drifted from the spec).
    pub created: u32,
    /// Present but stopped, started.
    pub started: u32,
}

/// Host ports of a deploy: component → route key → port.
#[derive(Debug, Default)]
struct Ports {
    all: BTreeMap<String, BTreeMap<String, u16>>,
    fresh: Vec<u16>,
}

impl Ports {
    fn total(&self) -> usize {
        self.all.values().map(BTreeMap::len).sum()
    }
}

/// Releases in-flight port reservations when a deploy ends (the registry
/// holds them from then on, or they were never used).
struct Reservation<'a> {
    agent: &'a Agent,
    ports: Vec<u16>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut r = self.agent.reserved.lock().unwrap_or_else(|p| p.into_inner());
        for p in &self.ports {
            r.remove(p);
        }
    }
}
