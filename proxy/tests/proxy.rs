//! The built-in proxy, end to end over loopback: real clients (curl,
//! openssl s_client, rustls/hyper), real backends (hyper, plain and TLS),
//! certificates from the mcp CA.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_infra::pki::{Ca, LeafRequest};
use mcp_proxy::{BuiltinProxy, Mode, ProxyConfig, ProxyRoute};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LISTENER: u16 = 443;

// ---------------------------------------------------------------- PKI

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::create(dir.path(), name).expect("create CA");
        Pki { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        Ca::cert_path(self.dir.path())
    }

    /// Issues (or re-issues) `<name>.pem` / `<name>.key` for `dns` and 127.0.0.1.
    fn issue(&self, name: &str, dns: &[&str]) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        self.ca
            .issue(&LeafRequest {
                identity: None,
                dns_names: dns.iter().map(|d| d.to_string()).collect(),
                ips: vec!["127.0.0.1".parse().expect("ip")],
                days: 30,
            })
            .expect("issue")
            .write(&cert, &key)
            .expect("write cert");
        (cert, key)
    }

    fn server_config(&self, name: &str, dns: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(name, dns);
        let chain = mcp_infra::tls::parse_certs(&std::fs::read(cert).expect("read")).expect("certs");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&std::fs::read(key).expect("read")).expect("key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in mcp_infra::tls::parse_certs(&std::fs::read(ca).expect("read CA")).expect("CA") {
        roots.add(c).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

// ---------------------------------------------------------------- backends

type BackendBody = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<BackendBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r
}

/// A backend that describes the request it got (`key=value` lines), streams
/// `/slow?n=N&ms=M`, and echoes bytes after an `Upgrade: echo` handshake.
async fn backend_service(label: &'static str, mut req: Request<Incoming>) -> Result<Response<BackendBody>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(Empty::new().boxed());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("connection", "upgrade".parse().expect("value"));
        r.headers_mut().insert("upgrade", "echo".parse().expect("value"));
        return Ok(r);
    }
    if req.uri().path() == "/slow" {
        let q: BTreeMap<String, u64> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect();
        let (n, ms) = (q.get("n").copied().unwrap_or(5), q.get("ms").copied().unwrap_or(100));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for i in 0..n {
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("chunk {i}\n")))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    let mut lines = vec![
        format!("backend={label}"),
        format!("version={:?}", req.version()),
        format!("host={}", header("host")),
        format!(
            "authority={}",
            req.uri().authority().map(|a| a.to_string()).unwrap_or_default()
        ),
        format!("xff={}", header("x-forwarded-for")),
        format!("xfp={}", header("x-forwarded-proto")),
        format!("path={}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")),
    ];
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    lines.push(format!("len={}", body.len()));
    Ok(text(StatusCode::OK, lines.join("\n") + "\n"))
}

/// Starts a backend on a free loopback port; TLS (h2 or HTTP/1.1 by ALPN)
/// when given a server config.
async fn spawn_backend(label: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| backend_service(label, req));
                match tls {
                    None => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .with_upgrades()
                            .await;
                    }
                    Some(cfg) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                            return;
                        };
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A loopback port with nothing listening.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

// ---------------------------------------------------------------- fixture

/// A proxy with one listener (route port 443 → a free loopback port) that
/// carries L4 and L7 routes side by side:
///
/// | host | mode | backend |
/// |---|---|---|
/// | web.test, www.test | l7 (cert `web`) | plain HTTP/1.1 |
/// | alt.test | l7 (cert `alt`) | plain |
/// | secure.test | l7 (cert `secure`) | TLS (h2 by ALPN), fleet CA |
/// | pass.test | l4 | TLS backend with a certificate from another CA |
/// | down.test | l7 | nothing listening |
/// | gone.test | l4 | nothing listening |
struct Fixture {
    pki: Pki,
    backend_pki: Pki,
    proxy: Arc<BuiltinProxy>,
    addr: SocketAddr,
    plain: SocketAddr,
    pass: SocketAddr,
    web_cert: (PathBuf, PathBuf),
}

