//! `mcp agent recover`, `mcp render`, `mcp adopt`: bringing a node back
//! when podman lost its containers, the manual fallback of last resort,
//! and taking over containers created outside mcp.

use std::time::Duration;

use anyhow::Result;
use futures::future::join_all;
use mcp_proto as proto;
use serde_json::json;

use crate::conn::{Ctx, request_id};
use crate::defs::split_target;
use crate::direct::{READ_TIMEOUT, locate};
use crate::output::{print_json, print_table, table};
use crate::usage;

/// Recovery recreates containers (and may pull images): give it time.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(900);

/// `mcp agent recover [node]`: through the master, or straight to the
/// agents with `--direct`. Exit 1 when a node or a service failed.
pub async fn recover(ctx: &Ctx, direct: bool, node: Option<String>) -> Result<u8> {
    let nodes: Vec<proto::NodeRecovery> = if direct {
        let targets: Vec<_> = match &node {
            Some(n) => vec![ctx.node(n)?.clone()],
            None => ctx.cfg.nodes.clone(),
        };
        let progress = ctx.out.progress(&format!("recovering {} node(s)", targets.len()));
        let calls = targets.iter().map(|n| async move {
            let r = match ctx.agent(n, RECOVER_TIMEOUT).await {
                Ok(mut c) => c
                    .recover(proto::RecoverRequest {
                        request_id: request_id(),
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string()),
                Err(e) => Err(format!("{e:#}")),
            };
            match r {
                Ok(result) => proto::NodeRecovery {
                    node: n.name.clone(),
                    error: String::new(),
                    result: Some(result),
                },
                Err(error) => proto::NodeRecovery {
                    node: n.name.clone(),
                    error,
                    result: None,
                },
            }
        });
        let out = join_all(calls).await;
        drop(progress);
        out
    } else {
        let mut client = ctx.master(RECOVER_TIMEOUT).await?;
        let progress = ctx.out.progress("recovering");
        let r = client
            .recover_node(proto::RecoverNodeRequest {
                node: node.clone().unwrap_or_default(),
                request_id: request_id(),
            })
            .await;
        drop(progress);
        r.map_err(|s| ctx.rpc_error("master", s))?.into_inner().nodes
    };
    let failed = nodes
        .iter()
        .any(|n| !n.error.is_empty() || n.result.as_ref().is_some_and(|r| r.services.iter().any(|s| !s.success)));
    if ctx.out.json {
        let rows: Vec<_> = nodes
            .iter()
            .map(|n| {
                let r = n.result.clone().unwrap_or_default();
                json!({
                    "node": n.node, "error": n.error, "duration_ms": r.duration_ms,
                    "created": r.created, "started": r.started,
                    "services": r.services.iter().map(|s| json!({
                        "service": s.service, "stage": s.stage, "success": s.success,
                        "detail": s.detail, "duration_ms": s.duration_ms,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!({ "nodes": rows }));
        return Ok(u8::from(failed));
    }
    let mut t = table(&["NODE", "STAGE", "SERVICE", "RESULT", "TIME", "DETAIL"]);
    for n in &nodes {
        if !n.error.is_empty() {
            t.add_row(vec![
                n.node.clone(),
                "-".into(),
                "-".into(),
                "unreachable".into(),
                "-".into(),
                n.error.clone(),
            ]);
            continue;
        }
        for s in n.result.iter().flat_map(|r| &r.services) {
            t.add_row(vec![
                n.node.clone(),
                s.stage.clone(),
                s.service.clone(),
                if s.success { "ok" } else { "FAILED" }.into(),
                format!("{:.1}s", s.duration_ms as f64 / 1000.0),
                s.detail.clone(),
            ]);
        }
    }
    print_table(&t);
    for n in &nodes {
        if let Some(r) = &n.result {
            println!(
                "{}: {} services, {} containers created, {} started, in {:.1}s",
                n.node,
                r.services.len(),
                r.created,
                r.started,
                r.duration_ms as f64 / 1000.0
            );
        }
    }
    Ok(u8::from(failed))
}

/// `mcp render <svc>`: shell commands on stdout, nothing else, so that
/// `mcp render web | sh` works as the podman user.
pub async fn render(ctx: &Ctx, direct: bool, service: &str, node: Option<String>) -> Result<u8> {
    let (name, component) = split_target(service)?;
    if component.is_some() {
        usage!("render takes a service, not a component");
    }
    let r = if direct {
        let node = locate(ctx, &name, node).await?;
        let mut c = ctx.agent(ctx.node(&node)?, READ_TIMEOUT).await?;
        c.render_service(proto::ServiceRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| ctx.rpc_error(&format!("node {node}"), s))?
        .into_inner()
    } else {
        let mut c = ctx.master(READ_TIMEOUT).await?;
        c.render_service(proto::ServiceRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner()
    };
    if ctx.out.json {
        print_json(&json!({ "service": r.service, "commands": r.commands }));
    } else {
        for c in &r.commands {
            println!("{c}");
        }
    }
    Ok(0)
}

/// `mcp adopt <svc> --node N` (direct to the agent).
pub async fn adopt(ctx: &Ctx, service: &str, node: Option<String>) -> Result<u8> {
    let node = match node {
        Some(n) => n,
        None if ctx.cfg.nodes.len() == 1 => ctx.cfg.nodes[0].name.clone(),
        None => usage!("adopt needs --node: the containers are on one node"),
    };
    let mut c = ctx.agent(ctx.node(&node)?, READ_TIMEOUT).await?;
    let r = c
        .adopt_containers(proto::AdoptRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| ctx.rpc_error(&format!("node {node}"), s))?
        .into_inner();
    if ctx.out.json {
        print_json(&json!({ "node": node, "service": r.service, "adopted": r.adopted, "refused": r.refused }));
    } else {
        println!("{}: adopted {} on {node}", r.service, r.adopted.join(", "));
        for why in &r.refused {
            eprintln!("warning: not adopted: {why}");
        }
    }
    Ok(0)
}
