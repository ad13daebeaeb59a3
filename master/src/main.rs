//! `mcp-master`: the fleet master daemon.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mcp_infra::config::LogSection;
use mcp_infra::pki::{Ca, LeafRequest};
use mcp_infra::tls::{AuthzLayer, TlsFiles};
use mcp_master::config::{
    HeartbeatSection, MasterConfig, MasterSection, ReconcileSection, RegistrationSection, TimeoutsSection,
};
use mcp_master::db::FleetDb;
use mcp_master::fleet::Master;
use mcp_master::server::{MasterService, RegistrationService};
use mcp_model::identity::Identity;
use mcp_proto::mcp_master_service_server::McpMasterServiceServer;
use mcp_proto::mcp_registration_service_server::McpRegistrationServiceServer;

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
    IssueCert(IssueArgs),
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
    /// Also issue an operator certificate (human/<name>) into --operator-dir.
    #[arg(long)]
    operator: Option<String>,
    #[arg(long)]
    operator_dir: Option<PathBuf>,
    /// Rewrite an existing configuration file.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct IssueArgs {
    /// human/<name>, master or agent/<name>.
    #[arg(long)]
    identity: String,
    /// Output directory: cert.pem, key.pem (0600), ca.pem.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 365)]
    days: i64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Init(a) => init(&cli.config, a),
        Command::IssueCert(a) => issue(&cli.config, a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-master: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn write_client(ca: &Ca, identity: Identity, out: &Path, days: i64) -> Result<()> {
    ca.write_client(&identity, out, days)?;
    println!("issued {identity} certificate in {}", out.display());
    Ok(())
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
    if config.exists() && !a.force {
        println!(
            "kept existing configuration {} (use --force to rewrite)",
            config.display()
        );
    } else {
        let cfg = MasterConfig {
            master: MasterSection {
                node: a.node.clone(),
                listen,
                data_dir: a.data_dir.clone(),
            },
            tls: TlsFiles {
                cert,
                key,
                ca: Ca::cert_path(&ca_dir),
            },
            timeouts: TimeoutsSection::default(),
            heartbeat: HeartbeatSection::default(),
            registration: RegistrationSection::default(),
            reconcile: ReconcileSection::default(),
            log: LogSection::default(),
            mcias: None,
            dns: Default::default(),
            metrics: None,
            snapshots: Default::default(),
        };
        mcp_infra::fsutil::write_atomic(config, toml::to_string_pretty(&cfg)?.as_bytes(), 0o600)?;
        println!("wrote {}", config.display());
    }
    FleetDb::open(&a.data_dir.join("fleet.db"))?;
    match (a.operator, a.operator_dir) {
        (Some(op), Some(dir)) => write_client(&ca, Identity::Human(op), &dir, 365)?,
        (None, None) => {}
        _ => anyhow::bail!("--operator and --operator-dir go together"),
    }
    Ok(())
}

fn issue(config: &Path, a: IssueArgs) -> Result<()> {
    let cfg = MasterConfig::load(config)?;
    let identity = Identity::from_spec(&a.identity).with_context(|| {
        format!(
            "--identity {:?}: expected human/<name>, master or agent/<name>",
            a.identity
        )
    })?;
    let ca = Ca::load(&cfg.ca_dir())?;
    write_client(&ca, identity, &a.out, a.days)
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
    let master = Arc::new(Master::new(cfg.clone(), db, ca)?);
    mcp_master::metrics::start(&master).await?;

    // Reconcile before serving, so the first answers reflect the fleet.
    let report = master.reconcile().await?;
    tracing::info!(findings = report.len(), "reconciliation done");

    let listener = tokio::net::TcpListener::bind(cfg.master.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.master.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let dns = if cfg.dns.listen.is_empty() {
        None
    } else {
        let d = &cfg.dns;
        let dns_cfg = d.clone();
        let mut stop = stop_rx.clone();
        let handle = mcp_master::dns::serve(dns_cfg, master.records.clone(), async move {
            let _ = stop.changed().await;
        })
        .await
        .with_context(|| format!("dns on {:?}", d.listen))?;
        Some(handle)
    };
    let snapshots = snapshot_schedule(master.clone(), stop_rx.clone());
    let loops = background(master.clone(), cert_store, stop_rx);
    tracing::info!(listen = %cfg.master.listen, node = %cfg.master.node, version = mcp_infra::VERSION, "mcp-master serving");
    let result = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(McpMasterServiceServer::new(MasterService::new(master.clone())))
        .add_service(McpRegistrationServiceServer::new(RegistrationService::new(
            master.clone(),
        )))
        .serve_with_incoming_shutdown(mcp_infra::tls::incoming(listener, tls), shutdown())
        .await;
    let _ = stop_tx.send(true);
    let _ = loops.await;
    snapshots.abort();
    if let Some(d) = dns {
        let _ = d.await;
    }
    master.flush()?;
    tracing::info!("mcp-master stopped");
    Ok(result?)
}

/// Background work: batched node writes, health probes, certificate
/// renewal. All stop when
/// `stop` flips.
fn background(
    master: Arc<Master>,
    cert: Arc<mcp_infra::tls::CertStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut flush = tokio::time::interval(Duration::from_secs(2));
        let mut renew = tokio::time::interval(Duration::from_secs(3600));
        let mut health = tokio::time::interval(Duration::from_secs(master.cfg.heartbeat.check_every.max(1)));
        loop {
            tokio::select! {
                _ = flush.tick() => {
                    // A commit can checkpoint the WAL, and that fsyncs (over
                    // 100 ms seen on this disk): keep it off the async
                    // workers, or requests queued behind it stall.
                    let m = master.clone();
                    match tokio::task::spawn_blocking(move || m.flush()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot write node states"),
                        Err(e) => tracing::error!(error = %e, "node state writer failed"),
                    }
                }
                _ = health.tick() => master.check_health().await,
                _ = renew.tick() => {
                    if let Err(e) = master.renew_own_certificate(&cert) {
                        tracing::error!(error = %e, "cannot renew the master certificate");
                    }
                }
                _ = stop.changed() => break,
            }
        }
    })
}

/// Scheduled snapshots (`[snapshots] schedule`), checked every minute in
/// their own task: an archive that takes minutes holds up nothing else.
fn snapshot_schedule(master: Arc<Master>, mut stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if master.cfg.snapshots.interval().is_none() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        // The first check waits a minute: nodes register after a restart.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => master.scheduled_snapshots().await,
                _ = stop.changed() => break,
            }
        }
    })
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}