struct Timeouts {
    handshake: Duration,
    idle: Duration,
    max_connections: usize,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

fn route(service: &str, host: &str, mode: Mode, backend: SocketAddr, cert: Option<&(PathBuf, PathBuf)>) -> ProxyRoute {
    ProxyRoute {
        service: service.into(),
        listener_port: LISTENER,
        hostname: host.into(),
        mode,
        backend: backend.to_string(),
        backend_tls: false,
        backend_name: None,
        cert: cert.map(|c| c.0.clone()),
        key: cert.map(|c| c.1.clone()),
    }
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with(Timeouts::default()).await
    }

    async fn with(t: Timeouts) -> Fixture {
        let pki = Pki::new("fleet");
        let backend_pki = Pki::new("backend");
        let plain = spawn_backend("plain", None).await;
        let secure = spawn_backend(
            "tls",
            Some(pki.server_config("secure-backend", &["secure-backend.test"])),
        )
        .await;
        let pass = spawn_backend("pass", Some(backend_pki.server_config("pass", &["pass.test"]))).await;
        let mut cfg = ProxyConfig::new([(LISTENER, "127.0.0.1:0".parse().expect("addr"))].into());
        cfg.connect_timeout = Duration::from_secs(2);
        cfg.handshake_timeout = t.handshake;
        cfg.idle_timeout = t.idle;
        cfg.max_connections = t.max_connections;
        cfg.backend_ca = Some(pki.ca_path());
        let proxy = BuiltinProxy::start(cfg).expect("start proxy");
        let addr = proxy.local_addr(LISTENER).expect("listener");
        let web_cert = pki.issue("web", &["web.test", "www.test"]);
        let alt_cert = pki.issue("alt", &["alt.test"]);
        let secure_cert = pki.issue("secure", &["secure.test"]);
        let down_cert = pki.issue("down", &["down.test"]);
        let dead = dead_port().await;
        proxy
            .set_routes(
                "web",
                vec![
                    route("web", "web.test", Mode::L7, plain, Some(&web_cert)),
                    route("web", "www.test", Mode::L7, plain, Some(&web_cert)),
                ],
            )
            .await
            .expect("web routes");
        proxy
            .set_routes("alt", vec![route("alt", "alt.test", Mode::L7, plain, Some(&alt_cert))])
            .await
            .expect("alt routes");
        let mut secure_route = route("secure", "secure.test", Mode::L7, secure, Some(&secure_cert));
        secure_route.backend_tls = true;
        proxy
            .set_routes("secure", vec![secure_route])
            .await
            .expect("secure routes");
        proxy
            .set_routes("pass", vec![route("pass", "pass.test", Mode::L4, pass, None)])
            .await
            .expect("pass routes");
        proxy
            .set_routes(
                "down",
                vec![
                    route("down", "down.test", Mode::L7, dead, Some(&down_cert)),
                    route("down", "gone.test", Mode::L4, dead, None),
                ],
            )
            .await
            .expect("down routes");
        Fixture {
            pki,
            backend_pki,
            proxy,
            addr,
            plain,
            pass,
            web_cert,
        }
    }

    /// `curl` through the proxy: (HTTP status, HTTP version, body), or the
    /// exit status and stderr when curl itself failed.
    async fn curl(&self, host: &str, path: &str, ca: &Path, args: &[&str]) -> Result<(u16, String, String), String> {
        let port = self.addr.port();
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(ca)
            .arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(args)
            .arg(format!("https://{host}:{port}{path}"))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let (body, last) = stdout.rsplit_once('\n').expect("curl -w line");
        let (code, version) = last.split_once(' ').expect("code and version");
        Ok((code.parse().expect("code"), version.to_string(), body.to_string()))
    }

    async fn get(&self, host: &str, path: &str, args: &[&str]) -> (u16, String, String) {
        self.curl(host, path, &self.pki.ca_path(), args)
            .await
            .unwrap_or_else(|e| panic!("curl https://{host}{path} {args:?}: {e}"))
    }

