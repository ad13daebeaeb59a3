//! TLS 1.3 for every gRPC connection: server and client configurations,
//! a TLS listener for tonic, a connector with fallback addresses, and the
//! authorization layer that turns the verified peer certificate into an
//! [`Identity`] and applies [`mcp_model::identity::authorize`].

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Channel, Endpoint};

use crate::fsutil::{self, FileError};
use mcp_model::identity::{Decision, Identity, authorize};

/// Why TLS material could not be loaded or a connection made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("tls configuration: {0}")]
    Config(String),
    #[error("cannot reach {target}: {reasons}")]
    Connect { target: String, reasons: String },
}

/// Paths of a certificate chain, its key and the CA that signs peers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Parses every certificate in a PEM buffer.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in PEM".into());
    }
    Ok(certs)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| FileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_certs(&pem).map_err(|reason| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fsutil::read_private(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in read_certs(path)? {
        store.add(c).map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server certificate of a listener, swappable while serving so a
/// renewed certificate takes effect without a restart.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertStore {
    /// Loads the certificate chain and key of `files`.
    pub fn load(files: &TlsFiles) -> Result<Arc<CertStore>, TlsError> {
        Ok(Arc::new(CertStore {
            files: files.clone(),
            current: std::sync::RwLock::new(Arc::new(certified_key(files)?)),
        }))
    }

    /// Re-reads the files (after a renewal wrote them).
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn certified_key(files: &TlsFiles) -> Result<rustls::sign::CertifiedKey, TlsError> {
    rustls::sign::CertifiedKey::from_der(read_certs(&files.cert)?, read_key(&files.key)?, &provider())
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.cert.display())))
}

/// Server side: TLS 1.3 only, ALPN h2. Client certificates are verified
/// against the CA when presented; a connection without one is let through
/// TLS so that the gRPC layer can answer `Unauthenticated` precisely.
/// The returned store swaps in a renewed certificate.
pub fn server_config(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Arc<CertStore>), TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let store = CertStore::load(files)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(cfg), store))
}

/// Client side for joining: no client certificate yet, and no CA file yet:
/// the server must present a chain containing the CA whose SHA-256 is
/// `ca_fingerprint` (from the join token), its leaf must verify against
/// that CA and carry `expect`.
pub fn pinned_client_config(ca_fingerprint: &str, expect: Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        expect,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The signature checks of a `ServerCertVerifier` with this module's
/// crypto provider (what `WebPkiServerVerifier` does too): the verifiers
/// here differ only in how they check the certificate itself.
macro_rules! provider_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider().signature_verification_algorithms.supported_schemes()
        }
    };
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    expect: Identity,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use sha2::{Digest, Sha256};
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General("the server did not present the CA pinned by the join token".into())
            })?;
        let mut store = RootCertStore::empty();
        store
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        IdentityVerifier {
            inner,
            expect: Some(self.expect.clone()),
        }
        .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    provider_signatures!();
}

/// Client side: TLS 1.3 only, presents our certificate, and verifies the
/// server chains to the CA. With `expect`, the server must also carry that
/// identity; it is then accepted even when the address dialled is not in
/// its certificate (fallback addresses, NAT).
pub fn client_config(files: &TlsFiles, expect: Option<Identity>) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_for(&files.ca, Some((&files.cert, &files.key)), expect)
}

