//! `mcp-agent`: the node agent daemon.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mcp_agent::boot::BootState;
use mcp_agent::config::{AgentConfig, AgentSection, PodmanSection, PortsSection};
use mcp_agent::handle::{Agent, Platform};
use mcp_agent::monitor::MonitorState;
use mcp_agent::registry::Registry;
use mcp_agent::rpc::server::AgentService;
use mcp_agent::runtime::ContainerRuntime;
use mcp_agent::runtime::podman::{self, Podman};
use mcp_infra::config::LogSection;
use mcp_infra::daemon::{ClientCertArgs, OperatorArgs};
use mcp_infra::pki::{Ca, LeafRequest};
use mcp_infra::tls::TlsFiles;
use mcp_model::identity::Identity;

const LONG_VERSION: &str = mcp_infra::LONG_VERSION;

#[derive(Parser)]
#[command(name = "mcp-agent", version = LONG_VERSION, about = "mcp node agent: runs services as rootless podman containers")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Agent configuration file.
    #[arg(long, short, global = true, default_value = "/srv/mcp/mcp-agent.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC and manage containers (the default).
    Run,
    /// Write a configuration, create the local CA if missing and issue this
    /// agent's certificate (and optionally an operator's).
    Init(InitArgs),
    /// Issue a client certificate from the local CA (e.g. for an operator).
    IssueCert(IssueArgs),
    /// Join a fleet: exchange a join token (`mcp node add`) for this
    /// agent's certificate and write a configuration pointing at the master.
    Join(JoinArgs),
}

#[derive(clap::Args)]
struct JoinArgs {
    /// Join token printed by `mcp node add <name>`.
    #[arg(long, env = "MCP_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Master address (host:port).
    #[arg(long)]
    master: String,
    /// Role of this node: worker, edge or master.
    #[arg(long, default_value = "worker")]
    role: String,
    /// host:port the master dials (default <address>:<listen port>).
    #[arg(long)]
    advertise: Option<String>,
    #[command(flatten)]
    node: NodeFlags,
    /// Replace an existing configuration (re-joining a reinstalled node).
    #[arg(long)]
    force: bool,
}

/// What `init` and `join` both ask of the node they configure.
#[derive(clap::Args)]
struct NodeFlags {
    /// gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:9444")]
    listen: String,
    /// Address others use to reach this node.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// State directory (registry, certificates).
    #[arg(long, default_value = "/srv/mcp")]
    data_dir: PathBuf,
    /// podman API socket; default $XDG_RUNTIME_DIR/podman/podman.sock.
    #[arg(long)]
    podman_socket: Option<PathBuf>,
    /// Lowest host port handed to routes.
    #[arg(long, default_value_t = 10000)]
    port_min: u16,
    /// Highest host port handed to routes.
    #[arg(long, default_value_t = 60000)]
    port_max: u16,
}

#[derive(clap::Args)]
struct InitArgs {
    /// Node name (the agent's identity is agent-<name>).
    #[arg(long)]
    name: String,
    #[command(flatten)]
    node: NodeFlags,
    /// Directory of the CA (created if missing); default <data-dir>/ca.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[command(flatten)]
    operator: OperatorArgs,
    /// Overwrite an existing configuration file.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct IssueArgs {
    /// Directory of the CA.
    #[arg(long)]
    ca_dir: PathBuf,
    #[command(flatten)]
    cert: ClientCertArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Init(a) => init(&cli.config, a),
        Command::IssueCert(a) => issue(a),
        Command::Join(a) => join(&cli.config, a),
    };
    mcp_infra::daemon::exit_code("mcp-agent", result)
}

fn issue(a: IssueArgs) -> Result<()> {
    let ca = Ca::load(&a.ca_dir)?;
    let identity = a.cert.issue(&ca)?;
    println!("issued {identity} certificate in {}", a.cert.out.display());
    Ok(())
}

