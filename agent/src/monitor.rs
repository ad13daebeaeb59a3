//! The monitor: every `monitor.interval` seconds it compares the registry
//! with what podman runs, records drift (container missing, exited, other
//! image, other port mapping, other spec) and flapping (too many restarts
//! within a window) as events and alerts, repairs drifted containers from
//! the registry when `auto_repair` is on (with exponential backoff), puts
//! back proxy routes that went missing, retries deferred DNS registrations
//! and, hourly, renews certificates, re-registers DNS and prunes old events.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::config::MonitorSection;

use crate::boot::BootState;
use crate::handle::Agent;
use crate::registry::Desired;
use crate::runtime::Observed;
use crate::runtime::spec::ContainerSpec;
use crate::runtime::spec::LABEL_HASH;
use mcp_infra::worker::{Next, Pass, PassResult, Schedule, Shutdown, Worker};

/// How a container differs from its recorded spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// missing | exited | image | ports | spec
    pub kind: &'static str,
    pub detail: String,
}

/// Compares one container that should run with its recorded spec. Pure.
pub fn detect(spec: &ContainerSpec, seen: Option<&Observed>) -> Option<Drift> {
    let Some(o) = seen else {
        return Some(Drift {
            kind: "missing",
            detail: format!("container {} is gone", spec.name),
        });
    };
    if o.image != spec.image {
        return Some(Drift {
            kind: "image",
            detail: format!(
                "container {} runs {}, the registry says {}",
                spec.name, o.image, spec.image
            ),
        });
    }
    let mut want = spec.ports.clone();
    want.sort();
    if o.ports != want {
        return Some(Drift {
            kind: "ports",
            detail: format!(
                "container {} publishes {:?}, the registry says {:?}",
                spec.name, o.ports, want
            ),
        });
    }
    // Adopted containers carry no hash label: image and ports are all
    // there is to compare.
    if let Some(h) = o.labels.get(LABEL_HASH)
        && *h != spec.hash()
    {
        return Some(Drift {
            kind: "spec",
            detail: format!("container {} was changed outside mcp", spec.name),
        });
    }
    if !o.running() {
        return Some(Drift {
            kind: "exited",
            detail: format!("container {} is {} (exit code {})", spec.name, o.state, o.exit_code),
        });
    }
    None
}

/// What the monitor remembers of one container between passes.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Drift kind reported last (None: in sync).
    pub drift: Option<&'static str>,
    last_restart_count: Option<u32>,
    last_started_at: i64,
    last_id: String,
    /// Unix seconds of restarts within the window.
    restarts: VecDeque<u64>,
    pub flapping: bool,
    /// Repairs since the container was last stable.
    repairs: u32,
    next_repair: u64,
    /// Unix seconds since when the container has been in sync.
    in_sync_since: u64,
    /// Restarts seen by the last observation.
    pub new_restarts: u32,
}

/// Something the monitor reports: an event, and maybe an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub kind: String,
    pub message: String,
    pub alert: bool,
}

