//! The HTTP(S) endpoint of a platform service (MCIAS, MCNS, Metacrypt),
//! parsed from its configured URL: https trusting only a configured CA
//! (TLS 1.3, ring provider, no client certificate), plain http only to
//! loopback, no credentials or query in the URL; one request per fresh
//! connection with a bounded answer. Callers bound the exchange in time and
//! build their own requests (the `Host` header is [`Endpoint::authority`]).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{error_chain, parse_certs};

/// Where a REST service is and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    /// The configured URL.
    pub url: String,
    /// `scheme://authority`, for error messages.
    pub origin: String,
    /// `Host` header value.
    pub authority: String,
    /// Path prefix of the API, without a trailing `/`.
    pub base_path: String,
    /// Host to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// Present for https.
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The endpoint at `url`, trusting only the CA certificates in `ca`
    /// (required for https, refused for http). Every problem is pushed onto
    /// `errors`, each starting with the configuration field (`url:`, `ca:`).
    pub fn new(url: &str, ca: Option<&Path>, errors: &mut Vec<String>) -> Option<Endpoint> {
        let mut endpoint = Endpoint::parse(url).map_err(|e| errors.push(e)).ok()?;
        let https = endpoint.origin.starts_with("https:");
        match ca {
            Some(ca) if https => endpoint.tls = Some(tls_connector(ca).map_err(|e| errors.push(e)).ok()?),
            None if https => {
                errors.push(format!("ca: required for {url}: there are no system roots to trust"));
                return None;
            }
            Some(_) => {
                errors.push(format!("ca: set, but {url} is plain http"));
                return None;
            }
            None => {}
        }
        Some(endpoint)
    }

    fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("url: {url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "url: {url:?} must start with https:// (or http:// to loopback)"
                ));
            }
        };
        let authority = uri.authority().ok_or_else(|| format!("url: {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("url: {url:?} must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(format!("url: {url:?} must not have a query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("url: {url:?} has no host"));
        }
        let ip = host.parse::<IpAddr>().ok();
        let loopback = host.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(format!(
                "url: {url:?} is plain http to a host that is not loopback: use https"
            ));
        }
        let server_name = match ip {
            Some(ip) => ServerName::IpAddress(ip.into()),
            None => ServerName::try_from(host.clone()).map_err(|e| format!("url: {url:?}: {e}"))?,
        };
        Ok(Endpoint {
            url: url.to_string(),
            origin: format!("{}://{}", if https { "https" } else { "http" }, authority.as_str()),
            authority: authority.as_str().to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            server_name,
            tls: None,
        })
    }

    /// Sends `request` on a fresh connection and reads at most `max_answer`
    /// bytes of the answer. The error is the reason alone (no URL); the
    /// caller bounds the whole exchange with its timeout.
    pub async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        max_answer: usize,
    ) -> Result<(StatusCode, Bytes), String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        // Best effort: only latency depends on it.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(connector) => {
                let tls = connector
                    .connect(self.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("tls: {}", error_chain(&e)))?;
                send(TokioIo::new(tls), request, max_answer).await
            }
            None => send(TokioIo::new(tcp), request, max_answer).await,
        }
    }
}

/// Stops a spawned task when dropped, so a timed-out exchange leaves nothing behind.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one HTTP/1.1 request on a fresh connection and reads the answer.
async fn send<IO>(io: IO, request: Request<Full<Bytes>>, max_answer: usize) -> Result<(StatusCode, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {}", error_chain(&e)))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {}", error_chain(&e)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {}", error_chain(&*e)))?
        .to_bytes();
    Ok((status, body))
}

/// TLS 1.3 client trusting only the CA in `ca`.
fn tls_connector(ca: &Path) -> Result<TlsConnector, String> {
    let shown = ca.display();
    let pem = std::fs::read(ca).map_err(|e| format!("ca: {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(&pem).map_err(|e| format!("ca: {shown}: {e}"))? {
        roots.add(cert).map_err(|e| format!("ca: {shown}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_cas() {
        let mut errors = Vec::new();
        let e = Endpoint::new("http://[::1]:8080/api/", None, &mut errors).expect("loopback http");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        assert_eq!(e.base_path, "/api");
        assert_eq!(e.authority, "[::1]:8080");
        assert_eq!(e.origin, "http://[::1]:8080");
        let e = Endpoint::parse("https://mcns.example").expect("https");
        assert_eq!((e.port, e.base_path.as_str()), (443, ""));
        for (url, ca, part) in [
            ("http://mcns.example:8443", None, "plain http"),
            ("https://mcns.example", None, "ca: required"),
            ("http://127.0.0.1:1", Some(Path::new("/ca.pem")), "ca: set"),
            ("ftp://x", None, "https://"),
            ("https://user:pw@x", None, "credentials"),
            ("https://x/?a=b", None, "query"),
            ("not a url", None, "not a URL"),
            (
                "https://x",
                Some(Path::new("/nonexistent/ca.pem")),
                "/nonexistent/ca.pem",
            ),
        ] {
            let mut errors = Vec::new();
            assert!(Endpoint::new(url, ca, &mut errors).is_none(), "{url}");
            assert!(errors.iter().any(|e| e.contains(part)), "{url}: {errors:?}");
        }
    }
}

/// Stand-in servers for the tests of the REST clients (here and in the
/// agent's adapters): plain or TLS HTTP/1.1 on loopback.
#[doc(hidden)]
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;
    use std::sync::Arc;

    use http::{Request, Response};
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use crate::pki::{Ca, LeafRequest};

    /// A TLS 1.3 acceptor with a certificate for `localhost` and 127.0.0.1 from
    /// a CA created in `dir` (clients trust it through `Ca::cert_path(dir)`).
    pub fn loopback_tls_acceptor(dir: &Path, ca_name: &str) -> TlsAcceptor {
        let ca = Ca::create(dir, ca_name).expect("create CA");
        let leaf = ca
            .issue(&LeafRequest {
                identity: None,
                dns_names: vec!["localhost".into()],
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                days: 30,
            })
            .expect("issue certificate");
        let certs = crate::tls::parse_certs(leaf.chain_pem.as_bytes()).expect("chain");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls 1.3")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Serves every connection `listener` accepts (through `tls` when
    /// given) with `handle`, until the returned task is aborted.
    pub fn serve<F, Fut>(listener: TcpListener, tls: Option<TlsAcceptor>, handle: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
    {
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(handle);
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(tcp), service).await,
                    };
                });
            }
        })
    }
}
