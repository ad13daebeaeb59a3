//! A recording, in-memory [`ContainerRuntime`] for unit tests of the deploy
//! engine and lifecycle: containers are records, images are pulled by
//! name, and failures are injected per operation and name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::spec::{ContainerSpec, LABEL_NODE, LABEL_SERVICE};
use super::{ContainerRuntime, LogStream, Observed, RuntimeError};

/// One fake container.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    /// As created (with its hash label).
    pub spec: ContainerSpec,
    pub state: String,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, FakeContainer>,
    images: BTreeSet<String>,
    /// Every call that changes something, as `"<op> <name>"`.
    calls: Vec<String>,
    /// `(op, name)` → fail that call once.
    fail_once: Vec<(String, String)>,
    /// Images whose containers exit right after they start.
    crashing: BTreeSet<String>,
    next_id: u64,
}

/// The fake runtime.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("fake runtime lock"))
    }

    /// Makes the next `op` (`pull`, `create`, `start`, `stop`, `remove`,
    /// `rename`) on `name` (an image for `pull`) fail.
    pub fn fail_once(&self, op: &str, name: &str) {
        self.with(|s| s.fail_once.push((op.to_string(), name.to_string())));
    }

    /// Containers of `image` exit as soon as they start.
    pub fn crash_on_start(&self, image: &str) {
        self.with(|s| s.crashing.insert(image.to_string()));
    }

    /// The changes made so far, as `"<op> <name>"`.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.with(|s| s.calls.clear());
    }

    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<FakeContainer> {
        self.with(|s| s.containers.get(name).cloned())
    }

    /// Names of all containers.
    pub fn names(&self) -> Vec<String> {
        self.with(|s| s.containers.keys().cloned().collect())
    }

    /// Puts a container in place as if made outside this test's deploys.
    pub fn put(&self, spec: &ContainerSpec, state: &str) {
        self.with(|s| {
            s.next_id += 1;
            let c = FakeContainer {
                id: format!("id{}", s.next_id),
                spec: spec.with_hash_label(),
                state: state.to_string(),
            };
            s.containers.insert(spec.name.clone(), c);
        });
    }

    /// Renames without recording a call (to stage a crashed deploy).
    pub fn stage_rename(&self, from: &str, to: &str, state: &str) {
        self.with(|s| {
            let mut c = s.containers.remove(from).expect("staged container exists");
            c.spec.name = to.to_string();
            c.state = state.to_string();
            s.containers.insert(to.to_string(), c);
        });
    }

    fn call(&self, op: &str, name: &str) -> Result<(), RuntimeError> {
        self.with(|s| {
            s.calls.push(format!("{op} {name}"));
            match s.fail_once.iter().position(|(o, n)| o == op && n == name) {
                Some(i) => {
                    s.fail_once.remove(i);
                    Err(failed(name, op, "injected failure"))
                }
                None => Ok(()),
            }
        })
    }
}

fn failed(name: &str, op: &str, reason: &str) -> RuntimeError {
    let action = match op {
        "create" => "create",
        "start" => "start",
        "stop" => "stop",
        "remove" => "remove",
        "rename" => "rename",
        _ => "call",
    };
    RuntimeError::Container {
        name: name.to_string(),
        action,
        reason: reason.to_string(),
    }
}

fn observed(c: &FakeContainer) -> Observed {
    Observed {
        id: c.id.clone(),
        name: c.spec.name.clone(),
        state: c.state.clone(),
        image: c.spec.image.clone(),
        labels: c.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        started_at: if c.state == "running" { 1 } else { 0 },
        restart_count: 0,
        ports: c.spec.ports.clone(),
        exit_code: if c.state == "exited" { 1 } else { 0 },
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        Ok("fake".into())
    }

    async fn ensure_image(&self, image: &str) -> Result<bool, RuntimeError> {
        if self.call("pull", image).is_err() {
            return Err(RuntimeError::Pull {
                image: image.to_string(),
                reason: "injected failure".into(),
            });
        }
        Ok(self.with(|s| s.images.insert(image.to_string())))
    }

    async fn ensure_network(&self, _name: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.call("create", &spec.name)?;
        self.with(|s| {
            if s.containers.contains_key(&spec.name) {
                return Err(failed(&spec.name, "create", "the name is in use"));
            }
            s.next_id += 1;
            let id = format!("id{}", s.next_id);
            let c = FakeContainer {
                id: id.clone(),
                spec: spec.clone(),
                state: "created".into(),
            };
            s.containers.insert(spec.name.clone(), c);
            Ok(id)
        })
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.call("start", name)?;
        self.with(|s| {
            let crashing = s.crashing.clone();
            let c = s
                .containers
                .get_mut(name)
                .ok_or_else(|| failed(name, "start", "no such container"))?;
            c.state = if crashing.contains(&c.spec.image) {
                "exited".into()
            } else {
                "running".into()
            };
            Ok(())
        })
    }

    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        self.call("stop", name)?;
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(name) {
                c.state = "exited".into();
            }
        });
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.call("remove", name)?;
        self.with(|s| s.containers.remove(name));
        Ok(())
    }

    async fn discard(&self, name: &str) -> Result<(), RuntimeError> {
        self.remove(name).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), RuntimeError> {
        self.call("rename", from)?;
        self.with(|s| {
            if s.containers.contains_key(to) {
                return Err(failed(from, "rename", "the new name is in use"));
            }
            let mut c = s
                .containers
                .remove(from)
                .ok_or_else(|| failed(from, "rename", "no such container"))?;
            c.spec.name = to.to_string();
            s.containers.insert(to.to_string(), c);
            Ok(())
        })
    }

    async fn inspect(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        Ok(self.with(|s| s.containers.get(name).map(observed)))
    }

    async fn inspect_raw(&self, _name: &str) -> Result<Option<serde_json::Value>, RuntimeError> {
        Ok(None)
    }

    async fn list_all(&self) -> Result<HashMap<String, Observed>, RuntimeError> {
        Ok(self.with(|s| s.containers.iter().map(|(k, c)| (k.clone(), observed(c))).collect()))
    }

    async fn list_managed(&self) -> Result<HashMap<String, Observed>, RuntimeError> {
        let all = self.list_all().await?;
        Ok(all
            .into_iter()
            .filter(|(_, o)| o.labels.contains_key(LABEL_SERVICE))
            .collect())
    }

    async fn count_node(&self, node: &str) -> Result<(u32, u32), RuntimeError> {
        let all = self.list_all().await?;
        let ours: Vec<_> = all
            .values()
            .filter(|o| o.labels.get(LABEL_NODE).map(String::as_str) == Some(node))
            .collect();
        Ok((ours.len() as u32, ours.iter().filter(|o| o.running()).count() as u32))
    }

    async fn count(&self) -> Result<(u32, u32), RuntimeError> {
        let all = self.list_all().await?;
        Ok((all.len() as u32, all.values().filter(|o| o.running()).count() as u32))
    }

    fn logs(&self, _name: &str, _follow: bool, _tail: u32) -> LogStream {
        Box::pin(futures::stream::empty())
    }

    async fn exec(&self, _container: &str, _command: &str) -> Result<(i64, String), RuntimeError> {
        Ok((0, String::new()))
    }

    fn stale(&self) -> bool {
        false
    }

    async fn ensure_fresh(&self, _manage: bool) -> Result<bool, RuntimeError> {
        Ok(false)
    }
}
