//! The deploy pipeline (SPEC §4), one function per step, run as one
//! transaction: ports → certificates → containers → routes → DNS →
//! registry. Each step returns what it needs to be taken back (reserved
//! ports, container [`Undo`](containers::Undo) entries, the routes it
//! replaced); a failing step undoes what came before it, so a deploy either
//! completes or leaves the previous version running. A crash half-way is
//! repaired when the agent starts (`Agent::repair_interrupted`).

pub mod containers;
pub mod plan;
pub mod ports;
mod record;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Instant;

use mcp_model::service::{self, ServiceDef};

use crate::handle::Agent;
use crate::outcome::{OpError, Outcome, ServiceView, step};
use crate::registry::ServiceRecord;
use crate::runtime::spec::ContainerSpec;
use containers::Applied;
use plan::Action;
use ports::Ports;

impl Agent {
    /// Runs the deploy pipeline for `def` (all components, or `only`).
    pub async fn deploy(&self, def: ServiceDef, only: Option<String>) -> Result<Outcome, OpError> {
        let begun = Instant::now();
        self.admit(&def, only.as_deref())?;
        let _guard = self.lock(&def.name).await;
        let old = self.registry.service(&def.name)?;
        let mut out = Outcome::default();

        let ports = self.ports_step(&def, old.as_ref(), &mut out)?;
        crash_point(step::PORTS);
        self.certificates_step(&def, &mut out).await?;
        crash_point(step::CERTIFICATES);

        let t = Instant::now();
        let wanted = self.wanted(&def, only.as_deref(), &ports);
        let actions = self
            .plan_step(&def, old.as_ref(), only.as_deref(), &wanted, t, &mut out)
            .await?;
        let definition_changed = old.as_ref().is_none_or(|o| o.def != def);
        if !actions.iter().any(Action::changes_something) && !definition_changed {
            out.steps
                .retain(|s| s.name == step::PORTS || s.name == step::CERTIFICATES);
            for s in [step::CONTAINERS, step::ROUTES, step::DNS, step::REGISTRY] {
                out.skip(s, "unchanged");
            }
            return Ok(out);
        }
        let mut applied = self.containers_step(&def.name, &actions, t, &mut out).await?;
        let record = self
            .record_for(
                &def,
                old.as_ref(),
                &wanted,
                &ports,
                only.as_deref(),
                &mut applied.observed,
            )
            .await;
        crash_point(step::CONTAINERS);

        let t = Instant::now();
        let routes_before = match self.routes_step(&record, t, &mut out).await {
            Ok(before) => before,
            Err(e) => return Err(self.undo(&def.name, applied, None, (step::ROUTES, t), e, out).await),
        };
        crash_point(step::ROUTES);
        let t = Instant::now();
        if let Err(e) = self.dns_step(&def, t, &mut out).await {
            let undone = self.undo(&def.name, applied, Some(routes_before), (step::DNS, t), e, out);
            return Err(undone.await);
        }
        crash_point(step::DNS);

        let t = Instant::now();
        let summary = actions
            .iter()
            .filter(|a| a.changes_something())
            .map(containers::describe)
            .collect::<Vec<_>>()
            .join(", ");
        let kind = if old.is_some() { "redeployed" } else { "deployed" };
        if let Err(e) = self.registry.save(&record, (kind, &summary)) {
            let rolled = containers::rollback(&*self.runtime, applied.undo).await;
            out.fail(step::REGISTRY, t, format!("{e}; {rolled}"));
            return Err(OpError::from_outcome(out));
        }
        crash_point(step::REGISTRY);
        containers::commit(&*self.runtime, &actions, applied.undo, &mut out.warnings).await;
        let detail = if summary.is_empty() {
            "definition updated"
        } else {
            &summary
        };
        out.ok(step::REGISTRY, t, format!("{kind}: {detail}"));
        out.changed = true;
        tracing::info!(service = %def.name, %summary, ms = begun.elapsed().as_millis() as u64, "{kind}");
        let mut record = record;
        record.updated_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        out.view = Some(ServiceView {
            record,
            observed: applied.observed,
        });
        Ok(out)
    }

    /// Refuses a request that cannot run here; nothing is changed.
    fn admit(&self, def: &ServiceDef, only: Option<&str>) -> Result<(), OpError> {
        service::check("deploy request", def).map_err(|e| OpError::Invalid(e.to_string()))?;
        if let Some(node) = &def.node
            && node != self.name()
        {
            return Err(OpError::Invalid(format!(
                "service {} is pinned to node {node:?}, this is {:?}",
                def.name,
                self.name()
            )));
        }
        if let Some(c) = only
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
        Ok(())
    }

