//! Commands against agents, straight from the `[[nodes]]` list (`--direct`,
//! or when no master is configured). Works while the master is down.

use std::time::Duration;

use crate::config::NodeRef;
use anyhow::Result;
use futures::future::join_all;
use mcp_proto as proto;

use crate::conn::{AgentClient, Ctx, request_id};
use crate::defs::{load_definition, split_target};
use crate::output;
use crate::{Command, NodeCommand, RouteCommand, usage};

/// Timeouts: quick for reads, generous for deploys (SPEC §7: 5 min).
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
pub const UNDEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one command in direct mode; returns the exit code.
pub async fn run(ctx: &Ctx, command: Command) -> Result<u8> {
    if ctx.cfg.nodes.is_empty() {
        usage!(
            "{}: no [[nodes]] configured: --direct needs the agents' addresses",
            ctx.path.display()
        );
    }
    match command {
        crate::handled_by_run!() => unreachable!("handled before"),
        Command::Deploy { target, node } => deploy(ctx, &target, node).await,
        Command::Undeploy { service, node } => {
            let (name, component) = split_target(&service)?;
            if component.is_some() {
                usage!("undeploy takes a service, not a component; use `mcp stop {service}`");
            }
            let node = locate(ctx, &name, node).await?;
            operate(ctx, &node, Op::Undeploy, &name, None).await
        }
        Command::Stop { target, node } => simple(ctx, Op::Stop, &target, node).await,
        Command::Start { target, node } => simple(ctx, Op::Start, &target, node).await,
        Command::Restart { target, node } => simple(ctx, Op::Restart, &target, node).await,
        Command::Ps => ps(ctx).await,
        Command::Status { service, node } => match service {
            Some(s) => status(ctx, &s, node).await,
            None => ps(ctx).await,
        },
        Command::Logs {
            target,
            follow,
            tail,
            node,
        } => logs(ctx, &target, follow, tail, node).await,
        Command::Node(NodeCommand::List) => node_list(ctx).await,
        Command::Route(RouteCommand::List) => route_list(ctx).await,
        Command::Node(NodeCommand::Add { .. }) | Command::Sync { .. } | Command::Dns(_) | Command::Edge(_) => {
            usage!("this command needs the master: configure [master] and drop --direct")
        }
    }
}

/// Finds the node running `service`: `--node`, else the definition's pin,
/// else whichever agent has it in its registry.
pub(crate) async fn locate(ctx: &Ctx, service: &str, node: Option<String>) -> Result<String> {
    if let Some(n) = node {
        ctx.node(&n)?;
        return Ok(n);
    }
    let path = ctx.cfg.services.dir.join(format!("{service}.toml"));
    if let Ok(def) = crate::defs::load_file(&path)
        && let Some(pin) = def.node
    {
        ctx.node(&pin)?;
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
            let down: Vec<String> = listed
                .iter()
                .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n} ({e})")))
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
        (Some(n), Some(pin)) if &n != pin => {
            usage!(
                "service {} is pinned to node {pin}; --node {n} contradicts it",
                def.name
            )
        }
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
    let mut client = ctx.agent(ctx.node(&node)?, DEPLOY_TIMEOUT).await?;
    let request_id = request_id();
    let req = proto::DeployRequest {
        service: Some(proto::ServiceSpec::from(&def)),
        component: component.unwrap_or_default(),
        request_id: request_id.clone(),
    };
    let progress = ctx.out.progress(&format!("deploying {} to {node}", def.name));
    let result = client.deploy(req).await;
    drop(progress);
    match result {
        Ok(resp) => Ok(ctx.out.operation(&node, &resp.into_inner(), true)),
        Err(s) => Err(ctx
            .rpc_error(&format!("node {node}"), s)
            .context(format!("deploy {} (request {request_id})", def.name))),
    }
}

