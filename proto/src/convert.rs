//! Conversions between domain types and prost messages, at the gRPC edge only.

use crate as proto;
use mcp_model::service::{ComponentDef, HealthDef, RouteDef, ServiceDef};

fn opt(s: &str) -> Option<String> {
    if s.is_empty() { None } else { Some(s.to_string()) }
}

impl From<&ServiceDef> for proto::ServiceSpec {
    fn from(d: &ServiceDef) -> Self {
        proto::ServiceSpec {
            name: d.name.clone(),
            tier: d.tier.clone().unwrap_or_default(),
            node: d.node.clone().unwrap_or_default(),
            active: Some(d.active),
            path: d.path.clone().unwrap_or_default(),
            components: d.components.iter().map(Into::into).collect(),
            build_images: d
                .build
                .as_ref()
                .map(|b| b.images.clone().into_iter().collect())
                .unwrap_or_default(),
            snapshot: d.snapshot.as_ref().map(|s| proto::SnapshotSpec {
                method: s.method.clone().unwrap_or_default(),
                exclude: s.exclude.clone(),
                component: s.component.clone().unwrap_or_default(),
            }),
        }
    }
}

impl From<&ComponentDef> for proto::ComponentSpec {
    fn from(c: &ComponentDef) -> Self {
        proto::ComponentSpec {
            name: c.name.clone(),
            image: c.image.clone(),
            volumes: c.volumes.clone(),
            cmd: c.cmd.clone(),
            routes: c.routes.iter().map(Into::into).collect(),
            env: c.env.clone(),
            network: c.network.clone().unwrap_or_default(),
            user: c.user.clone().unwrap_or_default(),
            restart: c.restart.clone().unwrap_or_default(),
            memory: c.memory.clone().unwrap_or_default(),
            cpus: c.cpus.unwrap_or(0.0),
            health: c.health.as_ref().map(|h| proto::HealthSpec {
                kind: h.kind.clone(),
                port: h.port.clone().unwrap_or_default(),
                path: h.path.clone().unwrap_or_default(),
            }),
        }
    }
}

impl From<&RouteDef> for proto::RouteSpec {
    fn from(r: &RouteDef) -> Self {
        proto::RouteSpec {
            name: r.name.clone().unwrap_or_default(),
            port: u32::try_from(r.port).unwrap_or(0),
            mode: r.mode.clone().unwrap_or_default(),
            hostname: r.hostname.clone().unwrap_or_default(),
            public: r.public,
            backend_tls: r.backend_tls,
        }
    }
}

impl From<&proto::ServiceSpec> for ServiceDef {
    /// Lossless for specs produced from a `ServiceDef`; anything else must
    /// still pass [`mcp_model::service::validate`] before use.
    fn from(s: &proto::ServiceSpec) -> Self {
        ServiceDef {
            name: s.name.clone(),
            node: opt(&s.node),
            tier: opt(&s.tier),
            active: s.active.unwrap_or(true),
            path: opt(&s.path),
            build: if s.build_images.is_empty() {
                None
            } else {
                Some(mcp_model::service::BuildDef {
                    images: s.build_images.clone().into_iter().collect(),
                })
            },
            snapshot: s.snapshot.as_ref().map(|s| mcp_model::snapshot::SnapshotDef {
                method: opt(&s.method),
                exclude: s.exclude.clone(),
                component: opt(&s.component),
            }),
            components: s.components.iter().map(Into::into).collect(),
        }
    }
}

impl From<&proto::ComponentSpec> for ComponentDef {
    fn from(c: &proto::ComponentSpec) -> Self {
        ComponentDef {
            name: c.name.clone(),
            image: c.image.clone(),
            volumes: c.volumes.clone(),
            cmd: c.cmd.clone(),
            env: c.env.clone(),
            network: opt(&c.network),
            user: opt(&c.user),
            restart: opt(&c.restart),
            memory: opt(&c.memory),
            cpus: if c.cpus == 0.0 { None } else { Some(c.cpus) },
            health: c.health.as_ref().map(|h| HealthDef {
                kind: h.kind.clone(),
                port: opt(&h.port),
                path: opt(&h.path),
            }),
            routes: c.routes.iter().map(Into::into).collect(),
        }
    }
}

impl From<&proto::RouteSpec> for RouteDef {
    fn from(r: &proto::RouteSpec) -> Self {
        RouteDef {
            name: opt(&r.name),
            port: i64::from(r.port),
            mode: opt(&r.mode),
            hostname: opt(&r.hostname),
            public: r.public,
            backend_tls: r.backend_tls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let def = mcp_model::service::parse(
            "t",
            r#"
name = "web"
node = "rift"
[build.images]
web = "Dockerfile"
[snapshot]
method = "exec:true"
exclude = ["*.log"]
component = "api"
[[components]]
name = "api"
image = "r/web:v1"
env = ["A=1"]
cpus = 0.5
health = { kind = "http", path = "/h" }
[[components.routes]]
port = 8443
mode = "l7"
"#,
        )
        .unwrap();
        let spec = proto::ServiceSpec::from(&def);
        assert_eq!(ServiceDef::from(&spec), def);
    }
}