fn init(config: &Path, a: InitArgs) -> Result<()> {
    mcp_model::service::check_name(&a.name).map_err(|r| anyhow::anyhow!("--name: {r}"))?;
    let ca_dir = a.ca_dir.clone().unwrap_or_else(|| a.node.data_dir.join("ca"));
    let tls_dir = a.node.data_dir.join("tls");
    let tls = TlsFiles {
        cert: tls_dir.join("agent.pem"),
        key: tls_dir.join("agent.key"),
        ca: Ca::cert_path(&ca_dir),
    };
    let cfg = node_config(&a.name, &a.node, tls.clone(), None)?;
    mcp_infra::fsutil::private_dir(&a.node.data_dir)?;
    let ca = Ca::load_or_create(&ca_dir, "mcp")?;
    let (dns, ips) = node_names(&a.name, &a.node.address);
    ca.issue(&LeafRequest {
        identity: Some(Identity::Agent(a.name.clone())),
        dns_names: dns,
        ips,
        days: 365,
    })?
    .write(&tls.cert, &tls.key)?;
    println!("issued agent-{} certificate: {}", a.name, tls.cert.display());
    mcp_infra::daemon::init_config(config, a.force, || cfg)?;
    if let Some((identity, dir)) = a.operator.issue(&ca)? {
        println!("issued {identity} certificate in {}", dir.display());
    }
    Ok(())
}

fn join(config: &Path, a: JoinArgs) -> Result<()> {
    let token = mcp_model::join::JoinToken::parse(&a.token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    if config.exists() && !a.force {
        bail!(
            "{} exists: this node is configured already (use --force to re-join)",
            config.display()
        );
    }
    let (dns, ips) = node_names(&token.node, &a.node.address);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let joined = rt.block_on(mcp_agent::link::join(&a.master, &token, dns, ips))?;
    let data_dir = &a.node.data_dir;
    mcp_infra::fsutil::private_dir(data_dir)?;
    let tls = TlsFiles {
        cert: data_dir.join("tls/agent.pem"),
        key: data_dir.join("tls/agent.key"),
        ca: data_dir.join("tls/ca.pem"),
    };
    mcp_infra::pki::Issued {
        chain_pem: joined.chain_pem,
        key_pem: joined.key_pem,
    }
    .write(&tls.cert, &tls.key)?;
    mcp_infra::fsutil::write_atomic(&tls.ca, joined.ca_pem.as_bytes(), 0o644)?;
    let master = mcp_agent::config::AgentMasterSection {
        address: a.master,
        role: a.role,
        advertise: a.advertise,
    };
    let cfg = node_config(&token.node, &a.node, tls, Some(master))?;
    mcp_infra::fsutil::write_atomic(config, toml::to_string_pretty(&cfg)?.as_bytes(), 0o600)?;
    println!("joined the fleet as agent-{}; wrote {}", token.node, config.display());
    Ok(())
}

/// The names an agent certificate carries: the node's name, localhost and
/// loopback, and its address (as a name or an IP).
fn node_names(name: &str, address: &str) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec![name.to_string(), "localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    match address.parse::<IpAddr>() {
        Ok(ip) if !ips.contains(&ip) => ips.push(ip),
        Ok(_) => {}
        Err(_) => dns.push(address.to_string()),
    }
    (dns, ips)
}

/// A new node's configuration: every section not given at its default.
fn node_config(
    name: &str,
    node: &NodeFlags,
    tls: TlsFiles,
    master: Option<mcp_agent::config::AgentMasterSection>,
) -> Result<AgentConfig> {
    let listen = node
        .listen
        .parse()
        .with_context(|| format!("--listen {:?}", node.listen))?;
    Ok(AgentConfig {
        agent: AgentSection {
            name: name.to_string(),
            listen,
            address: node.address.clone(),
            data_dir: node.data_dir.clone(),
            volumes_root: None,
        },
        tls,
        podman: PodmanSection {
            socket: node.podman_socket.clone(),
            ..Default::default()
        },
        ports: PortsSection {
            min: node.port_min,
            max: node.port_max,
        },
        log: LogSection::default(),
        master,
        mcias: None,
        network: Default::default(),
        proxy: None,
        edge: None,
        mcns: None,
        monitor: Default::default(),
        boot: Default::default(),
        metacrypt: None,
        metrics: None,
    })
}

