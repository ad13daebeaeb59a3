//! MCIAS bearer tokens (SPEC §5 identity adapter, §6, §14): a gRPC caller may
//! present `authorization: Bearer <token>` instead of a client certificate;
//! the token is validated online against MCIAS and mapped to an [`Identity`].
//!
//! # The validate contract
//!
//! What is known from the Metacircular documentation: MCIAS tokens are
//! Ed25519-signed JWTs (claims `sub` = account UUID, `roles`, `iss`, `iat`,
//! `exp`, `jti`) validated online at `/v1/token/validate`; the MCIAS client
//! libraries expose `validate_token(token) → {valid, sub, roles, expires_at}`,
//! the server's answer also carries the account's `username`, and the client
//! libraries map HTTP 401 to "token missing, invalid, or expired". Services
//! cache validations 30 s keyed by the SHA-256 of the token.
//!
//! The exact request shape is not documented where we could read it, so this
//! client is deliberately tolerant (an assumption, checked against nothing
//! but our own test server):
//!
//! - request: `POST <url>/v1/token/validate` with the token both as
//!   `Authorization: Bearer <token>` and as the JSON body `{"token": "<token>"}`,
//!   so that either way of reading it on the server works;
//! - `200` with `{"valid": true, "sub": "...", "username": "...", "roles":
//!   [...], "expires_at": ...}`: accepted. `expires_at` (or `exp`) may be
//!   RFC 3339 text or Unix seconds; `username` is preferred over `sub` as the
//!   account name (`sub` is a UUID in MCIAS);
//! - `200` with `{"valid": false, "error": "..."}`, or `400`/`401`/`403`:
//!   the token is refused ([`MciasError::Invalid`], gRPC `Unauthenticated`);
//! - anything else (other statuses, 5xx, an unreadable body, no answer within
//!   the timeout, a refused connection or TLS failure):
//!   [`MciasError::Unavailable`], gRPC `Unavailable`. MCIAS being down never
//!   lets a caller in.
//!
//! # Mapping to mcp identities
//!
//! The account named `master_subject` (default `mcp-master`) is
//! [`Identity::Master`]; an account named `agent-<node>` is
//! [`Identity::Agent`] (the node name must be a valid mcp name); any other
//! account holding one of `human_roles` (default `admin`, `mcp-operator`) is
//! [`Identity::Human`] under its account name. Every other valid token is
//! refused as [`MciasError::Invalid`].
//!
//! # Cache
//!
//! Only successful validations are cached, for `cache_seconds` (default 30)
//! and never past the token's expiry, keyed by the hex SHA-256 of the token;
//! the raw token is neither stored nor logged. At most 10,000 entries are
//! kept: expired entries are dropped when the cache is full, then the entry
//! closest to its end.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::endpoint::Endpoint;
use mcp_model::identity::Identity;
use mcp_model::service::check_name;

/// Path of the validate endpoint below the configured base URL.
const VALIDATE_PATH: &str = "/v1/token/validate";

/// Longest token accepted; MCIAS JWTs are well under 1 KiB.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Largest validate answer read from MCIAS.
const MAX_ANSWER_LEN: usize = 64 * 1024;

/// Most validations kept in the cache.
const MAX_CACHE_ENTRIES: usize = 10_000;

/// Longest cache lifetime allowed: longer would delay revocations too much.
const MAX_CACHE_SECONDS: u64 = 300;

/// Account name prefix of agents: `agent-<node>`.
const AGENT_PREFIX: &str = "agent-";

/// `[mcias]` section of the master and agent configurations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MciasConfig {
    /// Base URL of MCIAS, e.g. `https://mcias.example:8443`; `http` only to loopback.
    pub url: String,
    /// PEM file of the CA that signs the MCIAS certificate; required for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Seconds to wait for MCIAS per validation.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Seconds a successful validation is reused (0 disables the cache).
    #[serde(default = "default_cache_seconds")]
    pub cache_seconds: u64,
    /// MCIAS roles that make an account an mcp operator (`human`).
    #[serde(default = "default_human_roles")]
    pub human_roles: Vec<String>,
    /// MCIAS account name of the master.
    #[serde(default = "default_master_subject")]
    pub master_subject: String,
}

