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
//! As every REST platform service ([`super::rest`]): 401/403 →
//! `Unauthorized`; other 4xx → `Rejected`; no connection, TLS failure,
//! timeout or 5xx → `Unavailable`, and so is an unreadable record list. The
//! token is read from `token_path` on every call (it is renewed on disk),
//! sent only in the `Authorization` header (marked sensitive), and never
//! logged or put in an error.

use std::net::Ipv4Addr;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;

use super::DnsRegistrar;
use super::rest::{ErrorKind, RestClient, RestError, encode};

pub use crate::config::McnsConfig;
/// Default zone of service records (SPEC §4 step 5).
pub use mcp_model::service::DEFAULT_ZONE;

/// Bound on one HTTP exchange with MCNS.
const TIMEOUT: Duration = Duration::from_secs(10);

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
#[derive(Debug)]
pub struct Mcns {
    rest: RestClient,
    /// Lower case, no trailing dot.
    zone: String,
    ttl: u32,
}

impl Mcns {
    /// Checks the configuration (reporting every problem) and loads the CA.
    /// The token file is read on each call, not here.
    pub fn new(cfg: &McnsConfig) -> Result<Mcns, RestError> {
        let mut problems = Vec::new();
        let zone = cfg.zone.strip_suffix('.').unwrap_or(&cfg.zone).to_ascii_lowercase();
        if let Err(e) = check_dns_name(&zone) {
            problems.push(format!("zone: {e}"));
        }
        if cfg.ttl == 0 {
            problems.push("ttl: must be at least 1 second".into());
        }
        let rest = RestClient::new("mcns", &cfg.url, cfg.ca.as_deref(), &cfg.token_path, TIMEOUT, problems)?;
        Ok(Mcns {
            rest,
            zone,
            ttl: cfg.ttl,
        })
    }

