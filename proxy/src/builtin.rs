//! The built-in proxy: one accept loop per listener, SNI routing,
//! L4 splicing and L7 termination.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::certs::{self, CertCache};
use crate::http::{self, L7Conn};
use crate::io::{Activity, Rewind, Tracked};
use crate::shared::Shared;
use crate::table::Table;
use crate::upstream::Upstream;
use crate::{Mode, ProxyConfig, ProxyError, ProxyRoute, hello};

/// The built-in proxy. Dropping it (or [`BuiltinProxy::shutdown`]) stops
/// the listeners and closes their connections.
pub struct BuiltinProxy {
    shared: Arc<Shared>,
    bound: BTreeMap<u16, SocketAddr>,
    limits: BTreeMap<u16, Arc<Semaphore>>,
    shutdown: watch::Sender<bool>,
    /// Serializes route writers so two services' updates cannot interleave
    /// their read-modify-write of the table.
    writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for BuiltinProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinProxy").field("listeners", &self.bound).finish()
    }
}

impl BuiltinProxy {
    /// Binds every listener of `cfg` and starts serving (with no routes).
    /// Must be called inside a tokio runtime.
    pub fn start(cfg: ProxyConfig) -> Result<Arc<BuiltinProxy>, ProxyError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ProxyError::NoRuntime);
        }
        let backend_tls = match &cfg.backend_ca {
            Some(ca) => Some(certs::backend_client(ca)?),
            None => None,
        };
        let mut listeners = Vec::new();
        let mut bound = BTreeMap::new();
        for (&port, &addr) in &cfg.listeners {
            let listener = bind(addr).map_err(|source| ProxyError::Bind { port, addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| ProxyError::Bind { port, addr, source })?;
            bound.insert(port, local);
            listeners.push((port, listener));
        }
        let (shutdown, stop) = watch::channel(false);
        let shared = Arc::new(Shared {
            upstream: Upstream::new(backend_tls, cfg.connect_timeout),
            config: cfg,
            table: RwLock::new(Arc::new(Table::default())),
            certs: CertCache::default(),
        });
        let mut limits = BTreeMap::new();
        for (port, listener) in listeners {
            let limit = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
            limits.insert(port, limit.clone());
            tracing::info!(port, addr = %bound[&port], "proxy listening");
            tokio::spawn(accept_loop(shared.clone(), port, listener, limit, stop.clone()));
        }
        Ok(Arc::new(BuiltinProxy {
            shared,
            bound,
            limits,
            shutdown,
            writer: tokio::sync::Mutex::new(()),
        }))
    }

    /// The address actually bound for a route listener port.
    pub fn local_addr(&self, listener_port: u16) -> Option<SocketAddr> {
        self.bound.get(&listener_port).copied()
    }

    /// Connections currently open on a listener.
    pub fn connections(&self, listener_port: u16) -> Option<usize> {
        let limit = self.limits.get(&listener_port)?;
        Some(self.shared.config.max_connections.max(1) - limit.available_permits())
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for BuiltinProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl BuiltinProxy {
    /// Replaces all routes of `service` (new connections see either the old
    /// or the new set; established connections are not dropped when their
    /// route changes or goes away).
    pub async fn set_routes(&self, service: &str, routes: Vec<ProxyRoute>) -> Result<(), ProxyError> {
        let _writer = self.writer.lock().await;
        let ports: BTreeSet<u16> = self.bound.keys().copied().collect();
        let next = self.shared.table().with_service(service, routes.clone(), &ports)?;
        for r in &routes {
            if r.backend_tls && !self.shared.upstream.has_tls() {
                return Err(ProxyError::Invalid {
                    hostname: r.hostname.clone(),
                    port: r.listener_port,
                    reason: "backend_tls needs backend_ca in the proxy configuration".into(),
                });
            }
            if let (Mode::L7, Some(cert), Some(key)) = (r.mode, &r.cert, &r.key) {
                self.shared.certs.check(cert, key).map_err(|e| ProxyError::Invalid {
                    hostname: r.hostname.clone(),
                    port: r.listener_port,
                    reason: e.to_string(),
                })?;
            }
        }
        *self.shared.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        tracing::info!(service, routes = routes.len(), "proxy routes set");
        Ok(())
    }

    /// Removes every route of `service` (none is not an error).
    pub async fn remove_routes(&self, service: &str) -> Result<(), ProxyError> {
        let _writer = self.writer.lock().await;
        let next = self.shared.table().without_service(service);
        *self.shared.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        tracing::info!(service, "proxy routes removed");
        Ok(())
    }

    /// Every route, ordered by listener port then hostname.
    pub async fn routes(&self) -> Result<Vec<ProxyRoute>, ProxyError> {
        Ok(self.shared.table().routes())
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting the agent must not wait for old connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    shared: Arc<Shared>,
    port: u16,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(port, %peer, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = connection(shared, port, tcp, peer, permit) => {}
            }
        });
    }
    tracing::info!(port, "proxy listener stopped");
}

