//! The CLI's one conversion module: requests from plain arguments and model
//! types, and every answer of the master and the agents into `view` types.

use mcp_model::service::ServiceDef;
use mcp_proto as proto;

use crate::view::{
    Adopted, BootStage, Component, DnsRecord, DnsZone, EdgeRoute, Event, FleetNode, JoinToken, Listing, LogChunk,
    LogsQuery, Migration, MoveRequest, NodeRecovery, NodeRoutes, NodeServices, NodeStatus, Operation, Placed,
    ProxyRoute, RecoveredService, Recovery, Rendered, Restored, Route, Service, ServiceStatus, Snapshot, SnapshotTaken,
    Step, SyncAction, SyncReport,
};

/// A request naming a service (and maybe one component).
pub fn service_request(name: &str, component: Option<&str>, request_id: &str) -> proto::ServiceRequest {
    proto::ServiceRequest {
        name: name.to_string(),
        component: component.unwrap_or_default().to_string(),
        request_id: request_id.to_string(),
    }
}

/// A deploy of `def` (or one of its components).
pub fn deploy_request(def: &ServiceDef, component: Option<&str>, request_id: &str) -> proto::DeployRequest {
    proto::DeployRequest {
        service: Some(proto::ServiceSpec::from(def)),
        component: component.unwrap_or_default().to_string(),
        request_id: request_id.to_string(),
    }
}

/// `mcp sync`: every definition of the services dir.
pub fn sync_request(defs: &[ServiceDef], dry_run: bool, request_id: &str) -> proto::SyncRequest {
    proto::SyncRequest {
        services: defs.iter().map(proto::ServiceSpec::from).collect(),
        dry_run,
        request_id: request_id.to_string(),
    }
}

/// `mcp logs`.
pub fn logs_request(q: &LogsQuery) -> proto::LogsRequest {
    proto::LogsRequest {
        service: q.service.clone(),
        component: q.component.clone().unwrap_or_default(),
        follow: q.follow,
        tail: q.tail,
    }
}

/// `mcp snapshot <svc>`.
pub fn snapshot_request(service: &str, request_id: &str) -> proto::CreateSnapshotRequest {
    proto::CreateSnapshotRequest {
        service: service.to_string(),
        request_id: request_id.to_string(),
    }
}

/// `mcp snapshot restore <svc> [--at <name>]`.
pub fn restore_request(service: &str, at: &str, request_id: &str) -> proto::RestoreSnapshotRequest {
    proto::RestoreSnapshotRequest {
        service: service.to_string(),
        at: at.to_string(),
        request_id: request_id.to_string(),
    }
}

/// `mcp migrate`.
pub fn migrate_request(m: &MoveRequest, request_id: &str) -> proto::MigrateServiceRequest {
    proto::MigrateServiceRequest {
        service: m.service.clone(),
        to: m.to.clone(),
        force: m.force,
        request_id: request_id.to_string(),
        all: m.all,
        from: m.from.clone(),
    }
}

/// Converts every item of a repeated field.
pub fn all<T, V: From<T>>(items: Vec<T>) -> Vec<V> {
    items.into_iter().map(V::from).collect()
}

/// `impl From<$from> for $to` for messages whose fields move across under
/// the same names: as they are, item by item (`each`), or when present
/// (`some`). A view field missing from the lists does not compile; message
/// fields the CLI does not show are left out.
macro_rules! moved {
    ($from:ty => $to:ident { $($field:ident),* $(; each $($each:ident),+)? $(; some $($some:ident),+)? }) => {
        impl From<$from> for $to {
            fn from(m: $from) -> Self {
                $to {
                    $($field: m.$field,)*
                    $($($each: all(m.$each),)+)?
                    $($($some: m.$some.map(From::from),)+)?
                }
            }
        }
    };
}

