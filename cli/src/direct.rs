//! Direct mode: straight to the agents of the `[[nodes]]` list (`--direct`,
//! or when no master is configured). Works while the master is down.

use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use futures::future::join_all;
use mcp_model::service::ServiceDef;

use crate::client::{AgentClient, LogStream, RpcError, request_id};
use crate::config::NodeRef;
use crate::ctx::Ctx;
use crate::error::usage;
use crate::target::{self, DEPLOY_TIMEOUT, READ_TIMEOUT, RECOVER_TIMEOUT, Target};
use crate::view::{
    Listing, LogsQuery, NodeRecovery, NodeRoutes, NodeServices, NodeStatus, Op, Operation, Placed, Rendered,
    ServiceStatus,
};

/// The agents of the `[[nodes]]` list.
pub struct Agents<'a> {
    ctx: &'a Ctx,
}

/// Refuses direct mode without `[[nodes]]`: there is nobody to ask.
pub fn require_nodes(ctx: &Ctx) -> Result<()> {
    if ctx.cfg.nodes.is_empty() {
        usage!(
            "{}: no [[nodes]] configured: --direct needs the agents' addresses",
            ctx.path.display()
        );
    }
    Ok(())
}

/// Calls every node of `nodes` in parallel; a node that does not answer is
/// reported with the reason, never waited on beyond `timeout`.
async fn fan_out<T, F, Fut>(
    ctx: &Ctx,
    nodes: &[NodeRef],
    timeout: Duration,
    call: F,
) -> Vec<(NodeRef, Result<T, String>)>
where
    F: Fn(AgentClient) -> Fut,
    Fut: Future<Output = Result<T, RpcError>>,
{
    let calls = nodes.iter().map(|n| {
        let call = &call;
        async move {
            let r = match ctx.agent(n, timeout).await {
                Ok(c) => call(c).await.map_err(|e| e.message),
                Err(e) => Err(format!("{:#}", anyhow::Error::new(e))),
            };
            (n.clone(), r)
        }
    });
    join_all(calls).await
}

/// A node's answer as the master reports it: an empty error and the answer,
/// or the reason and nothing.
fn split<T: Default>(r: Result<T, String>) -> (String, T) {
    match r {
        Ok(v) => (String::new(), v),
        Err(e) => (e, T::default()),
    }
}

/// An operation that ran on `node`, which the operator chose.
fn on(node: String, result: Operation) -> Placed {
    Placed {
        node,
        placement: String::new(),
        result: Some(result),
    }
}

