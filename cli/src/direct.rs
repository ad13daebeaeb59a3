//! Commands against agents, straight from the `[[nodes]]` list (`--direct`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::join_all;
use mcp_common::config::{CliConfig, NodeRef};
use mcp_common::identity::Identity;
use mcp_common::proto::{self, mcp_agent_service_client::McpAgentServiceClient};
use mcp_common::service::{self, DefinitionError, ServiceDef};
use mcp_common::tls::{self, TlsFiles};
use prost::Message;
use tonic::transport::Channel;

use crate::output::{self, Out};
use crate::{Cli, Command, NodeCommand, UsageError, usage};

type Client = McpAgentServiceClient<Channel>;

/// Timeouts: quick for reads, generous for deploys (SPEC §7: 5 min).
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
const UNDEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

struct Ctx {
    cfg: CliConfig,
    out: Out,
}

fn config_path(cli: &Cli) -> (PathBuf, bool) {
    if let Some(p) = &cli.config {
        return (p.clone(), true);
    }
    if let Some(p) = std::env::var_os("MCP_CONFIG") {
        return (PathBuf::from(p), true);
    }
    (
        mcp_common::config::expand_home(Path::new("~/.config/mcp/mcp.toml")),
        false,
    )
}

/// Entry point: dispatches one command; returns the exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    let out = Out { json: cli.json };
    if let Command::Validate { paths } = &cli.command {
        return validate(paths, &out);
    }
    let (path, explicit) = config_path(&cli);
    let cfg = CliConfig::load(&path, explicit).map_err(|e| UsageError(e.to_string()))?;
    if !cli.direct && cfg.master.is_some() {
        return Err(anyhow::anyhow!(
            "this version of mcp cannot talk to a master yet; use --direct to talk to the agents in {}",
            path.display()
        ));
    }
    if cfg.nodes.is_empty() {
        usage!(
            "{}: no [[nodes]] configured: --direct needs the agents' addresses",
            path.display()
        );
    }
    let ctx = Ctx { cfg, out };
    match cli.command {
        Command::Validate { .. } => unreachable!("handled above"),
        Command::Deploy { target, node } => deploy(&ctx, &target, node).await,
        Command::Undeploy { service, node } => {
            let (name, component) = split_target(&service)?;
            if component.is_some() {
                usage!("undeploy takes a service, not a component; use `mcp stop {service}`");
            }
            let node = locate(&ctx, &name, node).await?;
            operate(&ctx, &node, Op::Undeploy, &name, None).await
        }
        Command::Stop { target, node } => simple(&ctx, Op::Stop, &target, node).await,
        Command::Start { target, node } => simple(&ctx, Op::Start, &target, node).await,
        Command::Restart { target, node } => simple(&ctx, Op::Restart, &target, node).await,
        Command::Ps => ps(&ctx).await,
        Command::Status { service, node } => match service {
            Some(s) => status(&ctx, &s, node).await,
            None => ps(&ctx).await,
        },
        Command::Logs {
            target,
            follow,
            tail,
            node,
        } => logs(&ctx, &target, follow, tail, node).await,
        Command::Node(NodeCommand::List) => node_list(&ctx).await,
    }
}

fn validate(paths: &[PathBuf], out: &Out) -> Result<u8> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| p.display().to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut problems = Vec::new();
    let mut names = std::collections::BTreeMap::new();
    for f in &files {
        match service::load_file(f) {
            Ok(def) => {
                if let Some(other) = names.insert(def.name.clone(), f.clone()) {
                    problems.push(format!(
                        "{}: name: service {:?} is also defined in {}",
                        f.display(),
                        def.name,
                        other.display()
                    ));
                }
            }
            Err(DefinitionError::Invalid(v)) => problems.extend(v.to_string().lines().map(str::to_string)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if out.json {
        output::print_json(&serde_json::json!({ "files": files.len(), "problems": problems }));
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        if problems.is_empty() {
            println!("{} definition(s) valid", files.len());
        }
    }
    Ok(if problems.is_empty() { 0 } else { 2 })
}

fn split_target(target: &str) -> Result<(String, Option<String>)> {
    let (svc, comp) = match target.split_once('/') {
        Some((s, c)) => (s, Some(c.to_string())),
        None => (target, None),
    };
    if let Err(r) = service::check_name(svc) {
        usage!("service name {svc:?}: {r}");
    }
    if let Some(c) = &comp
        && let Err(r) = service::check_name(c)
    {
        usage!("component name {c:?}: {r}");
    }
    Ok((svc.to_string(), comp))
}

/// Loads a definition named on the command line: a `.toml` path, or a
/// service name in the services dir.
fn load_definition(ctx: &Ctx, target: &str) -> Result<(ServiceDef, Option<String>)> {
    if target.ends_with(".toml") {
        let def = service::load_file(Path::new(target)).map_err(|e| UsageError(e.to_string()))?;
        return Ok((def, None));
    }
    let (name, component) = split_target(target)?;
    let path = ctx.cfg.services.dir.join(format!("{name}.toml"));
    if !path.exists() {
        usage!("no definition for service {name}: {} does not exist", path.display());
    }
    let def = service::load_file(&path).map_err(|e| UsageError(e.to_string()))?;
    if let Some(c) = &component
        && def.component(c).is_none()
    {
        usage!("{}: service {name} has no component {c:?}", path.display());
    }
    Ok((def, component))
}

fn node_ref<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a NodeRef> {
    match ctx.cfg.node(name) {
        Some(n) => Ok(n),
        None => {
            let known: Vec<&str> = ctx.cfg.nodes.iter().map(|n| n.name.as_str()).collect();
            usage!("unknown node {name:?}; configured nodes: {}", known.join(", "))
        }
    }
}

fn tls_files(ctx: &Ctx) -> Result<TlsFiles> {
    let a = &ctx.cfg.auth;
    match (&a.cert, &a.key, &a.ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        }),
        _ => usage!("[auth] needs cert, key and ca to talk to agents over mutual TLS"),
    }
}

