//! The command line: every command, option and example (`--help`, man
//! pages and completions come from here).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{provision, snapshot, upgrade};

#[derive(Parser)]
#[command(
    name = "mcp",
    version = mcp_infra::LONG_VERSION,
    about = "mcp: run services as rootless podman containers across a fleet",
    after_help = "Examples:\n  mcp deploy web\n  mcp ps\n  mcp sync --dry-run\n  mcp --direct ps          # straight to the agents, e.g. while the master is down\n  mcp validate ~/.config/mcp/services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Talk to the agents of the [[nodes]] list directly, without a master.
    #[arg(long, global = true)]
    pub direct: bool,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// CLI configuration file [default: $MCP_CONFIG or ~/.config/mcp/mcp.toml].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check service definitions offline; reports every problem (exit 2 if any).
    #[command(after_help = "Examples:\n  mcp validate web.toml\n  mcp validate ~/.config/mcp/services")]
    Validate {
        /// Files or directories of definitions.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Deploy a service (or one component) from its definition.
    #[command(
        after_help = "Examples:\n  mcp --direct deploy web\n  mcp --direct deploy web/api\n  mcp --direct deploy ./web.toml --node rift"
    )]
    Deploy {
        /// <service>[/<component>] in the services dir, or a path to a .toml file.
        target: String,
        /// Node to deploy to when the definition has no `node` pin.
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove a service: containers, routes, DNS, certificates, ports, records.
    #[command(after_help = "Example:\n  mcp --direct undeploy web")]
    Undeploy {
        service: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Stop a service (or one component); its definition and ports are kept.
    #[command(after_help = "Examples:\n  mcp --direct stop web\n  mcp --direct stop web/worker")]
    Stop {
        /// <service>[/<component>]
        target: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Start a stopped service (or one component) from the node's registry.
    #[command(after_help = "Example:\n  mcp --direct start web")]
    Start {
        /// <service>[/<component>]
        target: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Stop then start a service (or one component).
    #[command(after_help = "Example:\n  mcp --direct restart web/api")]
    Restart {
        /// <service>[/<component>]
        target: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// List containers of every service on every node.
    #[command(after_help = "Example:\n  mcp --direct ps --json")]
    Ps,
    /// Show a service in detail (components, routes, events), or all.
    #[command(after_help = "Examples:\n  mcp --direct status\n  mcp --direct status web")]
    Status {
        service: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Show container output of a service.
    #[command(after_help = "Examples:\n  mcp --direct logs web\n  mcp --direct logs web/api -f --tail 100")]
    Logs {
        /// <service>[/<component>]
        target: String,
        /// Keep streaming new output.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end (0 = all).
        #[arg(long, default_value_t = 0)]
        tail: u32,
        #[arg(long)]
        node: Option<String>,
    },
    /// Make the fleet match the services dir: deploy new, redeploy changed,
    /// undeploy removed services (through the master).
    #[command(after_help = "Examples:\n  mcp sync --dry-run\n  mcp sync")]
    Sync {
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Nodes of the fleet.
    #[command(subcommand, after_help = "Examples:\n  mcp node list\n  mcp node add hyperborea")]
    Node(NodeCommand),
    /// Records of the internal zone (through the master).
    #[command(subcommand, after_help = "Example:\n  mcp dns list")]
    Dns(DnsCommand),
    /// Proxy routes of every node, grouped by listener.
    #[command(subcommand, after_help = "Example:\n  mcp route list")]
    Route(RouteCommand),
    /// Public routes on edge nodes (through the master).
    #[command(subcommand, after_help = "Examples:\n  mcp edge list\n  mcp edge status")]
    Edge(EdgeCommand),
    /// The agents themselves: versions, upgrades over SSH, recovery.
    #[command(
        subcommand,
        after_help = "Examples:\n  mcp agent status\n  mcp agent upgrade\n  mcp agent recover rift"
    )]
    Agent(AgentCommand),
    /// Print the `podman run` commands that reproduce a service from its
    /// node's registry (the manual fallback; paste them as the podman user).
    #[command(after_help = "Examples:\n  mcp render web\n  mcp --direct render web > web.sh && sudo -u mcp sh web.sh")]
    Render {
        service: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Take over running containers named <service> or <service>-<component>
    /// that the node's registry does not know (talks to the agent directly).
    #[command(after_help = "Example:\n  mcp --direct adopt legacy --node rift")]
    Adopt {
        service: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Build the [build.images] of a service with podman, tagged as its
    /// components' images, and push them to their registry.
    #[command(
        after_help = "Examples:\n  mcp build web\n  mcp build web --no-push   # build only\n  mcp --json build ./web.toml"
    )]
    Build {
        /// Service name in the services dir, or a path to a .toml file.
        service: String,
        /// Build only; do not push.
        #[arg(long)]
        no_push: bool,
    },
    /// Edit a service definition in $VISUAL/$EDITOR; saved only when valid.
    #[command(after_help = "Examples:\n  mcp edit web\n  EDITOR=nano mcp edit web")]
    Edit {
        /// Service name in the services dir (a new file is started from a template).
        service: String,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  mcp completions bash > /etc/bash_completion.d/mcp\n  mcp completions zsh > \"${fpath[1]}/_mcp\"\n  mcp completions fish > ~/.config/fish/completions/mcp.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Write man pages (mcp.1 and one per subcommand) to a directory.
    #[command(after_help = "Example:\n  mcp man /usr/local/share/man/man1")]
    Man { dir: PathBuf },
    /// Snapshots of service data: take one, list, restore (through the master).
    Snapshot(snapshot::SnapshotArgs),
    /// Move a service, with its data, to another node (through the master).
    Migrate(snapshot::MigrateArgs),
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Recreate every container from the registry (after podman lost them,
    /// e.g. `podman system reset`), following the boot sequence, then
    /// re-apply routes and DNS. Idempotent. All nodes when none is named.
    #[command(
        after_help = "Examples:\n  mcp agent recover rift\n  mcp agent recover\n  mcp --direct agent recover rift"
    )]
    Recover { node: Option<String> },
    /// Install the release's agent binary on nodes over SSH and restart them;
    /// rolls a node back when the new agent does not answer in time.
    #[command(
        after_help = "Examples:\n  dev/release && mcp agent upgrade\n  mcp agent upgrade hyperborea --accept-new-host-key\n  mcp agent upgrade --dist /srv/releases/0.2.0 --parallel 2"
    )]
    Upgrade(upgrade::UpgradeArgs),
    /// Version, commit, arch and uptime of every agent; flags version skew.
    #[command(after_help = "Example:\n  mcp agent status --json")]
    Status(upgrade::StatusArgs),
}

#[derive(Subcommand)]
pub enum DnsCommand {
    /// List the records the master serves.
    #[command(after_help = "Example:\n  mcp dns list")]
    List,
}

#[derive(Subcommand)]
pub enum RouteCommand {
    /// List routes by node and listener.
    #[command(after_help = "Examples:\n  mcp route list\n  mcp --direct route list")]
    List,
}

#[derive(Subcommand)]
pub enum EdgeCommand {
    /// List public routes with their edge node and certificate.
    #[command(after_help = "Example:\n  mcp edge list")]
    List,
    /// Like list, with what each edge reports serving now.
    #[command(after_help = "Example:\n  mcp edge status")]
    Status,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List nodes: status, role, arch, version, last heartbeat.
    #[command(after_help = "Examples:\n  mcp node list\n  mcp --direct node list")]
    List,
    /// Print a one-time join token for a new node (through the master).
    #[command(
        after_help = "Example:\n  mcp node add hyperborea\n  # then on the node: mcp-agent join --master <addr> --token <token>"
    )]
    Add {
        name: String,
        /// Token lifetime in seconds (default: the master's, 1 hour).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Set up a Debian host as a node over SSH (as root): user, subuids,
    /// linger, /srv/mcp, podman, agent binary, join, systemd unit. Idempotent.
    #[command(
        after_help = "Examples:\n  mcp node provision hyperborea --accept-new-host-key\n  mcp node provision hyperborea   # again: every step unchanged"
    )]
    Provision(provision::ProvisionArgs),
}
