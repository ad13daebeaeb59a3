//! The master's one conversion module: mcp.v1 messages ⇄ the master's
//! domain types, both for what agents answer and for what the master
//! answers the CLI. Service definitions go through `mcp_proto::convert`.

use mcp_proto as proto;
use prost::Message;
use tonic::{Code, Status};

use crate::admission::{Heartbeat, Registration};
use crate::agents::{EdgeRouteOrder, LogsQuery, ServiceOrder};
use crate::certs::ServiceCertRequest;
use crate::db::{DnsRow, NodeLoad, NodeRow, SnapshotRow};
use crate::deploy::FleetOperation;
use crate::edge::EdgeRouteState;
use crate::fanout::{FleetServices, PerNode};
use crate::migrate::{MigrateOrder, Migration};
use crate::reports::{
    AgentError, ComponentInfo, DataChunk, EdgeCert, ErrorCode, Event, ImportReport, LogChunk, OperationReport,
    ProxyRoute, ProxyRoutes, RecoveredService, Recovery, Rendered, RouteInfo, ServiceInfo, ServiceStatus, Step,
};
use crate::snapshots::{Restored, SnapshotTaken};
use crate::sync::SyncRow;
use crate::zone::RecordRequest;

/// `From<$from> for $to`: fields of the same name; plain ones move, `each`
/// ones convert element by element, `opt` ones inside their `Option`, and
/// `some` ones into an `Option` that is always set. Every field is named,
/// so a field added to either side fails to compile until it is converted.
macro_rules! convert {
    ($from:ty => $to:ty {
        $($f:ident),* $(; each $($v:ident),*)? $(; opt $($o:ident),*)? $(; some $($s:ident),*)?
    }) => {
        impl From<$from> for $to {
            fn from(x: $from) -> $to {
                Self {
                    $($f: x.$f,)*
                    $($($v: x.$v.into_iter().map(Into::into).collect(),)*)?
                    $($($o: x.$o.map(Into::into),)*)?
                    $($($s: Some(x.$s.into()),)*)?
                }
            }
        }
    };
}

/// [`convert!`] both ways, for what the master relays unchanged.
macro_rules! mirror {
    ($domain:ty, $wire:ty { $($t:tt)* }) => {
        convert!($wire => $domain { $($t)* });
        convert!($domain => $wire { $($t)* });
    };
}

// What agents report, relayed to the CLI as it came.
mirror!(
    Step,
    proto::StepResult {
        step,
        success,
        error,
        detail,
        skipped,
        duration_ms
    }
);
mirror!(OperationReport, proto::OperationResponse { changed, warnings; each steps; opt service });
mirror!(ServiceInfo, proto::ServiceInfo { name, active, node, updated_at; each components, routes });
mirror!(
    ComponentInfo,
    proto::ComponentInfo {
        name,
        container,
        image,
        desired_state,
        observed_state,
        started_at,
        version,
        container_id,
        restart_count
    }
);
mirror!(
    RouteInfo,
    proto::RouteInfo {
        component,
        name,
        port,
        mode,
        hostname,
        public,
        host_port
    }
);
mirror!(
    Event,
    proto::Event {
        time,
        service,
        component,
        kind,
        message
    }
);
mirror!(ServiceStatus, proto::ServiceStatus { ; each events; opt service });
mirror!(
    ProxyRoute,
    proto::ProxyRouteInfo {
        service,
        listener_port,
        listener,
        hostname,
        mode,
        backend,
        backend_tls,
        cert
    }
);
mirror!(ProxyRoutes, proto::ListProxyRoutesResponse { node, backend; each routes });
mirror!(Recovery, proto::RecoverResponse { node, duration_ms, created, started; each services });
mirror!(
    RecoveredService,
    proto::RecoveredService {
        service,
        stage,
        success,
        detail,
        duration_ms
    }
);
mirror!(Rendered, proto::RenderResponse { service, commands });
mirror!(
    LogChunk,
    proto::LogChunk {
        component,
        data,
        stderr
    }
);
mirror!(
    ServiceOrder,
    proto::ServiceRequest {
        name,
        component,
        request_id
    }
);
mirror!(
    LogsQuery,
    proto::LogsRequest {
        service,
        component,
        follow,
        tail
    }
);
convert!(proto::DataChunk => DataChunk { data, done, sha256, size, warnings });
convert!(proto::ImportServiceDataResponse => ImportReport { bytes, entries, volumes });
convert!(proto::EdgeRouteResponse => EdgeCert { cert_serial, cert_expires_at });
convert!(SyncRow => proto::SyncAction { service, action, node, changed, success, error });