/// One client connection, from accept to close.
async fn connection(
    shared: Arc<Shared>,
    port: u16,
    mut tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let cfg = &shared.config;
    let deadline = Instant::now() + cfg.handshake_timeout;
    let (bytes, sni) = match tokio::time::timeout_at(deadline, hello::read(&mut tcp)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(port, %peer, error = %e, "no ClientHello; closing");
            return;
        }
        Err(_) => {
            tracing::debug!(port, %peer, "ClientHello timed out; closing");
            return;
        }
    };
    let Some(sni) = sni else {
        tracing::debug!(port, %peer, "ClientHello without server name; closing");
        return;
    };
    let Some(route) = shared.table().get(port, &sni) else {
        tracing::debug!(port, %peer, sni, "no route for server name; closing");
        return;
    };
    cfg.observer.connection(&route.hostname, route.mode);
    match route.mode {
        Mode::L4 => l4(&shared, &route, tcp, bytes).await,
        Mode::L7 => l7(shared.clone(), port, &route, tcp, peer, bytes, deadline, permit).await,
    }
}

async fn l4(shared: &Shared, route: &ProxyRoute, tcp: TcpStream, hello: Vec<u8>) {
    let cfg = &shared.config;
    let mut backend = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&route.backend)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(service = %route.service, host = %route.hostname, backend = %route.backend, error = %e, "backend unavailable; closing");
            return;
        }
        Err(_) => {
            tracing::warn!(service = %route.service, host = %route.hostname, backend = %route.backend, "backend connect timed out; closing");
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    if backend.write_all(&hello).await.is_err() {
        return;
    }
    let activity = Activity::new();
    let mut client = Tracked::new(tcp, activity.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = r {
                tracing::debug!(host = %route.hostname, error = %e, "l4 connection ended");
            }
        }
        _ = activity.idle(cfg.idle_timeout) => tracing::debug!(host = %route.hostname, "l4 connection idle; closing"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn l7(
    shared: Arc<Shared>,
    port: u16,
    route: &ProxyRoute,
    tcp: TcpStream,
    peer: SocketAddr,
    hello: Vec<u8>,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
) {
    let (Some(cert), Some(key)) = (&route.cert, &route.key) else {
        return;
    };
    let config = match shared.certs.get(cert, key) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(host = %route.hostname, error = %e, "certificate unavailable; closing");
            return;
        }
    };
    let activity = Activity::new();
    let io = Tracked::new(Rewind::new(hello, tcp), activity.clone());
    let tls = match tokio::time::timeout_at(deadline, TlsAcceptor::from(config).accept(io)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, host = %route.hostname, error = %e, "tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, host = %route.hostname, "tls handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let idle = shared.config.idle_timeout;
    let conn = Arc::new(L7Conn {
        shared,
        port,
        cert: cert.clone(),
        peer: peer.ip(),
        activity: activity.clone(),
        _permit: Some(permit),
    });
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| http::handle(conn.clone(), req))
    };
    let io = TokioIo::new(tls);
    let served = async {
        if h2 {
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, svc)
                .await
        } else {
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
    };
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "l7 connection ended");
            }
        }
        _ = activity.idle(idle) => tracing::debug!(%peer, "l7 connection idle; closing"),
    }
}