async fn connect(ctx: &Ctx, node: &NodeRef, timeout: Duration) -> Result<Client> {
    let files = tls_files(ctx)?;
    let config = tls::client_config(&files, Some(Identity::Agent(node.name.clone())))?;
    let timeouts = tls::Timeouts {
        connect: Duration::from_secs(3),
        request: Some(timeout),
    };
    let (channel, _addr) = tls::connect(&node.address.list(), config, timeouts)
        .await
        .with_context(|| format!("node {}", node.name))?;
    Ok(McpAgentServiceClient::new(channel))
}

/// Converts a gRPC error to a CLI error, printing any step results carried
/// in its details first.
fn rpc_error(ctx: &Ctx, node: &str, s: tonic::Status) -> anyhow::Error {
    if let Ok(resp) = proto::OperationResponse::decode(s.details())
        && !resp.steps.is_empty()
    {
        ctx.out.operation(node, &resp, false);
    }
    let msg = format!("node {node}: {}", s.message());
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => anyhow::Error::new(UsageError(msg)),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            anyhow::anyhow!("{msg} (agent unreachable or podman down)")
        }
        _ => anyhow::anyhow!("{msg}"),
    }
}

/// Finds the node running `service`: `--node`, else the definition's pin,
/// else whichever agent has it in its registry.
async fn locate(ctx: &Ctx, service: &str, node: Option<String>) -> Result<String> {
    if let Some(n) = node {
        node_ref(ctx, &n)?;
        return Ok(n);
    }
    let path = ctx.cfg.services.dir.join(format!("{service}.toml"));
    if let Ok(def) = service::load_file(&path)
        && let Some(pin) = def.node
    {
        node_ref(ctx, &pin)?;
        return Ok(pin);
    }
    let listed = list_all(ctx).await;
    let holders: Vec<String> = listed
        .iter()
        .filter_map(|(n, r)| {
            r.as_ref()
                .ok()
                .filter(|l| l.services.iter().any(|s| s.name == service))
                .map(|_| n.clone())
        })
        .collect();
    match holders.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            let down: Vec<&str> = listed
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(n, _)| n.as_str())
                .collect();
            if down.is_empty() {
                usage!("service {service} is not deployed on any node")
            } else {
                anyhow::bail!(
                    "service {service} was not found on the reachable nodes; unreachable: {} (pass --node)",
                    down.join(", ")
                )
            }
        }
        many => usage!(
            "service {service} is on several nodes ({}); pass --node",
            many.join(", ")
        ),
    }
}