fn default_timeout() -> u64 {
    5
}

fn default_cache_seconds() -> u64 {
    30
}

fn default_human_roles() -> Vec<String> {
    vec!["admin".into(), "mcp-operator".into()]
}

fn default_master_subject() -> String {
    "mcp-master".into()
}

impl MciasConfig {
    /// Configuration for `url` with every other field at its default.
    pub fn new(url: &str) -> MciasConfig {
        MciasConfig {
            url: url.to_string(),
            ca: None,
            timeout: default_timeout(),
            cache_seconds: default_cache_seconds(),
            human_roles: default_human_roles(),
            master_subject: default_master_subject(),
        }
    }
}

/// Why a token was refused or the client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MciasError {
    /// The configuration cannot be used (every problem, joined by `; `).
    #[error("mcias configuration: {0}")]
    Config(String),
    /// The token is not acceptable: invalid, expired, revoked or no mcp role.
    #[error("mcias token refused: {0}")]
    Invalid(String),
    /// MCIAS could not answer: down, slow, failing or unintelligible.
    #[error("mcias unavailable: {0}")]
    Unavailable(String),
}

impl MciasError {
    /// The gRPC status code to answer the caller with.
    pub fn code(&self) -> tonic::Code {
        match self {
            MciasError::Config(_) => tonic::Code::Internal,
            MciasError::Invalid(_) => tonic::Code::Unauthenticated,
            MciasError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }
}

/// Source of time for the cache and the expiry check; injectable for tests.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time, for cache lifetimes.
    fn now(&self) -> Instant;
    /// Wall-clock time, compared with token expiry.
    fn wall(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Validates MCIAS bearer tokens and caches successful validations.
pub struct Mcias {
    endpoint: Endpoint,
    /// Path of the validate endpoint, under the URL's base path.
    validate_path: String,
    timeout: Duration,
    cache_ttl: Duration,
    roles: RoleMap,
    cache: Mutex<Cache>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Mcias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mcias")
            .field("url", &self.endpoint.url)
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl Mcias {
    /// Checks the configuration (reporting every problem) and loads the CA.
    pub fn new(cfg: &MciasConfig) -> Result<Mcias, MciasError> {
        Mcias::with_clock(cfg, Arc::new(SystemClock))
    }

    /// Like [`Mcias::new`], with the given clock.
    pub fn with_clock(cfg: &MciasConfig, clock: Arc<dyn Clock>) -> Result<Mcias, MciasError> {
        let mut errors = Vec::new();
        let endpoint = Endpoint::new(&cfg.url, cfg.ca.as_deref(), &mut errors);
        if cfg.timeout == 0 {
            errors.push("timeout: must be at least 1 second".into());
        }
        if cfg.cache_seconds > MAX_CACHE_SECONDS {
            errors.push(format!(
                "cache_seconds: {} is more than {MAX_CACHE_SECONDS}: revocations would take too long to apply",
                cfg.cache_seconds
            ));
        }
        if cfg.master_subject.is_empty() {
            errors.push("master_subject: must not be empty".into());
        } else if cfg.master_subject.starts_with(AGENT_PREFIX) {
            errors.push(format!(
                "master_subject: {:?} would be read as an agent account",
                cfg.master_subject
            ));
        }
        if let Some(bad) = cfg.human_roles.iter().find(|r| r.trim().is_empty()) {
            errors.push(format!("human_roles: {bad:?} is not a role"));
        }
        match endpoint {
            Some(endpoint) if errors.is_empty() => Ok(Mcias {
                validate_path: format!("{}{VALIDATE_PATH}", endpoint.base_path),
                endpoint,
                timeout: Duration::from_secs(cfg.timeout),
                cache_ttl: Duration::from_secs(cfg.cache_seconds),
                roles: RoleMap {
                    human_roles: cfg.human_roles.clone(),
                    master_subject: cfg.master_subject.clone(),
                },
                cache: Mutex::new(Cache::new(MAX_CACHE_ENTRIES)),
                clock,
            }),
            _ => Err(MciasError::Config(errors.join("; "))),
        }
    }

    /// Validates `token` (cached for a successful answer) and maps it to an
    /// mcp identity.
    pub async fn validate(&self, token: &str) -> Result<Identity, MciasError> {
        check_token_shape(token)?;
        let key = hex::encode(Sha256::digest(token.as_bytes()));
        // A prefix of the hash tells log lines apart without revealing anything.
        let tag = &key[..12];
        if let Some(identity) = self.cache_lock().get(&key, self.clock.now()) {
            tracing::trace!(token_sha256 = %tag, %identity, "mcias validation served from cache");
            return Ok(identity);
        }
        let outcome = self.ask(token).await.and_then(|(status, body)| {
            let answer = read_answer(status, &body)?;
            decide(&answer, &self.roles, self.clock.wall())
        });
        match outcome {
            Ok((identity, expires)) => {
                let now = self.clock.now();
                let mut ttl = self.cache_ttl;
                if let Some(expires) = expires {
                    ttl = ttl.min(expires.duration_since(self.clock.wall()).unwrap_or_default());
                }
                self.cache_lock().insert(key.clone(), identity.clone(), now + ttl, now);
                tracing::debug!(token_sha256 = %tag, %identity, "mcias token accepted");
                Ok(identity)
            }
            Err(e @ MciasError::Unavailable(_)) => {
                tracing::warn!(token_sha256 = %tag, error = %e, "mcias validation failed");
                Err(e)
            }
            Err(e) => {
                tracing::debug!(token_sha256 = %tag, error = %e, "mcias token refused");
                Err(e)
            }
        }
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking holder could break.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One validate exchange with MCIAS, bounded by the timeout.
    async fn ask(&self, token: &str) -> Result<(StatusCode, Bytes), MciasError> {
        let request = self.request(token)?;
        let exchange = self.endpoint.exchange(request, MAX_ANSWER_LEN);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) => Err(MciasError::Unavailable(format!("{}: {reason}", self.endpoint.url))),
            Err(_) => Err(MciasError::Unavailable(format!(
                "{}: no answer within {}s",
                self.endpoint.url,
                self.timeout.as_secs()
            ))),
        }
    }

    fn request(&self, token: &str) -> Result<Request<Full<Bytes>>, MciasError> {
        let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| MciasError::Invalid("token has characters not allowed in a header".into()))?;
        bearer.set_sensitive(true);
        let body = serde_json::to_vec(&serde_json::json!({ "token": token }))
            .map_err(|e| MciasError::Invalid(format!("token cannot be encoded: {e}")))?;
        Request::builder()
            .method(Method::POST)
            .uri(self.validate_path.as_str())
            .header(HOST, self.endpoint.authority.as_str())
            .header(AUTHORIZATION, bearer)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("mcp/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| MciasError::Unavailable(format!("{}: cannot build request: {e}", self.endpoint.url)))
    }
}

/// Refuses, without asking MCIAS, what cannot be a token.
fn check_token_shape(token: &str) -> Result<(), MciasError> {
    if token.is_empty() {
        return Err(MciasError::Invalid("empty token".into()));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(MciasError::Invalid(format!("token longer than {MAX_TOKEN_LEN} bytes")));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(MciasError::Invalid(
            "token has characters not allowed in a token".into(),
        ));
    }
    Ok(())
}

/// The body MCIAS answers a validation with (unknown fields ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct Answer {
    valid: bool,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<Expiry>,
    #[serde(default)]
    exp: Option<Expiry>,
    #[serde(default)]
    error: Option<String>,
}

/// A token expiry as MCIAS may spell it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Expiry {
    Unix(i64),
    Text(String),
}