    /// A TLS connection through the proxy with this SNI, verified against `ca`.
    async fn tls(
        &self,
        sni: &str,
        ca: &Path,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from(sni.to_string()).expect("name");
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(client_config(ca, alpn)).connect(name, tcp),
        )
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("tls handshake hung")))
    }

    /// An HTTP/1.1 client connection through the proxy.
    async fn h1(&self, sni: &str, ca: &Path) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let tls = self.tls(sni, ca, &[b"http/1.1"]).await.expect("tls through proxy");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http handshake");
        tokio::spawn(conn.with_upgrades());
        sender
    }
}

fn kv(body: &str, key: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {body:?}"))
        .to_string()
}

async fn get_text(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> (StatusCode, String) {
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// True when the peer closes (EOF or reset) within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a TLS alert before the close
        }
    }
}

/// A real ClientHello (rustls) for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(sni.to_string()).expect("name"))
        .expect("conn");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write");
    }
    out
}

/// Polls until the proxy's listener has no open connection.
async fn drained(proxy: &BuiltinProxy, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if proxy.connections(LISTENER) == Some(0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---------------------------------------------------------------- L7

#[tokio::test]
async fn l7_serves_http1_and_h2_to_plain_and_tls_backends_with_forwarded_headers() {
    let fx = Fixture::new().await;
    let port = fx.addr.port();

    let (code, version, body) = fx.get("web.test", "/hello?x=1", &["--http1.1"]).await;
    assert_eq!((code, version.as_str()), (200, "1.1"), "{body}");
    assert_eq!(kv(&body, "backend"), "plain");
    assert_eq!(kv(&body, "version"), "HTTP/1.1");
    assert_eq!(kv(&body, "host"), format!("web.test:{port}"));
    assert_eq!(kv(&body, "xff"), "127.0.0.1");
    assert_eq!(kv(&body, "xfp"), "https");
    assert_eq!(kv(&body, "path"), "/hello?x=1");

    let (code, version, body) = fx
        .get(
            "web.test",
            "/h2",
            &[
                "--http2",
                "-H",
                "X-Forwarded-For: 203.0.113.9",
                "-H",
                "X-Forwarded-Proto: http",
            ],
        )
        .await;
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    assert_eq!(kv(&body, "version"), "HTTP/1.1", "plain backends get HTTP/1.1");
    assert_eq!(
        kv(&body, "host"),
        format!("web.test:{port}"),
        "Host from the h2 :authority"
    );
    assert_eq!(kv(&body, "xff"), "203.0.113.9, 127.0.0.1", "the client is appended");
    assert_eq!(kv(&body, "xfp"), "https");

    // A second name on the same certificate is routed by Host.
    let (code, _, body) = fx.get("www.test", "/", &["--http2"]).await;
    assert_eq!(code, 200);
    assert_eq!(kv(&body, "host"), format!("www.test:{port}"));

    // TLS to the backend (verified against the fleet CA), h2 by ALPN; the
    // backend sees the client's host as :authority and no Host header.
    for flag in ["--http1.1", "--http2"] {
        let (code, _, body) = fx.get("secure.test", "/s", &[flag]).await;
        assert_eq!(code, 200, "{flag}: {body}");
        assert_eq!(kv(&body, "backend"), "tls");
        assert_eq!(kv(&body, "version"), "HTTP/2.0", "{flag}");
        assert_eq!(kv(&body, "authority"), format!("secure.test:{port}"), "{flag}");
        assert_eq!(kv(&body, "host"), "", "{flag}");
        assert_eq!(kv(&body, "xff"), "127.0.0.1", "{flag}");
        assert_eq!(kv(&body, "xfp"), "https", "{flag}");
    }

    // Request bodies stream through both ways.
    let upload = fx.pki.dir.path().join("upload.bin");
    std::fs::write(&upload, vec![7u8; 3 * 1024 * 1024 + 5]).expect("write upload");
    let data = format!("@{}", upload.display());
    for (host, flag) in [
        ("web.test", "--http1.1"),
        ("web.test", "--http2"),
        ("secure.test", "--http2"),
    ] {
        let (code, _, body) = fx.get(host, "/up", &[flag, "--data-binary", &data]).await;
        assert_eq!(code, 200, "{host} {flag}");
        assert_eq!(kv(&body, "len"), (3 * 1024 * 1024 + 5).to_string(), "{host} {flag}");
    }
}

#[tokio::test]
async fn l7_chain_verifies_to_the_ca_over_tls12_and_tls13() {
    let fx = Fixture::new().await;
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(fx.addr.to_string())
            .args([
                "-servername",
                "web.test",
                "-showcerts",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(fx.pki.ca_path())
            .arg(flag)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run openssl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{flag}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Verify return code: 0 (ok)"), "{flag}: {text}");
        assert_eq!(
            text.matches("-----BEGIN CERTIFICATE-----").count(),
            2,
            "{flag}: the full chain (leaf and CA) is served: {text}"
        );
        assert!(text.contains(protocol), "{flag}: {text}");
    }
}

#[tokio::test]
async fn l7_upgrade_is_spliced_through() {
    let fx = Fixture::new().await;
    let mut sender = fx.h1("web.test", &fx.pki.ca_path()).await;
    let req = Request::get("/ws")
        .header("host", "web.test")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgrade"));
    io.write_all(b"ping over the proxy").await.expect("write");
    let mut buf = [0u8; 19];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"ping over the proxy");
}

// ---------------------------------------------------------------- L4

#[tokio::test]
async fn l4_passes_the_backends_own_tls_through_untouched() {
    let fx = Fixture::new().await;
    // Verifies against the backend's CA: the proxy cannot have terminated.
    let (code, _, body) = fx
        .curl("pass.test", "/p", &fx.backend_pki.ca_path(), &["--http2"])
        .await
        .expect("curl through l4");
    assert_eq!(code, 200);
    assert_eq!(kv(&body, "backend"), "pass");
    assert_eq!(kv(&body, "version"), "HTTP/2.0", "ALPN is the backend's business");
    assert_eq!(kv(&body, "xff"), "", "nothing is added to passthrough traffic");
    // Against the fleet CA the backend's certificate does not verify.
    let err = fx
        .curl("pass.test", "/p", &fx.pki.ca_path(), &[])
        .await
        .expect_err("fleet CA must not verify the backend's cert");
    assert!(err.contains("exit status: 60"), "{err}");

    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(fx.addr.to_string())
        .args(["-servername", "pass.test", "-verify_return_error", "-CAfile"])
        .arg(fx.backend_pki.ca_path())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("CN = pass.test") && text.contains("backend CA"), "{text}");
}

// ---------------------------------------------------------------- refusals

#[tokio::test]
async fn unknown_names_are_refused_closed_or_421() {
    let fx = Fixture::new().await;
    let ca = fx.pki.ca_path();
    // No route for the SNI: closed before any certificate is shown.
    let err = fx.tls("nobody.test", &ca, &[]).await.expect_err("unknown SNI");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    // No SNI at all (an IP literal sends none).
    let mut tcp = TcpStream::connect(fx.addr).await.expect("connect");
    tcp.write_all(&client_hello("127.0.0.1")).await.expect("write");
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await, "no SNI → closed");
    // TLS with web.test's certificate, but a Host the connection cannot serve.
    for flag in ["--http1.1", "--http2"] {
        for host in ["nobody.test", "alt.test", "pass.test"] {
            let (code, _, body) = fx.get("web.test", "/", &[flag, "-H", &format!("Host: {host}")]).await;
            assert_eq!(code, 421, "{flag} Host {host}: {body}");
            assert_eq!(body, "misdirected request\n");
        }
    }
    // The names still work on their own connections.
    assert_eq!(fx.get("alt.test", "/", &[]).await.0, 200);
}

