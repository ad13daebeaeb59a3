//! `mcp-master`: the fleet master daemon.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mcp_infra::daemon::{ClientCertArgs, OperatorArgs};
use mcp_infra::pki::{Ca, LeafRequest};
use mcp_infra::tls::{AuthzLayer, CertStore, TlsFiles};
use mcp_infra::worker::{Backoff, Handle, Next, Schedule, Shutdown, Worker};
use mcp_master::config::{MasterConfig, MasterSection};
use mcp_master::db::{FleetDb, now};
use mcp_master::fleet::Fleet;
use mcp_master::rpc::{self, agent::GrpcAgents};
use mcp_master::{certs, health, metrics, reconcile, snapshots};
use mcp_model::identity::Identity;

#[derive(Parser)]
#[command(name = "mcp-master", version = mcp_infra::LONG_VERSION, about = "mcp fleet master")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Master configuration file.
    #[arg(long, short, global = true, default_value = "/srv/mcp-master/mcp-master.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the fleet (the default).
    Run,
    /// Create the fleet CA, the master's certificate, the database and a
    /// configuration (existing CA and configuration are kept).
    Init(InitArgs),
    /// Issue a certificate from the fleet CA (operators: human/<name>).
    IssueCert(ClientCertArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    /// Node the master runs on (its agent hosts the core tier).
    #[arg(long)]
    node: String,
    /// gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:9555")]
    listen: String,
    /// State directory (fleet database, CA).
    #[arg(long, default_value = "/srv/mcp-master")]
    data_dir: PathBuf,
    /// Names and addresses the master is reached by (certificate SANs).
    #[arg(long = "san")]
    sans: Vec<String>,
    #[command(flatten)]
    operator: OperatorArgs,
    /// Rewrite an existing configuration file.
    #[arg(long)]
    force: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    mcp_infra::daemon::exit_code("mcp-master", dispatch(cli))
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::IssueCert(a) => issue(&cli.config, a),
        Command::Init(a) => init(&cli.config, a),
    }
}

fn init(config: &Path, a: InitArgs) -> Result<()> {
    mcp_model::service::check_name(&a.node).map_err(|r| anyhow::anyhow!("--node: {r}"))?;
    let listen = a.listen.parse().with_context(|| format!("--listen {:?}", a.listen))?;
    mcp_infra::fsutil::private_dir(&a.data_dir)?;
    let ca_dir = a.data_dir.join("ca");
    let ca = Ca::load_or_create(&ca_dir, "mcp fleet")?;
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse()?, "::1".parse()?];
    let mut dns = vec!["localhost".to_string(), a.node.clone()];
    for s in &a.sans {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(s.clone()),
        }
    }
    let cert = a.data_dir.join("tls/master.pem");
    let key = a.data_dir.join("tls/master.key");
    ca.issue(&LeafRequest {
        identity: Some(Identity::Master),
        dns_names: dns,
        ips,
        days: 365,
    })?
    .write(&cert, &key)?;
    println!("issued mcp-master certificate: {}", cert.display());
    let master = MasterSection {
        node: a.node.clone(),
        listen,
        data_dir: a.data_dir.clone(),
    };
    let tls = TlsFiles {
        cert,
        key,
        ca: Ca::cert_path(&ca_dir),
    };
    mcp_infra::daemon::init_config(config, a.force, || MasterConfig::new(master, tls))?;
    FleetDb::open(&a.data_dir.join("fleet.db"))?;
    if let Some((identity, dir)) = a.operator.issue(&ca)? {
        println!("issued {identity} certificate in {}", dir.display());
    }
    Ok(())
}

fn issue(config: &Path, a: ClientCertArgs) -> Result<()> {
    let cfg = MasterConfig::load(config)?;
    let identity = a.issue(&Ca::load(&cfg.ca_dir())?)?;
    println!("issued {identity} certificate in {}", a.out.display());
    Ok(())
}