impl Expiry {
    fn to_system_time(&self) -> Result<SystemTime, String> {
        match self {
            // A negative time is long past.
            Expiry::Unix(secs) => match u64::try_from(*secs) {
                Ok(s) => UNIX_EPOCH
                    .checked_add(Duration::from_secs(s))
                    .ok_or_else(|| format!("expiry {secs} is out of range")),
                Err(_) => Ok(UNIX_EPOCH),
            },
            Expiry::Text(text) => time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .map_err(|e| format!("expiry {text:?} is not RFC 3339: {e}")),
        }
    }
}

/// Reads MCIAS's answer: refusals are [`MciasError::Invalid`], anything
/// unexpected [`MciasError::Unavailable`].
fn read_answer(status: StatusCode, body: &[u8]) -> Result<Answer, MciasError> {
    match status {
        StatusCode::OK => serde_json::from_slice(body)
            .map_err(|e| MciasError::Unavailable(format!("mcias answered 200 with an unreadable body: {e}"))),
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            let reason = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| format!("mcias answered {status}"));
            Err(MciasError::Invalid(shorten(&reason)))
        }
        other => Err(MciasError::Unavailable(format!("mcias answered {other}"))),
    }
}

/// Server-provided text, bounded and printable, for error messages.
fn shorten(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect::<String>()
}