moved!(proto::StepResult => Step { step, success, error, detail, skipped, duration_ms });
moved!(proto::ComponentInfo => Component {
    name, container, image, desired_state, observed_state, started_at, version, container_id, restart_count
});
moved!(proto::RouteInfo => Route { component, name, port, mode, hostname, public, host_port });
moved!(proto::ServiceInfo => Service { name, active, node, updated_at; each components, routes });
moved!(proto::ServiceStatus => ServiceStatus { ; each events; some service });
moved!(proto::OperationResponse => Operation { changed, warnings; each steps; some service });
moved!(proto::FleetOperationResponse => Placed { node, placement; some result });
moved!(proto::BootStageStatus => BootStage { name, state, detail, services });
moved!(proto::NodeStatusResponse => NodeStatus {
    version, git_commit, arch, uptime_seconds, podman_version, services, containers, containers_running, cpus, load1,
    memory_total_bytes, memory_available_bytes, disk_total_bytes, disk_available_bytes, cgroup_version,
    limits_enforced, monitor_last_run, drifted; each boot
});
moved!(proto::NodeInfo => FleetNode {
    name, role, address, arch, version, status, last_seen, containers, cpu_load, memory_total_bytes,
    memory_available_bytes, disk_total_bytes, disk_available_bytes, cpus, status_reason
});
moved!(proto::AddNodeResponse => JoinToken { name, token, expires_at });
moved!(proto::ListDnsRecordsResponse => DnsZone { zone, listen; each records });
moved!(proto::ProxyRouteInfo => ProxyRoute {
    service, listener_port, listener, hostname, mode, backend, backend_tls, cert
});
moved!(proto::NodeRoutes => NodeRoutes { node, error; each routes });
moved!(proto::EdgeRouteInfo => EdgeRoute {
    hostname, service, edge_node, backend_hostname, backend_port, cert_serial, cert_expires_at, state
});
moved!(proto::SyncAction => SyncAction { service, action, node, changed, success, error });
moved!(proto::SyncResponse => SyncReport { dry_run; each actions });
moved!(proto::RecoveredService => RecoveredService { service, stage, success, detail, duration_ms });
moved!(proto::RecoverResponse => Recovery { duration_ms, created, started; each services });
moved!(proto::NodeRecovery => NodeRecovery { node, error; some result });
moved!(proto::RenderResponse => Rendered { service, commands });
moved!(proto::AdoptResponse => Adopted { service, adopted, refused });
moved!(proto::SnapshotInfo => Snapshot { service, name, created_at, sha256, size, node, path });
moved!(proto::MigrationResult => Migration { service, from, to, success, error; each steps; some snapshot });
moved!(proto::LogChunk => LogChunk { component, data, stderr });

impl From<proto::Event> for Event {
    fn from(e: proto::Event) -> Self {
        Event {
            time_ms: e.time,
            component: e.component,
            kind: e.kind,
            message: e.message,
        }
    }
}

impl From<proto::DnsRecord> for DnsRecord {
    fn from(d: proto::DnsRecord) -> Self {
        DnsRecord {
            name: d.name,
            kind: d.r#type,
            value: d.value,
            ttl: d.ttl,
            node: d.node,
            service: d.service,
        }
    }
}

impl From<proto::FleetServices> for Listing {
    fn from(f: proto::FleetServices) -> Self {
        let nodes = f
            .nodes
            .into_iter()
            .map(|n| NodeServices {
                services: if n.error.is_empty() {
                    Ok(all(n.services))
                } else {
                    Err(n.error)
                },
                node: n.node,
            })
            .collect();
        Listing {
            nodes,
            missing: f.missing,
            orphans: f.orphans,
        }
    }
}

/// An absent snapshot reads as the empty one.
fn snapshot(s: Option<proto::SnapshotInfo>) -> Snapshot {
    s.map(Snapshot::from).unwrap_or_default()
}

impl From<proto::CreateSnapshotResponse> for SnapshotTaken {
    fn from(r: proto::CreateSnapshotResponse) -> Self {
        SnapshotTaken {
            snapshot: snapshot(r.snapshot),
            pruned: r.pruned,
            warnings: r.warnings,
        }
    }
}

impl From<proto::RestoreSnapshotResponse> for Restored {
    fn from(r: proto::RestoreSnapshotResponse) -> Self {
        Restored {
            snapshot: snapshot(r.snapshot),
            node: r.node,
            steps: all(r.steps),
        }
    }
}

#[cfg(test)]
mod tests {
    //! `--json` prints view types; before them it printed these `json!`
    //! objects built from the messages. Each test converts a message with
    //! every field set and checks the view serializes to the same JSON.

    use serde_json::{Value, json};

    use super::*;

    fn to_json<T: serde::Serialize>(v: T) -> Value {
        serde_json::to_value(v).expect("view types serialize")
    }

    fn step() -> proto::StepResult {
        proto::StepResult {
            step: "containers".into(),
            success: true,
            error: "no error".into(),
            detail: "2 created".into(),
            skipped: true,
            duration_ms: 1234,
        }
    }