impl From<&EdgeRouteOrder> for proto::SetupEdgeRouteRequest {
    fn from(o: &EdgeRouteOrder) -> Self {
        proto::SetupEdgeRouteRequest {
            hostname: o.hostname.clone(),
            backend_hostname: o.backend_hostname.clone(),
            backend_port: o.backend_port.into(),
            backend_tls: o.backend_tls,
            service: o.service.clone(),
            port: o.port.into(),
            backend_address: o.backend_address.clone(),
        }
    }
}

/// gRPC status codes and their domain names.
const CODES: [(Code, ErrorCode); 16] = [
    (Code::Cancelled, ErrorCode::Cancelled),
    (Code::Unknown, ErrorCode::Unknown),
    (Code::InvalidArgument, ErrorCode::InvalidArgument),
    (Code::DeadlineExceeded, ErrorCode::DeadlineExceeded),
    (Code::NotFound, ErrorCode::NotFound),
    (Code::AlreadyExists, ErrorCode::AlreadyExists),
    (Code::PermissionDenied, ErrorCode::PermissionDenied),
    (Code::ResourceExhausted, ErrorCode::ResourceExhausted),
    (Code::FailedPrecondition, ErrorCode::FailedPrecondition),
    (Code::Aborted, ErrorCode::Aborted),
    (Code::OutOfRange, ErrorCode::OutOfRange),
    (Code::Unimplemented, ErrorCode::Unimplemented),
    (Code::Internal, ErrorCode::Internal),
    (Code::Unavailable, ErrorCode::Unavailable),
    (Code::DataLoss, ErrorCode::DataLoss),
    (Code::Unauthenticated, ErrorCode::Unauthenticated),
];

/// The domain name of a status code (`Ok` as an error reads as `Unknown`).
pub fn error_code(code: Code) -> ErrorCode {
    CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(ErrorCode::Unknown, |(_, e)| *e)
}

/// The status code of a domain error code.
pub fn grpc_code(code: ErrorCode) -> Code {
    CODES
        .iter()
        .find(|(_, e)| *e == code)
        .map_or(Code::Unknown, |(c, _)| *c)
}

/// An agent's error answer: its details kept as they came, and the steps
/// they carry (a failed pipeline's) decoded for the metrics.
pub fn agent_error(status: &Status) -> AgentError {
    let steps = proto::OperationResponse::decode(status.details())
        .map(|o| o.steps.into_iter().map(Step::from).collect())
        .unwrap_or_default();
    AgentError {
        code: error_code(status.code()),
        message: status.message().to_string(),
        steps,
        details: status.details().to_vec(),
    }
}

/// The status an agent's error goes back to the caller as, with `message`.
pub fn agent_status(error: &AgentError, message: String) -> Status {
    Status::with_details(grpc_code(error.code), message, error.details.clone().into())
}

// What the master answers the CLI.

impl From<FleetOperation> for proto::FleetOperationResponse {
    fn from(op: FleetOperation) -> Self {
        proto::FleetOperationResponse {
            node: op.node,
            result: Some(op.report.into()),
            placement: op.placement,
        }
    }
}

impl From<NodeRow> for proto::NodeInfo {
    fn from(n: NodeRow) -> Self {
        proto::NodeInfo {
            name: n.name,
            role: n.role,
            address: n.address,
            arch: n.arch,
            version: n.version,
            status: if n.healthy { "healthy" } else { "unhealthy" }.into(),
            last_seen: n.last_seen,
            containers: n.load.containers,
            cpu_load: n.load.cpu_load,
            memory_total_bytes: n.load.memory_total,
            memory_available_bytes: n.load.memory_available,
            disk_total_bytes: n.load.disk_total,
            disk_available_bytes: n.load.disk_available,
            cpus: n.cpus,
            status_reason: n.status_reason,
        }
    }
}

