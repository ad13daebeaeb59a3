//! MCNS adapter (SPEC §5 DNS row, §14): the agent publishes
//! `<service>.<zone>` A records in the Metacircular Networking Service
//! instead of the master's built-in DNS.
//!
//! # The record API
//!
//! Known, from SPEC §14 and the Metacircular platform documents
//! (`metacircular/metacircular`: `PLATFORM_EVOLUTION.md`,
//! `docs/svc-deployment-plan.md`; MCNS and mcp commit messages on
//! git.wntrmute.dev):
//!
//! - `POST /v1/zones/{zone}/records` with `{"name","type","value","ttl"}`
//!   creates a record; `name` is relative to the zone (`"ns"` in
//!   `mcp.metacircular.net`); types A, AAAA, CNAME. MCNS keeps
//!   `(zone, name, type, value)` unique and answers a duplicate with 409.
//! - `GET /v1/zones/{zone}/records` lists the zone's records, with optional
//!   `?name=` and `&type=` filters. The answer is an envelope
//!   `{"records": [...]}` whose records carry Go-style field names (`ID`,
//!   `Name`, `Type`, `Value`, `TTL`).
//! - Every call carries `Authorization: Bearer <MCIAS token>`; the
//!   `mcp-agent` account may manage any name.
//! - The REST API offers POST/GET/PUT/DELETE on the records, and the gRPC
//!   API has `DeleteRecord` by record ID.
//!
//! **Assumed** (the path of a single record is not written down anywhere we
//! could read): a record is deleted with `DELETE /v1/zones/{zone}/records/{id}`,
//! `id` taken from the list; 200 or 204 means deleted, 404 already gone.
//! PUT is not used: a changed address is created first and the stale
//! records deleted after, so the name never resolves to nothing.
//!
//! This client is tolerant in what it reads: field names in any case, IDs
//! as numbers or strings, a bare array instead of the envelope, names
//! relative to the zone or absolute, and it filters the list again itself
//! in case a server ignores the query filters. It is checked against an
//! in-test server speaking this contract, the best stand-in available.
//!
//! # Errors and secrets
//!
//! 401/403 → [`McnsError::Unauthorized`]; other 4xx → [`McnsError::Rejected`];
//! no connection, TLS failure, timeout, 5xx or an unreadable answer →
//! [`McnsError::Unavailable`]. The token is read from `token_path` on every
//! call (it is renewed on disk), sent only in the `Authorization` header
//! (marked sensitive), and never logged or put in an error.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::http_client::{self, HttpClient, HttpError, encode};

/// Default zone of service records (SPEC §4 step 5).
pub use mcp_model::service::DEFAULT_ZONE;

/// Bound on one HTTP exchange with MCNS.
const TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::config::McnsConfig;

/// Why an MCNS call failed or the client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McnsError {
    /// The configuration cannot be used (every problem, joined by `; `).
    #[error("mcns configuration: {0}")]
    Config(String),
    /// The bearer token cannot be read from its file.
    #[error("mcns token: {0}")]
    Token(String),
    /// A name or address this client will not send.
    #[error("mcns: {0}")]
    Invalid(String),
    /// MCNS refused the token (401/403).
    #[error("mcns refused the credentials: {0}")]
    Unauthorized(String),
    /// MCNS refused the request (another 4xx).
    #[error("mcns rejected the request: {0}")]
    Rejected(String),
    /// MCNS could not be asked or did not answer sensibly.
    #[error("mcns unavailable: {0}")]
    Unavailable(String),
}

/// A record as MCNS lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct McnsRecord {
    id: String,
    /// Relative to the zone, lower case (`@` for the apex).
    name: String,
    kind: String,
    value: String,
}

/// Client of the MCNS record API for one zone.
pub struct Mcns {
    http: HttpClient,
    token_path: PathBuf,
    /// Lower case, no trailing dot.
    zone: String,
    ttl: u32,
}