    /// Makes `name` (relative to the zone, or absolute inside it) resolve to
    /// `addr` and nothing else: creates the record if missing, and deletes
    /// the A records of other addresses once the new one exists. Calling it
    /// again with the same address changes nothing.
    pub async fn set_a(&self, name: &str, addr: Ipv4Addr) -> Result<(), RestError> {
        let rel = self.relative(name)?;
        let value = addr.to_string();
        let existing = self.list_records(Some(&rel), Some("A")).await?;
        if !existing.iter().any(|r| r.value == value) {
            let body = serde_json::json!({ "name": rel, "type": "A", "value": value, "ttl": self.ttl });
            match self.rest.call(Method::POST, &self.records_path(), Some(body)).await {
                Ok(_) => {}
                // Created meanwhile by someone else: what we wanted.
                Err(e) if e.rejected_with(StatusCode::CONFLICT) => {}
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
    pub async fn remove(&self, name: &str) -> Result<(), RestError> {
        let rel = self.relative(name)?;
        for record in self.list_records(Some(&rel), Some("A")).await? {
            self.delete(&record).await?;
        }
        Ok(())
    }

    /// Every record of the zone as `(absolute name, type, value)`, sorted;
    /// names are lower case without the trailing dot.
    pub async fn list(&self) -> Result<Vec<(String, String, String)>, RestError> {
        let mut all: Vec<(String, String, String)> = self
            .list_records(None, None)
            .await?
            .into_iter()
            .map(|r| (self.absolute(&r.name), r.kind, r.value))
            .collect();
        all.sort();
        Ok(all)
    }

    async fn delete(&self, record: &McnsRecord) -> Result<(), RestError> {
        if record.id.is_empty() {
            return Err(self.rest.error(
                ErrorKind::Unavailable,
                format!(
                    "mcns listed {} {} {} without an ID: it cannot be deleted",
                    self.absolute(&record.name),
                    record.kind,
                    record.value
                ),
            ));
        }
        let path = format!("{}/{}", self.records_path(), encode(&record.id));
        match self.rest.call(Method::DELETE, &path, None).await {
            Ok(_) => {}
            Err(e) if e.rejected_with(StatusCode::NOT_FOUND) => {}
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
    async fn list_records(&self, name: Option<&str>, kind: Option<&str>) -> Result<Vec<McnsRecord>, RestError> {
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
        let body = self.rest.call(Method::GET, &path, None).await?;
        let records = parse_records(&body, &self.zone).map_err(|r| self.rest.error(ErrorKind::Unavailable, r))?;
        Ok(records
            .into_iter()
            .filter(|r| name.is_none_or(|n| r.name == n))
            .filter(|r| kind.is_none_or(|k| r.kind.eq_ignore_ascii_case(k)))
            .collect())
    }

    fn records_path(&self) -> String {
        format!("{}/v1/zones/{}/records", self.rest.base_path(), encode(&self.zone))
    }

    /// `name` relative to the zone (`@` for the apex); absolute names
    /// (trailing dot) must lie inside the zone.
    fn relative(&self, name: &str) -> Result<String, RestError> {
        let invalid = |reason: String| self.rest.error(ErrorKind::Invalid, reason);
        let lower = name.to_ascii_lowercase();
        let absolute = lower.ends_with('.');
        let bare = lower.strip_suffix('.').unwrap_or(&lower);
        let rel = if bare == self.zone {
            "@".to_string()
        } else if let Some(head) = bare.strip_suffix(&format!(".{}", self.zone)) {
            head.to_string()
        } else if absolute {
            return Err(invalid(format!("{name:?} is not in zone {}", self.zone)));
        } else {
            bare.to_string()
        };
        if rel != "@" {
            check_dns_name(&rel).map_err(|e| invalid(format!("name {name:?}: {e}")))?;
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
}

/// MCNS errors carry no unavailable mark: a deploy whose record cannot be
/// published in MCNS fails (see [`super::UNAVAILABLE_PREFIX`]).
#[tonic::async_trait]
impl DnsRegistrar for Mcns {
    async fn register(&self, _service: &str, hostname: &str, address: Ipv4Addr) -> Result<(), String> {
        self.set_a(hostname, address).await.map_err(|e| e.to_string())
    }

    async fn remove(&self, _service: &str, hostname: &str) -> Result<(), String> {
        Mcns::remove(self, hostname).await.map_err(|e| e.to_string())
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
    //! Against a stand-in on 127.0.0.1 that speaks the contract in the module
    //! documentation (the best stand-in for MCNS available).

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::Response;
    use serde_json::json;

    use super::*;
    use crate::platform::rest::ErrorKind::*;
    use crate::platform::testing::{
        self, Seen, StandIn, TOKEN, check_down, check_tls, check_tokens, is, reply, token_file, unauthorized,
    };

    const ZONE: &str = "svc.mcp.metacircular.net";
    const RECORDS: &str = "/v1/zones/svc.mcp.metacircular.net/records";

    /// The stand-in's records: id → (zone, name, type, value, ttl).
    #[derive(Debug, Default)]
    struct Zones {
        next_id: u64,
        records: BTreeMap<u64, (String, String, String, String, u64)>,
        /// Answer every request with 401.
        refuse_all: bool,
    }

    impl Zones {
        fn insert(&mut self, zone: &str, name: &str, kind: &str, value: &str, ttl: u64) -> u64 {
            self.next_id += 1;
            let record = (zone.into(), name.into(), kind.into(), value.into(), ttl);
            self.records.insert(self.next_id, record);
            self.next_id
        }
    }

    type Fake = StandIn<Zones>;

    async fn fake() -> Fake {
        StandIn::start(Zones::default(), answer).await
    }

    impl StandIn<Zones> {
        /// (name, type, value, ttl) of every record, sorted.
        fn records(&self) -> Vec<(String, String, String, u64)> {
            let mut all: Vec<_> = self.with(|z| {
                z.records
                    .values()
                    .map(|(_, n, t, v, ttl)| (n.clone(), t.clone(), v.clone(), *ttl))
                    .collect()
            });
            all.sort();
            all
        }

        fn add(&self, name: &str, kind: &str, value: &str) {
            self.with(|z| z.insert(ZONE, name, kind, value, 300));
        }
    }

    /// The contract: bearer token, zone-scoped record list with filters, create, delete by ID.
    fn answer(z: &mut Zones, req: &Seen) -> Response<Full<Bytes>> {
        if z.refuse_all || !req.authorized() {
            return unauthorized();
        }
        let record = |id: u64, n: &str, t: &str, v: &str, ttl: u64| json!({"ID": id, "Name": n, "Type": t, "Value": v, "TTL": ttl});
        let parts: Vec<&str> = req.route().trim_start_matches('/').split('/').collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["v1", "zones", zone, "records"]) => {
                let (name, kind) = (req.query("name"), req.query("type"));
                let records: Vec<Value> = z
                    .records
                    .iter()
                    .filter(|(_, (z, n, t, _, _))| {
                        z == zone && name.as_ref().is_none_or(|x| x == n) && kind.as_ref().is_none_or(|x| x == t)
                    })
                    .map(|(id, (_, n, t, v, ttl))| record(*id, n, t, v, *ttl))
                    .collect();
                reply(StatusCode::OK, json!({ "records": records }))
            }
            ("POST", ["v1", "zones", zone, "records"]) => {
                let field = |k: &str| req.body.as_ref().and_then(|b| b.get(k)).cloned();
                let (Some(Value::String(n)), Some(Value::String(t)), Some(Value::String(v)), Some(Value::Number(ttl))) =
                    (field("name"), field("type"), field("value"), field("ttl"))
                else {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "name, type, value and ttl are required"}),
                    );
                };
                let duplicate = z
                    .records
                    .values()
                    .any(|(z, n2, t2, v2, _)| z == zone && *n2 == n && *t2 == t && *v2 == v);
                if duplicate {
                    return reply(StatusCode::CONFLICT, json!({"error": "record already exists"}));
                }
                let ttl = ttl.as_u64().unwrap_or_default();
                let id = z.insert(zone, &n, &t, &v, ttl);
                reply(StatusCode::CREATED, record(id, &n, &t, &v, ttl))
            }
            ("DELETE", ["v1", "zones", _zone, "records", id]) => {
                match id.parse::<u64>().ok().and_then(|id| z.records.remove(&id)) {
                    Some(_) => Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .expect("response"),
                    None => reply(StatusCode::NOT_FOUND, json!({"error": "record not found"})),
                }
            }
            _ => reply(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})),
        }
    }

    /// A stand-in and a client of it with the right token (in the directory returned).
    async fn setup() -> (Fake, Mcns, tempfile::TempDir) {
        testing::setup(fake().await, |url, token| {
            client(url, token, None).expect("valid configuration")
        })
    }

    /// A client of `url` with the token in `token`, trusting `ca`.
    fn client(url: &str, token: &Path, ca: Option<PathBuf>) -> Result<Mcns, RestError> {
        Mcns::new(&McnsConfig {
            ca,
            ..McnsConfig::new(url, token)
        })
    }

    /// The call the shared checks make, with a client for (url, token file, CA).
    async fn set_a(url: String, token: PathBuf, ca: Option<PathBuf>) -> Result<(), RestError> {
        client(&url, &token, ca)?.set_a("web", Ipv4Addr::new(10, 0, 0, 7)).await
    }

    fn lines(seen: &[Seen]) -> Vec<String> {
        seen.iter().map(Seen::line).collect()
    }

    #[tokio::test]
    async fn set_creates_then_is_a_no_op_then_replaces() {
        let (fake, mcns, _token) = setup().await;
        let ip1 = Ipv4Addr::new(10, 0, 0, 1);
        let ip2 = Ipv4Addr::new(10, 0, 0, 2);

        // Creates.
        mcns.set_a("web", ip1).await.expect("set creates");
        assert_eq!(fake.records(), vec![("web".into(), "A".into(), "10.0.0.1".into(), 60)]);
        let seen = fake.seen();
        assert_eq!(
            lines(&seen),
            vec![format!("GET {RECORDS}?name=web&type=A"), format!("POST {RECORDS}")]
        );
        assert_eq!(
            seen[1].body,
            Some(json!({"name": "web", "type": "A", "value": "10.0.0.1", "ttl": 60}))
        );
        assert!(seen.iter().all(Seen::authorized), "{seen:?}");

        // The same again, spelled as an absolute name: only a look.
        mcns.set_a("Web.SVC.mcp.metacircular.net.", ip1)
            .await
            .expect("set again");
        assert_eq!(lines(&fake.seen()), vec![format!("GET {RECORDS}?name=web&type=A")]);
        assert_eq!(fake.records().len(), 1);

        // Another address: created first, the old one deleted after.
        mcns.set_a("web.svc.mcp.metacircular.net", ip2)
            .await
            .expect("set replaces");
        assert_eq!(fake.records(), vec![("web".into(), "A".into(), "10.0.0.2".into(), 60)]);
        assert_eq!(
            lines(&fake.seen()),
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
        let (fake, mcns, _token) = setup().await;
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
            lines(&seen),
            vec![
                format!("GET {RECORDS}?name=web&type=A"),
                format!("DELETE {RECORDS}/1"),
                format!("DELETE {RECORDS}/2"),
            ]
        );
        assert!(seen.iter().all(Seen::authorized), "{seen:?}");

        // Nothing left to remove: fine, and only a look.
        mcns.remove("web").await.expect("remove again");
        assert_eq!(lines(&fake.seen()), vec![format!("GET {RECORDS}?name=web&type=A")]);
        fake.stop().await;
    }

    #[tokio::test]
    async fn list_gives_absolute_names() {
        let (fake, mcns, _token) = setup().await;
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
        assert_eq!(lines(&fake.seen()), vec![format!("GET {RECORDS}")]);
        fake.stop().await;
    }

    #[tokio::test]
    async fn tokens_are_read_on_every_call_and_never_shown() {
        let fake = fake().await;
        check_tokens(&fake, set_a).await;

        // A server that refuses everything.
        fake.with(|z| z.refuse_all = true);
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&fake.url(), &token, None).expect("valid");
        let err = mcns.remove("web").await.expect_err("401");
        assert!(is(&err, Unauthorized, "") && !err.to_string().contains(TOKEN), "{err}");
        assert!(!format!("{mcns:?}").contains(TOKEN));
        fake.stop().await;
    }