impl Watch {
    /// Folds one observation in; returns what to report. Pure (`now` in
    /// unix seconds).
    pub fn observe(
        &mut self,
        now: u64,
        seen: Option<&Observed>,
        drift: Option<&Drift>,
        cfg: &MonitorSection,
    ) -> Vec<Signal> {
        let mut out = Vec::new();
        // Restarts: podman's restart count, or a new start time (or a new
        // container: one mcp or someone else recreated).
        if let Some(o) = seen {
            let mut n = 0;
            if let Some(prev) = self.last_restart_count {
                let same = o.id == self.last_id;
                n = if same { o.restart_count.saturating_sub(prev) } else { 0 };
                if n == 0 && o.started_at != 0 && o.started_at != self.last_started_at {
                    n = 1;
                }
            }
            self.last_restart_count = Some(o.restart_count);
            self.last_started_at = o.started_at;
            self.last_id = o.id.clone();
            for _ in 0..n {
                self.restarts.push_back(now);
            }
            self.new_restarts = n;
        }
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > cfg.flap_window)
        {
            self.restarts.pop_front();
        }
        let count = self.restarts.len() as u32;
        if !self.flapping && count >= cfg.flap_restarts {
            self.flapping = true;
            out.push(Signal {
                kind: "flapping".into(),
                message: format!("{count} restarts within {}s", cfg.flap_window),
                alert: true,
            });
        } else if self.flapping && count == 0 {
            self.flapping = false;
            out.push(Signal {
                kind: "stable".into(),
                message: format!("no restart for {}s", cfg.flap_window),
                alert: false,
            });
        }
        match (self.drift, drift) {
            (None, Some(d)) => out.push(Signal {
                kind: format!("drift-{}", d.kind),
                message: d.detail.clone(),
                alert: true,
            }),
            (Some(k), Some(d)) if k != d.kind => out.push(Signal {
                kind: format!("drift-{}", d.kind),
                message: d.detail.clone(),
                alert: true,
            }),
            (Some(k), None) => {
                out.push(Signal {
                    kind: "in-sync".into(),
                    message: format!("no longer drifted ({k})"),
                    alert: false,
                });
                self.in_sync_since = now;
            }
            (None, None) if self.in_sync_since == 0 => self.in_sync_since = now,
            _ => {}
        }
        self.drift = drift.map(|d| d.kind);
        // A container in sync for a whole flap window starts over with the
        // shortest repair backoff.
        if self.drift.is_none() && self.repairs > 0 && now.saturating_sub(self.in_sync_since) >= cfg.flap_window {
            self.repairs = 0;
        }
        out
    }

    /// Whether a repair is due now; if so, books it and pushes the next
    /// one out: interval × 2^repairs, capped at `repair_backoff_max`.
    pub fn repair_due(&mut self, now: u64, cfg: &MonitorSection) -> bool {
        if self.drift.is_none() || now < self.next_repair {
            return false;
        }
        let pause = cfg
            .interval
            .saturating_mul(1u64 << self.repairs.min(20))
            .min(cfg.repair_backoff_max.max(cfg.interval));
        self.repairs += 1;
        self.next_repair = now + pause;
        true
    }
}

/// What the monitor remembers between passes; the gRPC server reads its summary.
#[derive(Default)]
pub struct MonitorState {
    inner: std::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last_run: i64,
    drifted: u32,
    watch: HashMap<String, Watch>,
}