    fn service() -> proto::ServiceInfo {
        proto::ServiceInfo {
            name: "web".into(),
            active: true,
            components: vec![proto::ComponentInfo {
                name: "api".into(),
                container: "web-api".into(),
                image: "registry/web:1".into(),
                desired_state: "running".into(),
                observed_state: "exited".into(),
                started_at: 1_700_000_000,
                version: "1".into(),
                container_id: "abc123".into(),
                restart_count: 3,
            }],
            routes: vec![proto::RouteInfo {
                component: "api".into(),
                name: "https".into(),
                port: 443,
                mode: "l7".into(),
                hostname: "web.example".into(),
                public: true,
                host_port: 10443,
            }],
            node: "rift".into(),
            updated_at: 1_700_000_100,
        }
    }

    fn snapshot() -> proto::SnapshotInfo {
        proto::SnapshotInfo {
            service: "web".into(),
            name: "20261125T153000.123Z".into(),
            created_at: 1_700_000_200,
            sha256: "ff00".into(),
            size: 4096,
            node: "rift".into(),
            path: "/srv/mcp/snapshots/web/x.tar.zst".into(),
        }
    }

    #[test]
    fn steps_and_services() {
        let (s, svc) = (step(), service());
        let (c, r) = (&svc.components[0], &svc.routes[0]);
        assert_eq!(
            to_json(Step::from(s.clone())),
            json!({
                "step": s.step, "success": s.success, "skipped": s.skipped,
                "detail": s.detail, "error": s.error, "duration_ms": s.duration_ms,
            })
        );
        assert_eq!(
            to_json(Service::from(svc.clone())),
            json!({
                "name": svc.name, "node": svc.node, "active": svc.active, "updated_at": svc.updated_at,
                "components": [json!({
                    "name": c.name, "container": c.container, "image": c.image, "version": c.version,
                    "desired_state": c.desired_state, "state": c.observed_state, "started_at": c.started_at,
                    "container_id": c.container_id, "restart_count": c.restart_count,
                })],
                "routes": [json!({
                    "component": r.component, "name": r.name, "port": r.port, "mode": r.mode,
                    "hostname": r.hostname, "public": r.public, "host_port": r.host_port,
                })],
            })
        );
        let e = proto::Event {
            time: 1_700_000_000_123,
            service: "web".into(),
            component: "api".into(),
            kind: "restart".into(),
            message: "exited 1".into(),
        };
        assert_eq!(
            to_json(Event::from(e.clone())),
            json!({"time_ms": e.time, "component": e.component, "kind": e.kind, "message": e.message})
        );
    }

    #[test]
    fn operations_keep_steps_service_and_warnings() {
        let op = Operation::from(proto::OperationResponse {
            steps: vec![step()],
            service: Some(service()),
            changed: true,
            warnings: vec!["slow pull".into()],
        });
        assert_eq!(op.steps, [Step::from(step())]);
        assert_eq!(op.service, Some(Service::from(service())));
        assert!(op.changed);
        assert_eq!(op.warnings, ["slow pull"]);
        let placed = Placed::from(proto::FleetOperationResponse {
            node: "rift".into(),
            result: None,
            placement: "pinned".into(),
        });
        assert_eq!(
            (placed.node.as_str(), placed.placement.as_str(), placed.result),
            ("rift", "pinned", None)
        );
    }

    #[test]
    fn fleet_listing_splits_answers_from_errors() {
        let listing = Listing::from(proto::FleetServices {
            nodes: vec![
                proto::NodeServices {
                    node: "rift".into(),
                    error: String::new(),
                    services: vec![service()],
                },
                proto::NodeServices {
                    node: "calypso".into(),
                    error: "unreachable".into(),
                    services: vec![],
                },
            ],
            missing: vec!["db".into()],
            orphans: vec!["calypso/old".into()],
        });
        assert_eq!(listing.nodes[0].services, Ok(vec![Service::from(service())]));
        assert_eq!(listing.nodes[1].services, Err("unreachable".to_string()));
        assert_eq!(
            (listing.missing, listing.orphans),
            (vec!["db".into()], vec!["calypso/old".into()])
        );
    }

