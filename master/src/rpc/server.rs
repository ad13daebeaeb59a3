//! Both gRPC services of the master. Each handler takes the caller from
//! the request extensions (set by `AuthzLayer`), converts the request,
//! calls one subsystem function and converts the answer back; errors become
//! statuses in one place, `From<FleetError> for Status`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mcp_model::identity::Identity;
use mcp_model::service::ServiceDef;
use mcp_proto as proto;
use mcp_proto::mcp_master_service_server::McpMasterService;
use mcp_proto::mcp_registration_service_server::McpRegistrationService;
use tonic::{Request, Response, Status};

use super::convert::{Done, HeartbeatEvery, List, agent_status};
use crate::agents::Operation;
use crate::error::FleetError;
use crate::fleet::Fleet;
use crate::{admission, certs, deploy, edge, fanout, migrate, snapshots, sync, zone};

/// A handler's answer.
type Reply<T> = Result<Response<T>, Status>;

/// The one mapping of master errors to statuses. An agent's error keeps
/// its code and details (the CLI prints the steps they carry).
impl From<FleetError> for Status {
    fn from(e: FleetError) -> Status {
        let msg = e.to_string();
        match e {
            FleetError::Invalid(_) => Status::invalid_argument(msg),
            FleetError::NotFound(_) => Status::not_found(msg),
            FleetError::Precondition(_) => Status::failed_precondition(msg),
            FleetError::Busy(_) => Status::aborted(msg),
            FleetError::Unauthenticated(_) => Status::unauthenticated(msg),
            FleetError::Denied(_) => Status::permission_denied(msg),
            FleetError::Exhausted(_) => Status::resource_exhausted(msg),
            FleetError::Agent { error, .. } => agent_status(&error, msg),
            FleetError::Unreachable { .. } => Status::unavailable(msg),
            FleetError::Db(_) | FleetError::Internal(_) => Status::internal(msg),
        }
    }
}

/// The answer `r` converted to its message, or its error as a status.
fn reply<D, T: From<D>>(r: Result<D, FleetError>) -> Reply<T> {
    r.map(|d| Response::new(d.into())).map_err(Status::from)
}

/// Who called, for the logs.
fn caller<T>(req: &Request<T>) -> String {
    mcp_infra::tls::caller(req).map(|i| i.to_string()).unwrap_or_default()
}

/// The node of an agent caller (the authz layer already checked the
/// `mcp-node` metadata against the certificate).
fn agent_node<T>(req: &Request<T>) -> Result<String, Status> {
    match mcp_infra::tls::caller(req) {
        Some(Identity::Agent(n)) => Ok(n.clone()),
        other => Err(Status::permission_denied(format!("{other:?} is not an agent"))),
    }
}

/// An agent's request: its node and the request as a domain type.
fn from_agent<T, D: From<T>>(req: Request<T>) -> Result<(String, D), Status> {
    let node = agent_node(&req)?;
    Ok((node, req.into_inner().into()))
}

/// The CLI-facing service.
pub struct MasterService {
    fleet: Arc<Fleet>,
}

impl MasterService {
    /// Serves `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        MasterService { fleet }
    }

    /// Stop, start or restart, logged with the caller.
    async fn operate(
        &self,
        req: Request<proto::ServiceRequest>,
        op: Operation,
    ) -> Reply<proto::FleetOperationResponse> {
        tracing::info!(service = %req.get_ref().name, caller = %caller(&req), "{}", op.as_str());
        reply(deploy::operate(&self.fleet, op, req.into_inner().into()).await)
    }
}