impl From<DnsRow> for proto::DnsRecord {
    fn from(r: DnsRow) -> Self {
        proto::DnsRecord {
            name: r.name,
            r#type: r.kind,
            value: r.value,
            ttl: r.ttl,
            node: r.node,
            service: r.service,
        }
    }
}

impl From<SnapshotRow> for proto::SnapshotInfo {
    fn from(r: SnapshotRow) -> Self {
        proto::SnapshotInfo {
            service: r.service,
            name: r.name,
            created_at: r.created_at,
            sha256: r.sha256,
            size: r.size,
            node: r.node,
            path: r.path,
        }
    }
}

convert!(SnapshotTaken => proto::CreateSnapshotResponse { pruned, warnings; some snapshot });
convert!(Restored => proto::RestoreSnapshotResponse { node; each steps; some snapshot });

convert!(Migration => proto::MigrationResult { service, from, to, success, error; each steps; opt snapshot });

impl From<EdgeRouteState> for proto::EdgeRouteInfo {
    fn from(e: EdgeRouteState) -> Self {
        let r = e.route;
        proto::EdgeRouteInfo {
            hostname: r.hostname,
            service: r.service,
            edge_node: r.edge_node,
            backend_hostname: r.backend_hostname,
            backend_port: r.backend_port.into(),
            cert_serial: r.cert_serial,
            cert_expires_at: r.cert_expires_at,
            state: e.state.to_string(),
        }
    }
}

/// A node's answer as the (node, error, value) of the fan-out messages:
/// an empty error on success, no value on failure.
fn split<T>(p: PerNode<T>) -> (String, String, Option<T>) {
    match p.answer {
        Ok(v) => (p.node, String::new(), Some(v)),
        Err(e) => (p.node, e, None),
    }
}

/// The elements of a list that may be missing, converted.
fn list<T: Into<W>, W>(v: Option<Vec<T>>) -> Vec<W> {
    v.into_iter().flatten().map(Into::into).collect()
}

/// `From<PerNode<$t>>` for a fan-out message: node, error, and the value
/// (converted by `$conv`) in `$field`.
macro_rules! per_node {
    ($t:ty => $wire:ty { $field:ident: $conv:expr }) => {
        impl From<PerNode<$t>> for $wire {
            fn from(p: PerNode<$t>) -> Self {
                let (node, error, value) = split(p);
                Self {
                    node,
                    error,
                    $field: $conv(value),
                }
            }
        }
    };
}

per_node!(Vec<ServiceInfo> => proto::NodeServices { services: list });
per_node!(Vec<ProxyRoute> => proto::NodeRoutes { routes: list });
per_node!(Recovery => proto::NodeRecovery { result: |r: Option<Recovery>| r.map(Into::into) });

convert!(FleetServices => proto::FleetServices { missing, orphans; each nodes });

/// An operation that answers nothing but success.
pub struct Done;

impl From<Done> for proto::HeartbeatResponse {
    fn from(Done: Done) -> Self {
        proto::HeartbeatResponse {}
    }
}

impl From<Done> for proto::DnsRecordResponse {
    fn from(Done: Done) -> Self {
        proto::DnsRecordResponse {}
    }
}

/// A registration's answer: seconds between heartbeats.
pub struct HeartbeatEvery(pub u32);

impl From<HeartbeatEvery> for proto::RegisterResponse {
    fn from(HeartbeatEvery(heartbeat_seconds): HeartbeatEvery) -> Self {
        proto::RegisterResponse { heartbeat_seconds }
    }
}

/// A list answered as a message of one repeated field.
pub struct List<T>(pub Vec<T>);

/// `From<List<$t>>` for a message that is one list of `$t`s converted.
macro_rules! list_reply {
    ($t:ty => $wire:ty { $field:ident }) => {
        impl From<List<$t>> for $wire {
            fn from(List(v): List<$t>) -> Self {
                Self {
                    $field: v.into_iter().map(Into::into).collect(),
                }
            }
        }
    };
}

