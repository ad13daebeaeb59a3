//! Through the master (the default when `[master]` is configured): it
//! places services, fans out to the agents and keeps the fleet's records.

use anyhow::Result;
use async_trait::async_trait;
use mcp_model::service::ServiceDef;

use crate::client::{LogStream, MasterClient, request_id};
use crate::ctx::Ctx;
use crate::defs::load_all;
use crate::error::{UsageError, usage};
use crate::target::{self, DEPLOY_TIMEOUT, MASTER_SLACK, READ_TIMEOUT, RECOVER_TIMEOUT, Target};
use crate::view::{Listing, LogsQuery, NodeRecovery, NodeRoutes, Op, Placed, Rendered, ServiceStatus};

/// The master of `ctx`'s configuration.
pub struct Master<'a> {
    ctx: &'a Ctx,
}

impl<'a> Master<'a> {
    /// The configured `[master]`.
    pub fn new(ctx: &'a Ctx) -> Master<'a> {
        Master { ctx }
    }

    async fn client(&self, timeout: std::time::Duration) -> Result<MasterClient> {
        Ok(self.ctx.master(timeout).await?)
    }
}

#[async_trait(?Send)]
impl Target for Master<'_> {
    fn check_deploy_node(&self, node: Option<&str>) -> Result<()> {
        if node.is_some() {
            usage!("--node is for --direct mode; pin the service with `node = ...` in its definition");
        }
        Ok(())
    }

    async fn deploy(&self, def: &ServiceDef, component: Option<&str>, _node: Option<String>) -> Result<Placed> {
        let mut client = self.client(DEPLOY_TIMEOUT + MASTER_SLACK).await?;
        let request_id = request_id();
        let _progress = self.ctx.out.progress(&format!("deploying {}", def.name));
        let placed = client.deploy(def, component, &request_id).await;
        placed.map_err(target::deploy_failed(&def.name, &request_id))
    }

    async fn operate(&self, op: Op, name: &str, component: Option<&str>, _node: Option<String>) -> Result<Placed> {
        let mut client = self.client(target::op_timeout(op) + MASTER_SLACK).await?;
        let _progress = self.ctx.out.progress(&format!("{} {name}", op.verb()));
        Ok(client.operate(op, name, component, &request_id()).await?)
    }

    async fn services(&self) -> Result<Listing> {
        Ok(self.client(READ_TIMEOUT).await?.services().await?)
    }

    async fn status(&self, name: &str, _node: Option<String>) -> Result<(String, Option<ServiceStatus>)> {
        Ok(self.client(READ_TIMEOUT).await?.status(name).await?)
    }

    async fn logs(&self, query: &LogsQuery, _node: Option<String>) -> Result<LogStream> {
        let timeout = target::logs_timeout(query.follow);
        Ok(self.client(timeout).await?.logs(query).await?)
    }

    async fn routes(&self) -> Result<Vec<NodeRoutes>> {
        Ok(self.client(READ_TIMEOUT).await?.routes().await?)
    }

    async fn recover(&self, node: Option<String>) -> Result<Vec<NodeRecovery>> {
        let mut client = self.client(RECOVER_TIMEOUT).await?;
        let _progress = self.ctx.out.progress("recovering");
        Ok(client.recover(&node.unwrap_or_default(), &request_id()).await?)
    }

    async fn render(&self, name: &str, _node: Option<String>) -> Result<Rendered> {
        Ok(self.client(READ_TIMEOUT).await?.render(name).await?)
    }
}

/// `mcp dns list`.
pub async fn dns_list(ctx: &Ctx) -> Result<u8> {
    let zone = ctx.master(READ_TIMEOUT).await?.dns().await?;
    ctx.out.dns(&zone);
    Ok(0)
}

/// `mcp edge list|status`; with `status`, exit 1 when an edge does not
/// serve a route as recorded.
pub async fn edge_list(ctx: &Ctx, status: bool) -> Result<u8> {
    let routes = ctx.master(READ_TIMEOUT).await?.edge_routes().await?;
    ctx.out.edges(&routes, status);
    Ok(u8::from(status && routes.iter().any(|e| e.state != "ok")))
}

/// `mcp sync [--dry-run]`: the services dir, all valid, to the master.
pub async fn sync(ctx: &Ctx, dry_run: bool) -> Result<u8> {
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
    let report = client.sync(&defs, dry_run, &request_id()).await?;
    ctx.out.sync(&report);
    Ok(u8::from(!report.actions.iter().all(|a| a.success)))
}

/// `mcp node list` through the master.
pub async fn node_list(ctx: &Ctx) -> Result<u8> {
    let nodes = ctx.master(READ_TIMEOUT).await?.nodes().await?;
    ctx.out.fleet_nodes(&nodes);
    Ok(0)
}

/// `mcp node add <name>`: a join token for a new node.
pub async fn node_add(ctx: &Ctx, name: &str, ttl: u64) -> Result<u8> {
    let token = ctx.master(READ_TIMEOUT).await?.add_node(name, ttl).await?;
    let master = ctx.cfg.master.as_ref().map(|m| m.address.clone()).unwrap_or_default();
    ctx.out.join_token(&token, &master);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CliConfig;
    use crate::output::Out;

    #[test]
    fn the_master_places_services_itself() {
        let ctx = Ctx {
            cfg: CliConfig::default(),
            path: "mcp.toml".into(),
            out: Out { json: false },
        };
        let master = Master::new(&ctx);
        assert!(master.check_deploy_node(None).is_ok());
        let e = master.check_deploy_node(Some("rift")).expect_err("--node refused");
        assert!(e.downcast_ref::<UsageError>().is_some(), "{e:#}");
    }
}
