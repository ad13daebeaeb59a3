//! Pure planning: what a deploy must do to each container, given what the
//! registry recorded, what the new definition asks for, and what podman
//! reports. No IO here.

use std::collections::BTreeMap;

use crate::runtime::spec::ContainerSpec;

/// What podman reports of a container, reduced to what planning needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub running: bool,
    /// `mcp.spec-hash` label; empty for containers mcp did not create.
    pub hash: String,
    /// Whether the container carries this service's label.
    pub ours: bool,
}

/// One step of a container plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Same spec, running: nothing to do.
    Keep { component: String },
    /// Same spec, container present but not running.
    Start { component: String, spec: ContainerSpec },
    /// No container yet (new component, or container lost).
    Create { component: String, spec: ContainerSpec },
    /// Spec changed: replace the container, keeping the old one until the
    /// new one runs. `changed` lists the differing fields.
    Replace {
        component: String,
        spec: ContainerSpec,
        changed: Vec<&'static str>,
    },
    /// Inactive service: stop the container, keep it.
    Stop { component: String, container: String },
    /// Component no longer defined: remove its container at the end.
    Remove { component: String, container: String },
}

impl Action {
    /// Whether the action touches podman.
    pub fn changes_something(&self) -> bool {
        !matches!(self, Action::Keep { .. })
    }

    /// Component this action is about.
    pub fn component(&self) -> &str {
        match self {
            Action::Keep { component }
            | Action::Start { component, .. }
            | Action::Create { component, .. }
            | Action::Replace { component, .. }
            | Action::Stop { component, .. }
            | Action::Remove { component, .. } => component,
        }
    }
}

/// Why planning refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("container {0} exists but was not created by mcp for this service; remove or adopt it first")]
    Foreign(String),
}

/// Plans the container actions of a deploy.
///
/// * `recorded`: component → spec recorded in the registry (old state).
/// * `wanted`: in-scope components of the new definition, in start order.
/// * `seen`: container name → what podman reports (absent = no container).
/// * `active`: the definition's `active` flag.
/// * `dropped`: recorded components no longer in the definition (only when
///   the whole service is deployed, not one component).
pub fn plan(
    recorded: &BTreeMap<String, ContainerSpec>,
    wanted: &[(String, ContainerSpec)],
    seen: &BTreeMap<String, Seen>,
    active: bool,
    dropped: &[(String, String)],
) -> Result<Vec<Action>, PlanError> {
    let mut actions = Vec::new();
    for (component, spec) in wanted {
        let container = seen.get(&spec.name);
        if let Some(c) = container
            && !c.ours
        {
            return Err(PlanError::Foreign(spec.name.clone()));
        }
        if !active {
            if container.is_some_and(|c| c.running) {
                actions.push(Action::Stop {
                    component: component.clone(),
                    container: spec.name.clone(),
                });
            } else {
                actions.push(Action::Keep {
                    component: component.clone(),
                });
            }
            continue;
        }
        let hash = spec.hash();
        let action = match container {
            None => Action::Create {
                component: component.clone(),
                spec: spec.clone(),
            },
            Some(c) if c.hash == hash => {
                if c.running {
                    Action::Keep {
                        component: component.clone(),
                    }
                } else {
                    Action::Start {
                        component: component.clone(),
                        spec: spec.clone(),
                    }
                }
            }
            Some(_) => {
                let changed = recorded
                    .get(component)
                    .map(|old| old.diff(spec))
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| vec!["container"]);
                Action::Replace {
                    component: component.clone(),
                    spec: spec.clone(),
                    changed,
                }
            }
        };
        actions.push(action);
    }
    for (component, container) in dropped {
        actions.push(Action::Remove {
            component: component.clone(),
            container: container.clone(),
        });
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec::bare(name, image)
    }

    fn seen(s: &ContainerSpec, running: bool) -> (String, Seen) {
        (
            s.name.clone(),
            Seen {
                running,
                hash: s.hash(),
                ours: true,
            },
        )
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| {
                let k = match a {
                    Action::Keep { .. } => "keep",
                    Action::Start { .. } => "start",
                    Action::Create { .. } => "create",
                    Action::Replace { .. } => "replace",
                    Action::Stop { .. } => "stop",
                    Action::Remove { .. } => "remove",
                };
                format!("{}:{k}", a.component())
            })
            .collect()
    }

    #[test]
    fn plans() {
        let a1 = spec("s-a", "img:v1");
        let a2 = spec("s-a", "img:v2");
        let b1 = spec("s-b", "img:v1");
        let recorded = BTreeMap::from([("a".to_string(), a1.clone()), ("b".to_string(), b1.clone())]);
        let wanted = vec![("a".to_string(), a1.clone()), ("b".to_string(), b1.clone())];
        // (case, wanted, seen, active, dropped, expected actions)
        type Case<'a> = (
            &'a str,
            Vec<(String, ContainerSpec)>,
            BTreeMap<String, Seen>,
            bool,
            Vec<(String, String)>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "fresh deploy",
                wanted.clone(),
                BTreeMap::new(),
                true,
                vec![],
                vec!["a:create", "b:create"],
            ),
            (
                "unchanged and running",
                wanted.clone(),
                BTreeMap::from([seen(&a1, true), seen(&b1, true)]),
                true,
                vec![],
                vec!["a:keep", "b:keep"],
            ),
            (
                "unchanged, one stopped, one lost",
                wanted.clone(),
                BTreeMap::from([seen(&a1, false)]),
                true,
                vec![],
                vec!["a:start", "b:create"],
            ),
            (
                "image changed on one component",
                vec![("a".to_string(), a2.clone()), ("b".to_string(), b1.clone())],
                BTreeMap::from([seen(&a1, true), seen(&b1, true)]),
                true,
                vec![],
                vec!["a:replace", "b:keep"],
            ),
            (
                "component dropped",
                vec![("a".to_string(), a1.clone())],
                BTreeMap::from([seen(&a1, true), seen(&b1, true)]),
                true,
                vec![("b".to_string(), "s-b".to_string())],
                vec!["a:keep", "b:remove"],
            ),
            (
                "inactive",
                wanted.clone(),
                BTreeMap::from([seen(&a1, true), seen(&b1, false)]),
                false,
                vec![],
                vec!["a:stop", "b:keep"],
            ),
        ];
        for (name, wanted, seen, active, dropped, expected) in cases {
            let got = plan(&recorded, &wanted, &seen, active, &dropped).unwrap();
            assert_eq!(kinds(&got), expected, "{name}");
        }
        let replaced = plan(
            &recorded,
            &[("a".to_string(), a2)],
            &BTreeMap::from([seen(&a1, true)]),
            true,
            &[],
        )
        .unwrap();
        assert!(matches!(&replaced[0], Action::Replace { changed, .. } if changed == &vec!["image"]));
    }

    #[test]
    fn foreign_container_is_refused() {
        let a1 = spec("s-a", "img:v1");
        let seen = BTreeMap::from([(
            "s-a".to_string(),
            Seen {
                running: true,
                hash: String::new(),
                ours: false,
            },
        )]);
        let err = plan(&BTreeMap::new(), &[("a".to_string(), a1)], &seen, true, &[]).unwrap_err();
        assert_eq!(err, PlanError::Foreign("s-a".into()));
    }
}