#[tokio::test]
async fn backend_down_is_502_on_l7_and_closed_on_l4() {
    let fx = Fixture::new().await;
    for flag in ["--http1.1", "--http2"] {
        let (code, _, body) = fx.get("down.test", "/", &[flag]).await;
        assert_eq!((code, body.as_str()), (502, "bad gateway\n"), "{flag}");
    }
    let err = fx
        .tls("gone.test", &fx.pki.ca_path(), &[])
        .await
        .expect_err("l4 to nothing");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    assert_eq!(fx.get("web.test", "/", &[]).await.0, 200, "other routes unaffected");
}

// ---------------------------------------------------------------- robustness

#[tokio::test]
async fn garbage_truncated_hellos_and_slow_clients_are_closed_while_others_serve() {
    let fx = Fixture::with(Timeouts {
        handshake: Duration::from_millis(800),
        idle: Duration::from_millis(1500),
        max_connections: 256,
    })
    .await;
    let hello = client_hello("web.test");
    let started = Instant::now();
    let mut attackers = tokio::task::JoinSet::new();
    // Bytes that are not TLS at all: closed at once.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"[..],
        b"\x00\x00\x00\x00",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ] {
        let addr = fx.addr;
        let junk = junk.to_vec();
        attackers.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(&junk).await.expect("write");
            ("junk", closed_within(&mut tcp, Duration::from_millis(500)).await)
        });
    }
    // Random bytes and mutated hellos (deterministic): closed at once or by
    // the handshake timeout, never left open.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..60 {
        let mut bytes = if i % 2 == 0 {
            (0..(next() % 300 + 1)).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            let mut m = hello.clone();
            for _ in 0..(next() % 6 + 1) {
                let at = (next() as usize) % m.len();
                m[at] = next() as u8;
            }
            m
        };
        if i % 3 == 0 {
            bytes.truncate((next() as usize) % bytes.len() + 1);
        }
        let addr = fx.addr;
        attackers.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            let _ = tcp.write_all(&bytes).await;
            ("fuzz", closed_within(&mut tcp, Duration::from_secs(3)).await)
        });
    }
    // A truncated ClientHello, then silence; and silence from the start.
    for cut in [hello.len() / 2, 5, 0] {
        let addr = fx.addr;
        let part = hello[..cut].to_vec();
        attackers.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(&part).await.expect("write");
            let t = Instant::now();
            let closed = closed_within(&mut tcp, Duration::from_secs(3)).await;
            ("stalled hello", closed && t.elapsed() >= Duration::from_millis(600))
        });
    }
    // Slowloris after the handshake: headers never finished.
    {
        let tls = fx
            .tls("web.test", &fx.pki.ca_path(), &[b"http/1.1"])
            .await
            .expect("tls");
        attackers.spawn(async move {
            let mut tls = tls;
            tls.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nX-Slow: ")
                .await
                .expect("write");
            ("slowloris", closed_within(&mut tls, Duration::from_secs(4)).await)
        });
    }
    // Meanwhile, real clients are served.
    for flag in ["--http1.1", "--http2", "--http1.1", "--http2"] {
        let (code, _, _) = fx.get("web.test", "/", &[flag]).await;
        assert_eq!(code, 200);
        let (code, _, _) = fx
            .curl("pass.test", "/", &fx.backend_pki.ca_path(), &[flag])
            .await
            .expect("l4");
        assert_eq!(code, 200);
    }
    while let Some(r) = attackers.join_next().await {
        let (what, ok) = r.expect("attacker task");
        assert!(ok, "{what} connection was not closed in time");
    }
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert!(
        drained(&fx.proxy, Duration::from_secs(3)).await,
        "connections left open"
    );
    assert_eq!(fx.get("web.test", "/", &[]).await.0, 200);
}