impl MonitorState {
    /// (unix seconds of the last pass, components drifted in it).
    pub fn summary(&self) -> (i64, u32) {
        let i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (i.last_run, i.drifted)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the monitor every `monitor.interval` until `shutdown`: a pass
/// (skipped while a boot or recovery runs: missing containers are expected
/// then, and repairs would break the order), and every hour the upkeep
/// (DNS records again, certificate renewals, old events pruned).
pub async fn run(agent: Arc<Agent>, state: Arc<MonitorState>, boot: Arc<BootState>, shutdown: Shutdown) {
    let every = Duration::from_secs(agent.cfg.monitor.interval);
    agent.prune_events();
    let monitor = Monitor {
        agent,
        state,
        boot,
        last_upkeep: tokio::time::Instant::now(),
    };
    Worker::new("monitor", Schedule::every(every), monitor)
        .run(shutdown)
        .await;
}

/// The monitor's worker pass and what it remembers between passes.
struct Monitor {
    agent: Arc<Agent>,
    state: Arc<MonitorState>,
    boot: Arc<BootState>,
    last_upkeep: tokio::time::Instant,
}

impl Pass for Monitor {
    async fn run(&mut self) -> PassResult {
        if self.boot.busy() {
            return Ok(Next::Period);
        }
        pass(&self.agent, &self.state).await;
        if self.last_upkeep.elapsed() >= UPKEEP_EVERY {
            self.last_upkeep = tokio::time::Instant::now();
            self.agent.upkeep().await;
            self.agent.prune_events();
        }
        Ok(Next::Period)
    }
}

/// How often the upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(3600);

/// One pass over every service that should run.
pub async fn pass(agent: &Arc<Agent>, state: &MonitorState) {
    let cfg = &agent.cfg.monitor;
    // After a `podman system reset` the API service answers from an
    // abandoned namespace: every create would hang.
    if agent.runtime.stale()
        && let Err(e) = agent.runtime.ensure_fresh(agent.cfg.podman.start_service).await
    {
        tracing::error!(error = %e, "monitor: podman API unusable");
        return;
    }
    let services = match agent.registry.services() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "monitor: cannot read the registry");
            return;
        }
    };
    let mut drifted = 0;
    let mut live = std::collections::HashSet::new();
    for rec in &services {
        let name = &rec.def.name;
        // A deploy, stop or repair in flight changes containers on purpose.
        if !rec.def.active || agent.busy(name) {
            continue;
        }
        let mut repairs = Vec::new();
        for c in rec.components.iter().filter(|c| c.desired == Desired::Running) {
            live.insert(c.spec.name.clone());
            let seen = match agent.runtime.inspect(&c.spec.name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(container = %c.spec.name, error = %e, "monitor: cannot inspect");
                    continue;
                }
            };
            let drift = detect(&c.spec, seen.as_ref());
            if drift.is_some() {
                drifted += 1;
            }
            let (signals, repair) = {
                let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
                let w = inner.watch.entry(c.spec.name.clone()).or_default();
                w.new_restarts = 0;
                let signals = w.observe(now(), seen.as_ref(), drift.as_ref(), cfg);
                let repair = cfg.auto_repair && w.repair_due(now(), cfg);
                if w.new_restarts > 0 {
                    crate::metrics::container_restarts(name, &c.name, w.new_restarts.into());
                }
                (signals, repair)
            };
            for s in signals {
                agent.report(name, &c.name, &s.kind, &s.message, s.alert);
            }
            if repair {
                repairs.push(c.name.clone());
            }
        }
        for component in repairs {
            match agent.revive(name, Some(&component), "repaired").await {
                Ok((_, r)) => {
                    tracing::info!(service = %name, %component, created = r.created, started = r.started, "monitor: repaired")
                }
                Err(e) => {
                    // revive recorded the event.
                    agent.alert(name, &component, "repaired-failed", &e.to_string());
                }
            }
        }
        ensure_routes(agent, rec).await;
    }
    agent.retry_deferred_dns().await;
    let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    inner.watch.retain(|k, _| live.contains(k));
    inner.last_run = now() as i64;
    inner.drifted = drifted;
}

