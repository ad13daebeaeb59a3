//! gRPC edge of the master: the CLI-facing service and the agents'
//! registration service. Parse, take the caller from the request
//! extensions (set by `AuthzLayer`), dispatch to [`Master`], convert back.

use std::sync::Arc;

use mcp_model::identity::Identity;
use mcp_model::service::ServiceDef;
use mcp_proto as proto;
use mcp_proto::mcp_master_service_server::McpMasterService;
use mcp_proto::mcp_registration_service_server::McpRegistrationService;
use tonic::{Request, Response, Status};

use crate::db::NodeRow;
use crate::fleet::{FleetError, Master};

/// The CLI-facing service.
pub struct MasterService {
    master: Arc<Master>,
}

/// The agent-facing service.
pub struct RegistrationService {
    master: Arc<Master>,
}

impl MasterService {
    /// Wraps the master.
    pub fn new(master: Arc<Master>) -> Self {
        MasterService { master }
    }
}

impl RegistrationService {
    /// Wraps the master.
    pub fn new(master: Arc<Master>) -> Self {
        RegistrationService { master }
    }
}

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

fn node_info(n: &NodeRow) -> proto::NodeInfo {
    proto::NodeInfo {
        name: n.name.clone(),
        role: n.role.clone(),
        address: n.address.clone(),
        arch: n.arch.clone(),
        version: n.version.clone(),
        status: if n.healthy {
            "healthy".into()
        } else {
            "unhealthy".into()
        },
        last_seen: n.last_seen,
        containers: n.containers,
        cpu_load: n.cpu_load,
        memory_total_bytes: n.memory_total,
        memory_available_bytes: n.memory_available,
        disk_total_bytes: n.disk_total,
        disk_available_bytes: n.disk_available,
        cpus: n.cpus,
        status_reason: n.status_reason.clone(),
    }
}