    #[test]
    fn node_answers() {
        let s = proto::NodeStatusResponse {
            name: "rift".into(),
            version: "0.1.0".into(),
            git_commit: "abc".into(),
            arch: "amd64".into(),
            uptime_seconds: 99,
            podman_version: "5.4".into(),
            services: 2,
            containers: 3,
            containers_running: 1,
            cpus: 4,
            load1: 0.5,
            memory_total_bytes: 10,
            memory_available_bytes: 5,
            disk_total_bytes: 20,
            disk_available_bytes: 7,
            cgroup_version: 2,
            limits_enforced: true,
            address: "10.0.0.1:9444".into(),
            boot: vec![proto::BootStageStatus {
                name: "core".into(),
                state: "healthy".into(),
                detail: "ok".into(),
                services: vec!["dns".into()],
            }],
            monitor_last_run: 1_700_000_000,
            drifted: 1,
        };
        let b = &s.boot[0];
        // Direct `mcp node list` adds name, address and status to these.
        assert_eq!(
            to_json(NodeStatus::from(s.clone())),
            json!({
                "version": s.version, "commit": s.git_commit, "arch": s.arch,
                "uptime_seconds": s.uptime_seconds, "podman": s.podman_version,
                "services": s.services, "containers": s.containers, "containers_running": s.containers_running,
                "cpus": s.cpus, "load1": s.load1,
                "memory_total_bytes": s.memory_total_bytes, "memory_available_bytes": s.memory_available_bytes,
                "disk_total_bytes": s.disk_total_bytes, "disk_available_bytes": s.disk_available_bytes,
                "cgroup_version": s.cgroup_version, "limits_enforced": s.limits_enforced,
                "boot": [json!({"stage": b.name, "state": b.state, "detail": b.detail, "services": b.services})],
                "monitor_last_run": s.monitor_last_run, "drifted": s.drifted,
            })
        );
        let n = proto::NodeInfo {
            name: "rift".into(),
            role: "worker".into(),
            address: "10.0.0.1:9444".into(),
            arch: "arm64".into(),
            version: "0.1.0".into(),
            status: "healthy".into(),
            last_seen: 1_700_000_000,
            containers: 3,
            cpu_load: 0.25,
            memory_total_bytes: 10,
            memory_available_bytes: 5,
            disk_total_bytes: 20,
            disk_available_bytes: 7,
            cpus: 4,
            status_reason: "heartbeat late".into(),
        };
        assert_eq!(
            to_json(FleetNode::from(n.clone())),
            json!({"name": n.name, "address": n.address, "version": n.version, "status": n.status,
                   "status_reason": n.status_reason, "role": n.role, "arch": n.arch, "last_seen": n.last_seen,
                   "containers": n.containers, "cpus": n.cpus, "cpu_load": n.cpu_load,
                   "memory_total_bytes": n.memory_total_bytes, "memory_available_bytes": n.memory_available_bytes,
                   "disk_total_bytes": n.disk_total_bytes, "disk_available_bytes": n.disk_available_bytes})
        );
        let t = proto::AddNodeResponse {
            name: "hyperborea".into(),
            token: "mcpjoin1.x".into(),
            expires_at: 1_700_003_600,
        };
        assert_eq!(
            to_json(JoinToken::from(t.clone())),
            json!({"node": t.name, "token": t.token, "expires_at": t.expires_at})
        );
    }

    #[test]
    fn dns_routes_edges_and_sync() {
        let d = proto::DnsRecord {
            name: "web.svc.mcp".into(),
            r#type: "A".into(),
            value: "10.0.0.1".into(),
            ttl: 30,
            node: "rift".into(),
            service: "web".into(),
        };
        let zone = proto::ListDnsRecordsResponse {
            zone: "svc.mcp".into(),
            records: vec![d.clone()],
            listen: vec!["10.0.0.1:53".into()],
        };
        assert_eq!(
            to_json(DnsZone::from(zone.clone())),
            json!({"zone": zone.zone, "listen": zone.listen, "records": [json!({
                "name": d.name, "type": d.r#type, "value": d.value, "ttl": d.ttl, "node": d.node, "service": d.service,
            })]})
        );
        let r = proto::ProxyRouteInfo {
            service: "web".into(),
            listener_port: 443,
            listener: "0.0.0.0:443".into(),
            hostname: "web.example".into(),
            mode: "l7".into(),
            backend: "127.0.0.1:10443".into(),
            backend_tls: true,
            cert: "/srv/mcp/certs/web.pem".into(),
        };
        let n = proto::NodeRoutes {
            node: "rift".into(),
            error: "partly".into(),
            routes: vec![r.clone()],
        };
        assert_eq!(
            to_json(NodeRoutes::from(n.clone())),
            json!({"node": n.node, "error": n.error, "routes": [json!({
                "service": r.service, "listener_port": r.listener_port, "listener": r.listener,
                "hostname": r.hostname, "mode": r.mode, "backend": r.backend, "backend_tls": r.backend_tls,
                "cert": r.cert})]})
        );
        let e = proto::EdgeRouteInfo {
            hostname: "web.example".into(),
            service: "web".into(),
            edge_node: "edge1".into(),
            backend_hostname: "web.svc.mcp".into(),
            backend_port: 443,
            cert_serial: "0a".into(),
            cert_expires_at: 1_800_000_000,
            state: "ok".into(),
        };
        assert_eq!(
            to_json(EdgeRoute::from(e.clone())),
            json!({"hostname": e.hostname, "service": e.service, "edge_node": e.edge_node,
                   "backend_hostname": e.backend_hostname, "backend_port": e.backend_port,
                   "cert_serial": e.cert_serial, "cert_expires_at": e.cert_expires_at, "state": e.state})
        );
        let a = proto::SyncAction {
            service: "web".into(),
            action: "redeploy".into(),
            node: "rift".into(),
            changed: vec!["tier".into()],
            success: false,
            error: "pull failed".into(),
        };
        let sync = proto::SyncResponse {
            actions: vec![a.clone()],
            dry_run: true,
        };
        assert_eq!(
            to_json(SyncReport::from(sync)),
            json!({"dry_run": true, "actions": [json!({"service": a.service, "action": a.action, "node": a.node,
                   "changed": a.changed, "success": a.success, "error": a.error})]})
        );
    }

