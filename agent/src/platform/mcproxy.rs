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

use mcp_proxy::validate;

use super::{Mode, ProxyBackend, ProxyError, ProxyRoute};
use crate::pb;

use crate::pb::health::health_check_response::ServingStatus;
use crate::pb::health::health_client::HealthClient;
use crate::pb::mc_proxy::proxy_admin_client::ProxyAdminClient;

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
            reason = format!("{reason}: {}", mcp_infra::tls::error_chain(src));
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
                return Err(ProxyError::Route(mcp_proxy::ProxyError::Conflict {
                    hostname: r.hostname.clone(),
                    port: r.listener_port,
                    owner: owner.clone(),
                }));
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

/// The adapter against a stand-in for mc-proxy (mc-proxy itself is not
/// available here): a gRPC server implementing the reconstructed admin
/// proto over a real unix socket.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use super::*;
    /// A stand-in for mc-proxy's admin server: routes in memory keyed by
    /// (listener, hostname), exactly the upsert semantics mc-proxy documents.
    #[derive(Default, Clone)]
    struct FakeMcProxy {
        routes: Arc<Mutex<BTreeMap<(String, String), pb::mc_proxy::Route>>>,
        limits: Arc<Mutex<BTreeMap<String, i64>>>,
    }

    impl FakeMcProxy {
        fn snapshot(&self) -> Vec<(String, String, String, String)> {
            self.routes
                .lock()
                .expect("lock")
                .iter()
                .map(|((l, h), r)| (l.clone(), h.clone(), r.mode.clone(), r.backend.clone()))
                .collect()
        }
    }

    #[tonic::async_trait]
    impl pb::mc_proxy::proxy_admin_server::ProxyAdmin for FakeMcProxy {
        async fn add_route(
            &self,
            req: tonic::Request<pb::mc_proxy::AddRouteRequest>,
        ) -> Result<tonic::Response<pb::mc_proxy::AddRouteResponse>, tonic::Status> {
            let req = req.into_inner();
            let route = req
                .route
                .ok_or_else(|| tonic::Status::invalid_argument("route required"))?;
            if route.hostname == "fail.test" {
                return Err(tonic::Status::internal("database is locked"));
            }
            if route.mode == "l7" && (route.tls_cert.is_empty() || route.tls_key.is_empty()) {
                return Err(tonic::Status::invalid_argument("l7 needs tls_cert and tls_key"));
            }
            self.routes
                .lock()
                .expect("lock")
                .insert((req.listener_addr, route.hostname.clone()), route);
            Ok(tonic::Response::new(pb::mc_proxy::AddRouteResponse {}))
        }

        async fn remove_route(
            &self,
            req: tonic::Request<pb::mc_proxy::RemoveRouteRequest>,
        ) -> Result<tonic::Response<pb::mc_proxy::RemoveRouteResponse>, tonic::Status> {
            let req = req.into_inner();
            match self
                .routes
                .lock()
                .expect("lock")
                .remove(&(req.listener_addr, req.hostname))
            {
                Some(_) => Ok(tonic::Response::new(pb::mc_proxy::RemoveRouteResponse {})),
                None => Err(tonic::Status::not_found("no such route")),
            }
        }

        async fn list_routes(
            &self,
            req: tonic::Request<pb::mc_proxy::ListRoutesRequest>,
        ) -> Result<tonic::Response<pb::mc_proxy::ListRoutesResponse>, tonic::Status> {
            let listener = req.into_inner().listener_addr;
            let routes = self
                .routes
                .lock()
                .expect("lock")
                .iter()
                .filter(|((l, _), _)| *l == listener)
                .map(|(_, r)| r.clone())
                .collect();
            Ok(tonic::Response::new(pb::mc_proxy::ListRoutesResponse {
                listener_addr: listener,
                routes,
            }))
        }

        async fn add_firewall_rule(
            &self,
            _: tonic::Request<pb::mc_proxy::AddFirewallRuleRequest>,
        ) -> Result<tonic::Response<pb::mc_proxy::AddFirewallRuleResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in the stand-in"))
        }

        async fn remove_firewall_rule(
            &self,
            _: tonic::Request<pb::mc_proxy::RemoveFirewallRuleRequest>,
        ) -> Result<tonic::Response<pb::mc_proxy::RemoveFirewallRuleResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in the stand-in"))
        }

        async fn get_status(
            &self,
            _: tonic::Request<pb::mc_proxy::GetStatusRequest>,
        ) -> Result<tonic::Response<pb::mc_proxy::GetStatusResponse>, tonic::Status> {
            let listeners = [":443", ":8443"]
                .into_iter()
                .map(|addr| pb::mc_proxy::ListenerStatus {
                    addr: addr.into(),
                    ..Default::default()
                })
                .collect();
            Ok(tonic::Response::new(pb::mc_proxy::GetStatusResponse {
                version: "stand-in".into(),
                listeners,
                ..Default::default()
            }))
        }

        async fn set_listener_max_connections(
            &self,
            req: tonic::Request<pb::mc_proxy::SetListenerMaxConnectionsRequest>,
        ) -> Result<tonic::Response<pb::mc_proxy::SetListenerMaxConnectionsResponse>, tonic::Status> {
            let req = req.into_inner();
            self.limits
                .lock()
                .expect("lock")
                .insert(req.listener_addr, req.max_connections);
            Ok(tonic::Response::new(pb::mc_proxy::SetListenerMaxConnectionsResponse {}))
        }
    }

    struct Serving;

    #[tonic::async_trait]
    impl pb::health::health_server::Health for Serving {
        async fn check(
            &self,
            _: tonic::Request<pb::health::HealthCheckRequest>,
        ) -> Result<tonic::Response<pb::health::HealthCheckResponse>, tonic::Status> {
            Ok(tonic::Response::new(pb::health::HealthCheckResponse {
                status: pb::health::health_check_response::ServingStatus::Serving as i32,
            }))
        }

        type WatchStream = std::pin::Pin<
            Box<dyn futures::Stream<Item = Result<pb::health::HealthCheckResponse, tonic::Status>> + Send>,
        >;

        async fn watch(
            &self,
            _: tonic::Request<pb::health::HealthCheckRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in the stand-in"))
        }
    }

    #[tokio::test]
    async fn mc_proxy_adapter_manages_routes_over_the_admin_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("mc-proxy.sock");
        let fake = FakeMcProxy::default();
        let bootstrap = pb::mc_proxy::Route {
            hostname: "bootstrap.test".into(),
            backend: "127.0.0.1:9000".into(),
            ..Default::default()
        };
        fake.routes
            .lock()
            .expect("lock")
            .insert((":443".into(), "bootstrap.test".into()), bootstrap);
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind socket");
        let server = fake.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(pb::mc_proxy::proxy_admin_server::ProxyAdminServer::new(server))
                .add_service(pb::health::health_server::HealthServer::new(Serving))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .expect("serve");
        });

        let mc = McProxy::new(McProxyConfig::new(&socket)).expect("client");
        mc.check().await.expect("health");

        let cert = Some(PathBuf::from("/srv/mc-proxy/certs/web.pem"));
        let key = Some(PathBuf::from("/srv/mc-proxy/certs/web.key"));
        let web = ProxyRoute {
            service: "web".into(),
            listener_port: 443,
            hostname: "web.test".into(),
            mode: Mode::L7,
            backend: "127.0.0.1:10001".into(),
            backend_tls: false,
            backend_name: None,
            cert: cert.clone(),
            key: key.clone(),
        };
        let api = ProxyRoute {
            service: "web".into(),
            listener_port: 8443,
            hostname: "api.test".into(),
            mode: Mode::L4,
            backend: "127.0.0.1:10002".into(),
            backend_tls: false,
            backend_name: None,
            cert: None,
            key: None,
        };
        mc.set_routes("web", vec![web.clone(), api.clone()]).await.expect("set");
        let s = |l: &str, h: &str, m: &str, b: &str| (l.to_string(), h.to_string(), m.to_string(), b.to_string());
        assert_eq!(
            fake.snapshot(),
            [
                s(":443", "bootstrap.test", "", "127.0.0.1:9000"),
                s(":443", "web.test", "l7", "127.0.0.1:10001"),
                s(":8443", "api.test", "l4", "127.0.0.1:10002"),
            ]
        );
        {
            let routes = fake.routes.lock().expect("lock");
            let stored = &routes[&(":443".to_string(), "web.test".to_string())];
            assert_eq!(stored.tls_cert, "/srv/mc-proxy/certs/web.pem");
            assert_eq!(stored.tls_key, "/srv/mc-proxy/certs/web.key");
            assert!(!stored.send_proxy_protocol);
        }
        let listed = mc.routes().await.expect("list");
        let mut bootstrap_listed = ProxyRoute {
            service: String::new(),
            listener_port: 443,
            hostname: "bootstrap.test".into(),
            mode: Mode::L4,
            backend: "127.0.0.1:9000".into(),
            backend_tls: false,
            backend_name: None,
            cert: None,
            key: None,
        };
        assert_eq!(listed, vec![bootstrap_listed.clone(), web.clone(), api.clone()]);

        // Replacing the set removes what is no longer wanted.
        let mut moved = web.clone();
        moved.backend = "127.0.0.1:10003".into();
        mc.set_routes("web", vec![moved.clone()]).await.expect("replace");
        assert_eq!(
            fake.snapshot(),
            [
                s(":443", "bootstrap.test", "", "127.0.0.1:9000"),
                s(":443", "web.test", "l7", "127.0.0.1:10003"),
            ]
        );

        // Another service cannot take the hostname; a failed update is rolled back.
        let mut stolen = moved.clone();
        stolen.service = "other".into();
        let err = mc
            .set_routes("other", vec![stolen])
            .await
            .expect_err("conflict")
            .to_string();
        assert_eq!(err, "route web.test on port 443 already belongs to service web");
        let mut failing = moved.clone();
        failing.backend = "127.0.0.1:10004".into();
        let mut fail = api.clone();
        fail.hostname = "fail.test".into();
        let err = mc
            .set_routes("web", vec![failing, fail])
            .await
            .expect_err("mc-proxy error")
            .to_string();
        assert!(
            err.contains("AddRoute fail.test on port 8443") && err.contains("database is locked"),
            "{err}"
        );
        assert!(err.contains(&socket.display().to_string()), "{err}");
        assert_eq!(
            fake.snapshot(),
            [
                s(":443", "bootstrap.test", "", "127.0.0.1:9000"),
                s(":443", "web.test", "l7", "127.0.0.1:10003"),
            ],
            "rolled back to the previous backend"
        );

        mc.set_listener_max_connections(443, 500).await.expect("limit");
        assert_eq!(fake.limits.lock().expect("lock").get(":443"), Some(&500));

        mc.remove_routes("web").await.expect("remove");
        bootstrap_listed.service = String::new();
        assert_eq!(
            mc.routes().await.expect("list"),
            vec![bootstrap_listed],
            "mc-proxy's own routes stay"
        );

        // Nothing listening: errors name the socket.
        let gone = McProxy::new(McProxyConfig::new(&dir.path().join("absent.sock"))).expect("client");
        let err = gone.check().await.expect_err("no mc-proxy").to_string();
        assert!(err.contains("absent.sock") && err.contains("health check"), "{err}");
    }
}
