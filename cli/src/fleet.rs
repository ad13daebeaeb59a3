//! Commands through the master (the default when `[master]` is configured).

use std::time::Duration;

use anyhow::Result;
use mcp_proto as proto;

use crate::conn::{Ctx, request_id};
use crate::defs::{load_all, load_definition, split_target};
use crate::direct::{DEPLOY_TIMEOUT, READ_TIMEOUT, UNDEPLOY_TIMEOUT};
use crate::output;
use crate::{Command, DnsCommand, EdgeCommand, NodeCommand, RouteCommand, UsageError, usage};

/// Runs one command through the master; returns the exit code.
pub async fn run(ctx: &Ctx, command: Command) -> Result<u8> {
    match command {
        crate::handled_by_run!() => unreachable!("handled before"),
        Command::Deploy { target, node } => {
            if node.is_some() {
                usage!("--node is for --direct mode; pin the service with `node = ...` in its definition");
            }
            deploy(ctx, &target).await
        }
        Command::Undeploy { service, .. } => {
            let (name, component) = split_target(&service)?;
            if component.is_some() {
                usage!("undeploy takes a service, not a component; use `mcp stop {service}`");
            }
            operate(ctx, "undeploy", &name, None).await
        }
        Command::Stop { target, .. } => simple(ctx, "stop", &target).await,
        Command::Start { target, .. } => simple(ctx, "start", &target).await,
        Command::Restart { target, .. } => simple(ctx, "restart", &target).await,
        Command::Ps => ps(ctx).await,
        Command::Status { service, .. } => match service {
            Some(s) => status(ctx, &s).await,
            None => ps(ctx).await,
        },
        Command::Logs {
            target, follow, tail, ..
        } => logs(ctx, &target, follow, tail).await,
        Command::Sync { dry_run } => sync(ctx, dry_run).await,
        Command::Node(NodeCommand::List) => node_list(ctx).await,
        Command::Node(NodeCommand::Add { name, ttl }) => node_add(ctx, &name, ttl).await,
        Command::Dns(DnsCommand::List) => dns_list(ctx).await,
        Command::Route(RouteCommand::List) => route_list(ctx).await,
        Command::Edge(EdgeCommand::List) => edge_list(ctx, false).await,
        Command::Edge(EdgeCommand::Status) => edge_list(ctx, true).await,
    }
}

async fn dns_list(ctx: &Ctx) -> Result<u8> {
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let r = client
        .list_dns_records(proto::ListDnsRecordsRequest {})
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    ctx.out.dns(&r);
    Ok(0)
}

async fn route_list(ctx: &Ctx) -> Result<u8> {
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let r = client
        .list_routes(proto::ListProxyRoutesRequest {})
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    ctx.out.routes(&r.nodes);
    Ok(if r.nodes.iter().any(|n| !n.error.is_empty()) {
        1
    } else {
        0
    })
}

async fn edge_list(ctx: &Ctx, status: bool) -> Result<u8> {
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let r = client
        .list_edge_routes(proto::ListEdgeRoutesRequest {})
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    ctx.out.edges(&r.routes, status);
    Ok(if status && r.routes.iter().any(|e| e.state != "ok") {
        1
    } else {
        0
    })
}

async fn deploy(ctx: &Ctx, target: &str) -> Result<u8> {
    let (def, component) = load_definition(ctx, target)?;
    let mut client = ctx.master(DEPLOY_TIMEOUT + Duration::from_secs(10)).await?;
    let request_id = request_id();
    let req = proto::DeployRequest {
        service: Some(proto::ServiceSpec::from(&def)),
        component: component.unwrap_or_default(),
        request_id: request_id.clone(),
    };
    let progress = ctx.out.progress(&format!("deploying {}", def.name));
    let result = client.deploy(req).await;
    drop(progress);
    match result {
        Ok(r) => Ok(ctx.out.fleet_operation(&r.into_inner())),
        Err(s) => Err(ctx
            .rpc_error("master", s)
            .context(format!("deploy {} (request {request_id})", def.name))),
    }
}

async fn simple(ctx: &Ctx, op: &str, target: &str) -> Result<u8> {
    let (name, component) = split_target(target)?;
    operate(ctx, op, &name, component).await
}

