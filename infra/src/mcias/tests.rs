//! Tests over real HTTP on loopback: a small hyper server speaks the validate
//! contract described in the module documentation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::pki::Ca;

/// What the test server does with every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Speak the validate contract.
    Contract,
    /// Answer 500.
    Fail,
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer nothing for a long time.
    Slow,
}

/// A validate endpoint on 127.0.0.1 counting the requests it receives.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        Server::start_with(mode, None).await
    }

    async fn start_with(mode: Mode, tls: Option<TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = crate::endpoint::testing::serve(listener, tls, move |req| answer(req, mode, counter.clone()));
        Server { addr, hits, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting connections; the listener is closed on return.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// The test server's side of the contract: the token travels both as bearer
/// and in the body, and they must agree.
async fn answer(
    req: http::Request<Incoming>,
    mode: Mode,
    hits: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    match mode {
        Mode::Contract => {}
        Mode::Fail => return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "database is locked")),
        Mode::Garbage => return Ok(reply(StatusCode::OK, "<html>welcome</html>")),
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Ok(reply(StatusCode::OK, "{}"));
        }
    }
    if req.method() != Method::POST || req.uri().path() != VALIDATE_PATH {
        return Ok(reply(StatusCode::NOT_FOUND, "not found"));
    }
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let in_body = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string));
    let token = match (bearer, in_body) {
        (Some(a), Some(b)) if a == b => a,
        _ => return Ok(reply(StatusCode::BAD_REQUEST, r#"{"error":"malformed request"}"#)),
    };
    let in_an_hour = unix_now() + 3600;
    let body = match token.as_str() {
        "human-token" => json!({
            "valid": true, "sub": "4f1c2b7e-9a0d-4c1e-8f3a-0d2b5c6e7f81", "username": "kyle",
            "roles": ["admin"], "expires_at": "2099-01-01T00:00:00Z",
        }),
        "operator-token" => json!({
            "valid": true, "sub": "alice", "roles": ["user", "mcp-operator"], "exp": in_an_hour,
        }),
        "master-token" => json!({
            "valid": true, "sub": "9b8e6d1a-3c4f-4e2a-b7d5-1a2b3c4d5e6f", "username": "mcp-master",
            "roles": [], "expires_at": in_an_hour,
        }),
        "agent-token" => json!({"valid": true, "sub": "agent-rift", "roles": null, "expires_at": in_an_hour}),
        "bad-agent-token" => json!({"valid": true, "sub": "agent-Rift_1", "expires_at": in_an_hour}),
        "guest-token" => json!({"valid": true, "username": "guest1", "roles": ["guest"], "expires_at": in_an_hour}),
        "short-token" => json!({"valid": true, "username": "kyle", "roles": ["admin"], "expires_at": unix_now() + 5}),
        "nameless-token" => json!({"valid": true, "roles": ["admin"], "expires_at": in_an_hour}),
        "expired-token" => json!({"valid": false, "error": "token expired"}),
        "revoked-token" => json!({"valid": false, "error": "token revoked"}),
        _ => return Ok(reply(StatusCode::UNAUTHORIZED, r#"{"error":"invalid token"}"#)),
    };
    Ok(reply(StatusCode::OK, body.to_string()))
}

/// A clock that only moves when told to.
#[derive(Debug)]
struct FakeClock {
    start: Instant,
    wall: SystemTime,
    offset: Mutex<Duration>,
}

impl FakeClock {
    fn new() -> Arc<FakeClock> {
        Arc::new(FakeClock {
            start: Instant::now(),
            wall: SystemTime::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().expect("clock lock") += by;
    }

    fn offset(&self) -> Duration {
        *self.offset.lock().expect("clock lock")
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + self.offset()
    }

    fn wall(&self) -> SystemTime {
        self.wall + self.offset()
    }
}

fn client(url: &str) -> Mcias {
    Mcias::new(&MciasConfig::new(url)).expect("valid configuration")
}

fn client_with_clock(url: &str, clock: &Arc<FakeClock>) -> Mcias {
    Mcias::with_clock(&MciasConfig::new(url), clock.clone()).expect("valid configuration")
}

fn is_invalid(result: &Result<Identity, MciasError>, reason: &str) -> bool {
    matches!(result, Err(MciasError::Invalid(r)) if r.contains(reason))
}

fn is_unavailable(result: &Result<Identity, MciasError>) -> bool {
    matches!(result, Err(MciasError::Unavailable(_)))
}

#[test]
fn config_defaults_and_unknown_fields() {
    let cfg: MciasConfig = toml::from_str(r#"url = "https://mcias.example:8443""#).expect("parses");
    assert_eq!(cfg, MciasConfig::new("https://mcias.example:8443"));
    assert_eq!((cfg.timeout, cfg.cache_seconds), (5, 30));
    assert_eq!(cfg.human_roles, ["admin", "mcp-operator"]);
    assert_eq!(cfg.master_subject, "mcp-master");
    let unknown = toml::from_str::<MciasConfig>("url = \"https://m\"\nservice_name = \"mcp\"");
    assert!(unknown.is_err());
}

#[test]
fn config_errors_are_all_reported() {
    let check = |cfg: MciasConfig, expected: &[&str]| {
        let err = Mcias::new(&cfg).expect_err("configuration must be refused");
        assert_eq!(err.code(), tonic::Code::Internal);
        let MciasError::Config(text) = &err else {
            panic!("{err}")
        };
        for e in expected {
            assert!(text.contains(e), "{text:?} should mention {e:?}");
        }
    };
    check(
        MciasConfig::new("http://mcias.example:8080"),
        &["plain http", "use https"],
    );
    check(MciasConfig::new("http://10.0.0.5"), &["plain http"]);
    check(MciasConfig::new("https://mcias.example"), &["ca: required"]);
    check(MciasConfig::new("ftp://mcias.example"), &["must start with https://"]);
    check(MciasConfig::new("https://user:pw@mcias.example"), &["credentials"]);
    check(
        MciasConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            timeout: 0,
            cache_seconds: 3600,
            master_subject: "agent-master".into(),
            ..MciasConfig::new("https://mcias.example")
        },
        &["/nonexistent/ca.pem", "timeout", "cache_seconds", "master_subject"],
    );
    check(
        MciasConfig {
            ca: Some("/etc/ca.pem".into()),
            ..MciasConfig::new("http://127.0.0.1:9")
        },
        &["plain http"],
    );
    for ok in ["http://127.0.0.1:1", "http://localhost:1/base/", "http://[::1]:1"] {
        Mcias::new(&MciasConfig::new(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let mcias = Mcias::new(&MciasConfig::new("http://[::1]:8080/base/")).expect("parses");
    assert_eq!(mcias.validate_path, "/base/v1/token/validate");
}

#[test]
fn answers_map_to_identities() {
    let roles = RoleMap {
        human_roles: vec!["admin".into(), "mcp-operator".into()],
        master_subject: "mcp-master".into(),
    };
    let now = SystemTime::now();
    let check = |body: Value, expected: Result<Identity, &str>| {
        let answer: Answer = serde_json::from_value(body.clone()).expect("answer parses");
        let got = decide(&answer, &roles, now).map(|(id, _)| id);
        match (&got, &expected) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{body}"),
            (Err(MciasError::Invalid(a)), Err(b)) => assert!(a.contains(b), "{body}: {a:?} lacks {b:?}"),
            _ => panic!("{body}: got {got:?}, expected {expected:?}"),
        }
    };
    let later = unix_now() + 60;
    check(
        json!({"valid": true, "sub": "uuid-1", "username": "kyle", "roles": ["admin"], "expires_at": later}),
        Ok(Identity::Human("kyle".into())),
    );
    check(
        json!({"valid": true, "sub": "alice", "roles": ["mcp-operator"]}),
        Ok(Identity::Human("alice".into())),
    );
    check(json!({"valid": true, "sub": "mcp-master"}), Ok(Identity::Master));
    check(
        json!({"valid": true, "sub": "x", "username": "agent-rift", "roles": ["admin"]}),
        Ok(Identity::Agent("rift".into())),
    );
    check(json!({"valid": true, "sub": "agent-"}), Err("node name"));
    check(
        json!({"valid": true, "sub": "Kyle Isom", "roles": ["admin"]}),
        Err("account name"),
    );
    check(
        json!({"valid": true, "sub": "bob", "roles": ["user", "guest"]}),
        Err("no mcp role"),
    );
    check(json!({"valid": false, "error": "token revoked"}), Err("token revoked"));
    check(json!({"valid": false}), Err("not valid"));
    check(
        json!({"valid": true, "sub": "mcp-master", "expires_at": "2001-01-01T00:00:00Z"}),
        Err("expired"),
    );
    check(json!({"valid": true, "sub": "mcp-master", "exp": -1}), Err("expired"));
    let garbled: Answer =
        serde_json::from_value(json!({"valid": true, "sub": "mcp-master", "expires_at": "tomorrow"})).expect("parses");
    assert!(matches!(decide(&garbled, &roles, now), Err(MciasError::Unavailable(_))));
}

#[tokio::test]
async fn validates_humans_master_and_agents() {
    let server = Server::start(Mode::Contract).await;
    let mcias = client(&server.url());
    let cases = [
        ("human-token", Identity::Human("kyle".into())),
        ("operator-token", Identity::Human("alice".into())),
        ("master-token", Identity::Master),
        ("agent-token", Identity::Agent("rift".into())),
    ];
    for (token, expected) in &cases {
        assert_eq!(&mcias.validate(token).await, &Ok(expected.clone()), "{token}");
    }
    assert_eq!(server.hits(), cases.len());
}

#[tokio::test]
async fn refuses_invalid_expired_revoked_and_roleless_tokens() {
    let server = Server::start(Mode::Contract).await;
    let mcias = client(&server.url());
    let cases = [
        ("expired-token", "token expired"),
        ("revoked-token", "token revoked"),
        ("guest-token", "no mcp role"),
        ("bad-agent-token", "node name"),
        ("forged-token", "invalid token"),
    ];
    for (token, reason) in cases {
        let result = mcias.validate(token).await;
        assert!(is_invalid(&result, reason), "{token}: {result:?}");
        assert_eq!(result.expect_err("refused").code(), tonic::Code::Unauthenticated);
    }
    assert_eq!(server.hits(), cases.len());
    // Not even sent: nothing that could be a token.
    for token in ["", "two words", "tab\there", "é"] {
        assert!(
            matches!(mcias.validate(token).await, Err(MciasError::Invalid(_))),
            "{token:?}"
        );
    }
    assert!(is_invalid(
        &mcias.validate(&"x".repeat(MAX_TOKEN_LEN + 1)).await,
        "longer"
    ));
    assert_eq!(server.hits(), cases.len());
}

#[tokio::test]
async fn caches_successes_for_cache_seconds() {
    let server = Server::start(Mode::Contract).await;
    let clock = FakeClock::new();
    let mcias = client_with_clock(&server.url(), &clock);
    let kyle = Ok(Identity::Human("kyle".into()));
    assert_eq!(mcias.validate("human-token").await, kyle);
    assert_eq!(server.hits(), 1);
    clock.advance(Duration::from_secs(29));
    assert_eq!(mcias.validate("human-token").await, kyle);
    assert_eq!(server.hits(), 1, "served from cache within 30 s");
    assert_eq!(mcias.validate("master-token").await, Ok(Identity::Master));
    assert_eq!(server.hits(), 2, "another token is another entry");
    clock.advance(Duration::from_secs(2));
    assert_eq!(mcias.validate("human-token").await, kyle);
    assert_eq!(server.hits(), 3, "asked again after 30 s");
}

#[tokio::test]
async fn refusals_are_not_cached() {
    let server = Server::start(Mode::Contract).await;
    let mcias = client(&server.url());
    for _ in 0..2 {
        assert!(is_invalid(&mcias.validate("revoked-token").await, "revoked"));
        assert!(is_invalid(&mcias.validate("guest-token").await, "no mcp role"));
    }
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn never_serves_a_token_past_its_expiry() {
    let server = Server::start(Mode::Contract).await;
    let clock = FakeClock::new();
    let mcias = client_with_clock(&server.url(), &clock);
    assert_eq!(mcias.validate("short-token").await, Ok(Identity::Human("kyle".into())));
    clock.advance(Duration::from_secs(2));
    assert!(mcias.validate("short-token").await.is_ok());
    assert_eq!(server.hits(), 1);
    // Past `expires_at` (5 s) but well within `cache_seconds`: MCIAS is asked
    // again, and its stale "valid" is not believed either.
    clock.advance(Duration::from_secs(4));
    assert!(is_invalid(&mcias.validate("short-token").await, "expired"));
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn cache_can_be_disabled() {
    let server = Server::start(Mode::Contract).await;
    let cfg = MciasConfig {
        cache_seconds: 0,
        ..MciasConfig::new(&server.url())
    };
    let mcias = Mcias::new(&cfg).expect("valid configuration");
    for _ in 0..3 {
        assert_eq!(mcias.validate("master-token").await, Ok(Identity::Master));
    }
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn server_down_is_unavailable() {
    let server = Server::start(Mode::Contract).await;
    let clock = FakeClock::new();
    let mcias = client_with_clock(&server.url(), &clock);
    assert_eq!(mcias.validate("master-token").await, Ok(Identity::Master));
    server.stop().await;
    let result = mcias.validate("human-token").await;
    assert!(is_unavailable(&result), "{result:?}");
    assert_eq!(result.expect_err("down").code(), tonic::Code::Unavailable);
    // A validation cached before the outage still holds for its 30 s, no longer.
    assert_eq!(mcias.validate("master-token").await, Ok(Identity::Master));
    clock.advance(Duration::from_secs(31));
    assert!(is_unavailable(&mcias.validate("master-token").await));
}

#[tokio::test]
async fn server_errors_and_garbage_are_unavailable() {
    for mode in [Mode::Fail, Mode::Garbage] {
        let server = Server::start(mode).await;
        let mcias = client(&server.url());
        for _ in 0..2 {
            let result = mcias.validate("human-token").await;
            assert!(is_unavailable(&result), "{mode:?}: {result:?}");
        }
        assert_eq!(server.hits(), 2, "{mode:?}: failures are not cached");
    }
    // Wrong base path: 404 is MCIAS misconfigured, not the caller's fault.
    let server = Server::start(Mode::Contract).await;
    let mcias = client(&format!("{}/not-mcias", server.url()));
    assert!(is_unavailable(&mcias.validate("human-token").await));
}

#[tokio::test]
async fn slow_server_times_out() {
    let server = Server::start(Mode::Slow).await;
    let cfg = MciasConfig {
        timeout: 1,
        ..MciasConfig::new(&server.url())
    };
    let mcias = Mcias::new(&cfg).expect("valid configuration");
    let started = Instant::now();
    let result = mcias.validate("human-token").await;
    assert!(
        matches!(&result, Err(MciasError::Unavailable(r)) if r.contains("within 1s")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A CA in `dir` and a TLS 1.3 acceptor for localhost and 127.0.0.1 signed by it.
fn tls_server_setup(dir: &Path) -> TlsAcceptor {
    crate::endpoint::testing::loopback_tls_acceptor(dir, "mcias test ca")
}

#[tokio::test]
async fn https_with_the_configured_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acceptor = tls_server_setup(dir.path());
    let server = Server::start_with(Mode::Contract, Some(acceptor)).await;
    let port = server.addr.port();
    for host in ["localhost", "127.0.0.1"] {
        let cfg = MciasConfig {
            ca: Some(Ca::cert_path(dir.path())),
            ..MciasConfig::new(&format!("https://{host}:{port}"))
        };
        let mcias = Mcias::new(&cfg).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(
            mcias.validate("agent-token").await,
            Ok(Identity::Agent("rift".into())),
            "{host}"
        );
        assert!(is_invalid(&mcias.validate("revoked-token").await, "revoked"), "{host}");
    }
    assert_eq!(server.hits(), 4);

    // Another CA: the server is not trusted, and nothing is sent.
    let other = tempfile::tempdir().expect("temp dir");
    Ca::create(other.path(), "someone else").expect("create CA");
    let cfg = MciasConfig {
        ca: Some(Ca::cert_path(other.path())),
        ..MciasConfig::new(&format!("https://localhost:{port}"))
    };
    let result = Mcias::new(&cfg)
        .expect("valid configuration")
        .validate("agent-token")
        .await;
    assert!(
        matches!(&result, Err(MciasError::Unavailable(r)) if r.contains("tls")),
        "{result:?}"
    );
    assert_eq!(server.hits(), 4);

    // Plain http to a TLS port is a protocol error, never an acceptance.
    let result = client(&format!("http://127.0.0.1:{port}"))
        .validate("agent-token")
        .await;
    assert!(is_unavailable(&result), "{result:?}");
}

#[test]
fn cache_is_bounded() {
    let now = Instant::now();
    let mut cache = Cache::new(3);
    let id = |n: &str| Identity::Human(n.into());
    cache.insert("a".into(), id("a"), now + Duration::from_secs(5), now);
    cache.insert("b".into(), id("b"), now + Duration::from_secs(10), now);
    cache.insert("c".into(), id("c"), now + Duration::from_secs(20), now);
    // Full and nothing expired: the entry closest to its end goes.
    cache.insert("d".into(), id("d"), now + Duration::from_secs(30), now);
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.get("a", now), None);
    assert_eq!(cache.get("b", now), Some(id("b")));
    // Full with expired entries: they all go.
    let later = now + Duration::from_secs(15);
    cache.insert("e".into(), id("e"), later + Duration::from_secs(30), later);
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.get("b", later), None);
    assert_eq!(cache.get("c", later), Some(id("c")));
    // Already past its deadline: not stored.
    cache.insert("f".into(), id("f"), later, later);
    assert_eq!(cache.get("f", now), None);
}

#[test]
fn errors_map_to_grpc_codes() {
    assert_eq!(MciasError::Invalid("x".into()).code(), tonic::Code::Unauthenticated);
    assert_eq!(MciasError::Unavailable("x".into()).code(), tonic::Code::Unavailable);
    assert_eq!(MciasError::Config("x".into()).code(), tonic::Code::Internal);
}

#[test]
fn shareable_across_grpc_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let mcias = client("http://127.0.0.1:1");
    send_sync(&mcias);
    send(&mcias.validate("token"));
}
