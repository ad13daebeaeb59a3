//! The agent's link to the master: [`join`] (token + CSR → certificate),
//! then [`run`], one background worker ([`mcp_infra::worker`]) that
//! registers, heartbeats at the interval the master asks for, and renews the
//! agent's certificate when a third of its lifetime is left. A failed
//! registration or heartbeat ends the session: the worker backs off (1 s
//! doubling to 60 s, ±20 %) and registers again on a fresh connection.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mcp_infra::fsutil::FileError;
use mcp_infra::pki::{self, PkiError};
use mcp_infra::tls::{CertStore, TlsError, TlsFiles};
use mcp_infra::worker::{Backoff, Next, Pass, PassResult, Schedule, Shutdown, Worker};
use mcp_model::identity::Identity;
use mcp_model::join::JoinToken;
use tokio::sync::watch;

use crate::handle::Agent;
use crate::node::{self, Load, Registration};
use crate::rpc::master::{self as rpc, MasterClient, MasterError};

/// Bound on one call to the master.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// When the worker runs: at once, then as the master says (a registration
/// sets the heartbeat interval, so this period is only a placeholder).
fn schedule() -> Schedule {
    Schedule::every(Duration::from_secs(10))
        .immediately()
        .backoff(Backoff::new(Duration::from_secs(1), Duration::from_secs(60)))
        // A pass is one RPC and a certificate written atomically: dropping
        // it at shutdown loses nothing the next start does not redo.
        .abort_pass_on_shutdown()
}

/// Why joining or renewing failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Master(#[from] MasterError),
    /// The agent's certificate cannot be read.
    #[error("cannot read {path}: {reason}")]
    Certificate { path: String, reason: String },
}

/// Result of a successful join.
pub struct Joined {
    pub key_pem: String,
    pub chain_pem: String,
    pub ca_pem: String,
}

/// Joins the fleet: the key is made here and never sent; the master is
/// verified against the CA fingerprint carried by the token.
pub async fn join(master: &str, token: &JoinToken, dns: Vec<String>, ips: Vec<IpAddr>) -> Result<Joined, LinkError> {
    let req = pki::make_csr(&Identity::Agent(token.node.clone()), &dns, &ips)?;
    let joined = rpc::join(master, token, req.csr_pem).await?;
    Ok(Joined {
        key_pem: req.key_pem,
        chain_pem: joined.chain_pem,
        ca_pem: joined.ca_pem,
    })
}

/// Keeps the node registered and heartbeating until `stop` flips; returns
/// at once for an agent without `[master]`.
pub async fn run(agent: Arc<Agent>, store: Arc<CertStore>, stop: watch::Receiver<bool>) {
    let Some(master) = agent.cfg.master.clone() else { return };
    let client = MasterClient::new(&master.address, agent.name(), &agent.cfg.tls, REQUEST_TIMEOUT);
    let certificate = Certificate {
        node: agent.name().to_string(),
        files: agent.cfg.tls.clone(),
        store,
    };
    let link = Link::new(client, agent, certificate, &master.address);
    Worker::new("master link", schedule(), link)
        .run(Shutdown::from(stop))
        .await;
}

/// The master as the link uses it; the real one is [`MasterClient`].
pub trait Master: Send + Sync + 'static {
    /// Registers the node; the heartbeat interval.
    fn register(&self, r: &Registration) -> impl Future<Output = Result<Duration, MasterError>> + Send;
    /// Reports the node's load.
    fn heartbeat(&self, l: &Load) -> impl Future<Output = Result<(), MasterError>> + Send;
    /// The agent's certificate chain for a new CSR.
    fn renew_certificate(&self, csr_pem: String) -> impl Future<Output = Result<String, MasterError>> + Send;
    /// Drops the connection: the next call makes a new one.
    fn disconnect(&self) -> impl Future<Output = ()> + Send;
}

impl Master for MasterClient {
    async fn register(&self, r: &Registration) -> Result<Duration, MasterError> {
        MasterClient::register(self, r).await
    }

    async fn heartbeat(&self, l: &Load) -> Result<(), MasterError> {
        MasterClient::heartbeat(self, l).await
    }

    async fn renew_certificate(&self, csr_pem: String) -> Result<String, MasterError> {
        MasterClient::renew_certificate(self, csr_pem).await
    }

    async fn disconnect(&self) {
        MasterClient::disconnect(self).await
    }
}

/// This node as the link reports it; the real one is the agent.
pub trait Node: Send + Sync + 'static {
    /// What to register with.
    fn registration(&self) -> Registration;
    /// The load to heartbeat.
    fn load(&self) -> impl Future<Output = Load> + Send;
}

impl Node for Agent {
    fn registration(&self) -> Registration {
        let role = self.cfg.master.as_ref().map(|m| m.role.as_str()).unwrap_or_default();
        node::registration(role, &self.cfg.advertised())
    }

