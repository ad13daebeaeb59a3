//! The agent's gRPC service: converts requests ([`super::convert`]), calls
//! the [`Agent`]'s operations, converts results. Errors map to status
//! codes in exactly one function.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mcp_model::service::ServiceDef;
use mcp_proto::mcp_agent_service_server::{McpAgentService, McpAgentServiceServer};
use mcp_proto::{self as proto, LogChunk};
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert::{self, response, service_info};
use crate::boot::BootState;
use crate::handle::Agent;
use crate::monitor::MonitorState;
use crate::outcome::{OpError, Outcome};
use crate::runtime::RuntimeError;

/// The agent's gRPC service.
pub struct AgentService {
    agent: Arc<Agent>,
    boot: Arc<BootState>,
    monitor: Arc<MonitorState>,
}

impl AgentService {
    /// Serves `agent`, reporting the progress of its boot and monitor.
    pub fn new(agent: Arc<Agent>, boot: Arc<BootState>, monitor: Arc<MonitorState>) -> Self {
        AgentService { agent, boot, monitor }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> McpAgentServiceServer<AgentService> {
        McpAgentServiceServer::new(self)
    }
}

/// The one place agent errors become gRPC statuses. Failed steps travel in
/// the status details as an encoded `OperationResponse`.
fn status(e: OpError) -> Status {
    let with_steps = |code, msg: String, outcome: Outcome| {
        let details = response(outcome, None).encode_to_vec();
        Status::with_details(code, msg, details.into())
    };
    match e {
        OpError::Invalid(m) => Status::invalid_argument(m),
        OpError::NotFound(_) => Status::not_found(e.to_string()),
        OpError::Conflict(m) => Status::failed_precondition(m),
        OpError::Corrupt(m) => Status::data_loss(m),
        OpError::PortsExhausted { min, max, outcome } => with_steps(
            tonic::Code::ResourceExhausted,
            format!("no free host port in {min}-{max}"),
            *outcome,
        ),
        OpError::StepFailed { step, error, outcome } => {
            let code = if error.contains("is not answering") {
                tonic::Code::Unavailable
            } else {
                tonic::Code::FailedPrecondition
            };
            with_steps(code, format!("{step} step failed: {error}"), *outcome)
        }
        OpError::Runtime(p @ RuntimeError::Unreachable { .. }) => Status::unavailable(p.to_string()),
        OpError::Runtime(p) => Status::internal(p.to_string()),
        OpError::Registry(r) => Status::internal(r.to_string()),
    }
}

fn component(c: &str) -> Option<&str> {
    if c.is_empty() { None } else { Some(c) }
}

impl AgentService {
    async fn current(&self, name: &str) -> Option<proto::ServiceInfo> {
        self.agent
            .status(name)
            .await
            .ok()
            .map(|(view, _)| service_info(&view, self.agent.name()))
    }

    /// Runs a mutating operation in its own task: a caller that goes away
    /// (deadline, crash of the master) must not cancel a deploy half-way,
    /// which would skip its rollback.
    async fn detached<T, F, Fut>(&self, op: F) -> Result<T, Status>
    where
        F: FnOnce(Arc<Agent>) -> Fut,
        Fut: std::future::Future<Output = Result<T, OpError>> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::spawn(op(self.agent.clone())).await {
            Ok(r) => r.map_err(status),
            Err(e) => Err(Status::internal(format!("operation task failed: {e}"))),
        }
    }

    /// Stop, start or restart a service (or one component).
    async fn change_state(
        &self,
        req: Request<proto::ServiceRequest>,
        change: StateChange,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        let caller = self.caller(&req);
        let r = req.into_inner();
        let op = change.name();
        tracing::info!(service = %r.name, %caller, request_id = %r.request_id, "{op}");
        let (name, comp) = (r.name.clone(), r.component.clone());
        let outcome = self
            .detached(move |a| async move {
                let only = component(&comp);
                match change {
                    StateChange::Stop => a.stop(&name, only).await,
                    StateChange::Start => a.start(&name, only).await,
                    StateChange::Restart => a.restart(&name, only).await,
                }
            })
            .await?;
        Ok(Response::new(response(outcome, self.current(&r.name).await)))
    }

    fn caller<T>(&self, req: &Request<T>) -> String {
        mcp_infra::tls::caller(req).map(|i| i.to_string()).unwrap_or_default()
    }
}

/// The state changes of a deployed service.
#[derive(Debug, Clone, Copy)]
enum StateChange {
    Stop,
    Start,
    Restart,
}

