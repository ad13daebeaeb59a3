//! Adapter for mc-proxy: its admin gRPC API over a unix socket
//! (`/srv/mc-proxy/mc-proxy.sock`, mode 0660, no token).
//!
//! The `.proto` (`agent/proto/mc_proxy.proto`, package `mc_proxy.v1`,
//! service `ProxyAdmin`) is **reconstructed from mc-proxy's documented
//! shape**, not copied from mc-proxy: its source was not available. The
//! adapter is deliberately thin so only that file and [`to_pb`] /
//! [`from_pb`] change if the real wire format differs.
//!
//! mc-proxy routes carry no owner, so the adapter remembers which service
//! set which route (in memory). The agent's registry stays the source of
//! truth: on start it sets every service's routes again, which re-teaches
//! ownership. Routes the adapter does not know about (mc-proxy's own
//! bootstrap routes) are listed with an empty service and never removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use super::table::validate;
use super::{Mode, ProxyBackend, ProxyError, ProxyRoute};

/// Generated code of the agent's protos: mc-proxy's admin API and gRPC
/// health checking.
pub mod pb {
    /// `mc_proxy.v1`.
    pub mod mc_proxy {
        tonic::include_proto!("mc_proxy.v1");
    }
    /// `grpc.health.v1`.
    pub mod health {
        tonic::include_proto!("grpc.health.v1");
    }
}

use pb::health::health_check_response::ServingStatus;
use pb::health::health_client::HealthClient;
use pb::mc_proxy::proxy_admin_client::ProxyAdminClient;

/// Where mc-proxy is and how its listeners are named.
#[derive(Debug, Clone)]
pub struct McProxyConfig {
    /// The admin socket, normally `/srv/mc-proxy/mc-proxy.sock`.
    pub socket: PathBuf,
    /// Route listener port → mc-proxy listener address; ports not listed
    /// map to `:<port>` (mc-proxy's own notation for "all addresses").
    pub listener_addrs: BTreeMap<u16, String>,
    /// Per-RPC deadline.
    pub timeout: Duration,
}

impl McProxyConfig {
    /// The socket with default listener names and a 10 s deadline.
    pub fn new(socket: &Path) -> McProxyConfig {
        McProxyConfig {
            socket: socket.to_path_buf(),
            listener_addrs: BTreeMap::new(),
            timeout: Duration::from_secs(10),
        }
    }

    fn listener_addr(&self, port: u16) -> String {
        self.listener_addrs
            .get(&port)
            .cloned()
            .unwrap_or_else(|| format!(":{port}"))
    }

    fn port_of(&self, listener_addr: &str) -> Option<u16> {
        self.listener_addrs
            .iter()
            .find(|(_, a)| a.as_str() == listener_addr)
            .map(|(p, _)| *p)
            .or_else(|| listener_addr.rsplit_once(':')?.1.parse().ok())
    }
}

/// Routes through mc-proxy.
pub struct McProxy {
    cfg: McProxyConfig,
    admin: ProxyAdminClient<Channel>,
    health: HealthClient<Channel>,
    /// Which service set which routes; also serializes updates.
    owned: tokio::sync::Mutex<BTreeMap<String, Vec<ProxyRoute>>>,
}

impl std::fmt::Debug for McProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McProxy").field("socket", &self.cfg.socket).finish()
    }
}

