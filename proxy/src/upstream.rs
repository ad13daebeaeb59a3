//! Connections from the L7 proxy to backends: dialled with a timeout,
//! plain HTTP/1.1 or TLS (h2 when the backend's ALPN says so), and kept in a
//! small per-backend pool.
//!
//! The pool is hand-rolled rather than hyper-util's client because the
//! proxy must choose the request's authority itself: on h2 the backend
//! must see the client's host as `:authority`, while connections are keyed
//! by backend address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::table::split_host_port;

/// Idle pooled connections older than this are closed rather than reused
/// (backends commonly close idle keep-alive connections after 60-120 s).
const POOL_IDLE: Duration = Duration::from_secs(50);
/// Idle HTTP/1.1 connections kept per backend.
const POOL_MAX_IDLE: usize = 256;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connect to {backend}: {reason}")]
    Connect { backend: String, reason: String },
    #[error("connect to {backend}: timed out after {timeout:?}")]
    Timeout { backend: String, timeout: Duration },
    #[error("backend {backend} needs TLS but the proxy has no backend CA")]
    NoBackendCa { backend: String },
    #[error("request to {backend}: {reason}")]
    Request { backend: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    backend: String,
    tls: bool,
    /// TLS server name when it is not the backend's host.
    name: Option<String>,
}

#[derive(Default)]
struct Pool {
    /// Ready HTTP/1.1 connections, most recently used last.
    h1: Vec<(http1::SendRequest<Incoming>, Instant)>,
    /// The shared h2 connection, once the backend negotiated h2.
    h2: Option<http2::SendRequest<Incoming>>,
}

enum Sender {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

/// Backend connections of one proxy.
pub(crate) struct Upstream {
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    pools: Mutex<HashMap<Key, Pool>>,
}

impl Upstream {
    pub(crate) fn new(tls: Option<Arc<rustls::ClientConfig>>, connect_timeout: Duration) -> Arc<Upstream> {
        Arc::new(Upstream {
            tls: tls.map(TlsConnector::from),
            connect_timeout,
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Whether TLS to backends is configured.
    pub(crate) fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends `req` (origin-form URI, `Host` header set) to `backend`. A
    /// pooled connection that turns out closed before the request went out is
    /// replaced by a fresh one once.
    pub(crate) async fn send(
        self: &Arc<Self>,
        backend: &str,
        tls: bool,
        server_name: Option<&str>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let key = Key {
            backend: backend.to_string(),
            tls,
            name: server_name.map(str::to_string),
        };
        let mut fresh = false;
        loop {
            let sender = match self.checkout(&key) {
                Some(s) => s,
                None => {
                    fresh = true;
                    self.dial(&key).await?
                }
            };
            let result = match sender {
                Sender::H1(mut s) => {
                    to_h1(&mut req);
                    let r = s.try_send_request(req).await;
                    if r.is_ok() {
                        self.checkin_h1(key.clone(), s);
                    }
                    r
                }
                Sender::H2(mut s) => {
                    to_h2(&mut req, tls);
                    s.try_send_request(req).await
                }
            };
            match result {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) if !fresh => req = back,
                    _ => {
                        return Err(UpstreamError::Request {
                            backend: key.backend,
                            reason: mcp_infra::tls::error_chain(&e.into_error()),
                        });
                    }
                },
            }
        }
    }

    fn checkout(&self, key: &Key) -> Option<Sender> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.get_mut(key)?;
        if let Some(h2) = &pool.h2 {
            if !h2.is_closed() {
                return Some(Sender::H2(h2.clone()));
            }
            pool.h2 = None;
        }
        while let Some((s, at)) = pool.h1.pop() {
            if at.elapsed() < POOL_IDLE && s.is_ready() && !s.is_closed() {
                return Some(Sender::H1(s));
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection to the pool once its response is
    /// done (hyper marks it ready again).
    fn checkin_h1(self: &Arc<Self>, key: Key, mut s: http1::SendRequest<Incoming>) {
        let this = self.clone();
        tokio::spawn(async move {
            if s.ready().await.is_err() {
                return;
            }
            let mut pools = this.pools.lock().unwrap_or_else(|p| p.into_inner());
            let pool = pools.entry(key).or_default();
            if pool.h1.len() >= POOL_MAX_IDLE {
                pool.h1.remove(0);
            }
            pool.h1.push((s, Instant::now()));
        });
    }

    async fn dial(&self, key: &Key) -> Result<Sender, UpstreamError> {
        let backend = key.backend.as_str();
        let timeout = self.connect_timeout;
        let connect = async {
            let tcp = TcpStream::connect(backend).await.map_err(|e| UpstreamError::Connect {
                backend: backend.to_string(),
                reason: e.to_string(),
            })?;
            let _ = tcp.set_nodelay(true);
            if !key.tls {
                return Ok((Conn::Plain(tcp), false));
            }
            let connector = self.tls.as_ref().ok_or_else(|| UpstreamError::NoBackendCa {
                backend: backend.to_string(),
            })?;
            let host = match &key.name {
                Some(n) => n.as_str(),
                None => split_host_port(backend).map(|(h, _)| h).unwrap_or(backend),
            };
            let name = ServerName::try_from(host.to_string()).map_err(|e| UpstreamError::Connect {
                backend: backend.to_string(),
                reason: e.to_string(),
            })?;
            let tls = connector.connect(name, tcp).await.map_err(|e| UpstreamError::Connect {
                backend: backend.to_string(),
                reason: format!("tls: {}", mcp_infra::tls::error_chain(&e)),
            })?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok((Conn::Tls(Box::new(tls)), h2))
        };
        let (conn, h2) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| UpstreamError::Timeout {
                backend: backend.to_string(),
                timeout,
            })??;
        let failed = |e: hyper::Error| UpstreamError::Connect {
            backend: backend.to_string(),
            reason: mcp_infra::tls::error_chain(&e),
        };
        match conn {
            Conn::Plain(io) => handshake_h1(io).await.map_err(failed),
            Conn::Tls(io) if h2 => {
                let (s, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "backend h2 connection ended");
                    }
                });
                let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
                pools.entry(key.clone()).or_default().h2 = Some(s.clone());
                Ok(Sender::H2(s))
            }
            Conn::Tls(io) => handshake_h1(*io).await.map_err(failed),
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn handshake_h1<T>(io: T) -> Result<Sender, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (s, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(Sender::H1(s))
}

/// HTTP/1.1 form: origin-form target, `Host` header.
fn to_h1(req: &mut Request<Incoming>) {
    *req.version_mut() = Version::HTTP_11;
    if let Some(auth) = req.uri().authority().cloned()
        && !req.headers().contains_key(HOST)
        && let Ok(v) = HeaderValue::from_str(auth.as_str())
    {
        req.headers_mut().insert(HOST, v);
    }
    if req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
}

/// h2 form: absolute target whose authority is the client's host (the
/// `Host` header moves into `:authority`).
fn to_h2(req: &mut Request<Incoming>, tls: bool) {
    *req.version_mut() = Version::HTTP_2;
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned());
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = authority;
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}
