//! The containers step: carry out a [`plan`](super::plan) against the
//! container runtime, recording for every change the [`Undo`] entry that
//! takes it back; roll back in reverse on failure, or commit (drop what
//! was replaced) once the registry recorded the new state. Start, boot,
//! recover and repair use the same functions.

use std::collections::{BTreeMap, HashMap};

use crate::deploy::plan::{Action, Seen};
use crate::registry::Registry;
use crate::runtime::spec::{LABEL_HASH, LABEL_SERVICE};
use crate::runtime::{ContainerRuntime, Observed, RuntimeError};

/// Suffix of the previous container kept while its replacement starts.
pub const PREV_SUFFIX: &str = "-mcp-prev";

/// How to take back one applied container action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// It was started: stop it.
    Stop(String),
    /// It was stopped: start it.
    Start(String),
    /// It was created: remove it.
    Remove(String),
    /// It replaced `prev`: remove it, rename `prev` back, restart it if it ran.
    Restore {
        name: String,
        prev: String,
        was_running: bool,
    },
}

/// What the containers step did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Undo entries, in the order the changes were made.
    pub undo: Vec<Undo>,
    /// Containers started by the step, as the runtime saw them right after.
    pub observed: HashMap<String, Observed>,
    /// Notes for the operator (limits not enforced, recreated containers).
    pub warnings: Vec<String>,
}

/// What the runtime says about the named containers, for planning.
pub async fn seen<'a>(
    rt: &dyn ContainerRuntime,
    registry: &Registry,
    service: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<String, Seen>, crate::outcome::OpError> {
    let mut out = BTreeMap::new();
    for name in names {
        if let Some(o) = rt.inspect(name).await? {
            out.insert(
                name.to_string(),
                Seen {
                    running: o.running(),
                    hash: o.labels.get(LABEL_HASH).cloned().unwrap_or_default(),
                    // Adopted containers carry no mcp labels; the
                    // registry knows them.
                    ours: o.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service)
                        || registry.container_owner(name)?.as_deref() == Some(service),
                },
            );
        }
    }
    Ok(out)
}