/// Like [`client_config`], with an optional client certificate (callers
/// authenticating with a bearer token present none).
pub fn client_config_for(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    expect: Option<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(IdentityVerifier { inner, expect });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expect: Option<Identity>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let Some(expect) = &self.expect else {
            return result;
        };
        let actual = identity_of(end_entity);
        let name_mismatch = matches!(
            result,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        );
        if result.is_err() && !name_mismatch {
            return result;
        }
        if actual.as_ref() != Some(expect) {
            let shown = actual
                .map(|a| a.to_string())
                .unwrap_or_else(|| "no mcp identity".into());
            return Err(rustls::Error::General(format!(
                "server presented {shown}, expected {expect}"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    provider_signatures!();
}

/// Accepted TLS connections of `listener`, for `Server::serve_with_incoming`.
/// Handshakes run concurrently, each bounded by a timeout, so a slow client
/// cannot hold up the others.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let sender = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// How long to wait when connecting and per request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: None,
        }
    }
}

/// Connects to the first address of `addrs` that answers a TLS 1.3
/// handshake, in order. Returns the channel and the address used.
pub async fn connect(
    addrs: &[String],
    config: Arc<ClientConfig>,
    timeouts: Timeouts,
) -> Result<(Channel, String), TlsError> {
    let mut reasons = Vec::new();
    for addr in addrs {
        match connect_one(addr, config.clone(), timeouts).await {
            Ok(ch) => return Ok((ch, addr.clone())),
            Err(e) => reasons.push(format!("{addr}: {e}")),
        }
    }
    Err(TlsError::Connect {
        target: addrs.join(", "),
        reasons: if reasons.is_empty() {
            "no address configured".into()
        } else {
            reasons.join("; ")
        },
    })
}

async fn connect_one(addr: &str, config: Arc<ClientConfig>, timeouts: Timeouts) -> Result<Channel, String> {
    let host = host_of(addr).ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?,
    };
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(t) = timeouts.request {
        endpoint = endpoint.timeout(t);
    }
    let connector = TlsConnector::from(config);
    let target = addr.to_string();
    let svc = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    match tokio::time::timeout(timeouts.connect, endpoint.connect_with_connector(svc)).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("timed out after {:?}", timeouts.connect)),
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> Option<&str> {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    addr.rsplit_once(':').map(|(h, _)| h).filter(|h| !h.is_empty())
}

/// An error and all its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// Validates bearer tokens (MCIAS mode) into identities. A failure is the
/// status to answer with (`Unauthenticated`, or `Unavailable` when the
/// identity service cannot be asked: never allowed by default).
pub trait TokenValidator: Send + Sync {
    /// The identity a token stands for.
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, tonic::Status>>;
}

/// Tower layer authenticating and authorizing every gRPC request: the
/// identity comes from the verified peer certificate, else (when a
/// validator is configured) from an `authorization: Bearer` token; the
/// decision comes from [`mcp_model::identity::TABLE`]. The caller's
/// [`Identity`] is put into the request extensions for handlers.
#[derive(Clone, Default)]
pub struct AuthzLayer {
    tokens: Option<Arc<dyn TokenValidator>>,
}

impl AuthzLayer {
    /// Certificates only.
    pub fn new() -> Self {
        AuthzLayer { tokens: None }
    }

    /// Certificates, and bearer tokens checked by `tokens`.
    pub fn with_tokens(tokens: Arc<dyn TokenValidator>) -> Self {
        AuthzLayer { tokens: Some(tokens) }
    }
}

impl std::fmt::Debug for AuthzLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzLayer")
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// Service produced by [`AuthzLayer`].
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    tokens: Option<Arc<dyn TokenValidator>>,
}

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn header(req: &http::Request<impl Sized>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl<S, B, R> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let from_cert = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(|c| identity_of(c)));
        let claimed = header(&req, mcp_model::identity::NODE_METADATA);
        let bearer = header(&req, "authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
        let path = req.uri().path().to_string();
        let tokens = self.tokens.clone();
        // Standard tower pattern: call the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let identity = match (from_cert, bearer, tokens) {
                (Some(id), _, _) => Some(id),
                (None, Some(token), Some(v)) => match v.validate(&token).await {
                    Ok(id) => Some(id),
                    Err(status) => {
                        tracing::warn!(%path, code = ?status.code(), "bearer token refused");
                        return Ok(status.into_http());
                    }
                },
                (None, Some(_), None) => {
                    return Ok(tonic::Status::unauthenticated(
                        "bearer tokens are not accepted here (no MCIAS configured)",
                    )
                    .into_http());
                }
                (None, None, _) => None,
            };
            match authorize(&path, identity.as_ref(), claimed.as_deref()) {
                Decision::Allow => {
                    if let Some(id) = identity {
                        req.extensions_mut().insert(id);
                    }
                    inner.call(req).await
                }
                Decision::Unauthenticated(reason) => Ok(tonic::Status::unauthenticated(reason).into_http()),
                Decision::Deny(reason) => {
                    tracing::warn!(%path, %reason, "permission denied");
                    Ok(tonic::Status::permission_denied(reason).into_http())
                }
            }
        })
    }
}

/// The authenticated caller of a request (set by [`AuthzLayer`]).
pub fn caller<T>(req: &tonic::Request<T>) -> Option<&Identity> {
    req.extensions().get::<Identity>()
}

/// The mcp identity a DER certificate carries in its SAN URIs.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Identity::from_uri(u),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:9444"), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:9444"), Some("::1"));
        assert_eq!(host_of("rift:9444"), Some("rift"));
        assert_eq!(host_of("rift"), None);
    }
}