impl<'a> Agents<'a> {
    /// The agents of `ctx`'s configuration.
    pub fn new(ctx: &'a Ctx) -> Agents<'a> {
        Agents { ctx }
    }

    /// Every node's services.
    async fn list_all(&self) -> Vec<NodeServices> {
        fan_out(self.ctx, &self.ctx.cfg.nodes, READ_TIMEOUT, |mut c| async move {
            c.services().await
        })
        .await
        .into_iter()
        .map(|(n, services)| NodeServices { node: n.name, services })
        .collect()
    }

    /// Finds the node running `service`: `--node`, else the definition's
    /// pin, else whichever agent has it in its registry.
    async fn locate(&self, service: &str, node: Option<String>) -> Result<String> {
        let ctx = self.ctx;
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
        let listed = self.list_all().await;
        let holders: Vec<String> = listed
            .iter()
            .filter(|n| {
                n.services
                    .as_ref()
                    .is_ok_and(|services| services.iter().any(|s| s.name == service))
            })
            .map(|n| n.node.clone())
            .collect();
        match holders.as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                let down: Vec<String> = listed
                    .iter()
                    .filter_map(|n| n.services.as_ref().err().map(|e| format!("{} ({e})", n.node)))
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

    /// The node a deploy of `def` goes to: `--node` (which must agree with
    /// the definition's pin), the pin, the only node, or where it runs now.
    async fn deploy_node(&self, def: &ServiceDef, node: Option<String>) -> Result<String> {
        let nodes = &self.ctx.cfg.nodes;
        Ok(match (node, &def.node) {
            (Some(n), Some(pin)) if &n != pin => {
                usage!(
                    "service {} is pinned to node {pin}; --node {n} contradicts it",
                    def.name
                )
            }
            (Some(n), _) => n,
            (None, Some(pin)) => pin.clone(),
            (None, None) if nodes.len() == 1 => nodes[0].name.clone(),
            (None, None) => match self.locate(&def.name, None).await {
                Ok(n) => n,
                Err(_) => usage!(
                    "service {} has no `node` pin and is not deployed anywhere; pass --node (one of: {})",
                    def.name,
                    nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            },
        })
    }

    /// Connects to the agent of `node` (a configured node name).
    async fn agent(&self, node: &str, timeout: Duration) -> Result<AgentClient> {
        Ok(self.ctx.agent(self.ctx.node(node)?, timeout).await?)
    }
}

#[async_trait(?Send)]
impl Target for Agents<'_> {
    fn check_deploy_node(&self, _node: Option<&str>) -> Result<()> {
        Ok(())
    }

    async fn deploy(&self, def: &ServiceDef, component: Option<&str>, node: Option<String>) -> Result<Placed> {
        let node = self.deploy_node(def, node).await?;
        let mut client = self.agent(&node, DEPLOY_TIMEOUT).await?;
        let request_id = request_id();
        let _progress = self.ctx.out.progress(&format!("deploying {} to {node}", def.name));
        let result = client.deploy(def, component, &request_id).await;
        Ok(on(node, result.map_err(target::deploy_failed(&def.name, &request_id))?))
    }

    async fn operate(&self, op: Op, name: &str, component: Option<&str>, node: Option<String>) -> Result<Placed> {
        let node = self.locate(name, node).await?;
        let mut client = self.agent(&node, target::op_timeout(op)).await?;
        let _progress = self.ctx.out.progress(&format!("{} {name} on {node}", op.doing()));
        let result = client.operate(op, name, component, &request_id()).await?;
        Ok(on(node, result))
    }

    async fn services(&self) -> Result<Listing> {
        Ok(Listing {
            nodes: self.list_all().await,
            ..Listing::default()
        })
    }

    async fn status(&self, name: &str, node: Option<String>) -> Result<(String, Option<ServiceStatus>)> {
        let node = self.locate(name, node).await?;
        let status = self.agent(&node, READ_TIMEOUT).await?.status(name).await?;
        Ok((node, Some(status)))
    }

    async fn logs(&self, query: &LogsQuery, node: Option<String>) -> Result<LogStream> {
        let node = self.locate(&query.service, node).await?;
        let timeout = target::logs_timeout(query.follow);
        Ok(self.agent(&node, timeout).await?.logs(query).await?)
    }

    async fn routes(&self) -> Result<Vec<NodeRoutes>> {
        let results = fan_out(self.ctx, &self.ctx.cfg.nodes, READ_TIMEOUT, |mut c| async move {
            c.proxy_routes().await
        })
        .await;
        Ok(results
            .into_iter()
            .map(|(n, r)| {
                let (error, routes) = split(r);
                NodeRoutes {
                    node: n.name,
                    error,
                    routes,
                }
            })
            .collect())
    }

    async fn recover(&self, node: Option<String>) -> Result<Vec<NodeRecovery>> {
        let nodes = match &node {
            Some(n) => vec![self.ctx.node(n)?.clone()],
            None => self.ctx.cfg.nodes.clone(),
        };
        let _progress = self.ctx.out.progress(&format!("recovering {} node(s)", nodes.len()));
        let results = fan_out(self.ctx, &nodes, RECOVER_TIMEOUT, |mut c| async move {
            c.recover(&request_id()).await
        })
        .await;
        Ok(results
            .into_iter()
            .map(|(n, r)| {
                let (error, result) = split(r.map(Some));
                NodeRecovery {
                    node: n.name,
                    error,
                    result,
                }
            })
            .collect())
    }

    async fn render(&self, name: &str, node: Option<String>) -> Result<Rendered> {
        let node = self.locate(name, node).await?;
        Ok(self.agent(&node, READ_TIMEOUT).await?.render(name).await?)
    }
}

/// `mcp node list` in direct mode: what every agent reports.
pub async fn node_list(ctx: &Ctx) -> Result<u8> {
    let results: Vec<(NodeRef, Result<NodeStatus, String>)> =
        fan_out(ctx, &ctx.cfg.nodes, READ_TIMEOUT, |mut c| async move {
            c.node_status().await
        })
        .await;
    ctx.out.nodes(&results);
    Ok(u8::from(results.iter().any(|(_, r)| r.is_err())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Addresses, CliConfig};
    use crate::output::Out;

    fn ctx(nodes: &[&str]) -> Ctx {
        let nodes = nodes
            .iter()
            .map(|n| NodeRef {
                name: n.to_string(),
                address: Addresses::One(format!("{n}:9444")),
                ssh: None,
                arch: None,
                ssh_port: None,
                install_dir: None,
                restart: None,
            })
            .collect();
        let cfg = CliConfig {
            nodes,
            ..CliConfig::default()
        };
        Ctx {
            cfg,
            path: "mcp.toml".into(),
            out: Out { json: true },
        }
    }

    fn def(pin: Option<&str>) -> ServiceDef {
        let pin = pin.map(|p| format!("node = \"{p}\"\n")).unwrap_or_default();
        let text = format!("name = \"web\"\n{pin}[[components]]\nname = \"web\"\nimage = \"registry/web:1\"\n");
        mcp_model::service::parse("web.toml", &text).expect("a valid definition")
    }

    /// Where a deploy goes, for the cases decided without asking an agent.
    #[tokio::test]
    async fn deploy_nodes() {
        for (nodes, pin, flag, want) in [
            (&["rift", "calypso"][..], Some("rift"), Some("rift"), Ok("rift")),
            (&["rift", "calypso"], None, Some("calypso"), Ok("calypso")),
            (&["rift", "calypso"], Some("calypso"), None, Ok("calypso")),
            (&["rift"], None, None, Ok("rift")),
            (
                &["rift", "calypso"],
                Some("rift"),
                Some("calypso"),
                Err("service web is pinned to node rift; --node calypso contradicts it"),
            ),
        ] {
            let ctx = ctx(nodes);
            let got = Agents::new(&ctx)
                .deploy_node(&def(pin), flag.map(str::to_string))
                .await
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.map(str::to_string).map_err(str::to_string),
                "{pin:?} {flag:?}"
            );
        }
    }

    #[test]
    fn answers_and_errors_split() {
        assert_eq!(split(Ok(vec![1])), (String::new(), vec![1]));
        assert_eq!(split::<Vec<u8>>(Err("refused".into())), ("refused".to_string(), vec![]));
    }

    #[test]
    fn direct_mode_needs_nodes() {
        assert!(require_nodes(&ctx(&["rift"])).is_ok());
        let e = require_nodes(&ctx(&[])).expect_err("no nodes");
        assert_eq!(
            e.to_string(),
            "mcp.toml: no [[nodes]] configured: --direct needs the agents' addresses"
        );
    }
}
