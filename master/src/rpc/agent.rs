//! The real [`AgentClient`]: tonic over mTLS to each node's agent, one
//! cached connection per node (redialled when the node's address changes
//! or the connection breaks), a deadline on every call, and one retry when
//! a cached connection turns out stale.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use mcp_infra::tls::{self, TlsFiles};
use mcp_model::identity::Identity;
use mcp_model::service::ServiceDef;
use mcp_proto::{self as proto, mcp_agent_service_client::McpAgentServiceClient};
use tokio::time::error::Elapsed;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::convert::agent_error;
use crate::agents::{
    AgentClient, DataStream, EdgeRouteOrder, ImportHeader, LogStream, LogsQuery, Operation, ServiceOrder, Target,
};
use crate::error::{FleetError, Result};
use crate::reports::{
    EdgeCert, ImportReport, OperationReport, ProxyRoutes, Recovery, Rendered, ServiceInfo, ServiceStatus,
};

type Client = McpAgentServiceClient<Channel>;

/// Agents over gRPC, with a connection cache.
pub struct GrpcAgents {
    tls: TlsFiles,
    /// Deadline for dialling a node.
    connect: Duration,
    /// node → (the address dialled, its client).
    clients: tokio::sync::Mutex<HashMap<String, (String, Client)>>,
}

/// A status that says the connection is likely broken: drop it.
fn broken(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown)
}

fn answered(node: &str, status: &Status) -> FleetError {
    FleetError::Agent {
        node: node.to_string(),
        error: agent_error(status),
    }
}

impl GrpcAgents {
    /// Dials agents with the master's certificate from `tls`, each dial
    /// bounded by `connect`.
    pub fn new(tls: TlsFiles, connect: Duration) -> GrpcAgents {
        GrpcAgents {
            tls,
            connect,
            clients: tokio::sync::Mutex::default(),
        }
    }

    /// The cached client of `to`, or a new connection.
    async fn client(&self, to: &Target) -> Result<Client> {
        if let Some((addr, c)) = self.clients.lock().await.get(&to.node)
            && *addr == to.address
        {
            return Ok(c.clone());
        }
        // Dial without holding the cache lock: a fan-out dials its nodes in
        // parallel, and a frozen node cannot hold up the others. Two calls
        // racing for the same node may both dial; the last one is cached.
        let config = tls::client_config(&self.tls, Some(Identity::Agent(to.node.clone())))
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        let timeouts = tls::Timeouts {
            connect: self.connect,
            request: None,
        };
        let (channel, _) = tls::connect(std::slice::from_ref(&to.address), config, timeouts)
            .await
            .map_err(|e| FleetError::Unreachable {
                node: to.node.clone(),
                reason: e.to_string(),
            })?;
        let client = McpAgentServiceClient::new(channel);
        self.clients
            .lock()
            .await
            .insert(to.node.clone(), (to.address.clone(), client.clone()));
        Ok(client)
    }

    async fn drop_client(&self, node: &str) {
        self.clients.lock().await.remove(node);
    }

    /// Sends `req` with `f` within `to.timeout` and converts the answer;
    /// transport failures drop the cached connection so the next call
    /// redials.
    async fn call<Q, T, D, F, Fut>(&self, to: &Target, req: Q, f: F) -> Result<D>
    where
        Q: Clone,
        D: From<T>,
        F: Fn(Client, Q) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let cached = self.clients.lock().await.contains_key(&to.node);
        let client = self.client(to).await?;
        let mut result = tokio::time::timeout(to.timeout, f(client, req.clone())).await;
        // A cached connection to an agent that restarted fails once with
        // Unavailable before anything reached the agent: dial again and
        // retry once (agent operations converge, so a retry is safe).
        if cached && matches!(&result, Ok(Err(s)) if s.code() == Code::Unavailable) {
            self.drop_client(&to.node).await;
            let client = self.client(to).await?;
            result = tokio::time::timeout(to.timeout, f(client, req)).await;
        }
        let timed_out = format!("no answer within {} s", to.timeout.as_secs());
        self.settle(to, result, timed_out).await.map(D::from)
    }

    /// The result of a timed call: its answer, or the error, dropping the
    /// cached connection when it is likely broken.
    async fn settle<T>(
        &self,
        to: &Target,
        result: std::result::Result<std::result::Result<tonic::Response<T>, Status>, Elapsed>,
        timed_out: String,
    ) -> Result<T> {
        match result {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => {
                if broken(&status) {
                    self.drop_client(&to.node).await;
                }
                Err(answered(&to.node, &status))
            }
            Err(_) => {
                self.drop_client(&to.node).await;
                Err(FleetError::Unreachable {
                    node: to.node.clone(),
                    reason: timed_out,
                })
            }
        }
    }

    /// Starts a streaming call (no deadline, no retry), dropping the cached
    /// connection when it is likely broken.
    async fn open<T, F, Fut>(&self, to: &Target, f: F) -> Result<tonic::Streaming<T>>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<tonic::Streaming<T>>, Status>>,
    {
        let client = self.client(to).await?;
        match f(client).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                if broken(&status) {
                    self.drop_client(&to.node).await;
                }
                Err(answered(&to.node, &status))
            }
        }
    }
}