/// Executes container actions, recording how to undo each in `applied`
/// (also when it fails half-way). Images are pulled and networks made
/// before anything is touched, so a missing image changes nothing.
/// `limits_enforced` is false on hosts that cannot apply memory/cpu limits
/// to rootless containers (cgroups v1). Returns a summary.
pub async fn apply(
    rt: &dyn ContainerRuntime,
    actions: &[Action],
    limits_enforced: bool,
    applied: &mut Applied,
) -> Result<String, RuntimeError> {
    let mut pulled = Vec::new();
    for a in actions {
        if let Action::Create { spec, .. } | Action::Replace { spec, .. } = a {
            if rt.ensure_image(&spec.image).await? {
                pulled.push(spec.image.clone());
            }
            if let Some(net) = &spec.network {
                rt.ensure_network(net).await?;
            }
            if (spec.memory.is_some() || spec.nano_cpus.is_some()) && !limits_enforced {
                let note = format!(
                    "{}: this host cannot enforce memory/cpu limits for rootless containers (cgroups v1); they are recorded but not applied",
                    spec.name
                );
                if !applied.warnings.contains(&note) {
                    applied.warnings.push(note);
                }
            }
        }
    }
    for a in actions {
        match a {
            Action::Keep { .. } | Action::Remove { .. } => {}
            Action::Start { spec, .. } => {
                match rt.start(&spec.name).await {
                    Ok(()) => applied.undo.push(Undo::Stop(spec.name.clone())),
                    Err(e) if e.is_wedged() => {
                        // The runtime can neither start nor stop it (left
                        // "stopping" by an unclean shutdown): the registry
                        // has its spec, so make it again.
                        let note = format!("{}: {e}; recreated from the registry", spec.name);
                        tracing::warn!(container = %spec.name, error = %e, "recreating a container podman cannot start");
                        applied.warnings.push(note);
                        rt.discard(&spec.name).await?;
                        rt.create(&spec.with_hash_label()).await?;
                        applied.undo.push(Undo::Remove(spec.name.clone()));
                        rt.start(&spec.name).await?;
                    }
                    Err(e) => return Err(e),
                }
                applied
                    .observed
                    .insert(spec.name.clone(), check_running(rt, &spec.name).await?);
            }
            Action::Stop { container, .. } => {
                rt.stop(container).await?;
                applied.undo.push(Undo::Start(container.clone()));
            }
            Action::Create { spec, .. } => {
                rt.create(&spec.with_hash_label()).await?;
                applied.undo.push(Undo::Remove(spec.name.clone()));
                rt.start(&spec.name).await?;
                applied
                    .observed
                    .insert(spec.name.clone(), check_running(rt, &spec.name).await?);
            }
            Action::Replace { spec, .. } => {
                let prev = format!("{}{PREV_SUFFIX}", spec.name);
                let was_running = rt.inspect(&spec.name).await?.is_some_and(|o| o.running());
                rt.remove(&prev).await?;
                rt.stop(&spec.name).await?;
                rt.rename(&spec.name, &prev).await?;
                super::crash_point("renamed");
                applied.undo.push(Undo::Restore {
                    name: spec.name.clone(),
                    prev,
                    was_running,
                });
                rt.create(&spec.with_hash_label()).await?;
                rt.start(&spec.name).await?;
                applied
                    .observed
                    .insert(spec.name.clone(), check_running(rt, &spec.name).await?);
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
async fn check_running(rt: &dyn ContainerRuntime, name: &str) -> Result<Observed, RuntimeError> {
    let reason = match rt.inspect(name).await? {
        Some(o) if o.running() => return Ok(o),
        Some(o) => format!("container is {} right after start", o.state),
        None => "container vanished right after start".into(),
    };
    Err(RuntimeError::Container {
        name: name.to_string(),
        action: "start",
        reason,
    })
}

/// Undoes applied actions in reverse; returns a summary for the error.
pub async fn rollback(rt: &dyn ContainerRuntime, undo: Vec<Undo>) -> String {
    if undo.is_empty() {
        return "nothing was changed".to_string();
    }
    let mut problems = Vec::new();
    for u in undo.into_iter().rev() {
        let r = match &u {
            Undo::Stop(name) => rt.stop(name).await,
            Undo::Start(name) => rt.start(name).await,
            Undo::Remove(name) => rt.remove(name).await,
            Undo::Restore {
                name,
                prev,
                was_running,
            } => {
                let mut r = rt.remove(name).await;
                if r.is_ok() {
                    r = rt.rename(prev, name).await;
                }
                if r.is_ok() && *was_running {
                    r = rt.start(name).await;
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

/// After the registry recorded the new state: drop replaced containers and
/// remove those of dropped components. Failures become warnings.
pub async fn commit(rt: &dyn ContainerRuntime, actions: &[Action], undo: Vec<Undo>, warnings: &mut Vec<String>) {
    for u in undo {
        if let Undo::Restore { prev, .. } = u
            && let Err(e) = rt.remove(&prev).await
        {
            warnings.push(format!("could not remove replaced container {prev}: {e}"));
        }
    }
    for a in actions {
        if let Action::Remove { container, .. } = a
            && let Err(e) = rt.remove(container).await
        {
            warnings.push(format!(
                "could not remove container {container} of a dropped component: {e}"
            ));
        }
    }
}

/// One line of a summary for a container action.
pub fn describe(a: &Action) -> String {
    match a {
        Action::Keep { component } => format!("{component} unchanged"),
        Action::Start { component, .. } => format!("{component} started"),
        Action::Create { component, .. } => format!("{component} created"),
        Action::Replace { component, changed, .. } => format!("{component} recreated ({} changed)", changed.join(", ")),
        Action::Stop { component, .. } => format!("{component} stopped (inactive)"),
        Action::Remove { component, .. } => format!("{component} removed"),
    }
}