async fn deploy(ctx: &Ctx, target: &str, node: Option<String>) -> Result<u8> {
    let (def, component) = load_definition(ctx, target)?;
    let node = match (node, &def.node) {
        (Some(n), Some(pin)) if &n != pin => usage!(
            "service {} is pinned to node {pin}; --node {n} contradicts it",
            def.name
        ),
        (Some(n), _) => n,
        (None, Some(pin)) => pin.clone(),
        (None, None) if ctx.cfg.nodes.len() == 1 => ctx.cfg.nodes[0].name.clone(),
        (None, None) => match locate(ctx, &def.name, None).await {
            Ok(n) => n,
            Err(_) => usage!(
                "service {} has no `node` pin and is not deployed anywhere; pass --node (one of: {})",
                def.name,
                ctx.cfg
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let nref = node_ref(ctx, &node)?;
    let mut client = connect(ctx, nref, DEPLOY_TIMEOUT).await?;
    let request_id = request_id();
    let req = proto::DeployRequest {
        service: Some(proto::ServiceSpec::from(&def)),
        component: component.clone().unwrap_or_default(),
        request_id: request_id.clone(),
    };
    let progress = ctx.out.progress(&format!("deploying {} to {node}", def.name));
    let result = client.deploy(req).await;
    drop(progress);
    match result {
        Ok(resp) => {
            ctx.out.operation(&node, &resp.into_inner(), true);
            Ok(0)
        }
        Err(s) => Err(rpc_error(ctx, &node, s).context(format!("deploy {} (request {request_id})", def.name))),
    }
}

#[derive(Clone, Copy)]
enum Op {
    Stop,
    Start,
    Restart,
    Undeploy,
}

async fn simple(ctx: &Ctx, op: Op, target: &str, node: Option<String>) -> Result<u8> {
    let (name, component) = split_target(target)?;
    let node = locate(ctx, &name, node).await?;
    operate(ctx, &node, op, &name, component).await
}

async fn operate(ctx: &Ctx, node: &str, op: Op, name: &str, component: Option<String>) -> Result<u8> {
    let nref = node_ref(ctx, node)?;
    let timeout = if matches!(op, Op::Undeploy) {
        UNDEPLOY_TIMEOUT
    } else {
        DEPLOY_TIMEOUT
    };
    let mut client = connect(ctx, nref, timeout).await?;
    let req = proto::ServiceRequest {
        name: name.to_string(),
        component: component.unwrap_or_default(),
        request_id: request_id(),
    };
    let result = match op {
        Op::Stop => client.stop_service(req).await,
        Op::Start => client.start_service(req).await,
        Op::Restart => client.restart_service(req).await,
        Op::Undeploy => client.undeploy_service(req).await,
    };
    match result {
        Ok(resp) => {
            ctx.out.operation(node, &resp.into_inner(), true);
            Ok(0)
        }
        Err(s) => Err(rpc_error(ctx, node, s)),
    }
}

type Listed = Vec<(String, Result<proto::ListServicesResponse, String>)>;

/// Calls every node in parallel; a node that does not answer is reported
/// with the reason, never waited on beyond the timeouts.
async fn fan_out<T, F, Fut>(ctx: &Ctx, call: F) -> Vec<(NodeRef, Result<T, String>)>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let calls = ctx.cfg.nodes.iter().map(|n| {
        let call = &call;
        async move {
            let r = match connect(ctx, n, READ_TIMEOUT).await {
                Ok(c) => call(c)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string()),
                Err(e) => Err(format!("{e:#}")),
            };
            (n.clone(), r)
        }
    });
    join_all(calls).await
}

/// ListServices on every node.
async fn list_all(ctx: &Ctx) -> Listed {
    fan_out(ctx, |mut c| async move {
        c.list_services(proto::ListServicesRequest {}).await
    })
    .await
    .into_iter()
    .map(|(n, r)| (n.name, r))
    .collect()
}

async fn ps(ctx: &Ctx) -> Result<u8> {
    let listed = list_all(ctx).await;
    ctx.out.ps(&listed);
    Ok(if listed.iter().any(|(_, r)| r.is_err()) { 1 } else { 0 })
}

async fn status(ctx: &Ctx, service: &str, node: Option<String>) -> Result<u8> {
    let (name, _) = split_target(service)?;
    let node = locate(ctx, &name, node).await?;
    let mut client = connect(ctx, node_ref(ctx, &node)?, READ_TIMEOUT).await?;
    let st = client
        .get_service_status(proto::ServiceRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| rpc_error(ctx, &node, s))?
        .into_inner();
    ctx.out.status(&node, &st);
    Ok(0)
}

async fn logs(ctx: &Ctx, target: &str, follow: bool, tail: u32, node: Option<String>) -> Result<u8> {
    use std::io::Write;
    let (name, component) = split_target(target)?;
    let node = locate(ctx, &name, node).await?;
    let nref = node_ref(ctx, &node)?;
    // A followed stream has no deadline.
    let mut client = connect(
        ctx,
        nref,
        if follow {
            Duration::from_secs(86400 * 365)
        } else {
            READ_TIMEOUT
        },
    )
    .await?;
    let mut stream = client
        .logs(proto::LogsRequest {
            service: name,
            component: component.clone().unwrap_or_default(),
            follow,
            tail,
        })
        .await
        .map_err(|s| rpc_error(ctx, &node, s))?
        .into_inner();
    let prefix = component.is_none();
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(chunk) = stream.message().await.map_err(|s| rpc_error(ctx, &node, s))? {
        let w: &mut dyn Write = if chunk.stderr { &mut stderr } else { &mut stdout };
        if prefix {
            for line in String::from_utf8_lossy(&chunk.data).split_inclusive('\n') {
                let _ = write!(w, "{} | {line}", chunk.component);
            }
        } else {
            let _ = w.write_all(&chunk.data);
        }
        let _ = w.flush();
    }
    Ok(0)
}

async fn node_list(ctx: &Ctx) -> Result<u8> {
    let results = fan_out(
        ctx,
        |mut c| async move { c.node_status(proto::NodeStatusRequest {}).await },
    )
    .await;
    ctx.out.nodes(&results);
    Ok(if results.iter().any(|(_, r)| r.is_err()) { 1 } else { 0 })
}

/// A short random id correlating CLI and agent logs.
fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}