impl StateChange {
    fn name(self) -> &'static str {
        match self {
            StateChange::Stop => "stop",
            StateChange::Start => "start",
            StateChange::Restart => "restart",
        }
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl McpAgentService for AgentService {
    async fn deploy(&self, req: Request<proto::DeployRequest>) -> Result<Response<proto::OperationResponse>, Status> {
        let caller = self.caller(&req);
        let r = req.into_inner();
        let spec = r
            .service
            .ok_or_else(|| Status::invalid_argument("deploy request has no service"))?;
        let def = ServiceDef::from(&spec);
        let only = component(&r.component).map(str::to_string);
        tracing::info!(service = %def.name, component = ?only, %caller, request_id = %r.request_id, "deploy");
        let d = def.clone();
        let deploy = |a: Arc<Agent>| async move {
            let result = a.deploy(d, only).await;
            crate::metrics::deploy_finished(&result);
            result
        };
        let mut outcome = self.detached(deploy).await?;
        let info = match outcome.view.take() {
            Some(view) => Some(service_info(&view, self.agent.name())),
            None => self.current(&def.name).await,
        };
        Ok(Response::new(response(outcome, info)))
    }

    async fn stop_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        self.change_state(req, StateChange::Stop).await
    }

    async fn start_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        self.change_state(req, StateChange::Start).await
    }

    async fn restart_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        self.change_state(req, StateChange::Restart).await
    }

    async fn undeploy_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        let caller = self.caller(&req);
        let r = req.into_inner();
        if !r.component.is_empty() {
            return Err(Status::invalid_argument(
                "undeploy removes a whole service; stop a component instead",
            ));
        }
        tracing::info!(service = %r.name, %caller, request_id = %r.request_id, "undeploy");
        let name = r.name.clone();
        let outcome = self.detached(|a| async move { a.undeploy(&name).await }).await?;
        Ok(Response::new(response(outcome, None)))
    }

    async fn list_services(
        &self,
        _req: Request<proto::ListServicesRequest>,
    ) -> Result<Response<proto::ListServicesResponse>, Status> {
        let views = self.agent.list().await.map_err(status)?;
        Ok(Response::new(proto::ListServicesResponse {
            services: views.iter().map(|v| service_info(v, self.agent.name())).collect(),
            node: self.agent.name().to_string(),
        }))
    }

    async fn get_service_status(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::ServiceStatus>, Status> {
        let name = req.into_inner().name;
        let (view, events) = self.agent.status(&name).await.map_err(status)?;
        Ok(Response::new(proto::ServiceStatus {
            service: Some(service_info(&view, self.agent.name())),
            events: events.into_iter().map(convert::event).collect(),
        }))
    }

    async fn live_check(
        &self,
        _req: Request<proto::LiveCheckRequest>,
    ) -> Result<Response<proto::LiveCheckResponse>, Status> {
        Ok(Response::new(proto::LiveCheckResponse {
            ok: true,
            node: self.agent.name().to_string(),
            version: mcp_infra::VERSION.to_string(),
        }))
    }

    async fn node_status(
        &self,
        _req: Request<proto::NodeStatusRequest>,
    ) -> Result<Response<proto::NodeStatusResponse>, Status> {
        use crate::node;
        let a = &self.agent;
        let podman_version = a.runtime_version.clone();
        let (containers, running) = a.runtime.count().await.unwrap_or((0, 0));
        let services = a.registry.services().map(|s| s.len()).unwrap_or(0);
        let (mem_total, mem_avail) = node::memory();
        let (disk_total, disk_avail) = node::disk(&a.cfg.agent.data_dir);
        let cgroup = node::cgroup_version();
        Ok(Response::new(proto::NodeStatusResponse {
            name: a.name().to_string(),
            version: mcp_infra::VERSION.to_string(),
            git_commit: mcp_infra::git_commit().to_string(),
            arch: node::arch().to_string(),
            uptime_seconds: a.started.elapsed().as_secs(),
            podman_version,
            services: services as u32,
            containers,
            containers_running: running,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            load1: node::load1(),
            memory_total_bytes: mem_total,
            memory_available_bytes: mem_avail,
            disk_total_bytes: disk_total,
            disk_available_bytes: disk_avail,
            cgroup_version: cgroup,
            limits_enforced: cgroup >= 2,
            address: a.cfg.agent.address.clone(),
            boot: self.boot.stages().into_iter().map(convert::boot_stage).collect(),
            monitor_last_run: self.monitor.summary().0,
            drifted: self.monitor.summary().1,
        }))
    }

    async fn recover(&self, _req: Request<proto::RecoverRequest>) -> Result<Response<proto::RecoverResponse>, Status> {
        let report = crate::boot::recover(&self.agent, &self.boot).await.map_err(status)?;
        Ok(Response::new(convert::recovered(self.agent.name(), report)))
    }

    async fn render_service(
        &self,
        req: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::RenderResponse>, Status> {
        let name = req.into_inner().name;
        let commands = self.agent.render(&name).map_err(status)?;
        Ok(Response::new(proto::RenderResponse {
            service: name,
            commands,
        }))
    }

    async fn adopt_containers(
        &self,
        req: Request<proto::AdoptRequest>,
    ) -> Result<Response<proto::AdoptResponse>, Status> {
        let name = req.into_inner().service;
        let out = self.agent.adopt(&name).await.map_err(status)?;
        Ok(Response::new(proto::AdoptResponse {
            service: name,
            adopted: out.adopted,
            refused: out.refused,
        }))
    }

    type LogsStream = LogStream;

    async fn logs(&self, req: Request<proto::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let rec = self
            .agent
            .registry
            .service(&r.service)
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(OpError::NotFound(r.service.clone())))?;
        let targets: Vec<_> = rec
            .components
            .iter()
            .filter(|c| r.component.is_empty() || c.name == r.component)
            .collect();
        if targets.is_empty() {
            return Err(Status::invalid_argument(format!(
                "service {} has no component {:?}",
                r.service, r.component
            )));
        }
        let streams: Vec<LogStream> = targets
            .into_iter()
            .map(|c| {
                let name = c.name.clone();
                let s = self
                    .agent
                    .runtime
                    .logs(&c.spec.name, r.follow, r.tail)
                    .map(move |item| match item {
                        Ok((stderr, data)) => Ok(LogChunk {
                            component: name.clone(),
                            data: data.to_vec(),
                            stderr,
                        }),
                        Err(e) => Err(Status::unavailable(e.to_string())),
                    });
                Box::pin(s) as LogStream
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::select_all(streams))))
    }

    async fn list_proxy_routes(
        &self,
        _req: Request<proto::ListProxyRoutesRequest>,
    ) -> Result<Response<proto::ListProxyRoutesResponse>, Status> {
        let routes = self.agent.proxy_routes().await.map_err(status)?;
        Ok(Response::new(proto::ListProxyRoutesResponse {
            node: self.agent.name().to_string(),
            routes: routes.into_iter().map(convert::proxy_route).collect(),
            backend: self.agent.proxy_kind().to_string(),
        }))
    }

    async fn setup_edge_route(
        &self,
        req: Request<proto::SetupEdgeRouteRequest>,
    ) -> Result<Response<proto::EdgeRouteResponse>, Status> {
        let caller = self.caller(&req);
        let r = req.into_inner();
        tracing::info!(hostname = %r.hostname, backend = %r.backend_hostname, %caller, "setup edge route");
        let route = convert::edge_route(r);
        let (cert_serial, cert_expires_at) = self
            .detached(|a| async move { a.setup_edge_route(route).await })
            .await?;
        Ok(Response::new(proto::EdgeRouteResponse {
            cert_serial,
            cert_expires_at,
        }))
    }

    async fn remove_edge_route(
        &self,
        req: Request<proto::RemoveEdgeRouteRequest>,
    ) -> Result<Response<proto::EdgeRouteResponse>, Status> {
        let caller = self.caller(&req);
        let r = req.into_inner();
        tracing::info!(hostname = %r.hostname, %caller, "remove edge route");
        self.detached(|a| async move { a.remove_edge_route(&r.hostname).await })
            .await?;
        Ok(Response::new(proto::EdgeRouteResponse::default()))
    }

    type ExportServiceDataStream = Pin<Box<dyn Stream<Item = Result<proto::DataChunk, Status>> + Send>>;

    async fn export_service_data(
        &self,
        req: Request<proto::ExportServiceDataRequest>,
    ) -> Result<Response<Self::ExportServiceDataStream>, Status> {
        let caller = self.caller(&req);
        let r = req.into_inner();
        tracing::info!(service = %r.service, %caller, request_id = %r.request_id, "export data");
        let rx = self.agent.export_data(&r.service).await.map_err(status)?;
        let stream =
            tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| item.map(convert::data_chunk).map_err(status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import_service_data(
        &self,
        req: Request<tonic::Streaming<proto::ImportServiceDataRequest>>,
    ) -> Result<Response<proto::ImportServiceDataResponse>, Status> {
        use proto::import_service_data_request::Msg;
        let caller = self.caller(&req);
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(proto::ImportServiceDataRequest {
                msg: Some(Msg::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an import must be its header",
                ));
            }
        };
        let service = header.service.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        tracing::info!(%service, %caller, request_id = %header.request_id, force = header.force, size = header.size, "import data");
        let chunks = stream.map(|m| match m {
            Ok(proto::ImportServiceDataRequest {
                msg: Some(Msg::Chunk(c)),
            }) => Ok(c),
            Ok(_) => Err("a second header in the stream".to_string()),
            Err(e) => Err(e.message().to_string()),
        });
        let header = convert::import_header(header).map_err(Status::invalid_argument)?;
        let done = self.agent.import_data(header, chunks).await.map_err(status)?;
        Ok(Response::new(proto::ImportServiceDataResponse {
            bytes: done.bytes,
            entries: done.entries,
            volumes: done.volumes,
        }))
    }
}
