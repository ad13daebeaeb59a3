//! Boot sequence and recovery: the registry's services brought back stage
//! by stage (`[[boot.sequence]]`), each stage waiting for its services'
//! health checks before the next one starts. The agent runs it when it
//! starts, and `mcp agent recover` runs it after podman lost its containers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::BootSection;
use futures::StreamExt;
use mcp_infra::config::parse_duration;
use mcp_infra::worker::Backoff;

use crate::handle::Agent;
use crate::lifecycle::Revived;
use crate::outcome::OpError;

/// Name of the stage whose failure blocks the boot (it is retried, with
/// alerts, until it is healthy).
pub const FOUNDATION: &str = "foundation";
/// The implicit last stage: recorded services named by no stage.
pub const UNSTAGED: &str = "unstaged";
/// Services of one stage brought back at once.
const PARALLEL: usize = 4;
/// Pause before the foundation stage's next attempt: 2 s doubling to 60 s.
const FOUNDATION_RETRY: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));

/// One stage to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub services: Vec<String>,
    pub timeout: Duration,
    /// Default health check (`tcp`, `http`, `grpc`) for components that
    /// declare none.
    pub health: Option<String>,
}

/// The stages of a boot: the configured ones, restricted to recorded
/// services (a stage naming an unknown service still runs, empty), then
/// every other recorded service in an implicit last stage. Pure.
pub fn stages(cfg: &BootSection, recorded: &[String]) -> Vec<Stage> {
    let mut out = Vec::new();
    let mut staged = std::collections::HashSet::new();
    for st in &cfg.sequence {
        let services: Vec<String> = st.services.iter().filter(|s| recorded.contains(s)).cloned().collect();
        staged.extend(st.services.iter().cloned());
        out.push(Stage {
            name: st.name.clone(),
            services,
            // Validated when the config was loaded.
            timeout: Duration::from_secs(parse_duration(&st.timeout).unwrap_or(120)),
            health: st.health.clone(),
        });
    }
    let rest: Vec<String> = recorded.iter().filter(|s| !staged.contains(*s)).cloned().collect();
    if !rest.is_empty() {
        out.push(Stage {
            name: UNSTAGED.to_string(),
            services: rest,
            timeout: Duration::from_secs(120),
            health: None,
        });
    }
    out
}

/// Progress of one stage, for `mcp agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStatus {
    pub name: String,
    /// pending | starting | healthy | failed | retrying
    pub state: String,
    pub detail: String,
    pub services: Vec<String>,
}

/// Boot progress, owned by the boot sequence and read by the gRPC server
/// and the monitor; one boot or recovery at a time.
#[derive(Default)]
pub struct BootState {
    stages: std::sync::Mutex<Vec<StageStatus>>,
    running: tokio::sync::Mutex<()>,
}

impl BootState {
    /// Stages of the last (or current) boot or recovery.
    pub fn stages(&self) -> Vec<StageStatus> {
        self.stages.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a boot or recovery runs right now (the monitor then waits:
    /// missing containers are expected, and repairs would break the order).
    pub fn busy(&self) -> bool {
        self.running.try_lock().is_err()
    }

    fn set(&self, i: usize, state: &str, detail: impl Into<String>) {
        let mut s = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = s.get_mut(i) {
            st.state = state.to_string();
            st.detail = detail.into();
        }
    }
}

/// What happened to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceResult {
    pub service: String,
    pub stage: String,
    pub success: bool,
    pub detail: String,
    pub duration_ms: u64,
}

/// Result of a boot or recovery.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub services: Vec<ServiceResult>,
    pub revived: Revived,
    pub duration: Duration,
}

