//! The small HTTP/1.1 JSON client the REST adapters share (MCNS,
//! Metacrypt): one request per fresh connection, https trusting only a
//! configured CA (plain http only to loopback), a bounded exchange and
//! answer size, and a bearer token read from its file on every call.
//!
//! Errors: 401/403 → [`HttpError::Unauthorized`]; other 4xx →
//! [`HttpError::Rejected`] (the reason starts with the status code); no
//! connection, TLS failure, timeout or 5xx → [`HttpError::Unavailable`].
//! The token only ever goes into the `Authorization` header (marked
//! sensitive), never into a log line or an error.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::http::HeaderValue;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use mcp_common::tls::{error_chain, parse_certs};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest answer read.
const MAX_ANSWER_LEN: usize = 4 * 1024 * 1024;

/// Longest token accepted from a token file.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a call failed; each adapter maps these onto its own error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The bearer token cannot be read or sent.
    Token(String),
    /// A request this client will not build.
    Invalid(String),
    /// 401 or 403.
    Unauthorized(String),
    /// Another 4xx; the reason starts with the status code.
    Rejected(String),
    /// No connection, TLS failure, timeout or 5xx.
    Unavailable(String),
}

/// A REST API at one base URL.
pub struct HttpClient {
    target: Target,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl HttpClient {
    /// Client for `url`, trusting only the CA certificates in `ca` (required
    /// for https, refused for http). Every problem is pushed onto `errors`.
    pub fn new(url: &str, ca: Option<&Path>, timeout: Duration, errors: &mut Vec<String>) -> Option<HttpClient> {
        let target = Target::parse(url).map_err(|e| errors.push(e)).ok()?;
        let tls = match ca {
            Some(ca) if target.https => Some(tls_connector(ca).map_err(|e| errors.push(e)).ok()?),
            None if target.https => {
                errors.push(format!(
                    "ca: required for {}: there are no system roots to trust",
                    target.url
                ));
                return None;
            }
            Some(_) => {
                errors.push(format!("ca: set, but {} is plain http", target.url));
                return None;
            }
            None => None,
        };
        Some(HttpClient { target, tls, timeout })
    }

    /// The configured URL.
    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// Path prefix of the API (from the URL), without a trailing `/`.
    pub fn base_path(&self) -> &str {
        &self.target.base_path
    }

    /// One request on a fresh connection, bounded by the timeout; the body
    /// of a 2xx answer, or the error its status stands for. `path` includes
    /// the base path.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Bytes, HttpError> {
        let request = self.request(method.clone(), path, token, body)?;
        let exchange = async {
            let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            // Best effort: only latency depends on it.
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                Some(connector) => {
                    let tls = connector
                        .connect(self.target.server_name.clone(), tcp)
                        .await
                        .map_err(|e| format!("tls: {}", error_chain(&e)))?;
                    send(TokioIo::new(tls), request).await
                }
                None => send(TokioIo::new(tcp), request).await,
            }
        };
        let what = format!("{method} {}{path}", self.target.origin);
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => return Err(HttpError::Unavailable(format!("{what}: {reason}"))),
            Err(_) => {
                return Err(HttpError::Unavailable(format!(
                    "{what}: no answer within {}s",
                    self.timeout.as_secs()
                )));
            }
        };
        if status.is_success() {
            return Ok(body);
        }
        let reason = format!(
            "{status}{}",
            server_message(&body).map(|m| format!(": {m}")).unwrap_or_default()
        );
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HttpError::Unauthorized(format!("{reason} ({what})")),
            s if s.is_client_error() => HttpError::Rejected(format!("{reason} ({what})")),
            _ => HttpError::Unavailable(format!("{reason} ({what})")),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.target.authority.as_str())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("mcp-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = token {
            let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| HttpError::Token("the token has characters not allowed in a header".into()))?;
            bearer.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, bearer);
        }
        let payload = match body {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(payload))
            .map_err(|e| HttpError::Invalid(format!("cannot build the request for {path}: {e}")))
    }
}

/// The bearer token in `path`, trimmed; errors name the file, never its content.
pub fn read_token(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let raw = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{shown} does not hold a bearer token"));
    }
    Ok(token.to_string())
}

