//! What an operation reports: its steps ([`Step`], in the order of
//! [`step`]), the [`Outcome`] of one that ran, and [`OpError`] for one that
//! could not run or failed at a step. Every operation of the agent returns
//! these; the gRPC edge turns them into responses and statuses.

use std::collections::HashMap;
use std::time::Instant;

use crate::registry::{RegistryError, ServiceRecord};
use crate::runtime::{Observed, RuntimeError};

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
    pub(crate) fn ok(&mut self, name: &'static str, started: Instant, detail: impl Into<String>) {
        self.push(name, started, true, false, detail.into(), String::new());
    }
    pub(crate) fn skip(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Instant::now(), true, true, detail.into(), String::new());
    }
    pub(crate) fn fail(&mut self, name: &'static str, started: Instant, error: impl Into<String>) {
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
        outcome: Box<Outcome>,
    },
    #[error("no free host port in {min}-{max}")]
    PortsExhausted { min: u16, max: u16, outcome: Box<Outcome> },
    /// Data that failed its integrity check; nothing was changed.
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl OpError {
    pub(crate) fn from_outcome(outcome: Outcome) -> OpError {
        let failed = outcome.failed().cloned().expect("called with a failed step");
        OpError::StepFailed {
            step: failed.name,
            error: failed.error,
            outcome: Box::new(outcome),
        }
    }
}

/// Observed view of one service for status and `ps`.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub record: ServiceRecord,
    /// Container name → what the runtime says (absent = missing).
    pub observed: HashMap<String, Observed>,
}