/// Runs the boot sequence. `kind` names the events (`boot`, `recover`).
/// A failing foundation stage is retried up to `foundation_attempts` times
/// (0: until it is healthy or `stop` fires), later stages are not.
pub async fn run(
    agent: &Arc<Agent>,
    state: &BootState,
    kind: &str,
    foundation_attempts: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Report {
    let _one = state.running.lock().await;
    let begun = Instant::now();
    let recorded: Vec<String> = match agent.registry.services() {
        Ok(s) => s
            .into_iter()
            .filter(|r| r.def.active && r.wants_running())
            .map(|r| r.def.name)
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "{kind}: cannot read the registry");
            return Report::default();
        }
    };
    let stages = stages(&agent.cfg.boot, &recorded);
    *state.stages.lock().unwrap_or_else(|p| p.into_inner()) = stages
        .iter()
        .map(|s| StageStatus {
            name: s.name.clone(),
            state: "pending".into(),
            detail: String::new(),
            services: s.services.clone(),
        })
        .collect();
    let mut report = Report::default();
    for (i, stage) in stages.iter().enumerate() {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            state.set(i, "starting", format!("attempt {attempt}"));
            tracing::info!(stage = %stage.name, services = ?stage.services, attempt, "{kind}: starting stage");
            let (results, revived, healthy) = run_stage(agent, stage, kind).await;
            report.revived.created += revived.created;
            report.revived.started += revived.started;
            let failed: Vec<String> = results
                .iter()
                .filter(|r| !r.success)
                .map(|r| format!("{}: {}", r.service, r.detail))
                .collect();
            let health_err = healthy.err();
            if failed.is_empty() && health_err.is_none() {
                state.set(i, "healthy", format!("{} services healthy", stage.services.len()));
                tracing::info!(stage = %stage.name, "{kind}: stage healthy");
                report.services.extend(results);
                break;
            }
            let why = failed.into_iter().chain(health_err).collect::<Vec<_>>().join("; ");
            if stage.name != FOUNDATION || (foundation_attempts > 0 && attempt >= foundation_attempts) {
                state.set(i, "failed", why.clone());
                tracing::warn!(stage = %stage.name, reason = %why, "{kind}: stage failed; continuing with the next");
                report.services.extend(mark_failed(results, &why));
                break;
            }
            // The foundation blocks everything after it: retry, alert.
            let pause = FOUNDATION_RETRY.base(attempt);
            state.set(i, "retrying", format!("{why}; retry in {}s", pause.as_secs()));
            tracing::error!(stage = %stage.name, reason = %why, attempt, "{kind}: foundation stage failed; retrying");
            for s in &stage.services {
                agent.alert(s, "", &format!("{kind}-blocked"), &why);
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {
                    report.services.extend(mark_failed(results, &why));
                    report.duration = begun.elapsed();
                    return report;
                }
            }
        }
    }
    report.duration = begun.elapsed();
    tracing::info!(
        services = report.services.len(),
        created = report.revived.created,
        started = report.revived.started,
        ms = report.duration.as_millis() as u64,
        "{kind}: done"
    );
    report
}

/// Results of a stage whose health check failed are failures too.
fn mark_failed(results: Vec<ServiceResult>, why: &str) -> Vec<ServiceResult> {
    results
        .into_iter()
        .map(|mut r| {
            if r.success {
                r.success = false;
                r.detail = format!("{}; stage unhealthy: {why}", r.detail);
            }
            r
        })
        .collect()
}

