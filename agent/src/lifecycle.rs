//! A deployed service's life after its deploy: stop, start, restart,
//! undeploy, and revive (the one path that boot, recover, start and
//! auto-repair share to bring containers back from their recorded specs);
//! and the repair of a deploy a crash interrupted.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::deploy::containers::{self, Applied, PREV_SUFFIX};
use crate::deploy::plan::{self, Action};
use crate::handle::Agent;
use crate::outcome::{OpError, Outcome, step};
use crate::registry::{ComponentRecord, Desired, ServiceRecord};
use crate::runtime::spec::{ContainerSpec, LABEL_HASH};

/// Containers a [`Agent::revive`] brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revived {
    /// Created (they were gone) or recreated (they drifted from the spec).
    pub created: u32,
    /// Present but stopped, started.
    pub started: u32,
}

impl Agent {
    /// The registry's record of `name`, or NotFound.
    pub(crate) fn recorded(&self, name: &str) -> Result<ServiceRecord, OpError> {
        self.registry
            .service(name)?
            .ok_or_else(|| OpError::NotFound(name.to_string()))
    }

    /// Stops a service (or one component): DNS, routes, then containers.
    pub async fn stop(&self, name: &str, only: Option<&str>) -> Result<Outcome, OpError> {
        let _guard = self.lock(name).await;
        let rec = self.recorded(name)?;
        let targets = select(&rec, only)?;
        let mut out = Outcome::default();
        self.unwire(&mut out, name, only.is_none()).await;
        let t = Instant::now();
        let mut stopped = Vec::new();
        for c in targets.iter().rev() {
            if let Err(e) = self.runtime.stop(&c.spec.name).await {
                out.fail(step::CONTAINERS, t, e.to_string());
                return Err(OpError::from_outcome(out));
            }
            stopped.push(c.spec.name.clone());
        }
        out.ok(step::CONTAINERS, t, format!("stopped {}", stopped.join(", ")));
        self.record_desired(&rec, &targets, only, Desired::Stopped, &mut out)
            .await?;
        Ok(out)
    }

    /// Starts a service (or one component) from the registry: containers
    /// that are gone are recreated from their recorded spec.
    pub async fn start(&self, name: &str, only: Option<&str>) -> Result<Outcome, OpError> {
        let _guard = self.lock(name).await;
        let rec = self.recorded(name)?;
        if !rec.def.active {
            return Err(OpError::Conflict(format!(
                "service {name} is inactive (active = false); deploy it with active = true"
            )));
        }
        let targets = select(&rec, only)?;
        let mut out = Outcome::default();
        self.bring_up(&rec, &targets, &mut out).await?;
        self.record_desired(&rec, &targets, only, Desired::Running, &mut out)
            .await?;
        Ok(out)
    }

    /// The last step of stop and start: the new desired state of `targets`
    /// in the registry (with an event), and what the runtime reports now.
    async fn record_desired(
        &self,
        rec: &ServiceRecord,
        targets: &[&ComponentRecord],
        only: Option<&str>,
        desired: Desired,
        out: &mut Outcome,
    ) -> Result<(), OpError> {
        let t = Instant::now();
        let kind = if desired == Desired::Running {
            "started"
        } else {
            "stopped"
        };
        let names: Vec<String> = targets.iter().map(|c| c.name.clone()).collect();
        let scope = only.map(|o| format!(" component {o}")).unwrap_or_default();
        self.registry
            .set_desired(&rec.def.name, &names, desired, (kind, &format!("{kind}{scope}")))?;
        self.refresh_observed(rec).await;
        out.ok(step::REGISTRY, t, format!("desired state: {}", desired.as_str()));
        out.changed = true;
        Ok(())
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
        let names = wanted.iter().map(|(_, s)| s.name.as_str());
        let seen = containers::seen(&*self.runtime, &self.registry, &rec.def.name, names).await?;
        let actions = match plan::plan(&recorded, &wanted, &seen, true, &[]) {
            Ok(a) => a,
            Err(e) => {
                out.fail(step::CONTAINERS, t, e.to_string());
                return Err(OpError::from_outcome(std::mem::take(out)));
            }
        };
        let mut applied = Applied::default();
        let limits_enforced = crate::node::cgroup_version() >= 2;
        match containers::apply(&*self.runtime, &actions, limits_enforced, &mut applied).await {
            Ok(summary) => out.ok(step::CONTAINERS, t, summary),
            Err(e) => {
                let rolled = containers::rollback(&*self.runtime, applied.undo).await;
                out.fail(step::CONTAINERS, t, format!("{e}; {rolled}"));
                return Err(OpError::from_outcome(std::mem::take(out)));
            }
        }
        let mut warnings = std::mem::take(&mut applied.warnings);
        containers::commit(&*self.runtime, &actions, applied.undo, &mut warnings).await;
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
        let rec = self.recorded(name)?;
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
        let rec = self.recorded(name)?;
        let mut out = Outcome::default();
        self.unwire(&mut out, name, true).await;
        let t = Instant::now();
        let mut removed = Vec::new();
        for c in rec.components.iter().rev() {
            for container in [c.spec.name.clone(), format!("{}{PREV_SUFFIX}", c.spec.name)] {
                if let Err(e) = self.runtime.remove(&container).await {
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
            if let Ok(o) = self.runtime.inspect(&c.spec.name).await {
                let (state, id) = o
                    .map(|o| (o.state, o.id))
                    .unwrap_or_else(|| ("missing".into(), String::new()));
                let _ = self.registry.set_observed(&rec.def.name, &c.name, &state, &id);
            }
        }
    }

    /// Repairs what an interrupted deploy can leave behind: a replaced
    /// container renamed aside (`-mcp-prev`). If the deploy reached the
    /// registry the aside copy goes; otherwise the replacement goes and the
    /// previous container comes back, so podman matches the registry.
    pub async fn repair_interrupted(&self) -> Result<(), OpError> {
        let listed = self.runtime.list_managed().await?;
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
                    self.runtime.remove(&prev).await?;
                } else {
                    tracing::warn!(container = %c.spec.name, "restoring previous container after an interrupted deploy");
                    self.runtime.remove(&c.spec.name).await?;
                    self.runtime.rename(&prev, &c.spec.name).await?;
                    if c.desired == Desired::Running {
                        self.runtime.start(&c.spec.name).await?;
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