/// Checks that a token file is configured.
pub fn check_token_path(path: &Path, errors: &mut Vec<String>) {
    if path.as_os_str().is_empty() {
        errors.push("token_path: must be set".into());
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
async fn send<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
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
    let body = Limited::new(response.into_body(), MAX_ANSWER_LEN)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {}", error_chain(&*e)))?
        .to_bytes();
    Ok((status, body))
}

/// The `error` (or `message`) of a JSON error body, else short plain text.
fn server_message(body: &[u8]) -> Option<String> {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => ["error", "message"]
            .iter()
            .find_map(|k| v.get(k).and_then(Value::as_str).map(str::to_string))?,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    (!text.is_empty()).then_some(text)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the API is, parsed from the configured URL.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    https: bool,
    /// Host to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    /// `scheme://authority`, for error messages.
    origin: String,
    /// Path prefix of the API, without a trailing `/`.
    base_path: String,
    server_name: ServerName<'static>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
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
        Ok(Target {
            url: url.to_string(),
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            origin: format!("{}://{}", if https { "https" } else { "http" }, authority.as_str()),
            authority: authority.as_str().to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            host,
            server_name,
        })
    }
}

/// TLS 1.2/1.3 client trusting only the CA in `ca` (ring provider, no client certificate).
fn tls_connector(ca: &Path) -> Result<TlsConnector, String> {
    let shown = ca.display();
    let pem = std::fs::read(ca).map_err(|e| format!("ca: {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(&pem).map_err(|e| format!("ca: {shown}: {e}"))? {
        roots.add(cert).map_err(|e| format!("ca: {shown}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// For adapter tests: a TLS acceptor for a stand-in server on loopback,
/// with a certificate for `localhost` and 127.0.0.1 from a CA created in
/// `dir` (clients trust it through `Ca::cert_path(dir)`).
#[cfg(test)]
pub(crate) fn loopback_tls_acceptor(dir: &std::path::Path, ca_name: &str) -> tokio_rustls::TlsAcceptor {
    use mcp_common::pki::{Ca, LeafRequest};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let ca = Ca::create(dir, ca_name).expect("create CA");
    let leaf = ca
        .issue(&LeafRequest {
            identity: None,
            dns_names: vec!["localhost".into()],
            ips: vec![std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
            days: 30,
        })
        .expect("issue certificate");
    let certs = mcp_common::tls::parse_certs(leaf.chain_pem.as_bytes()).expect("chain");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_cas() {
        let t = Duration::from_secs(1);
        let mut errors = Vec::new();
        let c = HttpClient::new("http://[::1]:8080/api/", None, t, &mut errors).expect("loopback http");
        assert_eq!(c.base_path(), "/api");
        assert!(errors.is_empty());
        for (url, ca, part) in [
            ("http://mcns.example:8443", None, "plain http"),
            ("https://mcns.example", None, "ca: required"),
            ("http://127.0.0.1:1", Some(Path::new("/ca.pem")), "ca: set"),
            ("ftp://x", None, "https://"),
            ("https://user:pw@x", None, "credentials"),
            ("https://x/?a=b", None, "query"),
            (
                "https://x",
                Some(Path::new("/nonexistent/ca.pem")),
                "/nonexistent/ca.pem",
            ),
        ] {
            let mut errors = Vec::new();
            assert!(HttpClient::new(url, ca, t, &mut errors).is_none(), "{url}");
            assert!(errors.iter().any(|e| e.contains(part)), "{url}: {errors:?}");
        }
        assert_eq!(encode("a b/c@d"), "a%20b%2Fc%40d");
        assert_eq!(server_message(br#"{"error":"no"}"#).as_deref(), Some("no"));
        assert_eq!(server_message(b"  "), None);
    }

    #[test]
    fn tokens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("t");
        std::fs::write(&p, " s3cret\n").expect("write");
        assert_eq!(read_token(&p).as_deref(), Ok("s3cret"));
        std::fs::write(&p, "two words").expect("write");
        let e = read_token(&p).expect_err("space");
        assert!(e.contains("does not hold") && !e.contains("words"), "{e}");
        std::fs::write(&p, "\n").expect("write");
        assert!(read_token(&p).expect_err("empty").contains("empty"));
        assert!(read_token(&dir.path().join("none")).is_err());
    }
}
