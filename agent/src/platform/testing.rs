//! The stand-in server the REST adapters' tests run against: HTTP/1.1 on
//! 127.0.0.1 (plain, or TLS from a CA made for the test), recording every
//! request and answering from a state the test can reach.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Response, StatusCode};
use mcp_infra::pki::Ca;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::rest::{ErrorKind, RestError};

/// The token the stand-ins accept.
pub const TOKEN: &str = "agent-token-s3cret";

/// One request as a stand-in saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// The path with its query, if any.
    pub path: String,
    pub auth: Option<String>,
    /// The body, when it was JSON.
    pub body: Option<Value>,
}

impl Seen {
    /// The path without the query.
    pub fn route(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// A query parameter (`%40` decoded to `@`).
    pub fn query(&self, key: &str) -> Option<String> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.replace("%40", "@"))
        })
    }

    /// Whether it carried [`TOKEN`].
    pub fn authorized(&self) -> bool {
        self.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))
    }

    /// `METHOD /path?query`, for comparing request sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// How a stand-in answers: from its state and the request.
pub type Answer<S> = fn(&mut S, &Seen) -> Response<Full<Bytes>>;

struct Shared<S> {
    state: S,
    seen: Vec<Seen>,
}

/// A running stand-in with state `S`; stopped by [`StandIn::stop`] or when dropped with the runtime.
pub struct StandIn<S> {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared<S>>>,
    task: tokio::task::JoinHandle<()>,
    /// The CA of a TLS stand-in, kept while it serves.
    ca_dir: Option<tempfile::TempDir>,
}

impl<S: Send + 'static> StandIn<S> {
    /// A plain HTTP stand-in.
    pub async fn start(state: S, answer: Answer<S>) -> StandIn<S> {
        StandIn::serve(state, answer, None).await
    }

    /// A TLS stand-in whose CA is at [`StandIn::ca_path`].
    pub async fn start_tls(state: S, answer: Answer<S>) -> StandIn<S> {
        let dir = tempfile::tempdir().expect("temp dir");
        StandIn::serve(state, answer, Some(dir)).await
    }

    async fn serve(state: S, answer: Answer<S>, ca_dir: Option<tempfile::TempDir>) -> StandIn<S> {
        let tls = ca_dir
            .as_ref()
            .map(|d| mcp_infra::endpoint::testing::loopback_tls_acceptor(d.path(), "stand-in ca"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Mutex::new(Shared {
            state,
            seen: Vec::new(),
        }));
        let handler = shared.clone();
        let task = mcp_infra::endpoint::testing::serve(listener, tls, move |req| handle(req, handler.clone(), answer));
        StandIn {
            addr,
            shared,
            task,
            ca_dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://<host>:<port>` (a TLS stand-in's certificate names `localhost` and 127.0.0.1).
    pub fn https_url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.addr.port())
    }

    /// The CA a TLS stand-in's certificate comes from.
    pub fn ca_path(&self) -> PathBuf {
        Ca::cert_path(self.ca_dir.as_ref().expect("a TLS stand-in").path())
    }

    /// The requests seen since the last call.
    pub fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.lock().seen)
    }

    /// Reads or changes the state.
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.lock().state)
    }

    /// Stops serving; the port is closed when this returns.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<S>> {
        self.shared.lock().expect("stand-in state")
    }
}

async fn handle<S>(
    req: hyper::Request<Incoming>,
    shared: Arc<Mutex<Shared<S>>>,
    answer: Answer<S>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let auth = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method,
        path,
        auth,
        body: serde_json::from_slice(&bytes).ok(),
    };
    let mut shared = shared.lock().expect("stand-in state");
    shared.seen.push(seen.clone());
    Ok(answer(&mut shared.state, &seen))
}

/// `fake`, and a client of it made by `client` with [`TOKEN`] in a file
/// (kept alive with the directory returned).
pub fn setup<S, C>(fake: StandIn<S>, client: impl FnOnce(&str, &Path) -> C) -> (StandIn<S>, C, tempfile::TempDir)
where
    S: Send + 'static,
{
    let (dir, token) = token_file(TOKEN);
    let client = client(&fake.url(), &token);
    (fake, client, dir)
}

/// A JSON answer.
pub fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

