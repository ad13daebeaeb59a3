//! The agent's one conversion between its domain types and the `mcp.v1`
//! wire types; only the gRPC edge (`rpc`) calls it.

use mcp_model::service::{self, ServiceDef};
use mcp_proto as proto;

use crate::boot::{Report, StageStatus};
use crate::outcome::{Outcome, ServiceView};
use crate::platform::ProxyRoute;
use crate::registry::{EdgeRoute, EventRecord};
use crate::snapshot::{ExportItem, ImportHeader};

/// An operation's outcome (and the service after it) as a response.
pub fn response(outcome: Outcome, service: Option<proto::ServiceInfo>) -> proto::OperationResponse {
    proto::OperationResponse {
        steps: outcome
            .steps
            .into_iter()
            .map(|s| proto::StepResult {
                step: s.name.to_string(),
                success: s.success,
                error: s.error,
                detail: s.detail,
                skipped: s.skipped,
                duration_ms: s.duration_ms,
            })
            .collect(),
        service,
        changed: outcome.changed,
        warnings: outcome.warnings,
    }
}

/// A service as the registry records it and the runtime reports it.
pub fn service_info(view: &ServiceView, node: &str) -> proto::ServiceInfo {
    let rec = &view.record;
    proto::ServiceInfo {
        name: rec.def.name.clone(),
        active: rec.def.active,
        node: node.to_string(),
        updated_at: rec.updated_at,
        components: rec
            .components
            .iter()
            .map(|c| {
                let o = view.observed.get(&c.spec.name);
                proto::ComponentInfo {
                    name: c.name.clone(),
                    container: c.spec.name.clone(),
                    image: c.spec.image.clone(),
                    desired_state: c.desired.as_str().to_string(),
                    observed_state: o.map(|o| o.state.clone()).unwrap_or_else(|| "missing".into()),
                    started_at: o.filter(|o| o.running()).map(|o| o.started_at).unwrap_or(0),
                    version: service::image_version(&c.spec.image),
                    container_id: o.map(|o| o.id.clone()).unwrap_or_default(),
                    restart_count: o.map(|o| o.restart_count).unwrap_or(0),
                }
            })
            .collect(),
        routes: rec
            .routes
            .iter()
            .map(|r| proto::RouteInfo {
                component: r.component.clone(),
                name: r.name.clone(),
                port: r.port.into(),
                mode: r.mode.clone(),
                hostname: r.hostname.clone(),
                public: r.public,
                host_port: r.host_port.into(),
            })
            .collect(),
    }
}

/// A recorded event.
pub fn event(e: EventRecord) -> proto::Event {
    proto::Event {
        time: e.time,
        service: e.service,
        component: e.component,
        kind: e.kind,
        message: e.message,
    }
}

/// A route the proxy serves, with the address its listener binds.
pub fn proxy_route((listener, r): (String, ProxyRoute)) -> proto::ProxyRouteInfo {
    proto::ProxyRouteInfo {
        listener,
        service: r.service,
        listener_port: r.listener_port.into(),
        hostname: r.hostname,
        mode: r.mode.as_str().to_string(),
        backend: r.backend,
        backend_tls: r.backend_tls,
        cert: r.cert.map(|p| p.display().to_string()).unwrap_or_default(),
    }
}

/// Boot progress of one stage.
pub fn boot_stage(s: StageStatus) -> proto::BootStageStatus {
    proto::BootStageStatus {
        name: s.name,
        state: s.state,
        detail: s.detail,
        services: s.services,
    }
}

/// What a recovery did.
pub fn recovered(node: &str, report: Report) -> proto::RecoverResponse {
    proto::RecoverResponse {
        node: node.to_string(),
        services: report
            .services
            .into_iter()
            .map(|r| proto::RecoveredService {
                service: r.service,
                stage: r.stage,
                success: r.success,
                detail: r.detail,
                duration_ms: r.duration_ms,
            })
            .collect(),
        duration_ms: report.duration.as_millis() as u64,
        created: report.revived.created,
        started: report.revived.started,
    }
}

/// An edge route as the master asks for it.
pub fn edge_route(r: proto::SetupEdgeRouteRequest) -> EdgeRoute {
    EdgeRoute {
        hostname: r.hostname,
        port: r.port,
        service: r.service,
        backend_hostname: r.backend_hostname,
        backend_port: r.backend_port,
        backend_address: r.backend_address,
        backend_tls: r.backend_tls,
    }
}

/// One item of a data export as a stream message.
pub fn data_chunk(item: ExportItem) -> proto::DataChunk {
    match item {
        ExportItem::Data(data) => proto::DataChunk {
            data,
            ..Default::default()
        },
        ExportItem::Done { sha256, size, warnings } => proto::DataChunk {
            data: Vec::new(),
            done: true,
            sha256,
            size,
            warnings,
        },
    }
}

/// The header of a data import; the definition is required.
pub fn import_header(h: proto::ImportHeader) -> Result<ImportHeader, String> {
    let spec = h.service.as_ref().ok_or("import header has no service definition")?;
    Ok(ImportHeader {
        def: ServiceDef::from(spec),
        force: h.force,
        sha256: h.sha256,
        size: h.size,
    })
}