impl fmt::Debug for Mcns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mcns")
            .field("url", &self.http.url())
            .field("zone", &self.zone)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Mcns {
    /// Checks the configuration (reporting every problem) and loads the CA.
    /// The token file is read on each call, not here.
    pub fn new(cfg: &McnsConfig) -> Result<Mcns, McnsError> {
        let mut errors = Vec::new();
        let http = HttpClient::new(&cfg.url, cfg.ca.as_deref(), TIMEOUT, &mut errors);
        let zone = cfg.zone.strip_suffix('.').unwrap_or(&cfg.zone).to_ascii_lowercase();
        if let Err(e) = check_dns_name(&zone) {
            errors.push(format!("zone: {e}"));
        }
        if cfg.ttl == 0 {
            errors.push("ttl: must be at least 1 second".into());
        }
        http_client::check_token_path(&cfg.token_path, &mut errors);
        match http {
            Some(http) if errors.is_empty() => Ok(Mcns {
                http,
                token_path: cfg.token_path.clone(),
                zone,
                ttl: cfg.ttl,
            }),
            _ => Err(McnsError::Config(errors.join("; "))),
        }
    }

    /// Makes `name` (relative to the zone, or absolute inside it) resolve to
    /// `addr` and nothing else: creates the record if missing, and deletes
    /// the A records of other addresses once the new one exists. Calling it
    /// again with the same address changes nothing.
    pub async fn set_a(&self, name: &str, addr: Ipv4Addr) -> Result<(), McnsError> {
        let rel = self.relative(name)?;
        let value = addr.to_string();
        let existing = self.list_records(Some(&rel), Some("A")).await?;
        if !existing.iter().any(|r| r.value == value) {
            let body = serde_json::json!({ "name": rel, "type": "A", "value": value, "ttl": self.ttl });
            match self.call(Method::POST, &self.records_path(), Some(body)).await {
                Ok(_) => {}
                // Created meanwhile by someone else: what we wanted.
                Err(McnsError::Rejected(reason)) if reason.starts_with("409") => {}
                Err(e) => return Err(e),
            }
            tracing::info!(name = %self.absolute(&rel), %addr, "mcns: A record created");
        }
        for stale in existing.iter().filter(|r| r.value != value) {
            self.delete(stale).await?;
        }
        Ok(())
    }

    /// Deletes every A record of `name`; a name without records is fine.
    pub async fn remove(&self, name: &str) -> Result<(), McnsError> {
        let rel = self.relative(name)?;
        for record in self.list_records(Some(&rel), Some("A")).await? {
            self.delete(&record).await?;
        }
        Ok(())
    }

    /// Every record of the zone as `(absolute name, type, value)`, sorted;
    /// names are lower case without the trailing dot.
    pub async fn list(&self) -> Result<Vec<(String, String, String)>, McnsError> {
        let mut all: Vec<(String, String, String)> = self
            .list_records(None, None)
            .await?
            .into_iter()
            .map(|r| (self.absolute(&r.name), r.kind, r.value))
            .collect();
        all.sort();
        Ok(all)
    }

    async fn delete(&self, record: &McnsRecord) -> Result<(), McnsError> {
        if record.id.is_empty() {
            return Err(McnsError::Unavailable(format!(
                "mcns listed {} {} {} without an ID: it cannot be deleted",
                self.absolute(&record.name),
                record.kind,
                record.value
            )));
        }
        let path = format!("{}/{}", self.records_path(), encode(&record.id));
        match self.call(Method::DELETE, &path, None).await {
            Ok(_) => {}
            Err(McnsError::Rejected(reason)) if reason.starts_with("404") => {}
            Err(e) => return Err(e),
        }
        tracing::info!(
            name = %self.absolute(&record.name),
            kind = %record.kind,
            value = %record.value,
            "mcns: record deleted"
        );
        Ok(())
    }

    /// Records of the zone, filtered by relative name and type (here too).
    async fn list_records(&self, name: Option<&str>, kind: Option<&str>) -> Result<Vec<McnsRecord>, McnsError> {
        let mut query = Vec::new();
        if let Some(n) = name {
            query.push(format!("name={}", encode(n)));
        }
        if let Some(k) = kind {
            query.push(format!("type={}", encode(k)));
        }
        let mut path = self.records_path();
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let body = self.call(Method::GET, &path, None).await?;
        let records = parse_records(&body, &self.zone).map_err(McnsError::Unavailable)?;
        Ok(records
            .into_iter()
            .filter(|r| name.is_none_or(|n| r.name == n))
            .filter(|r| kind.is_none_or(|k| r.kind.eq_ignore_ascii_case(k)))
            .collect())
    }

    fn records_path(&self) -> String {
        format!("{}/v1/zones/{}/records", self.http.base_path(), encode(&self.zone))
    }

    /// `name` relative to the zone (`@` for the apex); absolute names
    /// (trailing dot) must lie inside the zone.
    fn relative(&self, name: &str) -> Result<String, McnsError> {
        let lower = name.to_ascii_lowercase();
        let absolute = lower.ends_with('.');
        let bare = lower.strip_suffix('.').unwrap_or(&lower);
        let rel = if bare == self.zone {
            "@".to_string()
        } else if let Some(head) = bare.strip_suffix(&format!(".{}", self.zone)) {
            head.to_string()
        } else if absolute {
            return Err(McnsError::Invalid(format!("{name:?} is not in zone {}", self.zone)));
        } else {
            bare.to_string()
        };
        if rel != "@" {
            check_dns_name(&rel).map_err(|e| McnsError::Invalid(format!("name {name:?}: {e}")))?;
        }
        Ok(rel)
    }

    fn absolute(&self, rel: &str) -> String {
        if rel == "@" || rel.is_empty() {
            self.zone.clone()
        } else {
            format!("{rel}.{}", self.zone)
        }
    }

    /// One request with the token read afresh; the body of a 2xx answer.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Bytes, McnsError> {
        let token = http_client::read_token(&self.token_path).map_err(McnsError::Token)?;
        self.http
            .call(method, path, Some(&token), body)
            .await
            .map_err(McnsError::from)
    }
}