/// How MCIAS accounts map to mcp identities.
#[derive(Debug, Clone)]
struct RoleMap {
    human_roles: Vec<String>,
    master_subject: String,
}

impl RoleMap {
    fn identity(&self, name: &str, roles: &[String]) -> Result<Identity, MciasError> {
        if name == self.master_subject {
            return Ok(Identity::Master);
        }
        if let Some(node) = name.strip_prefix(AGENT_PREFIX) {
            return check_name(node)
                .map(|()| Identity::Agent(node.to_string()))
                .map_err(|e| MciasError::Invalid(format!("agent account {name:?}: node name {e}")));
        }
        if roles.iter().any(|r| self.human_roles.contains(r)) {
            return check_name(name)
                .map(|()| Identity::Human(name.to_string()))
                .map_err(|e| MciasError::Invalid(format!("account name {e}")));
        }
        Err(MciasError::Invalid(format!(
            "account {name:?} has no mcp role (one of {})",
            self.human_roles.join(", ")
        )))
    }
}

/// Decides on a 200 answer at wall-clock time `wall`: the identity and the
/// token's expiry, if MCIAS gave one.
fn decide(answer: &Answer, roles: &RoleMap, wall: SystemTime) -> Result<(Identity, Option<SystemTime>), MciasError> {
    if !answer.valid {
        let reason = answer.error.as_deref().unwrap_or("token is not valid");
        return Err(MciasError::Invalid(shorten(reason)));
    }
    let expires = match answer.expires_at.as_ref().or(answer.exp.as_ref()) {
        Some(e) => Some(e.to_system_time().map_err(MciasError::Unavailable)?),
        None => None,
    };
    if expires.is_some_and(|e| e <= wall) {
        return Err(MciasError::Invalid("token expired".into()));
    }
    let non_empty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    let name = non_empty(&answer.username)
        .or_else(|| non_empty(&answer.sub))
        .ok_or_else(|| MciasError::Unavailable("mcias called the token valid but named no account".into()))?;
    let identity = roles.identity(&name, answer.roles.as_deref().unwrap_or_default())?;
    Ok((identity, expires))
}

/// Successful validations by token hash, each until its deadline.
#[derive(Debug)]
struct Cache {
    entries: HashMap<String, (Identity, Instant)>,
    cap: usize,
}

impl Cache {
    fn new(cap: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            cap,
        }
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Identity> {
        match self.entries.get(key) {
            Some((identity, deadline)) if *deadline > now => Some(identity.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: String, identity: Identity, deadline: Instant, now: Instant) {
        if deadline <= now || self.cap == 0 {
            return;
        }
        if self.entries.len() >= self.cap && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, d)| *d > now);
        }
        if self.entries.len() >= self.cap && !self.entries.contains_key(&key) {
            let soonest = self.entries.iter().min_by_key(|(_, (_, d))| *d).map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (identity, deadline));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests;

impl crate::tls::TokenValidator for Mcias {
    fn validate<'a>(&'a self, token: &'a str) -> crate::tls::BoxFuture<'a, Result<Identity, tonic::Status>> {
        Box::pin(async move {
            Mcias::validate(self, token)
                .await
                .map_err(|e| tonic::Status::new(e.code(), e.to_string()))
        })
    }
}