/// The container output of a service, as relayed.
type LogChunks = Pin<Box<dyn Stream<Item = Result<proto::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl McpMasterService for MasterService {
    async fn deploy(&self, req: Request<proto::DeployRequest>) -> Reply<proto::FleetOperationResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        let spec = r
            .service
            .ok_or_else(|| Status::invalid_argument("deploy request has no service"))?;
        let def = ServiceDef::from(&spec);
        tracing::info!(service = %def.name, caller = %who, request_id = %r.request_id, "deploy");
        reply(deploy::deploy(&self.fleet, def, r.component, r.request_id).await)
    }

    async fn undeploy_service(&self, req: Request<proto::ServiceRequest>) -> Reply<proto::FleetOperationResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(service = %r.name, caller = %who, request_id = %r.request_id, "undeploy");
        reply(deploy::undeploy(&self.fleet, r.into()).await)
    }

    async fn stop_service(&self, req: Request<proto::ServiceRequest>) -> Reply<proto::FleetOperationResponse> {
        self.operate(req, Operation::Stop).await
    }

    async fn start_service(&self, req: Request<proto::ServiceRequest>) -> Reply<proto::FleetOperationResponse> {
        self.operate(req, Operation::Start).await
    }

    async fn restart_service(&self, req: Request<proto::ServiceRequest>) -> Reply<proto::FleetOperationResponse> {
        self.operate(req, Operation::Restart).await
    }

    async fn get_service_status(&self, req: Request<proto::ServiceRequest>) -> Reply<proto::FleetServiceStatus> {
        let (node, status) = deploy::status(&self.fleet, &req.into_inner().name).await?;
        Ok(Response::new(proto::FleetServiceStatus {
            node,
            status: Some(status.into()),
        }))
    }

    async fn list_services(&self, _req: Request<proto::ListServicesRequest>) -> Reply<proto::FleetServices> {
        reply(fanout::list(&self.fleet).await)
    }

    type LogsStream = LogChunks;

    async fn logs(&self, req: Request<proto::LogsRequest>) -> Reply<Self::LogsStream> {
        let stream = deploy::logs(&self.fleet, req.into_inner().into()).await?;
        let relayed = stream.map(|m| m.map(Into::into).map_err(|e| agent_status(&e, e.message.clone())));
        Ok(Response::new(Box::pin(relayed)))
    }

    async fn sync(&self, req: Request<proto::SyncRequest>) -> Reply<proto::SyncResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(caller = %who, services = r.services.len(), dry_run = r.dry_run, request_id = %r.request_id, "sync");
        let defs = r.services.iter().map(ServiceDef::from).collect();
        let rows = sync::sync(&self.fleet, defs, r.dry_run, &r.request_id).await?;
        Ok(Response::new(proto::SyncResponse {
            actions: rows.into_iter().map(Into::into).collect(),
            dry_run: r.dry_run,
        }))
    }

    async fn list_nodes(&self, _req: Request<proto::ListNodesRequest>) -> Reply<proto::ListNodesResponse> {
        reply(Ok(List(self.fleet.nodes.all())))
    }

    async fn add_node(&self, req: Request<proto::AddNodeRequest>) -> Reply<proto::AddNodeResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(node = %r.name, caller = %who, "add node");
        let (token, expires_at) = admission::add_node(&self.fleet, &r.name, r.ttl_seconds)?;
        Ok(Response::new(proto::AddNodeResponse {
            name: r.name,
            token: token.to_string(),
            expires_at,
        }))
    }

    async fn recover_node(&self, req: Request<proto::RecoverNodeRequest>) -> Reply<proto::RecoverNodeResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(node = %r.node, caller = %who, request_id = %r.request_id, "recover");
        reply(fanout::recover(&self.fleet, &r.node).await.map(List))
    }

    async fn render_service(&self, req: Request<proto::ServiceRequest>) -> Reply<proto::RenderResponse> {
        reply(deploy::render(&self.fleet, &req.into_inner().name).await)
    }

    async fn list_dns_records(
        &self,
        _req: Request<proto::ListDnsRecordsRequest>,
    ) -> Reply<proto::ListDnsRecordsResponse> {
        let records = zone::records(&self.fleet)?;
        Ok(Response::new(proto::ListDnsRecordsResponse {
            zone: self.fleet.zone().to_string(),
            records: records.into_iter().map(Into::into).collect(),
            listen: self.fleet.cfg.dns.listen.iter().map(|a| a.to_string()).collect(),
        }))
    }

    async fn list_routes(&self, _req: Request<proto::ListProxyRoutesRequest>) -> Reply<proto::FleetRoutes> {
        reply(Ok(List(fanout::routes(&self.fleet).await)))
    }

    async fn list_edge_routes(
        &self,
        _req: Request<proto::ListEdgeRoutesRequest>,
    ) -> Reply<proto::ListEdgeRoutesResponse> {
        reply(edge::edge_routes(&self.fleet).await.map(List))
    }

    async fn create_snapshot(&self, r: Request<proto::CreateSnapshotRequest>) -> Reply<proto::CreateSnapshotResponse> {
        let (who, r) = (caller(&r), r.into_inner());
        tracing::info!(service = %r.service, caller = %who, request_id = %r.request_id, "snapshot");
        reply(snapshots::create(&self.fleet, &r.service, &r.request_id).await)
    }

    async fn list_snapshots(&self, req: Request<proto::ListSnapshotsRequest>) -> Reply<proto::ListSnapshotsResponse> {
        reply(snapshots::list(&self.fleet, &req.into_inner().service).map(List))
    }

    async fn restore_snapshot(
        &self,
        req: Request<proto::RestoreSnapshotRequest>,
    ) -> Reply<proto::RestoreSnapshotResponse> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(service = %r.service, at = %r.at, caller = %who, request_id = %r.request_id, "restore snapshot");
        reply(snapshots::restore(&self.fleet, &r.service, &r.at, &r.request_id).await)
    }

    async fn migrate_service(
        &self,
        req: Request<proto::MigrateServiceRequest>,
    ) -> Reply<proto::MigrateServiceResponse> {
        let who = caller(&req);
        let order = migrate::MigrateOrder::from(req.into_inner());
        let o = &order;
        tracing::info!(service = %o.service, to = %o.to, all = o.all, from = %o.from, force = o.force, caller = %who, request_id = %o.request_id, "migrate");
        reply(migrate::migrate(&self.fleet, o).await.map(List))
    }
}