impl From<HttpError> for McnsError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Token(r) => McnsError::Token(r),
            HttpError::Invalid(r) => McnsError::Invalid(r),
            HttpError::Unauthorized(r) => McnsError::Unauthorized(r),
            HttpError::Rejected(r) => McnsError::Rejected(r),
            HttpError::Unavailable(r) => McnsError::Unavailable(r),
        }
    }
}

/// Reads a record list: `{"records": [...]}` or a bare array, field names
/// in any case. Names come back relative to `zone` and lower case.
fn parse_records(body: &[u8], zone: &str) -> Result<Vec<McnsRecord>, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| format!("mcns listed records in an unreadable body: {e}"))?;
    let items = match &json {
        Value::Array(items) => items,
        Value::Object(map) => match map.iter().find(|(k, _)| k.eq_ignore_ascii_case("records")) {
            Some((_, Value::Array(items))) => items,
            Some((_, Value::Null)) => return Ok(Vec::new()),
            _ => return Err("mcns answered a record list without \"records\"".into()),
        },
        _ => return Err("mcns answered a record list that is not a list".into()),
    };
    items
        .iter()
        .map(|item| {
            let Value::Object(fields) = item else {
                return Err(format!("mcns listed a record that is not an object: {item}"));
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            };
            let text = |name: &str| match field(name) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let name = text("name").ok_or_else(|| format!("mcns listed a record without a name: {item}"))?;
            let kind = text("type").ok_or_else(|| format!("mcns listed a record without a type: {item}"))?;
            let value = text("value").ok_or_else(|| format!("mcns listed a record without a value: {item}"))?;
            Ok(McnsRecord {
                id: text("id").unwrap_or_default(),
                name: relative_to(&name, zone),
                kind: kind.to_ascii_uppercase(),
                value,
            })
        })
        .collect()
}