    async fn load(&self) -> Load {
        let (containers, _) = self.runtime.count_node(self.name()).await.unwrap_or((0, 0));
        node::load(&self.cfg.agent.data_dir, containers)
    }
}

/// The agent's own certificate and the listener serving it.
struct Certificate {
    node: String,
    files: TlsFiles,
    store: Arc<CertStore>,
}

impl Certificate {
    /// Renews the certificate when less than a third of its lifetime is
    /// left: new key and CSR, signed by the master, written, and swapped
    /// into the running listener. Returns whether it renewed.
    async fn renew_if_due(&self, master: &impl Master) -> Result<bool, LinkError> {
        let path = &self.files.cert;
        let unreadable = |reason: String| LinkError::Certificate {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
        let (left, total) = pki::lifetime(&pem).ok_or_else(|| unreadable("not a certificate".into()))?;
        if !renewal_due(left, total) {
            return Ok(false);
        }
        let (dns, ips) = pki::sans(&pem);
        let req = pki::make_csr(&Identity::Agent(self.node.clone()), &dns, &ips)?;
        let chain_pem = master.renew_certificate(req.csr_pem).await?;
        pki::Issued {
            chain_pem,
            key_pem: req.key_pem,
        }
        .write(&self.files.cert, &self.files.key)?;
        self.store.reload()?;
        tracing::info!(seconds_left_before = left, "agent certificate renewed");
        Ok(true)
    }
}

/// Whether a certificate with `left` of `total` seconds should be renewed.
fn renewal_due(left: i64, total: i64) -> bool {
    left <= total / 3
}

/// The worker's pass: registers when there is no session, else heartbeats
/// and renews the certificate when due.
struct Link<M, N> {
    master: M,
    node: Arc<N>,
    certificate: Certificate,
    /// For log lines.
    address: String,
    registered: bool,
    /// Registrations failed in a row, for a louder warning every tenth.
    attempts: u32,
}

impl<M: Master, N: Node> Link<M, N> {
    fn new(master: M, node: Arc<N>, certificate: Certificate, address: &str) -> Self {
        Link {
            master,
            node,
            certificate,
            address: address.to_string(),
            registered: false,
            attempts: 0,
        }
    }

    async fn register(&mut self) -> PassResult {
        // A fresh connection per session: it presents the newest certificate.
        self.master.disconnect().await;
        match self.master.register(&self.node.registration()).await {
            Ok(interval) => {
                self.registered = true;
                self.attempts = 0;
                tracing::info!(master = %self.address, heartbeat_seconds = interval.as_secs(), "registered with the master");
                Ok(Next::Every(interval))
            }
            Err(e) => {
                self.attempts = self.attempts.saturating_add(1);
                if self.attempts.is_multiple_of(10) {
                    tracing::warn!(attempts = self.attempts, master = %self.address, "still cannot reach the master");
                }
                Err(e.into())
            }
        }
    }