/// The agent-facing service.
pub struct RegistrationService {
    fleet: Arc<Fleet>,
}

impl RegistrationService {
    /// Serves `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        RegistrationService { fleet }
    }
}

#[tonic::async_trait]
impl McpRegistrationService for RegistrationService {
    async fn join(&self, req: Request<proto::JoinRequest>) -> Reply<proto::JoinResponse> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        let result = admission::join(&self.fleet, &r.name, &r.token, &r.csr_pem);
        if let Err(e) = &result {
            // The token itself is never logged.
            tracing::warn!(node = %r.name, %peer, error = %e, "join refused");
        }
        let (cert_chain_pem, ca_pem) = result?;
        Ok(Response::new(proto::JoinResponse { cert_chain_pem, ca_pem }))
    }

    async fn register(&self, req: Request<proto::RegisterRequest>) -> Reply<proto::RegisterResponse> {
        let (node, registration) = from_agent(req)?;
        reply(admission::register(&self.fleet, &node, &registration).map(HeartbeatEvery))
    }

    async fn heartbeat(&self, req: Request<proto::HeartbeatRequest>) -> Reply<proto::HeartbeatResponse> {
        let (node, heartbeat) = from_agent(req)?;
        reply(admission::heartbeat(&self.fleet, &node, &heartbeat).map(|()| Done))
    }

    async fn issue_certificate(
        &self,
        req: Request<proto::IssueCertificateRequest>,
    ) -> Reply<proto::IssueCertificateResponse> {
        let node = agent_node(&req)?;
        let r = req.into_inner();
        if r.name != node {
            return Err(Status::permission_denied(format!(
                "agent-{node} may not ask for a certificate of {:?}",
                r.name
            )));
        }
        let cert_chain_pem = admission::renew_agent_certificate(&self.fleet, &node, &r.csr_pem)?;
        tracing::info!(%node, "certificate renewed");
        Ok(Response::new(proto::IssueCertificateResponse { cert_chain_pem }))
    }

    async fn issue_service_certificate(
        &self,
        req: Request<proto::IssueServiceCertificateRequest>,
    ) -> Reply<proto::IssueCertificateResponse> {
        let (node, asked) = from_agent(req)?;
        let cert_chain_pem = certs::issue_service_certificate(&self.fleet, &node, &asked)?;
        Ok(Response::new(proto::IssueCertificateResponse { cert_chain_pem }))
    }

    async fn register_dns_record(&self, req: Request<proto::DnsRecordRequest>) -> Reply<proto::DnsRecordResponse> {
        let (node, record) = from_agent(req)?;
        reply(zone::register(&self.fleet, &node, &record).map(|()| Done))
    }

    async fn remove_dns_record(&self, req: Request<proto::DnsRecordRequest>) -> Reply<proto::DnsRecordResponse> {
        let (node, record) = from_agent(req)?;
        reply(zone::remove(&self.fleet, &node, &record).map(|()| Done))
    }
}