/// Puts back the proxy routes of a running service when the proxy lost
/// them (an mc-proxy restart, an operator's mistake).
async fn ensure_routes(agent: &Agent, rec: &crate::registry::ServiceRecord) {
    let Some(proxy) = &agent.proxy else { return };
    if rec.routes.is_empty() || !rec.wants_running() {
        return;
    }
    let want = crate::wiring::routes_for(rec, &agent.cfg);
    if want.is_empty() {
        return;
    }
    let Ok(have) = proxy.routes().await else { return };
    let key = |r: &crate::platform::ProxyRoute| (r.listener_port, r.hostname.clone(), r.backend.clone());
    let have: std::collections::HashSet<_> = have.iter().filter(|r| r.service == rec.def.name).map(key).collect();
    let missing = want.iter().filter(|r| !have.contains(&key(r))).count();
    if missing == 0 {
        return;
    }
    match agent.apply_routes(rec).await {
        Ok(_) => agent.report(
            &rec.def.name,
            "",
            "routes-restored",
            &format!("{missing} proxy routes were missing and are back"),
            false,
        ),
        Err(e) => agent.report(&rec.def.name, "", "routes-failed", &e, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            ports: vec![10002, 10001],
            ..ContainerSpec::bare("web", "r/web:v1")
        }
    }

    fn seen(s: &ContainerSpec) -> Observed {
        Observed {
            id: "abc".into(),
            name: s.name.clone(),
            state: "running".into(),
            image: s.image.clone(),
            labels: [(LABEL_HASH.to_string(), s.hash())].into_iter().collect(),
            started_at: 100,
            restart_count: 0,
            ports: vec![10001, 10002],
            exit_code: 0,
        }
    }

    fn cfg() -> MonitorSection {
        MonitorSection {
            interval: 10,
            flap_restarts: 3,
            flap_window: 300,
            repair_backoff_max: 300,
            ..Default::default()
        }
    }

    #[test]
    fn drift_kinds() {
        let s = spec();
        assert_eq!(detect(&s, Some(&seen(&s))), None);
        assert_eq!(detect(&s, None).unwrap().kind, "missing");
        let mut o = seen(&s);
        o.state = "exited".into();
        o.exit_code = 137;
        let d = detect(&s, Some(&o)).unwrap();
        assert_eq!(d.kind, "exited");
        assert!(d.detail.contains("137"), "{}", d.detail);
        let mut o = seen(&s);
        o.image = "r/web:v2".into();
        assert_eq!(detect(&s, Some(&o)).unwrap().kind, "image");
        let mut o = seen(&s);
        o.ports = vec![10001];
        assert_eq!(detect(&s, Some(&o)).unwrap().kind, "ports");
        let mut o = seen(&s);
        o.labels.insert(LABEL_HASH.into(), "other".into());
        assert_eq!(detect(&s, Some(&o)).unwrap().kind, "spec");
        // Adopted: no hash label, image and ports match.
        let mut o = seen(&s);
        o.labels.clear();
        assert_eq!(detect(&s, Some(&o)), None);
    }

    #[test]
    fn drift_reported_once_per_change() {
        let s = spec();
        let c = cfg();
        let mut w = Watch::default();
        let gone = detect(&s, None);
        let kinds = |v: Vec<Signal>| v.into_iter().map(|s| s.kind).collect::<Vec<_>>();
        assert!(kinds(w.observe(0, Some(&seen(&s)), None, &c)).is_empty());
        assert_eq!(kinds(w.observe(10, None, gone.as_ref(), &c)), ["drift-missing"]);
        assert!(kinds(w.observe(20, None, gone.as_ref(), &c)).is_empty());
        let mut o = seen(&s);
        o.state = "exited".into();
        let ex = detect(&s, Some(&o));
        assert_eq!(kinds(w.observe(30, Some(&o), ex.as_ref(), &c)), ["drift-exited"]);
        let mut o = seen(&s);
        o.id = "new".into();
        o.started_at = 200;
        assert_eq!(kinds(w.observe(40, Some(&o), None, &c)), ["in-sync"]);
    }

    #[test]
    fn flapping_alerts_once_then_settles() {
        let s = spec();
        let c = cfg();
        let mut w = Watch::default();
        let mut o = seen(&s);
        let mut all = Vec::new();
        for i in 0..8u32 {
            o.restart_count = i;
            o.started_at = 100 + i as i64;
            all.extend(w.observe(i as u64 * 10, Some(&o), None, &c));
        }
        let flaps: Vec<_> = all.iter().filter(|s| s.kind == "flapping").collect();
        assert_eq!(flaps.len(), 1, "{all:?}");
        assert!(flaps[0].alert);
        assert!(w.flapping);
        // Quiet for longer than the window: stable again, once.
        let quiet = w.observe(1000, Some(&o), None, &c);
        assert_eq!(quiet.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(), ["stable"]);
        assert!(w.observe(1010, Some(&o), None, &c).is_empty());
    }

    #[test]
    fn several_restarts_between_passes_count() {
        let s = spec();
        let c = cfg();
        let mut w = Watch::default();
        let mut o = seen(&s);
        w.observe(0, Some(&o), None, &c);
        o.restart_count = 3;
        o.started_at = 500;
        let sig = w.observe(10, Some(&o), None, &c);
        assert_eq!(sig.len(), 1);
        assert_eq!(sig[0].kind, "flapping");
    }

    #[test]
    fn repairs_back_off() {
        let s = spec();
        let c = cfg();
        let mut w = Watch::default();
        let gone = detect(&s, None);
        w.observe(0, None, gone.as_ref(), &c);
        let mut due = Vec::new();
        for t in (0..2000).step_by(10) {
            w.observe(t, None, gone.as_ref(), &c);
            if w.repair_due(t, &c) {
                due.push(t);
            }
        }
        // 10 s × 2^n, capped at 300 s.
        assert_eq!(&due[..6], &[0, 10, 30, 70, 150, 310]);
        assert_eq!(due[6] - due[5], 300);
        // In sync: no repair.
        let mut w = Watch::default();
        w.observe(0, Some(&seen(&s)), None, &c);
        assert!(!w.repair_due(0, &c));
    }
}
