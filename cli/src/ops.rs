//! The commands about services that work the same in both modes, written
//! once against [`Target`]: deploy, stop, start, restart, undeploy, ps,
//! status, logs and route list.

use anyhow::Result;

use crate::ctx::Ctx;
use crate::defs::{load_definition, split_target};
use crate::error::usage;
use crate::output::LogSink;
use crate::target::Target;
use crate::view::{LogsQuery, Op};

/// `mcp deploy <service>[/<component>] [--node N]`; exit 1 when a step failed.
pub async fn deploy(ctx: &Ctx, target: &dyn Target, spec: &str, node: Option<String>) -> Result<u8> {
    target.check_deploy_node(node.as_deref())?;
    let (def, component) = load_definition(ctx, spec)?;
    let placed = target.deploy(&def, component.as_deref(), node).await?;
    Ok(ctx.out.placed(&placed))
}

/// `mcp stop|start|restart <service>[/<component>]`; exit 1 when a step failed.
pub async fn operate(ctx: &Ctx, target: &dyn Target, op: Op, spec: &str, node: Option<String>) -> Result<u8> {
    let (name, component) = split_target(spec)?;
    let placed = target.operate(op, &name, component.as_deref(), node).await?;
    Ok(ctx.out.placed(&placed))
}

/// `mcp undeploy <service>`: a whole service, never one component.
pub async fn undeploy(ctx: &Ctx, target: &dyn Target, service: &str, node: Option<String>) -> Result<u8> {
    if split_target(service)?.1.is_some() {
        usage!("undeploy takes a service, not a component; use `mcp stop {service}`");
    }
    operate(ctx, target, Op::Undeploy, service, node).await
}

/// `mcp ps`; exit 1 when a node did not answer.
pub async fn ps(ctx: &Ctx, target: &dyn Target) -> Result<u8> {
    let listing = target.services().await?;
    ctx.out.ps(&listing);
    Ok(u8::from(listing.nodes.iter().any(|n| n.services.is_err())))
}

/// `mcp status [service]`: one service in detail, or `ps`.
pub async fn status(ctx: &Ctx, target: &dyn Target, service: Option<String>, node: Option<String>) -> Result<u8> {
    let Some(service) = service else {
        return ps(ctx, target).await;
    };
    let (name, _) = split_target(&service)?;
    let (node, status) = target.status(&name, node).await?;
    if let Some(status) = &status {
        ctx.out.status(&node, status);
    }
    Ok(0)
}

/// `mcp logs <service>[/<component>] [-f] [--tail N]`.
pub async fn logs(target: &dyn Target, spec: &str, follow: bool, tail: u32, node: Option<String>) -> Result<u8> {
    let (service, component) = split_target(spec)?;
    let query = LogsQuery {
        service,
        component,
        follow,
        tail,
    };
    let mut stream = target.logs(&query, node).await?;
    let sink = LogSink::new(query.component.is_none());
    while let Some(chunk) = stream.next().await? {
        sink.write(&chunk);
    }
    Ok(0)
}