fn done<T>(r: Result<T, FleetError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl McpMasterService for MasterService {
    async fn deploy(
        &self,
        req: Request<proto::DeployRequest>,
    ) -> Result<Response<proto::FleetOperationResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let spec = r
            .service
            .ok_or_else(|| Status::invalid_argument("deploy request has no service"))?;
        let def = ServiceDef::from(&spec);
        tracing::info!(service = %def.name, caller = %who, request_id = %r.request_id, "deploy");
        done(self.master.deploy(def, r.component, r.request_id).await)
    }

    async fn undeploy_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::FleetOperationResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(service = %r.name, caller = %who, request_id = %r.request_id, "undeploy");
        done(self.master.undeploy(r).await)
    }

    async fn stop_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::FleetOperationResponse>, Status> {
        tracing::info!(service = %req.get_ref().name, caller = %caller(&req), "stop");
        done(self.master.operate("stop", req.into_inner()).await)
    }

    async fn start_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::FleetOperationResponse>, Status> {
        tracing::info!(service = %req.get_ref().name, caller = %caller(&req), "start");
        done(self.master.operate("start", req.into_inner()).await)
    }

    async fn restart_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::FleetOperationResponse>, Status> {
        tracing::info!(service = %req.get_ref().name, caller = %caller(&req), "restart");
        done(self.master.operate("restart", req.into_inner()).await)
    }

    async fn get_service_status(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::FleetServiceStatus>, Status> {
        done(self.master.status(&req.into_inner().name).await)
    }

    async fn list_services(
        &self,
        _req: Request<proto::ListServicesRequest>,
    ) -> Result<Response<proto::FleetServices>, Status> {
        done(self.master.list().await)
    }

    type LogsStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::LogChunk, Status>> + Send>>;

    async fn logs(&self, req: Request<proto::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let stream = self.master.logs(req.into_inner()).await.map_err(Status::from)?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn sync(&self, req: Request<proto::SyncRequest>) -> Result<Response<proto::SyncResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(caller = %who, services = r.services.len(), dry_run = r.dry_run, request_id = %r.request_id, "sync");
        let actions = self
            .master
            .sync(&r.services, r.dry_run, &r.request_id)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(proto::SyncResponse {
            actions,
            dry_run: r.dry_run,
        }))
    }

    async fn list_nodes(
        &self,
        _req: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        Ok(Response::new(proto::ListNodesResponse {
            nodes: self.master.nodes().iter().map(node_info).collect(),
        }))
    }

    async fn add_node(&self, req: Request<proto::AddNodeRequest>) -> Result<Response<proto::AddNodeResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(node = %r.name, caller = %who, "add node");
        let (token, expires_at) = self.master.add_node(&r.name, r.ttl_seconds).map_err(Status::from)?;
        Ok(Response::new(proto::AddNodeResponse {
            name: r.name,
            token: token.to_string(),
            expires_at,
        }))
    }

    async fn recover_node(
        &self,
        req: Request<proto::RecoverNodeRequest>,
    ) -> Result<Response<proto::RecoverNodeResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(node = %r.node, caller = %who, request_id = %r.request_id, "recover");
        let nodes = self.master.recover(&r.node).await.map_err(Status::from)?;
        Ok(Response::new(proto::RecoverNodeResponse { nodes }))
    }

    async fn render_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::RenderResponse>, Status> {
        done(self.master.render(&req.into_inner().name).await)
    }

    async fn list_dns_records(
        &self,
        _req: Request<proto::ListDnsRecordsRequest>,
    ) -> Result<Response<proto::ListDnsRecordsResponse>, Status> {
        let records = self.master.dns_records().map_err(Status::from)?;
        Ok(Response::new(proto::ListDnsRecordsResponse {
            zone: self.master.zone().to_string(),
            records,
            listen: self.master.cfg.dns.listen.iter().map(|a| a.to_string()).collect(),
        }))
    }

    async fn list_routes(
        &self,
        _req: Request<proto::ListProxyRoutesRequest>,
    ) -> Result<Response<proto::FleetRoutes>, Status> {
        done(self.master.routes().await)
    }

    async fn list_edge_routes(
        &self,
        _req: Request<proto::ListEdgeRoutesRequest>,
    ) -> Result<Response<proto::ListEdgeRoutesResponse>, Status> {
        let routes = self.master.edge_routes().await.map_err(Status::from)?;
        Ok(Response::new(proto::ListEdgeRoutesResponse { routes }))
    }

    async fn create_snapshot(
        &self,
        req: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::CreateSnapshotResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(service = %r.service, caller = %who, request_id = %r.request_id, "snapshot");
        let resp = self.master.create_snapshot(&r.service, &r.request_id).await?;
        Ok(Response::new(resp))
    }

    async fn list_snapshots(
        &self,
        req: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        let snapshots = self.master.list_snapshots(&req.into_inner().service)?;
        Ok(Response::new(proto::ListSnapshotsResponse { snapshots }))
    }

    async fn restore_snapshot(
        &self,
        req: Request<proto::RestoreSnapshotRequest>,
    ) -> Result<Response<proto::RestoreSnapshotResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(service = %r.service, at = %r.at, caller = %who, request_id = %r.request_id, "restore snapshot");
        let resp = self.master.restore_snapshot(&r.service, &r.at, &r.request_id).await?;
        Ok(Response::new(resp))
    }

    async fn migrate_service(
        &self,
        req: Request<proto::MigrateServiceRequest>,
    ) -> Result<Response<proto::MigrateServiceResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        tracing::info!(service = %r.service, to = %r.to, all = r.all, from = %r.from, force = r.force, caller = %who, request_id = %r.request_id, "migrate");
        let resp = self.master.migrate(r).await?;
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl McpRegistrationService for RegistrationService {
    async fn join(&self, req: Request<proto::JoinRequest>) -> Result<Response<proto::JoinResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        let result = self.master.join(&r.name, &r.token, &r.csr_pem);
        if let Err(e) = &result {
            // The token itself is never logged.
            tracing::warn!(node = %r.name, %peer, error = %e, "join refused");
        }
        let (cert_chain_pem, ca_pem) = result.map_err(Status::from)?;
        Ok(Response::new(proto::JoinResponse { cert_chain_pem, ca_pem }))
    }

    async fn register(
        &self,
        req: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let node = agent_node(&req)?;
        let r = req.into_inner();
        let heartbeat_seconds = self.master.register(&node, &r).map_err(Status::from)?;
        Ok(Response::new(proto::RegisterResponse { heartbeat_seconds }))
    }

    async fn heartbeat(
        &self,
        req: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let node = agent_node(&req)?;
        self.master.heartbeat(&node, req.get_ref()).map_err(Status::from)?;
        Ok(Response::new(proto::HeartbeatResponse {}))
    }

    async fn issue_certificate(
        &self,
        req: Request<proto::IssueCertificateRequest>,
    ) -> Result<Response<proto::IssueCertificateResponse>, Status> {
        let node = agent_node(&req)?;
        let r = req.into_inner();
        if r.name != node {
            return Err(Status::permission_denied(format!(
                "agent-{node} may not ask for a certificate of {:?}",
                r.name
            )));
        }
        let cert_chain_pem = self.master.issue_certificate(&node, &r.csr_pem).map_err(Status::from)?;
        tracing::info!(%node, "certificate renewed");
        Ok(Response::new(proto::IssueCertificateResponse { cert_chain_pem }))
    }

    async fn issue_service_certificate(
        &self,
        req: Request<proto::IssueServiceCertificateRequest>,
    ) -> Result<Response<proto::IssueCertificateResponse>, Status> {
        let node = agent_node(&req)?;
        let cert_chain_pem = self
            .master
            .issue_service_certificate(&node, req.get_ref())
            .map_err(Status::from)?;
        Ok(Response::new(proto::IssueCertificateResponse { cert_chain_pem }))
    }

    async fn register_dns_record(
        &self,
        req: Request<proto::DnsRecordRequest>,
    ) -> Result<Response<proto::DnsRecordResponse>, Status> {
        let node = agent_node(&req)?;
        self.master.register_dns(&node, req.get_ref()).map_err(Status::from)?;
        Ok(Response::new(proto::DnsRecordResponse {}))
    }

    async fn remove_dns_record(
        &self,
        req: Request<proto::DnsRecordRequest>,
    ) -> Result<Response<proto::DnsRecordResponse>, Status> {
        let node = agent_node(&req)?;
        self.master.remove_dns(&node, req.get_ref()).map_err(Status::from)?;
        Ok(Response::new(proto::DnsRecordResponse {}))
    }
}