list_reply!(PerNode<Vec<ProxyRoute>> => proto::FleetRoutes { nodes });
list_reply!(PerNode<Recovery> => proto::RecoverNodeResponse { nodes });
list_reply!(EdgeRouteState => proto::ListEdgeRoutesResponse { routes });
list_reply!(SnapshotRow => proto::ListSnapshotsResponse { snapshots });
list_reply!(Migration => proto::MigrateServiceResponse { results });
list_reply!(NodeRow => proto::ListNodesResponse { nodes });

// What agents and operators ask the master.

impl From<proto::RegisterRequest> for Registration {
    fn from(r: proto::RegisterRequest) -> Self {
        Registration {
            node: r.name,
            role: r.role,
            address: r.address,
            arch: r.arch,
            version: r.version,
            cpus: r.cpus,
            memory_total: r.memory_total_bytes,
        }
    }
}

impl From<proto::HeartbeatRequest> for Heartbeat {
    fn from(h: proto::HeartbeatRequest) -> Self {
        Heartbeat {
            node: h.name,
            load: NodeLoad {
                cpu_load: h.cpu_load,
                memory_total: h.memory_total_bytes,
                memory_available: h.memory_available_bytes,
                disk_total: h.disk_total_bytes,
                disk_available: h.disk_available_bytes,
                containers: h.containers,
            },
            cpus: h.cpus,
        }
    }
}

impl From<proto::IssueServiceCertificateRequest> for ServiceCertRequest {
    fn from(r: proto::IssueServiceCertificateRequest) -> Self {
        ServiceCertRequest {
            node: r.name,
            service: r.service,
            hostnames: r.hostnames,
            csr_pem: r.csr_pem,
        }
    }
}

impl From<proto::DnsRecordRequest> for RecordRequest {
    fn from(r: proto::DnsRecordRequest) -> Self {
        RecordRequest {
            node: r.name,
            service: r.service,
            hostname: r.hostname,
            address: r.address,
        }
    }
}

convert!(proto::MigrateServiceRequest => MigrateOrder { service, to, force, request_id, all, from });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_round_trips() {
        for (code, domain) in CODES {
            assert_eq!(error_code(code), domain);
            assert_eq!(grpc_code(domain), code);
        }
        assert_eq!(error_code(Code::Ok), ErrorCode::Unknown, "an error is never ok");
    }

    #[test]
    fn agent_errors_pass_through_unchanged() {
        let failed = proto::OperationResponse {
            steps: vec![proto::StepResult {
                step: "containers".into(),
                error: "pull failed".into(),
                duration_ms: 1200,
                ..Default::default()
            }],
            ..Default::default()
        };
        let details = failed.encode_to_vec();
        let status = Status::with_details(Code::FailedPrecondition, "deploy failed", details.clone().into());
        let e = agent_error(&status);
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert_eq!(e.steps.len(), 1);
        assert_eq!((e.steps[0].step.as_str(), e.steps[0].duration_ms), ("containers", 1200));
        let back = agent_status(&e, "node a: deploy failed".into());
        assert_eq!(back.code(), Code::FailedPrecondition);
        assert_eq!(back.message(), "node a: deploy failed");
        assert_eq!(back.details(), &details[..], "details reach the CLI byte for byte");
        // Details that are no OperationResponse are kept all the same.
        let odd = Status::with_details(Code::Internal, "x", vec![0xff, 0x01].into());
        let e = agent_error(&odd);
        assert!(e.steps.is_empty());
        assert_eq!(agent_status(&e, "x".into()).details(), &[0xff, 0x01]);
    }

    #[test]
    fn fan_out_answers_carry_the_error_or_the_value() {
        let ok = PerNode {
            node: "a".into(),
            answer: Ok(vec![ProxyRoute {
                hostname: "h".into(),
                ..Default::default()
            }]),
        };
        let routes = proto::NodeRoutes::from(ok);
        assert_eq!((routes.error.as_str(), routes.routes.len()), ("", 1));
        let down: PerNode<Recovery> = PerNode {
            node: "b".into(),
            answer: Err("node b is unreachable: x".into()),
        };
        let rec = proto::NodeRecovery::from(down);
        assert_eq!(
            (rec.node.as_str(), rec.error.as_str(), rec.result),
            ("b", "node b is unreachable: x", None)
        );
    }
}