    #[tokio::test]
    async fn server_down_is_unavailable() {
        // All three fail fast together, not only each on its own.
        let started = std::time::Instant::now();
        check_down(set_a).await;
        check_down(|url, token, _| async move { client(&url, &token, None)?.remove("web").await }).await;
        check_down(|url, token, _| async move { client(&url, &token, None)?.list().await.map(drop) }).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[tokio::test]
    async fn server_failures_and_garbage_are_unavailable() {
        // Answers in turn: a 500, not JSON, JSON without records, a 400.
        fn answer(round: &mut u32, _: &Seen) -> Response<Full<Bytes>> {
            *round += 1;
            match round {
                1 => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "database is locked"}),
                ),
                2 => Response::new(Full::new(Bytes::from_static(b"<html>not json</html>"))),
                3 => reply(StatusCode::OK, json!({"zones": []})),
                _ => reply(StatusCode::BAD_REQUEST, json!({"error": "invalid IPv4 address"})),
            }
        }
        let fake = StandIn::start(0u32, answer).await;
        let (_dir, token) = token_file(TOKEN);
        let mcns = client(&fake.url(), &token, None).expect("valid");
        for (kind, parts) in [
            (Unavailable, ["500", "database is locked"]),
            (Unavailable, ["unreadable", "unreadable"]),
            (Unavailable, ["records", "records"]),
            (Rejected, ["400", "invalid IPv4"]),
        ] {
            let err = mcns.list().await.expect_err("refused");
            assert!(parts.iter().all(|p| is(&err, kind, p)), "{kind:?}: {err}");
        }
        fake.stop().await;
    }

    #[tokio::test]
    async fn names_outside_the_zone_are_refused_before_asking() {
        let (fake, mcns, _token) = setup().await;
        for bad in ["web.example.com.", "we b", "web..svc", ""] {
            let err = mcns.set_a(bad, Ipv4Addr::LOCALHOST).await.expect_err(bad);
            assert!(is(&err, Invalid, ""), "{bad:?}: {err}");
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
        let fake = StandIn::start_tls(Zones::default(), answer).await;
        check_tls(&fake, None, set_a).await;
        assert_eq!(fake.records(), vec![("web".into(), "A".into(), "10.0.0.7".into(), 60)]);
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