fn run(config: &Path) -> Result<()> {
    let cfg = MasterConfig::load(config)?;
    mcp_infra::logging::init(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: MasterConfig) -> Result<()> {
    let (tls, cert_store) = mcp_infra::tls::server_config(&cfg.tls)?;
    let ca = Ca::load(&cfg.ca_dir())?;
    let db = FleetDb::open(&cfg.db_path())?;
    let layer = match &cfg.mcias {
        Some(m) => AuthzLayer::with_tokens(Arc::new(mcp_infra::mcias::Mcias::new(m)?)),
        None => AuthzLayer::new(),
    };
    let agents = Arc::new(GrpcAgents::new(
        cfg.tls.clone(),
        Duration::from_secs(cfg.timeouts.health_check),
    ));
    let fleet = Arc::new(Fleet::new(cfg.clone(), db, ca, agents)?);
    if let Some(m) = &cfg.metrics {
        let f = fleet.clone();
        let scrape = move || metrics::render(&f.nodes.all(), f.db.placements().ok().as_deref(), now());
        metrics::start(m.listen, scrape)
            .await
            .with_context(|| format!("metrics.listen {}", m.listen))?;
    }

    // Reconcile before serving, so the first answers reflect the fleet.
    let report = reconcile::reconcile(&fleet).await?;
    tracing::info!(findings = report.len(), "reconciliation done");

    let listener = tokio::net::TcpListener::bind(cfg.master.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.master.listen))?;
    let (stop, shutdown) = Shutdown::new();
    let dns = if cfg.dns.listen.is_empty() {
        None
    } else {
        let stopped = shutdown.clone();
        let handle = mcp_master::dns::serve(cfg.dns.clone(), fleet.records.clone(), async move {
            stopped.wait().await;
        })
        .await
        .with_context(|| format!("dns on {:?}", cfg.dns.listen))?;
        Some(handle)
    };
    let workers = background(&fleet, cert_store, &shutdown);
    tracing::info!(listen = %cfg.master.listen, node = %cfg.master.node, version = mcp_infra::VERSION, "mcp-master serving");
    let incoming = mcp_infra::tls::incoming(listener, tls);
    let result = rpc::serve(fleet.clone(), layer, incoming, mcp_infra::daemon::stop_signal()).await;
    stop.fire();
    for w in workers {
        let _ = w.join().await;
    }
    if let Some(d) = dns {
        let _ = d.await;
    }
    fleet.flush()?;
    tracing::info!("mcp-master stopped");
    Ok(result?)
}

/// Background work, each on its own schedule until `shutdown`: batched
/// node writes, health probes, renewal of the master's certificate, and
/// (when `[snapshots] schedule` is on) scheduled snapshots.
fn background(fleet: &Arc<Fleet>, cert: Arc<CertStore>, shutdown: &Shutdown) -> Vec<Handle> {
    let f = fleet.clone();
    let flush = Worker::new(
        "node-writer",
        Schedule::every(Duration::from_secs(2)).immediately(),
        move || {
            let f = f.clone();
            async move {
                // A commit can checkpoint the WAL, and that fsyncs (over 100 ms
                // seen on this disk): keep it off the async workers, or requests
                // queued behind it stall.
                match tokio::task::spawn_blocking(move || f.flush()).await {
                    Ok(Ok(())) => Ok(Next::Period),
                    Ok(Err(e)) => Err(format!("cannot write node states: {e}").into()),
                    Err(e) => Err(format!("node state writer failed: {e}").into()),
                }
            }
        },
    );
    let f = fleet.clone();
    let every = Duration::from_secs(fleet.cfg.heartbeat.check_every.max(1));
    let health = Worker::new("health", Schedule::every(every).immediately(), move || {
        let f = f.clone();
        async move {
            health::check_health(&f).await;
            Ok(Next::Period)
        }
    });
    let f = fleet.clone();
    let hour = Duration::from_secs(3600);
    let renew_schedule = Schedule::every(hour)
        .immediately()
        .backoff(Backoff::new(Duration::from_secs(60), hour));
    let renew = Worker::new("certificate-renewal", renew_schedule, move || {
        let result = certs::renew_own_certificate(&f, &cert);
        async move {
            result
                .map(|_| Next::Period)
                .map_err(|e| format!("cannot renew the master certificate: {e}").into())
        }
    });
    let mut handles = vec![
        flush.spawn(shutdown.clone()),
        health.spawn(shutdown.clone()),
        renew.spawn(shutdown.clone()),
    ];
    if fleet.cfg.snapshots.interval().is_some() {
        // Checked every minute in a task of its own: an archive that takes
        // minutes holds up nothing else. The first check waits a minute:
        // nodes register after a restart. A snapshot in progress at
        // shutdown is abandoned: nothing is recorded before an archive is
        // complete.
        let f = fleet.clone();
        let schedule = Schedule::every(Duration::from_secs(60)).abort_pass_on_shutdown();
        let snapshots = Worker::new("snapshot-schedule", schedule, move || {
            let f = f.clone();
            async move {
                match snapshots::scheduled(&f).await {
                    Ok(()) => Ok(Next::Period),
                    Err(e) => Err(format!("scheduled snapshots: cannot read placements: {e}").into()),
                }
            }
        });
        handles.push(snapshots.spawn(shutdown.clone()));
    }
    handles
}