/// An import's messages: the header, then the archive's chunks. A named
/// stream type: with a boxed `dyn Stream` the compiler cannot prove the
/// client-streaming call's future `Send` (a higher-ranked lifetime error).
struct ImportRequests(BoxStream<'static, proto::ImportServiceDataRequest>);

impl ImportRequests {
    fn new(header: &ImportHeader, data: BoxStream<'static, Vec<u8>>) -> ImportRequests {
        use proto::import_service_data_request::Msg;
        let header = proto::ImportHeader {
            service: Some(proto::ServiceSpec::from(&header.def)),
            force: header.force,
            sha256: header.sha256.clone(),
            size: header.size,
            request_id: header.request_id.clone(),
        };
        let first = proto::ImportServiceDataRequest {
            msg: Some(Msg::Header(header)),
        };
        let chunks = data.map(|chunk| proto::ImportServiceDataRequest {
            msg: Some(Msg::Chunk(chunk)),
        });
        ImportRequests(futures::stream::iter([first]).chain(chunks).boxed())
    }
}

impl Stream for ImportRequests {
    type Item = proto::ImportServiceDataRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

#[async_trait::async_trait]
impl AgentClient for GrpcAgents {
    async fn deploy(
        &self,
        to: &Target,
        def: &ServiceDef,
        component: &str,
        request_id: &str,
    ) -> Result<OperationReport> {
        let req = proto::DeployRequest {
            service: Some(proto::ServiceSpec::from(def)),
            component: component.to_string(),
            request_id: request_id.to_string(),
        };
        self.call(to, req, |mut c, req| {
            // The agent learns the deadline too (grpc-timeout).
            let mut r = tonic::Request::new(req);
            r.set_timeout(to.timeout);
            async move { c.deploy(r).await }
        })
        .await
    }

    async fn operate(&self, to: &Target, op: Operation, order: &ServiceOrder) -> Result<OperationReport> {
        let req = proto::ServiceRequest::from(order.clone());
        self.call(to, req, |mut c, req| async move {
            match op {
                Operation::Stop => c.stop_service(req).await,
                Operation::Start => c.start_service(req).await,
                Operation::Restart => c.restart_service(req).await,
                Operation::Undeploy => c.undeploy_service(req).await,
            }
        })
        .await
    }

    async fn list_services(&self, to: &Target) -> Result<Vec<ServiceInfo>> {
        let req = proto::ListServicesRequest {};
        let list: proto::ListServicesResponse = self
            .call(to, req, |mut c, req| async move { c.list_services(req).await })
            .await?;
        Ok(list.services.into_iter().map(Into::into).collect())
    }

    async fn status(&self, to: &Target, service: &str) -> Result<ServiceStatus> {
        let req = proto::ServiceRequest::from(ServiceOrder::new(service, ""));
        self.call(to, req, |mut c, req| async move { c.get_service_status(req).await })
            .await
    }

    async fn live_check(&self, to: &Target) -> Result<()> {
        let req = proto::LiveCheckRequest {};
        let _: proto::LiveCheckResponse = self
            .call(to, req, |mut c, req| async move { c.live_check(req).await })
            .await?;
        Ok(())
    }

    async fn logs(&self, to: &Target, query: &LogsQuery) -> Result<LogStream> {
        let req = proto::LogsRequest::from(query.clone());
        let stream = self.open(to, |mut c| async move { c.logs(req).await }).await?;
        Ok(stream.map(|m| m.map(Into::into).map_err(|s| agent_error(&s))).boxed())
    }

    async fn proxy_routes(&self, to: &Target) -> Result<ProxyRoutes> {
        let req = proto::ListProxyRoutesRequest {};
        self.call(to, req, |mut c, req| async move { c.list_proxy_routes(req).await })
            .await
    }

    async fn setup_edge_route(&self, to: &Target, order: &EdgeRouteOrder) -> Result<EdgeCert> {
        let req = proto::SetupEdgeRouteRequest::from(order);
        self.call(to, req, |mut c, req| async move { c.setup_edge_route(req).await })
            .await
    }

    async fn remove_edge_route(&self, to: &Target, hostname: &str, port: u16) -> Result<()> {
        let req = proto::RemoveEdgeRouteRequest {
            hostname: hostname.to_string(),
            port: port.into(),
        };
        let _: proto::EdgeRouteResponse = self
            .call(to, req, |mut c, req| async move { c.remove_edge_route(req).await })
            .await?;
        Ok(())
    }

    async fn recover(&self, to: &Target) -> Result<Recovery> {
        let req = proto::RecoverRequest::default();
        self.call(to, req, |mut c, req| async move { c.recover(req).await })
            .await
    }

    async fn render(&self, to: &Target, service: &str) -> Result<Rendered> {
        let req = proto::ServiceRequest::from(ServiceOrder::new(service, ""));
        self.call(to, req, |mut c, req| async move { c.render_service(req).await })
            .await
    }

    async fn export(&self, to: &Target, service: &str, request_id: &str) -> Result<DataStream> {
        let req = proto::ExportServiceDataRequest {
            service: service.to_string(),
            request_id: request_id.to_string(),
        };
        let stream = self
            .open(to, |mut c| async move { c.export_service_data(req).await })
            .await?;
        let node = to.node.clone();
        Ok(stream
            .map(move |m| m.map(Into::into).map_err(|s| answered(&node, &s)))
            .boxed())
    }

    async fn import(
        &self,
        to: &Target,
        header: &ImportHeader,
        data: BoxStream<'static, Vec<u8>>,
    ) -> Result<ImportReport> {
        let requests = ImportRequests::new(header, data);
        let mut client = self.client(to).await?;
        let result = tokio::time::timeout(to.timeout, client.import_service_data(requests)).await;
        let timed_out = format!("import did not finish within {} s", to.timeout.as_secs());
        self.settle(to, result, timed_out).await.map(Into::into)
    }

    async fn forget(&self, node: &str) {
        self.drop_client(node).await;
    }
}
