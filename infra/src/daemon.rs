//! What every daemon's command line and `main` share around their own
//! work: `init`'s configuration file and client certificates (`init
//! --operator`, `issue-cert`), waiting for the stop signal, and turning the
//! result into the exit code.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mcp_model::identity::Identity;
use serde::Serialize;

use crate::fsutil::{self, FileError};
use crate::pki::{Ca, PkiError};

/// Success, or failure with the error (and its causes: `{:#}` shows an
/// error chain) on stderr as `program: error`.
pub fn exit_code<E: Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT.
///
/// # Panics
/// When the signal handlers cannot be installed (only outside a Tokio
/// runtime with signal support, a programming error).
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

/// Why a client certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("--identity {0:?}: expected human/<name>, master or agent/<name>")]
    Identity(String),
    #[error("--operator and --operator-dir go together")]
    OperatorWithoutDir,
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// A client certificate to issue from the CA (`issue-cert`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientCertArgs {
    /// Identity: human/<name>, master or agent/<name>.
    #[arg(long)]
    pub identity: String,
    /// Output directory: cert.pem, key.pem (0600), ca.pem.
    #[arg(long)]
    pub out: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

impl ClientCertArgs {
    /// Issues the certificate from `ca` into `out`; returns its identity.
    pub fn issue(&self, ca: &Ca) -> Result<Identity, IssueError> {
        let identity =
            Identity::from_spec(&self.identity).ok_or_else(|| IssueError::Identity(self.identity.clone()))?;
        ca.write_client(&identity, &self.out, self.days)?;
        Ok(identity)
    }
}

/// An operator certificate issued along with `init`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Also issue a client certificate for this operator (human/<name>).
    #[arg(long)]
    pub operator: Option<String>,
    /// Where to write the operator's certificate, key and CA.
    #[arg(long)]
    pub operator_dir: Option<PathBuf>,
}

impl OperatorArgs {
    /// Issues the operator's certificate (a year) from `ca` when both flags
    /// are given; returns its identity and directory.
    pub fn issue(&self, ca: &Ca) -> Result<Option<(Identity, PathBuf)>, IssueError> {
        match (&self.operator, &self.operator_dir) {
            (Some(op), Some(dir)) => {
                let identity = Identity::Human(op.clone());
                ca.write_client(&identity, dir, 365)?;
                Ok(Some((identity, dir.clone())))
            }
            (None, None) => Ok(None),
            _ => Err(IssueError::OperatorWithoutDir),
        }
    }
}

/// Why `init` could not write its configuration.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("configuration: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error(transparent)]
    File(#[from] FileError),
}

/// `init`'s configuration file: writes what `make` builds (TOML, 0600) to
/// `path`, unless a file is there already and `force` is not set. Says
/// which on stdout.
pub fn init_config<C: Serialize>(path: &Path, force: bool, make: impl FnOnce() -> C) -> Result<(), InitError> {
    if path.exists() && !force {
        println!(
            "kept existing configuration {} (use --force to rewrite)",
            path.display()
        );
        return Ok(());
    }
    let text = toml::to_string_pretty(&make())?;
    fsutil::write_atomic(path, text.as_bytes(), 0o600)?;
    println!("wrote {}", path.display());
    Ok(())
}