    #[test]
    fn recovery_render_and_snapshots() {
        let s = proto::RecoveredService {
            service: "web".into(),
            stage: "core".into(),
            success: true,
            detail: "started".into(),
            duration_ms: 900,
        };
        let r = proto::RecoverResponse {
            node: "rift".into(),
            services: vec![s.clone()],
            duration_ms: 1000,
            created: 2,
            started: 3,
        };
        // `mcp agent recover` adds node and error to these.
        assert_eq!(
            to_json(Recovery::from(r.clone())),
            json!({"duration_ms": r.duration_ms, "created": r.created, "started": r.started,
                   "services": [json!({"service": s.service, "stage": s.stage, "success": s.success,
                                       "detail": s.detail, "duration_ms": s.duration_ms})]})
        );
        let down = NodeRecovery::from(proto::NodeRecovery {
            node: "calypso".into(),
            error: "unreachable".into(),
            result: None,
        });
        assert_eq!(
            (down.node.as_str(), down.error.as_str(), down.result),
            ("calypso", "unreachable", None)
        );
        let render = proto::RenderResponse {
            service: "web".into(),
            commands: vec!["podman run web".into()],
        };
        assert_eq!(
            to_json(Rendered::from(render.clone())),
            json!({"service": render.service, "commands": render.commands})
        );
        let snap = snapshot();
        let snap_json = json!({
            "service": snap.service, "name": snap.name, "created_at": snap.created_at, "node": snap.node,
            "size": snap.size, "sha256": snap.sha256, "path": snap.path,
        });
        let taken = proto::CreateSnapshotResponse {
            snapshot: Some(snap.clone()),
            pruned: vec!["old".into()],
            warnings: vec!["big".into()],
        };
        assert_eq!(
            to_json(SnapshotTaken::from(taken)),
            json!({"snapshot": snap_json, "pruned": ["old"], "warnings": ["big"]})
        );
        // An absent snapshot prints as the empty one, as before.
        let restored = Restored::from(proto::RestoreSnapshotResponse {
            snapshot: None,
            node: "rift".into(),
            steps: vec![step()],
        });
        assert_eq!(restored.snapshot, Snapshot::default());
        assert_eq!(restored.steps, [Step::from(step())]);
    }

    #[test]
    fn requests_carry_what_was_asked() {
        let def = mcp_model::service::parse(
            "web.toml",
            "name = \"web\"\nnode = \"rift\"\n[[components]]\nname = \"api\"\nimage = \"registry/web:1\"\n",
        )
        .expect("a valid definition");
        let req = deploy_request(&def, Some("api"), "r1");
        let spec = req.service.as_ref().expect("the definition is sent");
        assert_eq!(ServiceDef::from(spec), def);
        assert_eq!((req.component.as_str(), req.request_id.as_str()), ("api", "r1"));
        let whole = service_request("web", None, "");
        assert_eq!((whole.name.as_str(), whole.component.as_str()), ("web", ""));
        let sync = sync_request(std::slice::from_ref(&def), true, "r2");
        assert_eq!(sync.services.len(), 1);
        assert_eq!(ServiceDef::from(&sync.services[0]), def);
        let logs = logs_request(&LogsQuery {
            service: "web".into(),
            component: None,
            follow: true,
            tail: 10,
        });
        assert_eq!((logs.component.as_str(), logs.follow, logs.tail), ("", true, 10));
    }
}