/// Operations on a deployed service.
#[derive(Clone, Copy)]
pub enum Op {
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
    let timeout = if matches!(op, Op::Undeploy) {
        UNDEPLOY_TIMEOUT
    } else {
        DEPLOY_TIMEOUT
    };
    let mut client = ctx.agent(ctx.node(node)?, timeout).await?;
    let req = proto::ServiceRequest {
        name: name.to_string(),
        component: component.unwrap_or_default(),
        request_id: request_id(),
    };
    let progress = ctx.out.progress(&format!("{} {name} on {node}", op_name(&op)));
    let result = match op {
        Op::Stop => client.stop_service(req).await,
        Op::Start => client.start_service(req).await,
        Op::Restart => client.restart_service(req).await,
        Op::Undeploy => client.undeploy_service(req).await,
    };
    drop(progress);
    match result {
        Ok(resp) => Ok(ctx.out.operation(node, &resp.into_inner(), true)),
        Err(s) => Err(ctx.rpc_error(&format!("node {node}"), s)),
    }
}

type Listed = Vec<(String, Result<proto::ListServicesResponse, String>)>;

/// Calls every node in parallel; a node that does not answer is reported
/// with the reason, never waited on beyond the timeouts.
async fn fan_out<T, F, Fut>(ctx: &Ctx, call: F) -> Vec<(NodeRef, Result<T, String>)>
where
    F: Fn(AgentClient) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let calls = ctx.cfg.nodes.iter().map(|n| {
        let call = &call;
        async move {
            let r = match ctx.agent(n, READ_TIMEOUT).await {
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
    ctx.out.ps(&listed, &[], &[]);
    Ok(if listed.iter().any(|(_, r)| r.is_err()) { 1 } else { 0 })
}

async fn status(ctx: &Ctx, service: &str, node: Option<String>) -> Result<u8> {
    let (name, _) = split_target(service)?;
    let node = locate(ctx, &name, node).await?;
    let mut client = ctx.agent(ctx.node(&node)?, READ_TIMEOUT).await?;
    let st = client
        .get_service_status(proto::ServiceRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| ctx.rpc_error(&format!("node {node}"), s))?
        .into_inner();
    ctx.out.status(&node, &st);
    Ok(0)
}

async fn logs(ctx: &Ctx, target: &str, follow: bool, tail: u32, node: Option<String>) -> Result<u8> {
    let (name, component) = split_target(target)?;
    let node = locate(ctx, &name, node).await?;
    // A followed stream has no deadline.
    let timeout = if follow {
        Duration::from_secs(86400 * 365)
    } else {
        READ_TIMEOUT
    };
    let mut client = ctx.agent(ctx.node(&node)?, timeout).await?;
    let prefix = component.is_none();
    let stream = client
        .logs(proto::LogsRequest {
            service: name,
            component: component.unwrap_or_default(),
            follow,
            tail,
        })
        .await
        .map_err(|s| ctx.rpc_error(&format!("node {node}"), s))?
        .into_inner();
    output::stream_logs(stream, prefix)
        .await
        .map_err(|s| ctx.rpc_error(&format!("node {node}"), s))?;
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

async fn route_list(ctx: &Ctx) -> Result<u8> {
    let results = fan_out(ctx, |mut c| async move {
        c.list_proxy_routes(proto::ListProxyRoutesRequest {}).await
    })
    .await;
    let nodes: Vec<proto::NodeRoutes> = results
        .into_iter()
        .map(|(n, r)| match r {
            Ok(l) => proto::NodeRoutes {
                node: n.name,
                error: String::new(),
                routes: l.routes,
            },
            Err(e) => proto::NodeRoutes {
                node: n.name,
                error: e,
                routes: vec![],
            },
        })
        .collect();
    ctx.out.routes(&nodes);
    Ok(if nodes.iter().any(|n| !n.error.is_empty()) {
        1
    } else {
        0
    })
}

/// The command word of `op`, for progress messages.
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Stop => "stopping",
        Op::Start => "starting",
        Op::Restart => "restarting",
        Op::Undeploy => "undeploying",
    }
}