    /// Step 1: host ports; undone by dropping the returned [`Ports`].
    fn ports_step(
        &self,
        def: &ServiceDef,
        old: Option<&ServiceRecord>,
        out: &mut Outcome,
    ) -> Result<Ports<'_>, OpError> {
        let t = Instant::now();
        match self.assign_ports(def, old) {
            Ok(ports) => {
                let detail = if ports.all.is_empty() {
                    "no routes".to_string()
                } else {
                    format!("{} host ports ({} new)", ports.total(), ports.fresh.len())
                };
                out.ok(step::PORTS, t, detail);
                Ok(ports)
            }
            Err(e) => {
                out.fail(step::PORTS, t, e.to_string());
                Err(match e {
                    OpError::PortsExhausted { min, max, .. } => OpError::PortsExhausted {
                        min,
                        max,
                        outcome: Box::new(std::mem::take(out)),
                    },
                    _ => OpError::from_outcome(std::mem::take(out)),
                })
            }
        }
    }

    /// Step 2: the service's certificate; a failure changes nothing, so
    /// there is nothing to undo.
    async fn certificates_step(&self, def: &ServiceDef, out: &mut Outcome) -> Result<(), OpError> {
        if !(crate::wiring::needs_cert(def) && def.active) {
            out.skip(step::CERTIFICATES, "no L7 routes");
            return Ok(());
        }
        let t = Instant::now();
        match self.ensure_cert(def).await {
            Ok(detail) => {
                out.ok(step::CERTIFICATES, t, detail);
                Ok(())
            }
            Err(e) => {
                out.fail(step::CERTIFICATES, t, format!("{e}; nothing was changed"));
                let _ = self.registry.event(&def.name, "", "deploy-failed", &e);
                Err(OpError::from_outcome(std::mem::take(out)))
            }
        }
    }

    /// The container spec of every component in scope.
    fn wanted(&self, def: &ServiceDef, only: Option<&str>, ports: &Ports<'_>) -> Vec<(String, ContainerSpec)> {
        def.components
            .iter()
            .filter(|c| only.is_none_or(|o| o == c.name))
            .map(|c| (c.name.clone(), self.container_spec(def, c, &ports.of(&c.name))))
            .collect()
    }

    /// Step 3a: what must happen to each container (pure planning over
    /// what the registry recorded and the runtime reports).
    async fn plan_step(
        &self,
        def: &ServiceDef,
        old: Option<&ServiceRecord>,
        only: Option<&str>,
        wanted: &[(String, ContainerSpec)],
        t: Instant,
        out: &mut Outcome,
    ) -> Result<Vec<Action>, OpError> {
        let recorded: BTreeMap<String, ContainerSpec> = old
            .iter()
            .flat_map(|o| o.components.iter().map(|c| (c.name.clone(), c.spec.clone())))
            .collect();
        let dropped: Vec<(String, String)> = match (old, only) {
            (Some(o), None) => o
                .components
                .iter()
                .filter(|c| def.component(&c.name).is_none())
                .map(|c| (c.name.clone(), c.spec.name.clone()))
                .collect(),
            _ => vec![],
        };
        let names = wanted.iter().map(|(_, s)| s.name.as_str());
        let seen = containers::seen(&*self.runtime, &self.registry, &def.name, names).await?;
        plan::plan(&recorded, wanted, &seen, def.active, &dropped).map_err(|e| {
            out.fail(step::CONTAINERS, t, e.to_string());
            OpError::from_outcome(std::mem::take(out))
        })
    }

    /// Step 3b: carry out the plan; undone by [`containers::rollback`].
    async fn containers_step(
        &self,
        service: &str,
        actions: &[Action],
        t: Instant,
        out: &mut Outcome,
    ) -> Result<Applied, OpError> {
        let mut applied = Applied::default();
        let limits_enforced = crate::node::cgroup_version() >= 2;
        let result = containers::apply(&*self.runtime, actions, limits_enforced, &mut applied).await;
        out.warnings.append(&mut applied.warnings);
        match result {
            Ok(summary) => {
                out.ok(step::CONTAINERS, t, summary);
                Ok(applied)
            }
            Err(e) => {
                let rolled = containers::rollback(&*self.runtime, applied.undo).await;
                out.fail(step::CONTAINERS, t, format!("{e}; {rolled}"));
                let _ = self.registry.event(service, "", "deploy-failed", &e.to_string());
                Err(OpError::from_outcome(std::mem::take(out)))
            }
        }
    }

    /// Step 4: the service's routes into the proxy (or out of it, when
    /// inactive); returns the routes it replaced, its undo entry.
    async fn routes_step(
        &self,
        record: &ServiceRecord,
        t: Instant,
        out: &mut Outcome,
    ) -> Result<Vec<crate::platform::ProxyRoute>, String> {
        let wiring = if record.def.active {
            self.apply_routes(record).await
        } else {
            self.remove_routes(&record.def.name).await.map(|d| (d, Vec::new()))
        };
        let (detail, before) = wiring?;
        out.ok(step::ROUTES, t, detail);
        Ok(before)
    }

    /// Step 5: the service's DNS record (or its removal, when inactive).
    async fn dns_step(&self, def: &ServiceDef, t: Instant, out: &mut Outcome) -> Result<(), String> {
        let detail = if def.active {
            self.register_dns(&def.name).await?
        } else {
            self.remove_dns(&def.name).await?
        };
        out.ok(step::DNS, t, detail);
        Ok(())
    }

    /// Takes back a deploy that failed at `failed` (routes or DNS): the
    /// routes it replaced, then its containers, and records the failure.
    async fn undo(
        &self,
        service: &str,
        applied: Applied,
        routes_before: Option<Vec<crate::platform::ProxyRoute>>,
        (failed, t): (&'static str, Instant),
        error: String,
        mut out: Outcome,
    ) -> OpError {
        let mut done = String::new();
        if let Some(before) = routes_before {
            self.restore_routes(service, before).await;
            done.push_str("routes restored; ");
        }
        done.push_str(&containers::rollback(&*self.runtime, applied.undo).await);
        out.fail(failed, t, format!("{error}; {done}"));
        let _ = self.registry.event(service, "", "deploy-failed", &error);
        OpError::from_outcome(out)
    }
}

/// Fault injection for the resilience tests: with
/// `MCP_AGENT_CRASH_AFTER=<step>` in its environment the agent aborts (no
/// cleanup, like a power cut) right after that deploy step (`ports`,
/// `certificates`, `containers`, `routes`, `dns`, `registry`, or `renamed`:
/// a replaced container renamed aside, its replacement not yet created).
pub(crate) fn crash_point(step: &str) {
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
