//! The one client shape of the REST platform services (MCNS, Metacrypt): an
//! [`Endpoint`] (https trusting only a configured CA, plain http only to
//! loopback), one JSON request per fresh connection bounded in time and
//! answer size, a bearer token read from its file on every call, and one
//! mapping of every failure onto a [`RestError`]:
//!
//! | what happened                              | [`ErrorKind`]  | may succeed later |
//! |--------------------------------------------|----------------|-------------------|
//! | a configuration field cannot be used       | `Config`       | no                |
//! | the token file cannot be read or sent      | `Token`        | no                |
//! | a request this client will not send        | `Invalid`      | no                |
//! | 401, 403                                   | `Unauthorized` | no                |
//! | another 4xx (the reason starts with it)    | `Rejected`     | no                |
//! | no connection, TLS failure, timeout, 5xx   | `Unavailable`  | yes               |
//! | an answer the adapter will not use         | `Refused`      | no                |
//!
//! The token only ever goes into the `Authorization` header (marked
//! sensitive), never into a log line or an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::http::HeaderValue;
use hyper::{Method, Request, StatusCode};
use mcp_infra::endpoint::Endpoint;
use serde_json::Value;

/// Largest answer read.
const MAX_ANSWER_LEN: usize = 4 * 1024 * 1024;

/// Longest token accepted from a token file.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What kind of failure a [`RestError`] is (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration cannot be used (every problem, joined by `; `).
    Config,
    /// The bearer token cannot be read from its file or sent.
    Token,
    /// A request this client will not send.
    Invalid,
    /// The service refused the token (401/403).
    Unauthorized,
    /// The service refused the request (another 4xx).
    Rejected,
    /// The service could not be asked or did not answer sensibly.
    Unavailable,
    /// The service answered a certificate that cannot be used as asked.
    Refused,
}

impl ErrorKind {
    /// What follows the service's name in the error text.
    fn phrase(self) -> &'static str {
        match self {
            ErrorKind::Config => " configuration",
            ErrorKind::Token => " token",
            ErrorKind::Invalid => "",
            ErrorKind::Unauthorized => " refused the credentials",
            ErrorKind::Rejected => " rejected the request",
            ErrorKind::Unavailable => " unavailable",
            ErrorKind::Refused => " certificate refused",
        }
    }

    /// The kind an answer's status stands for; `None` for success.
    pub fn of_status(status: StatusCode) -> Option<ErrorKind> {
        match status {
            s if s.is_success() => None,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Some(ErrorKind::Unauthorized),
            s if s.is_client_error() => Some(ErrorKind::Rejected),
            _ => Some(ErrorKind::Unavailable),
        }
    }
}

/// Why a call to a REST platform service failed, or its client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service}{}: {reason}", kind.phrase())]
pub struct RestError {
    /// The service, as its configuration section is named (`mcns`).
    pub service: &'static str,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened; never the token or a key.
    pub reason: String,
}

impl RestError {
    /// Whether the service may accept the same call later (it was down).
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// Whether the service refused the request with `status` (a 4xx other than 401/403).
    pub fn rejected_with(&self, status: StatusCode) -> bool {
        self.kind == ErrorKind::Rejected && self.reason.starts_with(status.as_str())
    }
}

/// A REST service at one base URL, called with the bearer token in one file.
#[derive(Debug)]
pub struct RestClient {
    service: &'static str,
    endpoint: Endpoint,
    token_path: PathBuf,
    timeout: Duration,
}

impl RestClient {
    /// The client of `service` at `url`, trusting only the CA certificates in
    /// `ca` (required for https, refused for http). `problems` are the
    /// adapter's own configuration errors; every problem, these included,
    /// makes one [`ErrorKind::Config`] error. The token file is read on
    /// each call, not here.
    pub fn new(
        service: &'static str,
        url: &str,
        ca: Option<&Path>,
        token_path: &Path,
        timeout: Duration,
        problems: Vec<String>,
    ) -> Result<RestClient, RestError> {
        let mut errors = Vec::new();
        let endpoint = Endpoint::new(url, ca, &mut errors);
        if token_path.as_os_str().is_empty() {
            errors.push("token_path: must be set".into());
        }
        errors.extend(problems);
        match endpoint {
            Some(endpoint) if errors.is_empty() => Ok(RestClient {
                service,
                endpoint,
                token_path: token_path.to_path_buf(),
                timeout,
            }),
            _ => Err(RestError {
                service,
                kind: ErrorKind::Config,
                reason: errors.join("; "),
            }),
        }
    }

    /// The configured URL.
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// Path prefix of the API (from the URL), without a trailing `/`.
    pub fn base_path(&self) -> &str {
        &self.endpoint.base_path
    }

    /// An error of this service.
    pub fn error(&self, kind: ErrorKind, reason: impl Into<String>) -> RestError {
        RestError {
            service: self.service,
            kind,
            reason: reason.into(),
        }
    }