async fn operate(ctx: &Ctx, op: &str, name: &str, component: Option<String>) -> Result<u8> {
    let timeout = if op == "undeploy" {
        UNDEPLOY_TIMEOUT
    } else {
        DEPLOY_TIMEOUT
    };
    let mut client = ctx.master(timeout + Duration::from_secs(10)).await?;
    let req = proto::ServiceRequest {
        name: name.to_string(),
        component: component.unwrap_or_default(),
        request_id: request_id(),
    };
    let progress = ctx.out.progress(&format!("{op} {name}"));
    let result = match op {
        "stop" => client.stop_service(req).await,
        "start" => client.start_service(req).await,
        "restart" => client.restart_service(req).await,
        _ => client.undeploy_service(req).await,
    };
    drop(progress);
    match result {
        Ok(r) => Ok(ctx.out.fleet_operation(&r.into_inner())),
        Err(s) => Err(ctx.rpc_error("master", s)),
    }
}

async fn ps(ctx: &Ctx) -> Result<u8> {
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let fleet = client
        .list_services(proto::ListServicesRequest {})
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    let listed: Vec<(String, Result<proto::ListServicesResponse, String>)> = fleet
        .nodes
        .into_iter()
        .map(|n| {
            let r = if n.error.is_empty() {
                Ok(proto::ListServicesResponse {
                    services: n.services,
                    node: n.node.clone(),
                })
            } else {
                Err(n.error)
            };
            (n.node, r)
        })
        .collect();
    ctx.out.ps(&listed, &fleet.missing, &fleet.orphans);
    Ok(if listed.iter().any(|(_, r)| r.is_err()) { 1 } else { 0 })
}

async fn status(ctx: &Ctx, service: &str) -> Result<u8> {
    let (name, _) = split_target(service)?;
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let st = client
        .get_service_status(proto::ServiceRequest {
            name,
            ..Default::default()
        })
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    if let Some(status) = &st.status {
        ctx.out.status(&st.node, status);
    }
    Ok(0)
}

async fn logs(ctx: &Ctx, target: &str, follow: bool, tail: u32) -> Result<u8> {
    let (name, component) = split_target(target)?;
    let timeout = if follow {
        Duration::from_secs(86400 * 365)
    } else {
        READ_TIMEOUT
    };
    let mut client = ctx.master(timeout).await?;
    let prefix = component.is_none();
    let stream = client
        .logs(proto::LogsRequest {
            service: name,
            component: component.unwrap_or_default(),
            follow,
            tail,
        })
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    output::stream_logs(stream, prefix)
        .await
        .map_err(|s| ctx.rpc_error("master", s))?;
    Ok(0)
}

async fn sync(ctx: &Ctx, dry_run: bool) -> Result<u8> {
    let dir = ctx.cfg.services.dir.clone();
    if !dir.is_dir() {
        usage!("services dir {} does not exist", dir.display());
    }
    let (defs, problems, _) = load_all(std::slice::from_ref(&dir))?;
    if !problems.is_empty() {
        return Err(anyhow::Error::new(UsageError(format!(
            "sync refused, nothing changed:\n{}",
            problems.join("\n")
        ))));
    }
    let mut client = ctx.master(DEPLOY_TIMEOUT * 4).await?;
    let _progress = ctx.out.progress(if dry_run { "planning sync" } else { "syncing" });
    let resp = client
        .sync(proto::SyncRequest {
            services: defs.iter().map(proto::ServiceSpec::from).collect(),
            dry_run,
            request_id: request_id(),
        })
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    ctx.out.sync(&resp);
    Ok(if resp.actions.iter().all(|a| a.success) { 0 } else { 1 })
}

async fn node_list(ctx: &Ctx) -> Result<u8> {
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let nodes = client
        .list_nodes(proto::ListNodesRequest {})
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    ctx.out.fleet_nodes(&nodes.nodes);
    Ok(0)
}

async fn node_add(ctx: &Ctx, name: &str, ttl: u64) -> Result<u8> {
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let r = client
        .add_node(proto::AddNodeRequest {
            name: name.to_string(),
            ttl_seconds: ttl,
        })
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    let master = ctx.cfg.master.as_ref().map(|m| m.address.clone()).unwrap_or_default();
    ctx.out.join_token(&r, &master);
    Ok(0)
}
