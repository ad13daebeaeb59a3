//! The container runtime the agent drives: [`ContainerRuntime`], a small
//! trait whose one real implementation is rootless podman
//! ([`podman::Podman`]); the deploy engine, lifecycle, monitor and
//! snapshots only see the trait, so their logic is unit-tested with a fake.
//! [`spec::ContainerSpec`] is what a container is made from.

#[cfg(test)]
pub mod fake;
pub mod podman;
pub mod spec;

use std::collections::HashMap;
use std::pin::Pin;

use futures::Stream;

use spec::ContainerSpec;

/// Output of a container: (is_stderr, bytes) items.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<(bool, bytes::Bytes), RuntimeError>> + Send + 'static>>;

/// Why a container runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("podman API at {socket} is not answering: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("image {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("container {name}: {action}: {reason}")]
    Container {
        name: String,
        action: &'static str,
        reason: String,
    },
    #[error("podman: {0}")]
    Other(String),
}

impl RuntimeError {
    /// A start refused because of the container's state although it is not
    /// running: podman 4 leaves a container "stopping" for good when the
    /// host or its conmon dies during a stop, and then neither starts nor
    /// stops it; only removing it helps.
    pub fn is_wedged(&self) -> bool {
        matches!(self, RuntimeError::Container { action: "start", reason, .. } if reason.contains("state improper"))
    }
}

/// What podman says about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub id: String,
    pub name: String,
    /// running | exited | created | paused | …
    pub state: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// Unix seconds; 0 when unknown.
    pub started_at: i64,
    pub restart_count: u32,
    /// Host ports published (inspect only).
    pub ports: Vec<u16>,
    /// Exit code of the last run (inspect only).
    pub exit_code: i64,
}

impl Observed {
    /// Whether the container is running.
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// What the agent asks of a container runtime. Names are container names;
/// a missing container is `Ok(None)` for reads and not an error for
/// `stop`/`remove`.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// The runtime's version, for status.
    async fn version(&self) -> Result<String, RuntimeError>;
    /// Pulls `image` unless present; whether it pulled.
    async fn ensure_image(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Creates the named network unless it exists.
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError>;
    /// Creates (does not start) a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Starts a container (running already is fine).
    async fn start(&self, name: &str) -> Result<(), RuntimeError>;
    /// Stops a container within the agent's grace period.
    async fn stop(&self, name: &str) -> Result<(), RuntimeError>;
    /// Stops and removes a container.
    async fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    /// Removes a container the runtime can no longer stop (forcefully).
    async fn discard(&self, name: &str) -> Result<(), RuntimeError>;
    /// Renames a container.
    async fn rename(&self, from: &str, to: &str) -> Result<(), RuntimeError>;
    /// One container's state (None: no such container).
    async fn inspect(&self, name: &str) -> Result<Option<Observed>, RuntimeError>;
    /// The full inspect document of a container (adoption reads it).
    async fn inspect_raw(&self, name: &str) -> Result<Option<serde_json::Value>, RuntimeError>;
    /// Every container, managed or not, by name.
    async fn list_all(&self) -> Result<HashMap<String, Observed>, RuntimeError>;
    /// Every container carrying the mcp service label, by name.
    async fn list_managed(&self) -> Result<HashMap<String, Observed>, RuntimeError>;
    /// (all, running) containers the agent of `node` created.
    async fn count_node(&self, node: &str) -> Result<(u32, u32), RuntimeError>;
    /// (all, running) containers, managed or not.
    async fn count(&self) -> Result<(u32, u32), RuntimeError>;
    /// A container's output, optionally followed; `tail` 0 = all.
    fn logs(&self, name: &str, follow: bool, tail: u32) -> LogStream;
    /// Runs `sh -c <command>` in a running container: (exit code, output).
    async fn exec(&self, container: &str, command: &str) -> Result<(i64, String), RuntimeError>;
    /// Whether the runtime's API service serves a state it lost (e.g.
    /// after `podman system reset`).
    fn stale(&self) -> bool;
    /// Makes the API service answer from current state, restarting it when
    /// `manage`; whether it restarted.
    async fn ensure_fresh(&self, manage: bool) -> Result<bool, RuntimeError>;
}