/// Brings a stage's services back (a few at once), then waits for their
/// health checks until the stage timeout.
async fn run_stage(agent: &Arc<Agent>, stage: &Stage, kind: &str) -> (Vec<ServiceResult>, Revived, Result<(), String>) {
    let results: Vec<(ServiceResult, Revived)> = futures::stream::iter(stage.services.iter().cloned())
        .map(|svc| {
            let agent = agent.clone();
            let stage = stage.name.clone();
            let kind = kind.to_string();
            async move {
                let t = Instant::now();
                let r = agent.revive(&svc, None, &kind).await;
                let (success, detail, revived) = match r {
                    Ok((out, revived)) => {
                        let detail = out
                            .steps
                            .iter()
                            .find(|s| s.name == crate::outcome::step::CONTAINERS)
                            .map(|s| s.detail.clone())
                            .unwrap_or_default();
                        let broken: Vec<String> = out
                            .steps
                            .iter()
                            .filter(|s| !s.success && !s.skipped)
                            .map(|s| format!("{}: {}", s.name, s.error))
                            .collect();
                        if broken.is_empty() {
                            (true, detail, revived)
                        } else {
                            (true, format!("{detail}; {}", broken.join("; ")), revived)
                        }
                    }
                    Err(e) => (false, e.to_string(), Revived::default()),
                };
                (
                    ServiceResult {
                        service: svc,
                        stage,
                        success,
                        detail,
                        duration_ms: t.elapsed().as_millis() as u64,
                    },
                    revived,
                )
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut revived = Revived::default();
    let mut out = Vec::new();
    for (r, v) in results {
        revived.created += v.created;
        revived.started += v.started;
        out.push(r);
    }
    let ok: Vec<String> = out.iter().filter(|r| r.success).map(|r| r.service.clone()).collect();
    let healthy = wait_healthy(agent, &ok, stage).await;
    (out, revived, healthy)
}

/// Waits until every probe of `services` passes, or the stage timeout.
async fn wait_healthy(agent: &Agent, services: &[String], stage: &Stage) -> Result<(), String> {
    let mut probes = Vec::new();
    for s in services {
        if let Ok(Some(rec)) = agent.registry.service(s) {
            probes.extend(
                crate::health::probes(&rec, stage.health.as_deref())
                    .into_iter()
                    .map(|p| (s.clone(), p)),
            );
        }
    }
    let deadline = Instant::now() + stage.timeout;
    let mut pending = probes;
    loop {
        let mut still = Vec::new();
        let mut last_err = String::new();
        for (s, p) in pending {
            if let Err(e) = crate::health::check(&p, Duration::from_secs(2)).await {
                last_err = format!("{s}/{e}");
                still.push((s, p));
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "health checks not passing after {}s ({last_err})",
                stage.timeout.as_secs()
            ));
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `mcp agent recover`: restarts the podman API service when the agent
/// manages it and it is stale (after `podman system reset` the old one
/// answers from an abandoned namespace) or down, repairs interrupted deploys, runs the boot sequence,
/// and re-applies routes, DNS and edge routes. Idempotent.
/// A failing foundation stage is tried three times, then reported.
pub async fn recover(agent: &Arc<Agent>, state: &BootState) -> Result<Report, OpError> {
    agent.runtime.ensure_fresh(agent.cfg.podman.start_service).await?;
    if let Err(e) = agent.repair_interrupted().await {
        tracing::warn!(error = %e, "recover: could not check for interrupted deploys");
    }
    let (_keep, stop) = tokio::sync::watch::channel(false);
    let report = run(agent, state, "recover", 3, stop).await;
    agent.reapply_all().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BootStage;

    fn stage(name: &str, services: &[&str]) -> BootStage {
        BootStage {
            name: name.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            timeout: "30s".into(),
            health: None,
        }
    }

    #[test]
    fn stages_in_order_then_the_rest() {
        let cfg = BootSection {
            sequence: vec![stage("foundation", &["mcias", "gone"]), stage("core", &["mcns"])],
        };
        let recorded: Vec<String> = ["web", "mcns", "mcias", "api"].iter().map(|s| s.to_string()).collect();
        let got = stages(&cfg, &recorded);
        let names: Vec<(&str, Vec<&str>)> = got
            .iter()
            .map(|s| (s.name.as_str(), s.services.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            names,
            [
                ("foundation", vec!["mcias"]),
                ("core", vec!["mcns"]),
                (UNSTAGED, vec!["web", "api"])
            ]
        );
        assert_eq!(got[0].timeout, Duration::from_secs(30));
    }

    #[test]
    fn no_sequence_is_one_stage() {
        let got = stages(&BootSection::default(), &["a".to_string()]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, UNSTAGED);
        assert!(stages(&BootSection::default(), &[]).is_empty());
    }
}
