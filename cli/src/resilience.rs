//! `mcp agent recover`, `mcp render`, `mcp adopt`: bringing a node back
//! when podman lost its containers, the manual fallback of last resort,
//! and taking over containers created outside mcp.

use anyhow::Result;
use serde_json::json;

use crate::ctx::Ctx;
use crate::defs::split_target;
use crate::error::usage;
use crate::output::{print_json, print_table, table};
use crate::target::{READ_TIMEOUT, Target};
use crate::view::NodeRecovery;

/// `mcp agent recover [node]`: through the master, or straight to the
/// agents with `--direct`. Exit 1 when a node or a service failed.
pub async fn recover(ctx: &Ctx, target: &dyn Target, node: Option<String>) -> Result<u8> {
    let nodes = target.recover(node).await?;
    print_recovery(ctx, &nodes);
    Ok(u8::from(recovery_failed(&nodes)))
}

/// Whether a node could not be recovered or a service failed to come back.
fn recovery_failed(nodes: &[NodeRecovery]) -> bool {
    nodes
        .iter()
        .any(|n| !n.error.is_empty() || n.result.as_ref().is_some_and(|r| r.services.iter().any(|s| !s.success)))
}

fn print_recovery(ctx: &Ctx, nodes: &[NodeRecovery]) {
    if ctx.out.json {
        let rows: Vec<_> = nodes
            .iter()
            .map(|n| {
                let mut row = json!(n.result.clone().unwrap_or_default());
                row["node"] = json!(n.node);
                row["error"] = json!(n.error);
                row
            })
            .collect();
        print_json(&json!({ "nodes": rows }));
        return;
    }
    let mut t = table(&["NODE", "STAGE", "SERVICE", "RESULT", "TIME", "DETAIL"]);
    for n in nodes {
        if !n.error.is_empty() {
            t.add_row(vec![n.node.as_str(), "-", "-", "unreachable", "-", n.error.as_str()]);
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
    for n in nodes {
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
}

/// `mcp render <svc>`: shell commands on stdout, nothing else, so that
/// `mcp render web | sh` works as the podman user.
pub async fn render(ctx: &Ctx, target: &dyn Target, service: &str, node: Option<String>) -> Result<u8> {
    let (name, component) = split_target(service)?;
    if component.is_some() {
        usage!("render takes a service, not a component");
    }
    let r = target.render(&name, node).await?;
    if ctx.out.json {
        print_json(&r);
    } else {
        for c in &r.commands {
            println!("{c}");
        }
    }
    Ok(0)
}

/// `mcp adopt <svc> --node N` (always straight to the agent).
pub async fn adopt(ctx: &Ctx, service: &str, node: Option<String>) -> Result<u8> {
    let node = match node {
        Some(n) => n,
        None if ctx.cfg.nodes.len() == 1 => ctx.cfg.nodes[0].name.clone(),
        None => usage!("adopt needs --node: the containers are on one node"),
    };
    let r = ctx.agent(ctx.node(&node)?, READ_TIMEOUT).await?.adopt(service).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{RecoveredService, Recovery};

    #[test]
    fn recovery_fails_on_a_node_or_a_service() {
        let node = |error: &str, results: &[bool]| NodeRecovery {
            node: "rift".into(),
            error: error.into(),
            result: (!results.is_empty()).then(|| Recovery {
                services: results
                    .iter()
                    .map(|&success| RecoveredService {
                        success,
                        ..RecoveredService::default()
                    })
                    .collect(),
                ..Recovery::default()
            }),
        };
        for (nodes, failed) in [
            (vec![], false),
            (vec![node("", &[true, true])], false),
            (vec![node("", &[true]), node("", &[false])], true),
            (vec![node("unreachable", &[])], true),
        ] {
            assert_eq!(recovery_failed(&nodes), failed, "{nodes:?}");
        }
    }
}