    async fn heartbeat(&mut self) -> PassResult {
        match self.master.heartbeat(&self.node.load().await).await {
            Ok(()) => {}
            Err(e) if e.is_rate_limited() => tracing::debug!(reason = %e, "heartbeat rate-limited"),
            Err(e) => {
                self.registered = false;
                self.master.disconnect().await;
                return Err(e.into());
            }
        }
        // The connection keeps the old (still valid) certificate; the next
        // connection presents the new one. Reconnecting now would
        // re-register and could hit the Register rate limit.
        if let Err(e) = self.certificate.renew_if_due(&self.master).await {
            tracing::warn!(error = %e, "certificate renewal failed; will retry");
        }
        Ok(Next::Period)
    }
}

impl<M: Master, N: Node> Pass for Link<M, N> {
    async fn run(&mut self) -> PassResult {
        if self.registered {
            self.heartbeat().await
        } else {
            self.register().await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;
    use crate::rpc::master::Fault;
    use crate::rpc::master::tests::agent_files;

    /// A master that answers from scripts and logs every call.
    #[derive(Default)]
    struct FakeMaster {
        registers: Mutex<VecDeque<Result<Duration, MasterError>>>,
        heartbeats: Mutex<VecDeque<Result<(), MasterError>>>,
        calls: Mutex<Vec<(&'static str, Instant)>>,
    }

    impl FakeMaster {
        fn log(&self, call: &'static str) {
            self.calls.lock().expect("calls").push((call, Instant::now()));
        }

        /// The calls since the last look.
        fn calls(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.calls.lock().expect("calls"))
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        }
    }

    impl Master for Arc<FakeMaster> {
        async fn register(&self, _: &Registration) -> Result<Duration, MasterError> {
            self.log("register");
            let next = self.registers.lock().expect("script").pop_front();
            next.unwrap_or(Ok(Duration::from_secs(30)))
        }

        async fn heartbeat(&self, _: &Load) -> Result<(), MasterError> {
            self.log("heartbeat");
            self.heartbeats.lock().expect("script").pop_front().unwrap_or(Ok(()))
        }

        async fn renew_certificate(&self, _: String) -> Result<String, MasterError> {
            self.log("renew");
            Err(MasterError::Local("not in this fake".into()))
        }

        async fn disconnect(&self) {
            self.log("disconnect");
        }
    }

    struct FakeNode;

    impl Node for FakeNode {
        fn registration(&self) -> Registration {
            node::registration("worker", "127.0.0.1:9444")
        }

        async fn load(&self) -> Load {
            node::load(std::path::Path::new("/"), 0)
        }
    }

    fn refused(fault: Fault) -> MasterError {
        MasterError::Call {
            what: "the call",
            fault,
            message: "no".into(),
            code: format!("{fault:?}"),
        }
    }

    /// A link to `master` with a fresh (not yet due) certificate in `dir`.
    fn link(master: &Arc<FakeMaster>, dir: &std::path::Path) -> Link<Arc<FakeMaster>, FakeNode> {
        let files = agent_files(dir, "n1");
        let certificate = Certificate {
            node: "n1".into(),
            store: CertStore::load(&files).expect("load certificate"),
            files,
        };
        Link::new(master.clone(), Arc::new(FakeNode), certificate, "m:9443")
    }

    #[tokio::test]
    async fn pass_registers_heartbeats_and_starts_over_after_a_failure() {
        let dir = tempfile::tempdir().expect("temp dir");
        let master = Arc::new(FakeMaster::default());
        let unreachable = MasterError::Unreachable {
            address: "m:9443".into(),
            reason: "refused".into(),
        };
        master.registers.lock().expect("script").extend([
            Err(unreachable),
            Ok(Duration::from_secs(5)),
            Ok(Duration::from_secs(7)),
        ]);
        master.heartbeats.lock().expect("script").extend([
            Ok(()),
            Err(refused(Fault::RateLimited)),
            Err(refused(Fault::Unavailable)),
        ]);
        let mut link = link(&master, dir.path());
        // (what the pass returns, the calls it makes)
        let steps: [(Result<Next, &str>, &[&str]); 6] = [
            (Err("master m:9443: refused"), &["disconnect", "register"]),
            (Ok(Next::Every(Duration::from_secs(5))), &["disconnect", "register"]),
            (Ok(Next::Period), &["heartbeat"]),
            // Rate-limited: harmless, the session goes on.
            (Ok(Next::Period), &["heartbeat"]),
            (
                Err("master could not take the call: no (Unavailable)"),
                &["heartbeat", "disconnect"],
            ),
            (Ok(Next::Every(Duration::from_secs(7))), &["disconnect", "register"]),
        ];
        for (i, (want, calls)) in steps.into_iter().enumerate() {
            let got = link.run().await.map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_string), "step {i}");
            assert_eq!(master.calls(), calls, "step {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn worker_backs_off_then_heartbeats_at_the_masters_interval() {
        let dir = tempfile::tempdir().expect("temp dir");
        let master = Arc::new(FakeMaster::default());
        master.registers.lock().expect("script").extend([
            Err(refused(Fault::Unavailable)),
            Err(refused(Fault::Refused)),
            Err(refused(Fault::RateLimited)),
            Ok(Duration::from_secs(30)),
        ]);
        let worker = Worker::new("master link", schedule(), link(&master, dir.path()));
        let mut status = worker.status();
        let (trigger, shutdown) = Shutdown::new();
        let handle = worker.spawn(shutdown);
        status
            .wait_for(|s| s.passes >= 6)
            .await
            .expect("the worker runs six passes");
        trigger.fire();
        handle.join().await.expect("the worker does not panic");

        let calls = std::mem::take(&mut *master.calls.lock().expect("calls"));
        let starts: Vec<Instant> = calls
            .iter()
            .filter(|(c, _)| *c != "disconnect")
            .map(|(_, at)| *at)
            .collect();
        let gaps: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        // Backoff 1 s, 2 s, 4 s (±20 %), then the interval the master gave.
        for (gap, (low, high)) in gaps
            .iter()
            .zip([(0.8, 1.2), (1.6, 2.4), (3.2, 4.8), (30.0, 30.0), (30.0, 30.0)])
        {
            assert!(*gap >= low - 0.002 && *gap <= high + 0.002, "gaps {gaps:?}");
        }
        let names: Vec<&str> = calls.iter().map(|(c, _)| *c).filter(|c| *c != "disconnect").collect();
        assert_eq!(
            names,
            ["register", "register", "register", "register", "heartbeat", "heartbeat"]
        );
        assert_eq!(status.get().period, Duration::from_secs(30));
    }

    #[test]
    fn renewal_is_due_in_the_last_third() {
        for (left, total, due) in [
            (90, 90, false),
            (31, 90, false),
            (30, 90, true),
            (1, 90, true),
            (-5, 90, true),
        ] {
            assert_eq!(renewal_due(left, total), due, "{left} of {total}");
        }
    }
}
