//! mcp's built-in reverse proxy ([`BuiltinProxy`]): TLS listeners routing
//! by SNI to backends. It knows routes, certificates and backends, nothing
//! of the agent that feeds it (the agent sets routes and observes traffic
//! through [`Observer`]).
//!
//! A route maps (listener port, hostname) to a backend `host:port`:
//!
//! - **L4**: the proxy reads the TLS ClientHello's SNI and splices the TCP
//!   stream to the backend untouched (the backend terminates its own TLS).
//! - **L7**: the proxy terminates TLS with the route's certificate and
//!   reverse-proxies HTTP/1.1 and h2 to the backend (plain HTTP/1.1, or TLS
//!   with ALPN h2/http/1.1 when `backend_tls`).
//!
//! Invariants: the route table is an immutable snapshot swapped whole, so a
//! new connection sees either the old or the new routes of a service, and an
//! established connection keeps the route it started with. Nothing a client
//! sends can take a listener down: every per-connection failure closes that
//! connection only.

mod builtin;
mod certs;
mod hello;
mod http;
mod io;
mod shared;
mod table;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use builtin::BuiltinProxy;
pub use table::validate;

/// Proxy mode of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// TLS passthrough by SNI.
    L4,
    /// TLS terminated at the proxy, HTTP reverse-proxied.
    L7,
}

impl Mode {
    /// The lower-case name used in configs and by mc-proxy.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L4 => "l4",
            Mode::L7 => "l7",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "l4" => Ok(Mode::L4),
            "l7" => Ok(Mode::L7),
            other => Err(format!("unknown proxy mode {other:?} (expected l4 or l7)")),
        }
    }
}

/// One route: (listener port, hostname) → backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    /// Owner, for listing and removal.
    pub service: String,
    /// The route's `port`: what clients connect to (e.g. 443).
    pub listener_port: u16,
    /// SNI / Host to match (exact, lower case).
    pub hostname: String,
    pub mode: Mode,
    /// `host:port`, e.g. `127.0.0.1:10001` or `web.svc.zone:443`.
    pub backend: String,
    /// L7 only: speak TLS to the backend, verified against the proxy's
    /// `backend_ca` with SNI = the backend host.
    pub backend_tls: bool,
    /// TLS server name to verify the backend by (and send as SNI), when
    /// `backend` is an address rather than the name (edges dial a worker's
    /// proxy by IP and verify its `<service>.<zone>` certificate).
    pub backend_name: Option<String>,
    /// L7: full chain PEM.
    pub cert: Option<PathBuf>,
    /// L7: key PEM (0600).
    pub key: Option<PathBuf>,
}

/// How the built-in proxy listens and how patient it is.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Route listener port → socket address to bind (a "listener port map":
    /// tests and unprivileged demos bind e.g. 443 → 127.0.0.1:18443;
    /// production binds 0.0.0.0:443 with CAP_NET_BIND_SERVICE). Port 0 in
    /// the address picks a free port ([`BuiltinProxy::local_addr`]).
    pub listeners: BTreeMap<u16, SocketAddr>,
    /// To the backend (TCP connect, plus the TLS handshake for backend_tls).
    pub connect_timeout: Duration,
    /// No bytes either way for this long → close; also bounds how long a
    /// client may take to send its HTTP request headers (slowloris).
    pub idle_timeout: Duration,
    /// The ClientHello, and for L7 the whole TLS handshake, must complete
    /// within this from accept.
    pub handshake_timeout: Duration,
    /// CA for backend_tls verification (the fleet CA).
    pub backend_ca: Option<PathBuf>,
    /// Concurrent connections per listener; more are closed on accept.
    pub max_connections: usize,
    /// Told of every routed connection and answered request (metrics).
    pub observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("listeners", &self.listeners)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("backend_ca", &self.backend_ca)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// What the proxy reports as it works; every method defaults to nothing.
pub trait Observer: Send + Sync {
    /// A connection was matched to the route of `hostname`.
    fn connection(&self, _hostname: &str, _mode: Mode) {}
    /// An L7 request was answered (`hostname` empty when no route matched).
    fn request(&self, _hostname: &str, _status: u16) {}
}

/// An [`Observer`] that ignores everything.
pub struct Unobserved;

impl Observer for Unobserved {}

impl ProxyConfig {
    /// The given listeners with production defaults: connect 5 s, idle
    /// 300 s, handshake 10 s, 4096 connections per listener, no backend CA.
    pub fn new(listeners: BTreeMap<u16, SocketAddr>) -> ProxyConfig {
        ProxyConfig {
            listeners,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            backend_ca: None,
            max_connections: 4096,
            observer: Arc::new(Unobserved),
        }
    }
}

/// Why a proxy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("route {hostname} on port {port}: no proxy listener is configured for port {port}")]
    NoListener { port: u16, hostname: String },
    #[error("route {hostname} on port {port}: {reason}")]
    Invalid {
        hostname: String,
        port: u16,
        reason: String,
    },
    #[error("route {hostname} on port {port} already belongs to service {owner}")]
    Conflict { hostname: String, port: u16, owner: String },
    #[error("cannot listen for port {port} on {addr}: {source}")]
    Bind {
        port: u16,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("the built-in proxy must be started inside a tokio runtime")]
    NoRuntime,
}