    /// One authenticated request (the token read afresh); the body of a 2xx
    /// answer. `path` includes the base path.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Bytes, RestError> {
        let token = read_token(&self.token_path).map_err(|r| self.error(ErrorKind::Token, r))?;
        self.exchange(method, path, Some(&token), body).await
    }

    /// One request without a token, to a public endpoint.
    pub async fn call_public(&self, method: Method, path: &str) -> Result<Bytes, RestError> {
        self.exchange(method, path, None, None).await
    }

    /// One request on a fresh connection, bounded by the timeout.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Bytes, RestError> {
        let request = self.request(method.clone(), path, token, body)?;
        let exchange = self.endpoint.exchange(request, MAX_ANSWER_LEN);
        let what = format!("{method} {}{path}", self.endpoint.origin);
        let unavailable = |reason: String| self.error(ErrorKind::Unavailable, format!("{what}: {reason}"));
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => return Err(unavailable(reason)),
            Err(_) => return Err(unavailable(format!("no answer within {}s", self.timeout.as_secs()))),
        };
        let Some(kind) = ErrorKind::of_status(status) else {
            return Ok(body);
        };
        let message = server_message(&body).map(|m| format!(": {m}")).unwrap_or_default();
        Err(self.error(kind, format!("{status}{message} ({what})")))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Request<Full<Bytes>>, RestError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.authority.as_str())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("mcp-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = token {
            let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| self.error(ErrorKind::Token, "the token has characters not allowed in a header"))?;
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
            .map_err(|e| self.error(ErrorKind::Invalid, format!("cannot build the request for {path}: {e}")))
    }
}

/// The bearer token in `path`, trimmed; errors name the file, never its content.
fn read_token(path: &Path) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str, ca: Option<&Path>, problems: Vec<String>) -> Result<RestClient, RestError> {
        RestClient::new("svc", url, ca, Path::new("/t"), Duration::from_secs(1), problems)
    }

    #[test]
    fn statuses_map_to_kinds() {
        use ErrorKind::*;
        for (status, kind, later) in [
            (200, None, false),
            (201, None, false),
            (204, None, false),
            (301, Some(Unavailable), true),
            (400, Some(Rejected), false),
            (401, Some(Unauthorized), false),
            (403, Some(Unauthorized), false),
            (404, Some(Rejected), false),
            (409, Some(Rejected), false),
            (429, Some(Rejected), false),
            (500, Some(Unavailable), true),
            (502, Some(Unavailable), true),
            (503, Some(Unavailable), true),
        ] {
            let status = StatusCode::from_u16(status).expect("valid status");
            let got = ErrorKind::of_status(status);
            assert_eq!(got, kind, "{status}");
            let e = got.map(|kind| RestError {
                service: "svc",
                kind,
                reason: format!("{status}: no ({status})"),
            });
            assert_eq!(e.as_ref().is_some_and(RestError::is_unavailable), later, "{status}");
            assert_eq!(
                e.as_ref().is_some_and(|e| e.rejected_with(status)),
                kind == Some(Rejected),
                "{status}"
            );
        }
    }

    #[test]
    fn error_texts_name_the_service_and_kind() {
        use ErrorKind::*;
        for (kind, text) in [
            (Config, "mcns configuration: r"),
            (Token, "mcns token: r"),
            (Invalid, "mcns: r"),
            (Unauthorized, "mcns refused the credentials: r"),
            (Rejected, "mcns rejected the request: r"),
            (Unavailable, "mcns unavailable: r"),
            (Refused, "mcns certificate refused: r"),
        ] {
            let e = RestError {
                service: "mcns",
                kind,
                reason: "r".into(),
            };
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn configuration_problems_are_all_reported() {
        let c = client("http://[::1]:8080/api/", None, vec![]).expect("loopback http");
        assert_eq!((c.url(), c.base_path()), ("http://[::1]:8080/api/", "/api"));
        let e = RestClient::new(
            "svc",
            "https://x",
            None,
            Path::new(""),
            Duration::from_secs(1),
            vec!["zone: bad".into()],
        )
        .expect_err("three problems");
        assert_eq!(e.kind, ErrorKind::Config);
        for part in ["ca: required", "token_path: must be set", "zone: bad"] {
            assert!(e.reason.contains(part), "{part} missing from {e}");
        }
        let e = client("http://127.0.0.1:1", None, vec!["ttl: zero".into()]).expect_err("own problem");
        assert_eq!(e.to_string(), "svc configuration: ttl: zero");
    }

    #[test]
    fn encoding_and_server_messages() {
        assert_eq!(encode("a b/c@d"), "a%20b%2Fc%40d");
        assert_eq!(encode("web-1.x_y~z"), "web-1.x_y~z");
        for (body, want) in [
            (&br#"{"error":"no"}"#[..], Some("no")),
            (br#"{"message":"gone"}"#, Some("gone")),
            (br#"{"other":"x"}"#, None),
            (b"  plain text \n", Some("plain text")),
            (b"  ", None),
        ] {
            assert_eq!(server_message(body).as_deref(), want, "{body:?}");
        }
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