/// The answer to a request without [`TOKEN`].
pub fn unauthorized() -> Response<Full<Bytes>> {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({"error": "token missing, invalid, or expired"}),
    )
}

/// Whether `err` is of `kind` and its reason contains `part`.
pub fn is(err: &RestError, kind: ErrorKind, part: &str) -> bool {
    err.kind == kind && err.reason.contains(part)
}

/// A token file holding `token`, kept alive with the directory.
pub fn token_file(token: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mcias-token");
    std::fs::write(&path, format!("{token}\n")).expect("write token");
    (dir, path)
}

/// A CA that signed none of the stand-ins, kept alive with the directory.
fn untrusted_ca() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    Ca::create(dir.path(), "someone else").expect("create CA");
    let path = Ca::cert_path(dir.path());
    (dir, path)
}

/// Checks an adapter's `call` (its client built for a URL, token file and
/// CA, then one authenticated request) against a TLS stand-in: trusted
/// through the stand-in's CA by name and by address (with exactly
/// `requests` requests per call, when given); with another CA, unavailable
/// and nothing sent.
pub async fn check_tls<S, F, Fut>(fake: &StandIn<S>, requests: Option<usize>, call: F)
where
    S: Send + 'static,
    F: Fn(String, PathBuf, Option<PathBuf>) -> Fut,
    Fut: Future<Output = Result<(), RestError>>,
{
    let (_tdir, token) = token_file(TOKEN);
    let (_cdir, untrusted) = untrusted_ca();
    for (url, ca, trusted) in [
        (fake.https_url("localhost"), fake.ca_path(), true),
        (fake.https_url("127.0.0.1"), fake.ca_path(), true),
        (fake.https_url("localhost"), untrusted, false),
    ] {
        let result = call(url.clone(), token.clone(), Some(ca)).await;
        let seen = fake.seen();
        match result {
            Ok(()) => assert!(
                trusted && !seen.is_empty() && requests.is_none_or(|n| seen.len() == n),
                "{url}: {seen:?}"
            ),
            Err(e) => assert!(
                !trusted && is(&e, ErrorKind::Unavailable, "tls") && seen.is_empty(),
                "{url}: {e}"
            ),
        }
    }
}

/// Checks that `call` reads its token file on every call and never shows
/// the token: a wrong one is refused (nothing more asked), a renewed one
/// used at once; a missing or empty file is a token error.
pub async fn check_tokens<S, F, Fut>(fake: &StandIn<S>, call: F)
where
    S: Send + 'static,
    F: Fn(String, PathBuf, Option<PathBuf>) -> Fut,
    Fut: Future<Output = Result<(), RestError>>,
{
    let (_dir, token) = token_file("not-the-token");
    let err = call(fake.url(), token.clone(), None).await.expect_err("401");
    let reason = "token missing, invalid, or expired";
    assert!(
        is(&err, ErrorKind::Unauthorized, "401") && err.reason.contains(reason),
        "{err}"
    );
    assert!(!err.to_string().contains("not-the-token"), "{err}");
    assert_eq!(fake.seen().len(), 1, "nothing asked after the refusal");

    std::fs::write(&token, TOKEN).expect("renew token");
    call(fake.url(), token, None).await.expect("accepted now");

    let missing = PathBuf::from("/nonexistent/mcias-token");
    let err = call(fake.url(), missing, None).await.expect_err("no token");
    assert!(is(&err, ErrorKind::Token, "/nonexistent/mcias-token"), "{err}");
    let (_dir, empty) = token_file("   ");
    let err = call(fake.url(), empty, None).await.expect_err("empty token");
    assert!(is(&err, ErrorKind::Token, "empty"), "{err}");
}

/// Checks that `call` to a port nobody listens on is unavailable, names the
/// URL, and fails fast.
pub async fn check_down<F, Fut>(call: F)
where
    F: Fn(String, PathBuf, Option<PathBuf>) -> Fut,
    Fut: Future<Output = Result<(), RestError>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    drop(listener);
    let (_dir, token) = token_file(TOKEN);
    let started = std::time::Instant::now();
    let err = call(url.clone(), token, None).await.expect_err("nobody listens");
    assert!(
        is(&err, ErrorKind::Unavailable, "cannot connect") && err.reason.contains(&url),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