/// A name as MCNS may spell it, relative to `zone`, lower case.
fn relative_to(name: &str, zone: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_suffix('.').unwrap_or(&lower);
    if bare.is_empty() || bare == "@" || bare == zone {
        "@".to_string()
    } else {
        bare.strip_suffix(&format!(".{zone}")).unwrap_or(bare).to_string()
    }
}

/// Letters, digits, `-` and `_` in 1–63 character labels, 253 at most.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "{name:?} has a label that is empty or longer than 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("{name:?}: only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Against a small hyper server on 127.0.0.1 that speaks the contract in
    //! the module documentation (the best stand-in for MCNS available).

    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::header::AUTHORIZATION;
    use hyper::{Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use mcp_infra::pki::Ca;
    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    const TOKEN: &str = "agent-token-s3cret";
    const ZONE: &str = "svc.mcp.metacircular.net";

    /// One request as the fake server saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        method: String,
        path: String,
        auth: Option<String>,
        body: Option<Value>,
    }

    /// The fake's records and what it was asked.
    #[derive(Debug, Default)]
    struct State {
        next_id: u64,
        /// id → (zone, name, type, value, ttl)
        records: BTreeMap<u64, (String, String, String, String, u64)>,
        seen: Vec<Seen>,
        /// Answer every request with 401.
        refuse_all: bool,
    }

    struct Fake {
        addr: SocketAddr,
        state: Arc<Mutex<State>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Fake {
        async fn start() -> Fake {
            Fake::start_with(None).await
        }

        async fn start_with(tls: Option<TlsAcceptor>) -> Fake {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            let addr = listener.local_addr().expect("local address");
            let state = Arc::new(Mutex::new(State::default()));
            let shared = state.clone();
            let task = mcp_infra::endpoint::testing::serve(listener, tls, move |req| handle(req, shared.clone()));
            Fake { addr, state, task }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn seen(&self) -> Vec<Seen> {
            std::mem::take(&mut self.state.lock().expect("state").seen)
        }

        /// (name, type, value, ttl) of every record, sorted.
        fn records(&self) -> Vec<(String, String, String, u64)> {
            let mut all: Vec<_> = self
                .state
                .lock()
                .expect("state")
                .records
                .values()
                .map(|(_, n, t, v, ttl)| (n.clone(), t.clone(), v.clone(), *ttl))
                .collect();
            all.sort();
            all
        }

        fn add(&self, name: &str, kind: &str, value: &str) {
            let mut s = self.state.lock().expect("state");
            s.next_id += 1;
            let id = s.next_id;
            s.records
                .insert(id, (ZONE.into(), name.into(), kind.into(), value.into(), 300));
        }

        async fn stop(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response
    }

    fn query_param(query: &str, key: &str) -> Option<String> {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.replace("%40", "@"))
        })
    }

    /// The contract: bearer token, zone-scoped record list with filters, create, delete by ID.
    async fn handle(
        req: hyper::Request<Incoming>,
        state: Arc<Mutex<State>>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
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
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let mut s = state.lock().expect("state");
        s.seen.push(Seen {
            method: method.clone(),
            path: if query.is_empty() {
                path.clone()
            } else {
                format!("{path}?{query}")
            },
            auth: auth.clone(),
            body: body.clone(),
        });
        if s.refuse_all || auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            return Ok(reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "token missing, invalid, or expired"}),
            ));
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let response = match (method.as_str(), parts.as_slice()) {
            ("GET", ["v1", "zones", zone, "records"]) => {
                let name = query_param(&query, "name");
                let kind = query_param(&query, "type");
                let records: Vec<Value> = s
                    .records
                    .iter()
                    .filter(|(_, (z, n, t, _, _))| {
                        z == zone && name.as_ref().is_none_or(|x| x == n) && kind.as_ref().is_none_or(|x| x == t)
                    })
                    .map(|(id, (_, n, t, v, ttl))| json!({"ID": id, "Name": n, "Type": t, "Value": v, "TTL": ttl}))
                    .collect();
                reply(StatusCode::OK, json!({ "records": records }))
            }
            ("POST", ["v1", "zones", zone, "records"]) => {
                let field = |k: &str| body.as_ref().and_then(|b| b.get(k)).cloned();
                let (Some(Value::String(n)), Some(Value::String(t)), Some(Value::String(v)), Some(Value::Number(ttl))) =
                    (field("name"), field("type"), field("value"), field("ttl"))
                else {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "name, type, value and ttl are required"}),
                    ));
                };
                let duplicate = s
                    .records
                    .values()
                    .any(|(z, n2, t2, v2, _)| z == zone && *n2 == n && *t2 == t && *v2 == v);
                if duplicate {
                    reply(StatusCode::CONFLICT, json!({"error": "record already exists"}))
                } else {
                    s.next_id += 1;
                    let id = s.next_id;
                    let ttl = ttl.as_u64().unwrap_or_default();
                    s.records
                        .insert(id, (zone.to_string(), n.clone(), t.clone(), v.clone(), ttl));
                    reply(
                        StatusCode::CREATED,
                        json!({"ID": id, "Name": n, "Type": t, "Value": v, "TTL": ttl}),
                    )
                }
            }
            ("DELETE", ["v1", "zones", _zone, "records", id]) => {
                match id.parse::<u64>().ok().and_then(|id| s.records.remove(&id)) {
                    Some(_) => Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .expect("response"),
                    None => reply(StatusCode::NOT_FOUND, json!({"error": "record not found"})),
                }
            }
            _ => reply(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})),
        };
        Ok(response)
    }

    /// A token file holding `token`, kept alive with the directory.
    fn token_file(token: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mcias-token");
        std::fs::write(&path, format!("{token}\n")).expect("write token");
        (dir, path)
    }

    fn client(url: &str, token_path: &Path) -> Mcns {
        Mcns::new(&McnsConfig::new(url, token_path)).expect("valid configuration")
    }

    fn methods(seen: &[Seen]) -> Vec<String> {
        seen.iter().map(|s| format!("{} {}", s.method, s.path)).collect()
    }

    const RECORDS: &str = "/v1/zones/svc.mcp.metacircular.net/records";

    #[tokio::test]
    async fn set_creates_then_is_a_no_op_then_replaces() {
        let fake = Fake::start().await;
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&fake.url(), &token);
        let ip1 = Ipv4Addr::new(10, 0, 0, 1);
        let ip2 = Ipv4Addr::new(10, 0, 0, 2);

        // Creates.
        mcns.set_a("web", ip1).await.expect("set creates");
        assert_eq!(fake.records(), vec![("web".into(), "A".into(), "10.0.0.1".into(), 60)]);
        let seen = fake.seen();
        assert_eq!(
            methods(&seen),
            vec![format!("GET {RECORDS}?name=web&type=A"), format!("POST {RECORDS}")]
        );
        assert_eq!(
            seen[1].body,
            Some(json!({"name": "web", "type": "A", "value": "10.0.0.1", "ttl": 60}))
        );
        for s in &seen {
            assert_eq!(s.auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()), "{s:?}");
        }

        // The same again, spelled as an absolute name: only a look.
        mcns.set_a("Web.SVC.mcp.metacircular.net.", ip1)
            .await
            .expect("set again");
        assert_eq!(methods(&fake.seen()), vec![format!("GET {RECORDS}?name=web&type=A")]);
        assert_eq!(fake.records().len(), 1);

        // Another address: created first, the old one deleted after.
        mcns.set_a("web.svc.mcp.metacircular.net", ip2)
            .await
            .expect("set replaces");
        assert_eq!(fake.records(), vec![("web".into(), "A".into(), "10.0.0.2".into(), 60)]);
        assert_eq!(
            methods(&fake.seen()),
            vec![
                format!("GET {RECORDS}?name=web&type=A"),
                format!("POST {RECORDS}"),
                format!("DELETE {RECORDS}/1"),
            ]
        );

        // Stale extra addresses go too; other names and types are left alone.
        fake.add("web", "A", "10.0.0.9");
        fake.add("web", "AAAA", "fd00::1");
        fake.add("api", "A", "10.0.0.1");
        mcns.set_a("web", ip2).await.expect("set prunes");
        assert_eq!(
            fake.records(),
            vec![
                ("api".into(), "A".into(), "10.0.0.1".into(), 300),
                ("web".into(), "A".into(), "10.0.0.2".into(), 60),
                ("web".into(), "AAAA".into(), "fd00::1".into(), 300),
            ]
        );
        fake.stop().await;
    }

    #[tokio::test]
    async fn remove_deletes_every_a_record_of_the_name() {
        let fake = Fake::start().await;
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&fake.url(), &token);
        fake.add("web", "A", "10.0.0.1");
        fake.add("web", "A", "10.0.0.2");
        fake.add("web", "AAAA", "fd00::1");
        fake.add("api", "A", "10.0.0.3");

        mcns.remove("web.svc.mcp.metacircular.net").await.expect("remove");
        assert_eq!(
            fake.records(),
            vec![
                ("api".into(), "A".into(), "10.0.0.3".into(), 300),
                ("web".into(), "AAAA".into(), "fd00::1".into(), 300),
            ]
        );
        let seen = fake.seen();
        assert_eq!(
            methods(&seen),
            vec![
                format!("GET {RECORDS}?name=web&type=A"),
                format!("DELETE {RECORDS}/1"),
                format!("DELETE {RECORDS}/2"),
            ]
        );
        assert!(
            seen.iter()
                .all(|s| s.auth.as_deref() == Some(&format!("Bearer {TOKEN}")))
        );

        // Nothing left to remove: fine, and only a look.
        mcns.remove("web").await.expect("remove again");
        assert_eq!(methods(&fake.seen()), vec![format!("GET {RECORDS}?name=web&type=A")]);
        fake.stop().await;
    }

    #[tokio::test]
    async fn list_gives_absolute_names() {
        let fake = Fake::start().await;
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&fake.url(), &token);
        fake.add("web", "A", "10.0.0.1");
        fake.add("@", "A", "10.0.0.5");
        fake.add(
            "api.svc.mcp.metacircular.net.",
            "CNAME",
            "web.svc.mcp.metacircular.net.",
        );
        let list = mcns.list().await.expect("list");
        assert_eq!(
            list,
            vec![
                (
                    format!("api.{ZONE}"),
                    "CNAME".into(),
                    "web.svc.mcp.metacircular.net.".into()
                ),
                (ZONE.into(), "A".into(), "10.0.0.5".into()),
                (format!("web.{ZONE}"), "A".into(), "10.0.0.1".into()),
            ]
        );
        assert_eq!(methods(&fake.seen()), vec![format!("GET {RECORDS}")]);
        fake.stop().await;
    }

    #[tokio::test]
    async fn refused_token_is_a_clear_error_and_never_shown() {
        let fake = Fake::start().await;
        let (_dir, token) = token_file("not-the-token");
        let mcns = client(&fake.url(), &token);
        let err = mcns.set_a("web", Ipv4Addr::LOCALHOST).await.expect_err("401");
        assert!(matches!(&err, McnsError::Unauthorized(r) if r.contains("401")), "{err}");
        assert!(err.to_string().contains("token missing, invalid, or expired"), "{err}");
        assert!(!err.to_string().contains("not-the-token"), "{err}");
        assert!(!format!("{mcns:?}").contains("not-the-token"));
        assert!(fake.records().is_empty());

        // The token file is read on every call: a renewed token is used at once.
        std::fs::write(&token, TOKEN).expect("renew token");
        mcns.set_a("web", Ipv4Addr::LOCALHOST).await.expect("accepted now");

        // A server that refuses everything.
        fake.state.lock().expect("state").refuse_all = true;
        let err = mcns.remove("web").await.expect_err("401");
        assert!(matches!(err, McnsError::Unauthorized(_)), "{err}");
        assert!(!err.to_string().contains(TOKEN), "{err}");

        // No token file, an empty one.
        let missing = client(&fake.url(), Path::new("/nonexistent/mcias-token"));
        let err = missing.list().await.expect_err("no token");
        assert!(
            matches!(&err, McnsError::Token(r) if r.contains("/nonexistent/mcias-token")),
            "{err}"
        );
        let (_dir2, empty) = token_file("   ");
        let err = client("http://127.0.0.1:1", &empty)
            .list()
            .await
            .expect_err("empty token");
        assert!(matches!(&err, McnsError::Token(r) if r.contains("empty")), "{err}");
        fake.stop().await;
    }

    #[tokio::test]
    async fn server_down_is_unavailable() {
        let fake = Fake::start().await;
        let url = fake.url();
        fake.stop().await;
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&url, &token);
        let started = std::time::Instant::now();
        for result in [
            mcns.set_a("web", Ipv4Addr::LOCALHOST).await,
            mcns.remove("web").await,
            mcns.list().await.map(|_| ()),
        ] {
            let err = result.expect_err("nobody listens");
            assert!(
                matches!(&err, McnsError::Unavailable(r) if r.contains("cannot connect") && r.contains(&url)),
                "{err}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn server_failures_and_garbage_are_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                n += 1;
                let round = n;
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, Infallible>(match round {
                            1 => reply(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                json!({"error": "database is locked"}),
                            ),
                            2 => Response::new(Full::new(Bytes::from_static(b"<html>not json</html>"))),
                            3 => reply(StatusCode::OK, json!({"zones": []})),
                            _ => reply(StatusCode::BAD_REQUEST, json!({"error": "invalid IPv4 address"})),
                        })
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&format!("http://{addr}"), &token);
        let err = mcns.list().await.expect_err("500");
        assert!(
            matches!(&err, McnsError::Unavailable(r) if r.contains("500") && r.contains("database is locked")),
            "{err}"
        );
        let err = mcns.list().await.expect_err("not json");
        assert!(
            matches!(&err, McnsError::Unavailable(r) if r.contains("unreadable")),
            "{err}"
        );
        let err = mcns.list().await.expect_err("no records field");
        assert!(
            matches!(&err, McnsError::Unavailable(r) if r.contains("records")),
            "{err}"
        );
        let err = mcns.list().await.expect_err("400");
        assert!(
            matches!(&err, McnsError::Rejected(r) if r.contains("400") && r.contains("invalid IPv4")),
            "{err}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn names_outside_the_zone_are_refused_before_asking() {
        let fake = Fake::start().await;
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&fake.url(), &token);
        for bad in ["web.example.com.", "we b", "web..svc", ""] {
            let err = mcns.set_a(bad, Ipv4Addr::LOCALHOST).await.expect_err(bad);
            assert!(matches!(err, McnsError::Invalid(_)), "{bad:?}: {err}");
        }
        assert!(fake.seen().is_empty(), "nothing was sent");
        assert_eq!(mcns.relative("web").expect("relative"), "web");
        assert_eq!(mcns.relative("a.b").expect("relative"), "a.b");
        assert_eq!(mcns.relative("WEB.svc.mcp.metacircular.net.").expect("absolute"), "web");
        assert_eq!(mcns.relative("svc.mcp.metacircular.net").expect("apex"), "@");
        fake.stop().await;
    }

    #[tokio::test]
    async fn https_with_the_configured_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let acceptor = mcp_infra::endpoint::testing::loopback_tls_acceptor(dir.path(), "mcns test ca");
        let fake = Fake::start_with(Some(acceptor)).await;
        let (_tdir, token) = token_file(TOKEN);
        for host in ["localhost", "127.0.0.1"] {
            let cfg = McnsConfig {
                ca: Some(Ca::cert_path(dir.path())),
                ..McnsConfig::new(&format!("https://{host}:{}", fake.addr.port()), &token)
            };
            let mcns = Mcns::new(&cfg).unwrap_or_else(|e| panic!("{host}: {e}"));
            mcns.set_a("web", Ipv4Addr::new(10, 0, 0, 7))
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        assert_eq!(fake.records(), vec![("web".into(), "A".into(), "10.0.0.7".into(), 60)]);
        fake.seen();

        // Another CA: not trusted, nothing sent.
        let other = tempfile::tempdir().expect("temp dir");
        Ca::create(other.path(), "someone else").expect("create CA");
        let cfg = McnsConfig {
            ca: Some(Ca::cert_path(other.path())),
            ..McnsConfig::new(&format!("https://localhost:{}", fake.addr.port()), &token)
        };
        let err = Mcns::new(&cfg).expect("valid").list().await.expect_err("untrusted");
        assert!(matches!(&err, McnsError::Unavailable(r) if r.contains("tls")), "{err}");
        assert!(fake.seen().is_empty());
        fake.stop().await;
    }

    #[test]
    fn config_defaults_and_errors() {
        let cfg: McnsConfig =
            toml::from_str("url = \"https://mcns.example:8443\"\ntoken_path = \"/srv/mcp/mcias-token\"")
                .expect("parse");
        assert_eq!(cfg.zone, ZONE);
        assert_eq!(cfg.ttl, 60);
        assert_eq!(cfg.ca, None);
        let err = toml::from_str::<McnsConfig>("url = \"x\"\ntoken_path = \"t\"\nnode_addr = \"1.2.3.4\"")
            .expect_err("unknown field");
        assert!(err.to_string().contains("node_addr"), "{err}");

        let bad = McnsConfig {
            url: "http://mcns.example:8443".into(),
            token_path: PathBuf::new(),
            ca: None,
            zone: "bad zone".into(),
            ttl: 0,
        };
        let text = Mcns::new(&bad).expect_err("invalid").to_string();
        for part in ["plain http", "zone:", "ttl:", "token_path:"] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let no_ca = McnsConfig::new("https://mcns.example", Path::new("/t"));
        assert!(
            Mcns::new(&no_ca)
                .expect_err("no ca")
                .to_string()
                .contains("ca: required")
        );
        let ftp = McnsConfig::new("ftp://mcns.example", Path::new("/t"));
        assert!(Mcns::new(&ftp).is_err());
        let creds = McnsConfig::new("https://user:pw@mcns.example", Path::new("/t"));
        assert!(Mcns::new(&creds).is_err());
        // A base path is kept; loopback http is fine.
        let mcns = Mcns::new(&McnsConfig::new("http://[::1]:8080/mcns/", Path::new("/t"))).expect("valid");
        assert_eq!(mcns.records_path(), "/mcns/v1/zones/svc.mcp.metacircular.net/records");
    }

    #[test]
    fn record_lists_are_read_tolerantly() {
        let envelope = br#"{"records":[{"ID":7,"Name":"web","Type":"a","Value":"10.0.0.1","TTL":60}]}"#;
        let bare = br#"[{"id":"7","name":"web.svc.mcp.metacircular.net.","type":"A","value":"10.0.0.1"}]"#;
        for body in [&envelope[..], &bare[..]] {
            let records = parse_records(body, ZONE).expect("readable");
            assert_eq!(
                records,
                vec![McnsRecord {
                    id: "7".into(),
                    name: "web".into(),
                    kind: "A".into(),
                    value: "10.0.0.1".into(),
                }]
            );
        }
        assert_eq!(parse_records(br#"{"records":null}"#, ZONE), Ok(vec![]));
        assert!(parse_records(br#"{"records":[{"Name":"web"}]}"#, ZONE).is_err());
        assert!(parse_records(b"\"records\"", ZONE).is_err());
    }
}

#[tonic::async_trait]
impl crate::platform::DnsRegistrar for Mcns {
    async fn register(&self, _service: &str, hostname: &str, address: Ipv4Addr) -> Result<(), String> {
        self.set_a(hostname, address).await.map_err(|e| e.to_string())
    }

    async fn remove(&self, _service: &str, hostname: &str) -> Result<(), String> {
        Mcns::remove(self, hostname).await.map_err(|e| e.to_string())
    }
}