fn run(config: &Path) -> Result<()> {
    let cfg = AgentConfig::load(config)?;
    mcp_infra::logging::init(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: AgentConfig) -> Result<()> {
    let (tls, cert_store) = mcp_infra::tls::server_config(&cfg.tls)?;
    let layer = match &cfg.mcias {
        Some(m) => mcp_infra::tls::AuthzLayer::with_tokens(Arc::new(mcp_infra::mcias::Mcias::new(m)?)),
        None => mcp_infra::tls::AuthzLayer::new(),
    };
    let registry = Registry::open(&cfg.registry_path())?.observed(mcp_agent::metrics::event);
    let socket = cfg.podman.socket.clone().unwrap_or_else(podman::default_socket);
    let podman = Podman::connect(
        &socket,
        cfg.podman.start_service,
        &cfg.podman.binary,
        cfg.podman.stop_timeout,
    )
    .await?;
    let version = podman.version().await.unwrap_or_default();
    tracing::info!(socket = %socket.display(), podman = %version, "podman API ready");
    let listener = tokio::net::TcpListener::bind(cfg.agent.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.agent.listen))?;
    let platform = platform(&cfg)?;
    let agent = Arc::new(Agent::new(cfg.clone(), registry, Arc::new(podman), version, platform));
    let (boot, monitor) = (Arc::new(BootState::default()), Arc::new(MonitorState::default()));
    mcp_agent::metrics::start(&agent).await.map_err(anyhow::Error::msg)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let link = tokio::spawn(mcp_agent::link::run(agent.clone(), cert_store, stop_rx.clone()));
    if let Err(e) = agent.repair_interrupted().await {
        tracing::warn!(error = %e, "could not check for interrupted deploys");
    }
    // In the background (DNS goes to the master, which may be slow or down;
    // the boot sequence waits for health checks): the built-in proxy starts
    // empty and records may have gone while we were down, so put back what
    // the registry says runs; then bring back every service that should run,
    // stage by stage ([[boot.sequence]]); then the monitor takes over
    // (drift, flapping, repairs, routes, DNS, hourly certificate renewal).
    let background = {
        let (agent, boot, monitor) = (agent.clone(), boot.clone(), monitor.clone());
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            agent.reapply_all().await;
            mcp_agent::boot::run(&agent, &boot, "boot", 0, stop.clone()).await;
            if !*stop.borrow() {
                mcp_agent::monitor::run(agent, monitor, boot, stop.into()).await;
            }
        })
    };
    tracing::info!(
        node = %cfg.agent.name,
        listen = %cfg.agent.listen,
        version = mcp_infra::VERSION,
        commit = mcp_infra::GIT_COMMIT,
        "mcp-agent serving"
    );
    let svc = AgentService::new(agent, boot, monitor).into_server();
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(svc)
        .serve_with_incoming_shutdown(
            mcp_infra::tls::incoming(listener, tls),
            mcp_infra::daemon::stop_signal(),
        )
        .await?;
    let _ = stop_tx.send(true);
    let _ = link.await;
    // Boot and monitor work stops at its next step; a stage waiting for
    // health checks is not waited for (the next start picks it up).
    let abort = background.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), background)
        .await
        .is_err()
    {
        abort.abort();
        tracing::warn!("boot or monitor work interrupted by the shutdown");
    }
    tracing::info!("mcp-agent stopped; containers keep running");
    Ok(())
}

/// The platform services of this node, from its configuration.
fn platform(cfg: &AgentConfig) -> Result<Platform> {
    use mcp_agent::platform::{BuiltinProxy, Master, McProxy, McProxyConfig, Mcns, Metacrypt, ProxyConfig};
    let master = Master::new(cfg);
    let mut p = Platform::default();
    if cfg.ca_from_master() {
        let m = master
            .clone()
            .context("network.ca = \"master\" needs a [master] section")?;
        p.ca = Some(m);
    } else if let (Some("metacrypt"), Some(m)) = (cfg.network.ca.as_deref(), &cfg.metacrypt) {
        p.ca = Some(Arc::new(Metacrypt::new(m)?));
    }
    if cfg.dns_with_master() {
        let m = master
            .clone()
            .context("network.dns = \"master\" needs a [master] section")?;
        p.dns = Some(m);
    } else if let (Some("mcns"), Some(m)) = (cfg.network.dns.as_deref(), &cfg.mcns) {
        p.dns = Some(Arc::new(Mcns::new(m)?));
    }
    if let Some(px) = &cfg.proxy {
        let listeners = px.listeners.iter().map(|l| (l.port, l.bind)).collect();
        p.proxy = Some(if px.backend == "mc-proxy" {
            let mut c = McProxyConfig::new(&px.socket);
            c.listener_addrs = px.listeners.iter().map(|l| (l.port, l.bind.to_string())).collect();
            Arc::new(McProxy::new(c)?)
        } else {
            let mut c = ProxyConfig::new(listeners);
            c.connect_timeout = std::time::Duration::from_secs(px.connect_timeout);
            c.idle_timeout = std::time::Duration::from_secs(px.idle_timeout);
            c.handshake_timeout = std::time::Duration::from_secs(px.handshake_timeout);
            c.max_connections = px.max_connections;
            c.backend_ca = Some(cfg.tls.ca.clone());
            c.observer = Arc::new(mcp_agent::metrics::ProxyTraffic);
            BuiltinProxy::start(c)?
        });
    }
    Ok(p)
}