#[tokio::test]
async fn idle_connections_are_closed_by_the_idle_timeout() {
    let fx = Fixture::with(Timeouts {
        handshake: Duration::from_secs(2),
        idle: Duration::from_millis(800),
        max_connections: 256,
    })
    .await;
    // L7 keep-alive connection, idle after one request.
    let mut sender = fx.h1("web.test", &fx.pki.ca_path()).await;
    assert_eq!(get_text(&mut sender, "web.test", "/").await.0, StatusCode::OK);
    // L4 connection, idle after one request.
    let mut l4 = fx.h1("pass.test", &fx.backend_pki.ca_path()).await;
    assert_eq!(get_text(&mut l4, "pass.test", "/").await.0, StatusCode::OK);
    let t = Instant::now();
    while !(sender.is_closed() && l4.is_closed()) {
        assert!(t.elapsed() < Duration::from_secs(4), "idle connections still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "closed too early: {:?}",
        t.elapsed()
    );
    // A streaming response with bytes flowing is not idle, even when it
    // lasts longer than the idle timeout.
    let (code, _, body) = fx.get("web.test", "/slow?n=8&ms=250", &[]).await;
    assert_eq!(code, 200);
    assert_eq!(body.lines().count(), 8);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_slots_come_back() {
    let fx = Fixture::with(Timeouts {
        handshake: Duration::from_millis(1500),
        idle: Duration::from_secs(5),
        max_connections: 3,
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(fx.addr).await.expect("connect"));
    }
    let t = Instant::now();
    while fx.proxy.connections(LISTENER) != Some(3) {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{:?}",
            fx.proxy.connections(LISTENER)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut extra = TcpStream::connect(fx.addr).await.expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_millis(500)).await,
        "a fourth connection is closed at once"
    );
    // The held (silent) connections time out and free their slots.
    for mut h in held {
        assert!(closed_within(&mut h, Duration::from_secs(3)).await);
    }
    assert!(drained(&fx.proxy, Duration::from_secs(2)).await);
    assert_eq!(fx.get("web.test", "/", &[]).await.0, 200);
}

// ---------------------------------------------------------------- changes

#[tokio::test]
async fn established_connections_survive_route_changes_and_removal() {
    let fx = Fixture::new().await;
    // A long L7 stream in flight (h2 and HTTP/1.1)...
    let slow = |flag: &'static str| {
        let port = fx.addr.port();
        let ca = fx.pki.ca_path();
        tokio::spawn(async move {
            tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "20", flag, "--cacert"])
                .arg(ca)
                .arg("--resolve")
                .arg(format!("web.test:{port}:127.0.0.1"))
                .arg(format!("https://web.test:{port}/slow?n=10&ms=150"))
                .stdin(Stdio::null())
                .output()
                .await
                .expect("curl")
        })
    };
    let h1_stream = slow("--http1.1");
    let h2_stream = slow("--http2");
    // ...and an L4 keep-alive connection with one request done.
    let mut l4 = fx.h1("pass.test", &fx.backend_pki.ca_path()).await;
    assert_eq!(get_text(&mut l4, "pass.test", "/").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Routes change (new backend, which is down), then go away entirely.
    let dead = dead_port().await;
    fx.proxy
        .set_routes(
            "web",
            vec![route("web", "web.test", Mode::L7, dead, Some(&fx.web_cert))],
        )
        .await
        .expect("change");
    fx.proxy
        .set_routes("pass", vec![route("pass", "pass.test", Mode::L4, dead, None)])
        .await
        .expect("change");
    tokio::time::sleep(Duration::from_millis(200)).await;
    fx.proxy.remove_routes("web").await.expect("remove");
    fx.proxy.remove_routes("pass").await.expect("remove");

    for (name, stream) in [("http/1.1", h1_stream), ("h2", h2_stream)] {
        let out = stream.await.expect("join");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let expected: String = (0..10).map(|i| format!("chunk {i}\n")).collect();
        assert_eq!(body, expected, "{name} stream completed");
    }
    // The established L4 connection still reaches its backend.
    let (status, body) = get_text(&mut l4, "pass.test", "/again").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kv(&body, "path"), "/again");
    // New connections see the new table: no route, closed.
    assert!(fx.tls("web.test", &fx.pki.ca_path(), &[]).await.is_err());
    assert!(fx.tls("pass.test", &fx.backend_pki.ca_path(), &[]).await.is_err());
    assert_eq!(fx.get("alt.test", "/", &[]).await.0, 200, "other services untouched");
    let _ = fx.plain;
    let _ = fx.pass;
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections() {
    let fx = Fixture::new().await;
    let ca = fx.pki.ca_path();
    let leaf = |pem: &Path| mcp_infra::tls::parse_certs(&std::fs::read(pem).expect("read")).expect("pem")[0].clone();
    let served = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().expect("peer certs")[0].clone()
    };
    let old_leaf = leaf(&fx.web_cert.0);
    let first = fx.tls("web.test", &ca, &[]).await.expect("tls");
    assert_eq!(served(&first), old_leaf);
    let mut established = fx.h1("web.test", &ca).await;
    assert_eq!(get_text(&mut established, "web.test", "/").await.0, StatusCode::OK);

    // Renewal writes the pair again (atomic rename), as the agent does.
    let renewed = fx.pki.issue("web", &["web.test", "www.test"]);
    assert_eq!(renewed, fx.web_cert);
    let new_leaf = leaf(&fx.web_cert.0);
    assert_ne!(new_leaf, old_leaf);
    let next = fx.tls("web.test", &ca, &[]).await.expect("tls");
    assert_eq!(served(&next), new_leaf, "a new connection gets the renewed certificate");
    assert_eq!(
        get_text(&mut established, "web.test", "/").await.0,
        StatusCode::OK,
        "old connection still works"
    );
}

