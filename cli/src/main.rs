//! `mcp`: the operator's command-line interface.
//!
//! Top-down: `args` (the command line) → the commands (`ops` for what both
//! modes share, written against `target::Target`, implemented by
//! `fleet::Master` and `direct::Agents`; `resilience`, `snapshot`,
//! `upgrade`, `provision`, `build`, `edit`, `defs`, `tools`) → `ctx`
//! (configuration, output, connections) → `client` (gRPC, the only part
//! that knows the wire types) and `output` → `view` (what is shown),
//! `config`, `ssh`, `release`, `error`.

mod args;
mod build;
mod client;
mod config;
mod ctx;
mod defs;
mod direct;
mod edit;
mod error;
mod fleet;
mod ops;
mod output;
mod provision;
mod release;
mod resilience;
mod snapshot;
mod ssh;
mod target;
mod tools;
mod upgrade;
mod view;

use clap::Parser;

use crate::args::{AgentCommand, Cli, Command, DnsCommand, EdgeCommand, NodeCommand, RouteCommand};
use crate::client::{ConnectError, RpcError};
use crate::ctx::Ctx;
use crate::error::{UsageError, usage};
use crate::output::Out;
use crate::target::Target;
use crate::view::Op;

/// Loads the configuration and runs the command in the right mode.
async fn run(cli: Cli, out: Out) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Validate { paths } => return defs::validate(paths, &out),
        Command::Completions { shell } => return tools::completions(*shell),
        Command::Man { dir } => return tools::man(dir),
        _ => {}
    }
    let (path, explicit) = ctx::config_path(cli.config.as_deref());
    let cfg = config::CliConfig::load(&path, explicit).map_err(|e| UsageError(e.to_string()))?;
    let direct = cli.direct || cfg.master.is_none();
    let ctx = Ctx { cfg, path, out };
    let (agents, master) = (direct::Agents::new(&ctx), fleet::Master::new(&ctx));
    let target: &dyn Target = if direct { &agents } else { &master };
    match cli.command {
        Command::Validate { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Build { service, no_push } => build::build(&ctx, &service, !no_push),
        Command::Edit { service } => edit::edit(&ctx, &service),
        // Fleet operations use the [[nodes]] list (SSH, agents) in both modes.
        Command::Agent(AgentCommand::Upgrade(args)) => upgrade::upgrade(&ctx, args).await,
        Command::Agent(AgentCommand::Status(args)) => upgrade::status(&ctx, args).await,
        Command::Node(NodeCommand::Provision(args)) => provision::provision(&ctx, args).await,
        Command::Agent(AgentCommand::Recover { node }) => resilience::recover(&ctx, target, node).await,
        Command::Render { service, node } => resilience::render(&ctx, target, &service, node).await,
        Command::Adopt { service, node } => resilience::adopt(&ctx, &service, node).await,
        Command::Snapshot(args) => snapshot::snapshot(&ctx, direct, args).await,
        Command::Migrate(args) => snapshot::migrate(&ctx, direct, args).await,
        service_command => {
            if direct {
                direct::require_nodes(&ctx)?;
            }
            match service_command {
                Command::Deploy { target: spec, node } => ops::deploy(&ctx, target, &spec, node).await,
                Command::Undeploy { service, node } => ops::undeploy(&ctx, target, &service, node).await,
                Command::Stop { target: spec, node } => ops::operate(&ctx, target, Op::Stop, &spec, node).await,
                Command::Start { target: spec, node } => ops::operate(&ctx, target, Op::Start, &spec, node).await,
                Command::Restart { target: spec, node } => ops::operate(&ctx, target, Op::Restart, &spec, node).await,
                Command::Ps => ops::ps(&ctx, target).await,
                Command::Status { service, node } => ops::status(&ctx, target, service, node).await,
                Command::Logs {
                    target: spec,
                    follow,
                    tail,
                    node,
                } => ops::logs(target, &spec, follow, tail, node).await,
                Command::Route(RouteCommand::List) => ops::route_list(&ctx, target).await,
                Command::Node(NodeCommand::List) if direct => direct::node_list(&ctx).await,
                Command::Node(NodeCommand::List) => fleet::node_list(&ctx).await,
                _ if direct => usage!("this command needs the master: configure [master] and drop --direct"),
                Command::Node(NodeCommand::Add { name, ttl }) => fleet::node_add(&ctx, &name, ttl).await,
                Command::Sync { dry_run } => fleet::sync(&ctx, dry_run).await,
                Command::Dns(DnsCommand::List) => fleet::dns_list(&ctx).await,
                Command::Edge(EdgeCommand::List) => fleet::edge_list(&ctx, false).await,
                Command::Edge(EdgeCommand::Status) => fleet::edge_list(&ctx, true).await,
                _ => unreachable!("every other command is matched above"),
            }
        }
    }
}

/// The exit code of a failed command: 2 when the operator asked for
/// something that cannot be done (usage, validation, unknown names), else 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    let usage = e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<ConnectError>().is_some_and(ConnectError::is_usage)
        || e.downcast_ref::<RpcError>().is_some_and(RpcError::is_usage);
    if usage { 2 } else { 1 }
}

/// Reports a failed command on stderr: the steps that ran, if the failure
/// carried them, then the error.
fn report(out: &Out, e: &anyhow::Error) {
    if let Some(RpcError {
        who,
        operation: Some(op),
        ..
    }) = e.downcast_ref::<RpcError>()
    {
        out.operation(who, op, false);
    }
    let label = if output::color_stderr() {
        "\x1b[1;31merror\x1b[0m"
    } else {
        "error"
    };
    eprintln!("{label}: {e:#}");
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli, out)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            report(&out, &e);
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every command and subcommand shows examples in its --help.
    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let has = cmd.get_after_help().is_some_and(|h| h.to_string().contains("Example"));
            if !has {
                missing.push(path.to_string());
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "mcp", &mut missing);
        assert!(missing.is_empty(), "commands without examples in --help: {missing:?}");
    }

    #[test]
    fn exit_codes() {
        let rpc = |code| anyhow::Error::new(RpcError::new("master", tonic::Status::new(code, "x")));
        let no_ca = || ConnectError::NoCa {
            config: "mcp.toml".into(),
        };
        for (e, want) in [
            (anyhow::Error::new(UsageError("bad".into())), 2),
            (
                anyhow::Error::new(UsageError("bad".into())).context("while deploying"),
                2,
            ),
            (anyhow::anyhow!("boom"), 1),
            (anyhow::Error::new(no_ca()), 2),
            (
                anyhow::Error::new(ConnectError::Token {
                    token: "t".into(),
                    problem: "the token is not text",
                }),
                1,
            ),
            (rpc(tonic::Code::NotFound), 2),
            (rpc(tonic::Code::InvalidArgument).context("deploy web (request 1)"), 2),
            (rpc(tonic::Code::Unavailable), 1),
            (rpc(tonic::Code::Internal), 1),
        ] {
            assert_eq!(exit_code(&e), want, "{e:#}");
        }
    }
}