/// `mcp route list`; exit 1 when a node did not answer.
pub async fn route_list(ctx: &Ctx, target: &dyn Target) -> Result<u8> {
    let nodes = target.routes().await?;
    ctx.out.routes(&nodes);
    Ok(u8::from(nodes.iter().any(|n| !n.error.is_empty())))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use async_trait::async_trait;
    use mcp_model::service::ServiceDef;

    use super::*;
    use crate::client::LogStream;
    use crate::config::CliConfig;
    use crate::output::Out;
    use crate::view::{
        Listing, NodeRecovery, NodeRoutes, NodeServices, Operation, Placed, Rendered, ServiceStatus, Step,
    };

    /// Answers with what it was given and records what it was asked.
    #[derive(Default)]
    struct Fake {
        steps: Vec<Step>,
        listing: Listing,
        routes: Vec<NodeRoutes>,
        calls: RefCell<Vec<String>>,
    }

    impl Fake {
        fn placed(&self, call: String) -> Result<Placed> {
            self.calls.borrow_mut().push(call);
            Ok(Placed {
                node: "rift".into(),
                placement: String::new(),
                result: Some(Operation {
                    steps: self.steps.clone(),
                    ..Operation::default()
                }),
            })
        }
    }

    #[async_trait(?Send)]
    impl Target for Fake {
        fn check_deploy_node(&self, _node: Option<&str>) -> Result<()> {
            Ok(())
        }
        async fn deploy(&self, def: &ServiceDef, component: Option<&str>, node: Option<String>) -> Result<Placed> {
            self.placed(format!("deploy {} {component:?} {node:?}", def.name))
        }
        async fn operate(&self, op: Op, name: &str, component: Option<&str>, node: Option<String>) -> Result<Placed> {
            self.placed(format!("{} {name} {component:?} {node:?}", op.verb()))
        }
        async fn services(&self) -> Result<Listing> {
            Ok(self.listing.clone())
        }
        async fn status(&self, name: &str, _node: Option<String>) -> Result<(String, Option<ServiceStatus>)> {
            self.calls.borrow_mut().push(format!("status {name}"));
            Ok(("rift".into(), None))
        }
        async fn logs(&self, _query: &LogsQuery, _node: Option<String>) -> Result<LogStream> {
            anyhow::bail!("no logs in a fake")
        }
        async fn routes(&self) -> Result<Vec<NodeRoutes>> {
            Ok(self.routes.clone())
        }
        async fn recover(&self, _node: Option<String>) -> Result<Vec<NodeRecovery>> {
            Ok(vec![])
        }
        async fn render(&self, _name: &str, _node: Option<String>) -> Result<Rendered> {
            Ok(Rendered::default())
        }
    }

    /// A context whose services dir holds `web.toml` (components api, db).
    fn ctx(dir: &tempfile::TempDir) -> Ctx {
        let def = "name = \"web\"\n[[components]]\nname = \"api\"\nimage = \"registry/api:1\"\n\
                   [[components]]\nname = \"db\"\nimage = \"registry/db:1\"\n";
        std::fs::write(dir.path().join("web.toml"), def).expect("write the definition");
        let mut cfg = CliConfig::default();
        cfg.services.dir = dir.path().to_path_buf();
        Ctx {
            cfg,
            path: "mcp.toml".into(),
            out: Out { json: true },
        }
    }

    fn step(success: bool) -> Step {
        Step {
            step: "containers".into(),
            success,
            ..Step::default()
        }
    }

    #[tokio::test]
    async fn deploy_exit_code_follows_the_steps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = ctx(&dir);
        for (steps, want) in [(vec![step(true)], 0), (vec![step(true), step(false)], 1)] {
            let fake = Fake {
                steps,
                ..Fake::default()
            };
            assert_eq!(
                deploy(&ctx, &fake, "web/db", Some("rift".into()))
                    .await
                    .expect("deployed"),
                want
            );
            assert_eq!(*fake.calls.borrow(), ["deploy web Some(\"db\") Some(\"rift\")"]);
        }
    }

    #[tokio::test]
    async fn deploy_refuses_unknown_components_before_asking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = Fake::default();
        let e = deploy(&ctx(&dir), &fake, "web/cache", None)
            .await
            .expect_err("no such component");
        assert!(e.downcast_ref::<crate::error::UsageError>().is_some(), "{e:#}");
        assert!(fake.calls.borrow().is_empty());
    }

    #[tokio::test]
    async fn operations_split_their_target() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = ctx(&dir);
        let fake = Fake::default();
        operate(&ctx, &fake, Op::Stop, "web/api", None).await.expect("stopped");
        undeploy(&ctx, &fake, "web", Some("rift".into()))
            .await
            .expect("undeployed");
        let e = undeploy(&ctx, &fake, "web/api", None).await.expect_err("a component");
        assert!(e.to_string().contains("use `mcp stop web/api`"), "{e:#}");
        status(&ctx, &fake, Some("web/api".into()), None).await.expect("status");
        assert_eq!(
            *fake.calls.borrow(),
            [
                "stop web Some(\"api\") None",
                "undeploy web None Some(\"rift\")",
                "status web"
            ]
        );
    }

    #[tokio::test]
    async fn unreachable_nodes_fail_ps_and_route_list() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = ctx(&dir);
        let up = NodeServices {
            node: "rift".into(),
            services: Ok(vec![]),
        };
        let down = NodeServices {
            node: "calypso".into(),
            services: Err("refused".into()),
        };
        for (nodes, want) in [(vec![up.clone()], 0), (vec![up, down], 1)] {
            let fake = Fake {
                listing: Listing {
                    nodes,
                    ..Listing::default()
                },
                ..Fake::default()
            };
            assert_eq!(ps(&ctx, &fake).await.expect("listed"), want);
            // `mcp status` without a service is `mcp ps`.
            assert_eq!(status(&ctx, &fake, None, None).await.expect("listed"), want);
        }
        for (error, want) in [("", 0), ("refused", 1)] {
            let fake = Fake {
                routes: vec![NodeRoutes {
                    node: "rift".into(),
                    error: error.into(),
                    routes: vec![],
                }],
                ..Fake::default()
            };
            assert_eq!(route_list(&ctx, &fake).await.expect("listed"), want);
        }
    }
}