impl McProxy {
    /// A client for mc-proxy at `cfg.socket`. Connects lazily (and again
    /// after mc-proxy restarts), so mc-proxy need not be up yet.
    pub fn new(cfg: McProxyConfig) -> Result<McProxy, ProxyError> {
        let socket = cfg.socket.clone();
        // The URI is required by tonic but unused: every connection goes to
        // the unix socket.
        let endpoint = Endpoint::from_static("http://mc-proxy.invalid")
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }));
        Ok(McProxy {
            admin: ProxyAdminClient::new(channel.clone()),
            health: HealthClient::new(channel),
            cfg,
            owned: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    fn error(&self, op: impl Into<String>, status: tonic::Status) -> ProxyError {
        let mut reason = format!("{:?}: {}", status.code(), status.message());
        if let Some(src) = std::error::Error::source(&status) {
            reason = format!("{reason}: {}", mcp_common::tls::error_chain(src));
        }
        ProxyError::McProxy {
            socket: self.cfg.socket.display().to_string(),
            op: op.into(),
            reason,
        }
    }

    /// Asks mc-proxy's gRPC health service whether it is serving.
    pub async fn check(&self) -> Result<(), ProxyError> {
        let resp = self
            .health
            .clone()
            .check(pb::health::HealthCheckRequest { service: String::new() })
            .await
            .map_err(|s| self.error("health check", s))?;
        match resp.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(ProxyError::McProxy {
                socket: self.cfg.socket.display().to_string(),
                op: "health check".into(),
                reason: format!("status {}", other.as_str_name()),
            }),
        }
    }

    /// Sets a listener's connection limit.
    pub async fn set_listener_max_connections(&self, listener_port: u16, max: i64) -> Result<(), ProxyError> {
        self.admin
            .clone()
            .set_listener_max_connections(pb::mc_proxy::SetListenerMaxConnectionsRequest {
                listener_addr: self.cfg.listener_addr(listener_port),
                max_connections: max,
            })
            .await
            .map_err(|s| self.error(format!("SetListenerMaxConnections port {listener_port}"), s))?;
        Ok(())
    }

    async fn add(&self, r: &ProxyRoute) -> Result<(), ProxyError> {
        self.admin
            .clone()
            .add_route(pb::mc_proxy::AddRouteRequest {
                listener_addr: self.cfg.listener_addr(r.listener_port),
                route: Some(to_pb(r)),
            })
            .await
            .map_err(|s| self.error(format!("AddRoute {} on port {}", r.hostname, r.listener_port), s))?;
        Ok(())
    }

    async fn remove(&self, port: u16, hostname: &str) -> Result<(), ProxyError> {
        let result = self
            .admin
            .clone()
            .remove_route(pb::mc_proxy::RemoveRouteRequest {
                listener_addr: self.cfg.listener_addr(port),
                hostname: hostname.to_string(),
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already gone is what we wanted.
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(self.error(format!("RemoveRoute {hostname} on port {port}"), s)),
        }
    }
}

/// The mc-proxy form of a route.
pub fn to_pb(r: &ProxyRoute) -> pb::mc_proxy::Route {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    pb::mc_proxy::Route {
        hostname: r.hostname.clone(),
        backend: r.backend.clone(),
        mode: r.mode.as_str().to_string(),
        tls_cert: path(&r.cert),
        tls_key: path(&r.key),
        backend_tls: r.backend_tls,
        send_proxy_protocol: false,
    }
}

/// A route listed by mc-proxy, attributed to `service`.
pub fn from_pb(service: &str, listener_port: u16, r: pb::mc_proxy::Route) -> ProxyRoute {
    let path = |s: String| (!s.is_empty()).then(|| PathBuf::from(s));
    ProxyRoute {
        service: service.to_string(),
        listener_port,
        hostname: r.hostname,
        mode: if r.mode == "l7" { Mode::L7 } else { Mode::L4 },
        backend: r.backend,
        backend_tls: r.backend_tls,
        backend_name: None,
        cert: path(r.tls_cert),
        key: path(r.tls_key),
    }
}

#[tonic::async_trait]
impl ProxyBackend for McProxy {
    /// Upserts the new routes first, then removes the service's routes that
    /// are no longer wanted, so no hostname of the service is ever unrouted
    /// mid-update (mc-proxy has no multi-route transaction). On failure the
    /// routes added in this call are rolled back to what they were.
    async fn set_routes(&self, service: &str, routes: Vec<ProxyRoute>) -> Result<(), ProxyError> {
        validate(service, &routes, None)?;
        let mut owned = self.owned.lock().await;
        for r in &routes {
            let taken = owned.iter().find(|(s, rs)| {
                s.as_str() != service
                    && rs
                        .iter()
                        .any(|o| o.listener_port == r.listener_port && o.hostname == r.hostname)
            });
            if let Some((owner, _)) = taken {
                return Err(ProxyError::Conflict {
                    hostname: r.hostname.clone(),
                    port: r.listener_port,
                    owner: owner.clone(),
                });
            }
        }
        let old = owned.get(service).cloned().unwrap_or_default();
        for (i, r) in routes.iter().enumerate() {
            if let Err(e) = self.add(r).await {
                for done in &routes[..i] {
                    let previous = old
                        .iter()
                        .find(|o| o.listener_port == done.listener_port && o.hostname == done.hostname);
                    let undo = match previous {
                        Some(p) => self.add(p).await,
                        None => self.remove(done.listener_port, &done.hostname).await,
                    };
                    if let Err(u) = undo {
                        tracing::warn!(error = %u, "cannot roll back mc-proxy route");
                    }
                }
                return Err(e);
            }
        }
        let keep: BTreeSet<(u16, &str)> = routes.iter().map(|r| (r.listener_port, r.hostname.as_str())).collect();
        for o in &old {
            if !keep.contains(&(o.listener_port, o.hostname.as_str())) {
                self.remove(o.listener_port, &o.hostname).await?;
            }
        }
        tracing::info!(service, routes = routes.len(), socket = %self.cfg.socket.display(), "mc-proxy routes set");
        if routes.is_empty() {
            owned.remove(service);
        } else {
            owned.insert(service.to_string(), routes);
        }
        Ok(())
    }

    async fn remove_routes(&self, service: &str) -> Result<(), ProxyError> {
        let mut owned = self.owned.lock().await;
        let Some(old) = owned.get(service).cloned() else {
            return Ok(());
        };
        for (i, o) in old.iter().enumerate() {
            if let Err(e) = self.remove(o.listener_port, &o.hostname).await {
                owned.insert(service.to_string(), old[i..].to_vec());
                return Err(e);
            }
        }
        owned.remove(service);
        tracing::info!(service, socket = %self.cfg.socket.display(), "mc-proxy routes removed");
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<ProxyRoute>, ProxyError> {
        let owned = self.owned.lock().await;
        let status = self
            .admin
            .clone()
            .get_status(pb::mc_proxy::GetStatusRequest {})
            .await
            .map_err(|s| self.error("GetStatus", s))?
            .into_inner();
        let mut all = Vec::new();
        for listener in status.listeners {
            let Some(port) = self.cfg.port_of(&listener.addr) else {
                tracing::warn!(listener = %listener.addr, "mc-proxy listener address has no port; skipped");
                continue;
            };
            let listed = self
                .admin
                .clone()
                .list_routes(pb::mc_proxy::ListRoutesRequest {
                    listener_addr: listener.addr.clone(),
                })
                .await
                .map_err(|s| self.error(format!("ListRoutes {}", listener.addr), s))?
                .into_inner();
            for r in listed.routes {
                let owner = owned
                    .iter()
                    .find(|(_, rs)| rs.iter().any(|o| o.listener_port == port && o.hostname == r.hostname))
                    .map(|(s, _)| s.as_str())
                    .unwrap_or("");
                all.push(from_pb(owner, port, r));
            }
        }
        all.sort_by(|a, b| (a.listener_port, &a.hostname).cmp(&(b.listener_port, &b.hostname)));
        Ok(all)
    }
}
