//! The small HTTP/1.1 JSON client the REST adapters share (MCNS,
//! Metacrypt), on an [`Endpoint`]: one request per fresh connection, https
//! (TLS 1.3) trusting only a configured CA, plain http only to loopback, a
//! bounded exchange and answer size, and a bearer token read from its file on every call.
//!
//! Errors: 401/403 → [`HttpError::Unauthorized`]; other 4xx →
//! [`HttpError::Rejected`] (the reason starts with the status code); no
//! connection, TLS failure, timeout or 5xx → [`HttpError::Unavailable`].
//! The token only ever goes into the `Authorization` header (marked
//! sensitive), never into a log line or an error.

use std::path::Path;
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
    endpoint: Endpoint,
    timeout: Duration,
}

impl HttpClient {
    /// Client for `url`, trusting only the CA certificates in `ca` (required
    /// for https, refused for http). Every problem is pushed onto `errors`.
    pub fn new(url: &str, ca: Option<&Path>, timeout: Duration, errors: &mut Vec<String>) -> Option<HttpClient> {
        let endpoint = Endpoint::new(url, ca, errors)?;
        Some(HttpClient { endpoint, timeout })
    }

    /// The configured URL.
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// Path prefix of the API (from the URL), without a trailing `/`.
    pub fn base_path(&self) -> &str {
        &self.endpoint.base_path
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
        let exchange = self.endpoint.exchange(request, MAX_ANSWER_LEN);
        let what = format!("{method} {}{path}", self.endpoint.origin);
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
            .header(HOST, self.endpoint.authority.as_str())
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

    #[test]
    fn urls_encoding_and_messages() {
        let mut errors = Vec::new();
        let c = HttpClient::new("http://[::1]:8080/api/", None, Duration::from_secs(1), &mut errors)
            .expect("loopback http");
        assert_eq!((c.url(), c.base_path()), ("http://[::1]:8080/api/", "/api"));
        assert!(HttpClient::new("https://x", None, Duration::from_secs(1), &mut errors).is_none());
        assert!(errors.iter().any(|e| e.contains("ca: required")), "{errors:?}");
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