// ---------------------------------------------------------------- API

#[tokio::test]
async fn set_routes_refuses_bad_sets_whole_and_lists_routes() {
    let fx = Fixture::new().await;
    let before = fx.proxy.routes().await.expect("routes");
    let hosts: Vec<_> = before
        .iter()
        .map(|r| (r.service.as_str(), r.hostname.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("alt", "alt.test"),
            ("down", "down.test"),
            ("down", "gone.test"),
            ("pass", "pass.test"),
            ("secure", "secure.test"),
            ("web", "web.test"),
            ("web", "www.test"),
        ]
    );
    let ok = route("web", "web.test", Mode::L7, fx.plain, Some(&fx.web_cert));
    let mut no_listener = route("web", "web2.test", Mode::L4, fx.plain, None);
    no_listener.listener_port = 8443;
    let missing = (
        fx.pki.dir.path().join("missing.pem"),
        fx.pki.dir.path().join("missing.key"),
    );
    let open_key = fx.pki.issue("open", &["open.test"]);
    std::fs::set_permissions(&open_key.1, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let cases: Vec<(&str, Vec<ProxyRoute>, &str)> = vec![
        (
            "web",
            vec![ok.clone(), no_listener],
            "no proxy listener is configured for port 8443",
        ),
        (
            "web",
            vec![ok.clone(), route("web", "new.test", Mode::L7, fx.plain, Some(&missing))],
            "missing.pem",
        ),
        (
            "web",
            vec![route("web", "open.test", Mode::L7, fx.plain, Some(&open_key))],
            "open.key",
        ),
        (
            "web",
            vec![route("web", "alt.test", Mode::L7, fx.plain, Some(&fx.web_cert))],
            "route alt.test on port 443 already belongs to service alt",
        ),
    ];
    for (service, routes, expected) in cases {
        let err = fx
            .proxy
            .set_routes(service, routes)
            .await
            .expect_err(expected)
            .to_string();
        assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        assert_eq!(
            fx.proxy.routes().await.expect("routes"),
            before,
            "a refused set changes nothing"
        );
    }
    assert_eq!(fx.get("web.test", "/", &[]).await.0, 200);

    // A proxy without a backend CA refuses backend_tls routes up front.
    let bare = BuiltinProxy::start(ProxyConfig::new(
        [(LISTENER, "127.0.0.1:0".parse().expect("addr"))].into(),
    ))
    .expect("start");
    let mut tls_route = ok.clone();
    tls_route.backend_tls = true;
    let err = bare
        .set_routes("web", vec![tls_route])
        .await
        .expect_err("no CA")
        .to_string();
    assert!(err.contains("backend_ca"), "{err}");

    fx.proxy.remove_routes("web").await.expect("remove");
    fx.proxy
        .remove_routes("never-set")
        .await
        .expect("removing nothing is fine");
    assert!(
        fx.proxy
            .routes()
            .await
            .expect("routes")
            .iter()
            .all(|r| r.service != "web")
    );
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let fx = Fixture::new().await;
    assert_eq!(fx.get("web.test", "/", &[]).await.0, 200);
    fx.proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = TcpStream::connect(fx.addr).await;
    assert!(refused.is_err(), "listener still accepting after shutdown");
}
