//! Metacrypt adapter (SPEC §5 CA row, §14): service certificates from the
//! Metacircular CA instead of the master's built-in CA.
//!
//! # The contract
//!
//! Known, from SPEC §5/§14 and the Metacircular documents
//! (`metacircular/metacircular`: `docs/metacircular.md` "Certificate
//! Lifecycle", `docs/packaging-and-deployment.md` "What Happens During
//! Deploy", `PLATFORM_EVOLUTION.md`; Metacrypt's `PKI-ENGINE-PLAN.md` and
//! `ARCHITECTURE.md` commit messages on git.wntrmute.dev):
//!
//! - CA operations go through `POST /v1/engine/request` with
//!   `Authorization: Bearer <MCIAS token>`; the engine is addressed by its
//!   mount (`pki`) and an operation name (`issue`, `renew`, `get-chain`,
//!   `get-cert`, `revoke`, …).
//! - Two-tier PKI: a root signs issuers (intermediates such as `infra`,
//!   `services`, `clients`), which sign leaves with a profile (`server`,
//!   `client`, `peer`) and a user-overridable TTL.
//! - **Metacrypt generates the leaf key** and returns it with the
//!   certificate ("private keys never stored in barrier"; the client
//!   "downloads the certificate chain and private key"). No CSR is sent.
//! - Public, unauthenticated trust endpoints: `GET /v1/pki/{mount}/ca` (root)
//!   and `GET /v1/pki/{mount}/ca/chain` (issuer + root), PEM.
//! - The `mcp-agent` account may issue for `*.svc.mcp.metacircular.net`;
//!   one certificate per service, no wildcards.
//!
//! **Assumed** (the JSON of `/v1/engine/request` is not written down
//! anywhere we could read):
//!
//! ```json
//! {"mount": "pki", "operation": "issue",
//!  "data": {"issuer": "services", "profile": "server",
//!           "common_name": "web.svc.mcp.metacircular.net",
//!           "dns_names": ["web.svc.mcp.metacircular.net", "www.example.net"],
//!           "ttl": "2160h"}}
//! ```
//!
//! answered by `{"data": {"cert_pem", "chain_pem", "key_pem", "serial",
//! "expires_at"}}`. The answer is read tolerantly: the object with or
//! without the `data` envelope; the leaf as `cert_pem`, `certificate` or
//! `cert`; the issuer chain as `chain_pem`, `chain`, `ca_chain` or
//! `issuing_ca` (one PEM string or a list, with or without the leaf); the key
//! as `key_pem`, `private_key` or `key`. Without a chain in the answer the
//! public `GET /v1/pki/{mount}/ca/chain?issuer=<issuer>` completes it (the
//! `issuer` parameter is assumed too; a server that ignores it answers
//! its default chain). Renewal is a new `issue`: the key is fresh each
//! time. The client is checked against an in-test hyper server speaking
//! this contract and issuing real certificates, the best stand-in available.
//!
//! # What is checked before a certificate is used
//!
//! The chain is parsed and re-encoded as clean PEM (leaf first, then the
//! issuers in Metacrypt's order); the leaf's DNS names must be exactly the
//! requested ones (and no IP addresses); the key must be loadable by rustls
//! (the built-in proxy serves with it) and match the leaf; and the leaf must
//! verify as a TLS server certificate for the first name up to the last
//! certificate of the chain. Anything else is refused.
//!
//! # Errors and secrets
//!
//! As every REST platform service ([`super::rest`]): 401/403 →
//! `Unauthorized`; other 4xx → `Rejected`; no connection, TLS failure,
//! timeout, 5xx → `Unavailable`; an answer failing the checks above →
//! `Refused`. The token is read from `token_path` on every call and only
//! sent in the `Authorization` header (marked sensitive). The key in the
//! answer is never logged, never put in an error, and no type holding it
//! implements `Debug`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use mcp_infra::tls::parse_certs;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use serde_json::{Map, Value, json};

use super::rest::{ErrorKind, RestClient, RestError, encode};
use super::{CertAuthority, ServiceCert};

pub use crate::config::MetacryptConfig;

/// Bound on one HTTP exchange with Metacrypt (issuing includes key generation).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Profiles whose certificates a TLS server can use.
const SERVER_PROFILES: [&str; 2] = ["server", "peer"];

/// Client of Metacrypt's CA engine for one mount and issuer.
#[derive(Debug)]
pub struct Metacrypt {
    rest: RestClient,
    mount: String,
    issuer: String,
    profile: String,
    ttl_days: u32,
}

impl Metacrypt {
    /// Checks the configuration (reporting every problem) and loads the CA.
    /// The token file is read on each call, not here.
    pub fn new(cfg: &MetacryptConfig) -> Result<Metacrypt, RestError> {
        let mut errors = Vec::new();
        for (field, value) in [("mount", &cfg.mount), ("issuer", &cfg.issuer)] {
            if let Err(e) = check_segment(value) {
                errors.push(format!("{field}: {e}"));
            }
        }
        if !SERVER_PROFILES.contains(&cfg.profile.as_str()) {
            errors.push(format!(
                "profile: {:?} cannot serve TLS: expected \"server\" or \"peer\"",
                cfg.profile
            ));
        }
        if cfg.ttl_days == 0 {
            errors.push("ttl_days: must be at least 1".into());
        }
        let rest = RestClient::new(
            "metacrypt",
            &cfg.url,
            cfg.ca.as_deref(),
            &cfg.token_path,
            TIMEOUT,
            errors,
        )?;
        Ok(Metacrypt {
            rest,
            mount: cfg.mount.clone(),
            issuer: cfg.issuer.clone(),
            profile: cfg.profile.clone(),
            ttl_days: cfg.ttl_days,
        })
    }

    /// A server certificate for exactly `hostnames` (key made by Metacrypt),
    /// checked as the module documentation says: the full chain, leaf first,
    /// and the key, PEM.
    pub async fn issue_server_cert(&self, service: &str, hostnames: &[String]) -> Result<ServiceCert, RestError> {
        let refused = |reason: String| self.rest.error(ErrorKind::Refused, reason);
        let names = requested_names(hostnames).map_err(|r| self.rest.error(ErrorKind::Invalid, r))?;
        let common_name = names
            .iter()
            .find(|n| n.starts_with(&format!("{service}.")))
            .unwrap_or(&names[0])
            .clone();
        let body = json!({
            "mount": self.mount,
            "operation": "issue",
            "data": {
                "issuer": self.issuer,
                "profile": self.profile,
                "common_name": common_name,
                "dns_names": names,
                "ttl": format!("{}h", u64::from(self.ttl_days) * 24),
            },
        });
        let path = format!("{}/v1/engine/request", self.rest.base_path());
        let answer = self.rest.call(Method::POST, &path, Some(body)).await?;
        let mut parts = parse_issued(&answer).map_err(refused)?;
        if parts.issuers().map_err(refused)?.is_empty() {
            // Only the leaf: the issuer's public chain completes it.
            parts.chain.push(self.ca_chain().await?);
        }
        let provider = rustls::crypto::ring::default_provider();
        let cert = check_issued(&parts, &names, &provider).map_err(refused)?;
        let (serial, expires) = mcp_infra::pki::serial_and_expiry(&cert.chain_pem).unwrap_or_default();
        tracing::info!(
            %service,
            names = %names.join(","),
            issuer = %self.issuer,
            %serial,
            expires,
            "metacrypt: certificate issued"
        );
        Ok(cert)
    }

    /// The issuer's chain (issuer then root) from the public endpoint, as
    /// clean PEM. Sends no token.
    pub async fn ca_chain(&self) -> Result<String, RestError> {
        let unavailable = |reason: String| self.rest.error(ErrorKind::Unavailable, reason);
        let path = format!(
            "{}/v1/pki/{}/ca/chain?issuer={}",
            self.rest.base_path(),
            encode(&self.mount),
            encode(&self.issuer)
        );
        let answer = self.rest.call_public(Method::GET, &path).await?;
        let pem = match serde_json::from_slice::<Value>(&answer) {
            Ok(Value::Object(map)) => {
                let obj = envelope(&map);
                pem_field(obj, &["chain_pem", "chain", "ca_chain", "certificate", "cert_pem"])
                    .ok_or_else(|| unavailable(format!("{path}: the answer has no chain")))?
            }
            _ => String::from_utf8_lossy(&answer).into_owned(),
        };
        let certs = parse_certs(pem.as_bytes())
            .map_err(|e| unavailable(format!("{path}: the chain is not PEM certificates: {e}")))?;
        Ok(certs.iter().map(|c| pem_encode("CERTIFICATE", c)).collect())
    }
}

/// Metacrypt errors carry no unavailable mark (see [`super::UNAVAILABLE_PREFIX`]).
#[tonic::async_trait]
impl CertAuthority for Metacrypt {
    async fn issue(&self, service: &str, hostnames: &[String]) -> Result<ServiceCert, String> {
        self.issue_server_cert(service, hostnames)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The names to ask for: lower case, no trailing dot, unique, in the given
/// order; each a valid hostname.
fn requested_names(hostnames: &[String]) -> Result<Vec<String>, String> {
    if hostnames.is_empty() {
        return Err("a certificate needs at least one hostname".into());
    }
    let mut names: Vec<String> = Vec::new();
    for h in hostnames {
        let name = h.trim_end_matches('.').to_ascii_lowercase();
        mcp_model::service::check_hostname(&name).map_err(|e| format!("hostname {e}"))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// A mount or issuer name: it goes into URLs and the request.
fn check_segment(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must be set".into());
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || value.starts_with('.')
    {
        return Err(format!("{value:?}: only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// What an `issue` answer carried, still unchecked. No `Debug`: it holds the key.
struct IssuedParts {
    /// The leaf, if given apart from the chain.
    cert: Option<String>,
    /// Issuer chain PEM pieces, in order; may start with the leaf.
    chain: Vec<String>,
    key: String,
}

impl IssuedParts {
    /// Every certificate, leaf first; the leaf is not repeated.
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        let mut all = Vec::new();
        if let Some(cert) = &self.cert {
            all.extend(parse_certs(cert.as_bytes()).map_err(|e| format!("the certificate is not PEM: {e}"))?);
        }
        for piece in &self.chain {
            let certs = parse_certs(piece.as_bytes()).map_err(|e| format!("the chain is not PEM: {e}"))?;
            for c in certs {
                if all.last() != Some(&c) {
                    all.push(c);
                }
            }
        }
        if all.is_empty() {
            return Err("the answer has no certificate".into());
        }
        Ok(all)
    }

    /// The certificates after the leaf.
    fn issuers(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        Ok(self.certificates()?.split_off(1))
    }
}

/// The JSON object inside an optional `data` envelope.
fn envelope(map: &Map<String, Value>) -> &Map<String, Value> {
    match map.get("data") {
        Some(Value::Object(inner)) => inner,
        _ => map,
    }
}

/// The first of `names` that holds a PEM string, or a list of them (joined).
fn pem_field(obj: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match obj.get(*n) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(|s| format!("{}\n", s.trim())))
            .collect::<Option<String>>(),
        _ => None,
    })
}

/// Reads an `issue` answer (see the module documentation). Errors never
/// quote the body: it holds the key.
fn parse_issued(body: &[u8]) -> Result<IssuedParts, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let Value::Object(map) = &json else {
        return Err("the answer is not a JSON object".into());
    };
    let obj = envelope(map);
    let cert = pem_field(obj, &["cert_pem", "certificate", "cert"]);
    let chain: Vec<String> = pem_field(obj, &["chain_pem", "chain", "ca_chain", "issuing_ca"])
        .into_iter()
        .collect();
    let key = pem_field(obj, &["key_pem", "private_key", "key"]).ok_or_else(|| {
        "the answer has no private key (key_pem): mcp needs Metacrypt to generate and return it".to_string()
    })?;
    if cert.is_none() && chain.is_empty() {
        return Err("the answer has no certificate (cert_pem)".into());
    }
    Ok(IssuedParts { cert, chain, key })
}

/// Checks an answer against the request and returns the full chain and key
/// as clean PEM.
fn check_issued(parts: &IssuedParts, names: &[String], provider: &CryptoProvider) -> Result<ServiceCert, String> {
    let chain = parts.certificates()?;
    let chain_pem: String = chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();

    let wanted: BTreeSet<String> = names.iter().cloned().collect();
    let (dns, ips) = mcp_infra::pki::sans(&chain_pem);
    let got: BTreeSet<String> = dns.iter().map(|d| d.to_ascii_lowercase()).collect();
    if got != wanted || !ips.is_empty() {
        let mut shown: Vec<String> = got.into_iter().collect();
        shown.extend(ips.iter().map(|ip| ip.to_string()));
        return Err(format!(
            "the certificate names {} but {} was asked for",
            if shown.is_empty() {
                "nothing".to_string()
            } else {
                shown.join(", ")
            },
            names.join(", ")
        ));
    }

    let key = PrivateKeyDer::from_pem_slice(parts.key.as_bytes())
        .map_err(|_| "the private key is not a PEM private key".to_string())?;
    let key_pem = match &key {
        PrivateKeyDer::Pkcs8(k) => pem_encode("PRIVATE KEY", k.secret_pkcs8_der()),
        PrivateKeyDer::Sec1(k) => pem_encode("EC PRIVATE KEY", k.secret_sec1_der()),
        PrivateKeyDer::Pkcs1(k) => pem_encode("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        _ => return Err("the private key is of an unknown kind".into()),
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key cannot be used for TLS: {e}"))?;
    CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| format!("the private key does not belong to the certificate ({e})"))?;

    let Some((anchor, between)) = chain[1..].split_last() else {
        return Err("no issuer chain came with the certificate".into());
    };
    let mut roots = RootCertStore::empty();
    roots
        .add(anchor.clone())
        .map_err(|e| format!("the last certificate of the chain cannot be a trust anchor: {e}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider.clone()))
        .build()
        .map_err(|e| format!("cannot check the chain: {e}"))?;
    let server_name = ServerName::try_from(names[0].clone()).map_err(|e| format!("{}: {e}", names[0]))?;
    verifier
        .verify_server_cert(&chain[0], between, &server_name, &[], UnixTime::now())
        .map_err(|e| {
            format!(
                "the chain does not verify as a TLS server certificate for {}: {e}",
                names[0]
            )
        })?;
    Ok(ServiceCert { chain_pem, key_pem })
}

/// DER as PEM with 64-character lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    //! Against a stand-in on 127.0.0.1 that speaks the contract in the module
    //! documentation (the best stand-in for Metacrypt available), issuing
    //! real certificates with the built-in CA.

    use std::path::{Path, PathBuf};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::{Response, StatusCode};
    use mcp_infra::pki::{Ca, Issued, LeafRequest};
    use rustls::ServerConfig;

    use super::*;
    use crate::platform::rest::ErrorKind::*;
    use crate::platform::testing::{
        self, Seen, StandIn, TOKEN, check_down, check_tls, check_tokens, is, reply, token_file, unauthorized,
    };

    /// How the fake answers `issue`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// `{"data": {cert_pem, chain_pem, key_pem, …}}`.
        Normal,
        /// Top level, other field names, chain as a list with the leaf.
        OtherNames,
        /// No chain: the client must fetch `/ca/chain`.
        NoChain,
        /// One more name than asked for.
        ExtraName,
        /// The key of another certificate.
        OtherKey,
        /// A leaf signed by another CA, with this CA's chain.
        OtherIssuer,
        /// A key rustls cannot load.
        BadKey,
        /// No key at all (a CSR-style answer).
        NoKey,
    }

    /// The stand-in's CA, another one, and how it answers.
    struct Issuer {
        ca: Ca,
        other: Ca,
        mode: Mode,
        _dirs: (tempfile::TempDir, tempfile::TempDir),
    }

    impl Issuer {
        fn new() -> Issuer {
            let dir = tempfile::tempdir().expect("temp dir");
            let other_dir = tempfile::tempdir().expect("temp dir");
            Issuer {
                ca: Ca::create(dir.path(), "metacrypt test root").expect("create CA"),
                other: Ca::create(other_dir.path(), "someone else").expect("create CA"),
                mode: Mode::Normal,
                _dirs: (dir, other_dir),
            }
        }
    }

    type Fake = StandIn<Issuer>;

    async fn fake() -> Fake {
        StandIn::start(Issuer::new(), answer).await
    }

    impl StandIn<Issuer> {
        fn mode(&self, mode: Mode) {
            self.with(|s| s.mode = mode);
        }

        fn ca_pem(&self) -> String {
            self.with(|s| s.ca.cert_pem().to_string())
        }
    }

    /// Splits a PEM bundle into its first certificate and the rest.
    fn split_leaf(chain: &str) -> (String, String) {
        let end = "-----END CERTIFICATE-----\n";
        let at = chain.find(end).expect("a certificate") + end.len();
        (chain[..at].to_string(), chain[at..].to_string())
    }

    /// The contract: bearer-authenticated `issue` on `/v1/engine/request`,
    /// public chain on `/v1/pki/{mount}/ca/chain`.
    fn answer(s: &mut Issuer, req: &Seen) -> Response<Full<Bytes>> {
        if req.method == "GET" && req.route() == "/v1/pki/pki/ca/chain" {
            return Response::new(Full::new(Bytes::from(s.ca.cert_pem().to_string())));
        }
        if req.method != "POST" || req.route() != "/v1/engine/request" {
            return reply(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"}));
        }
        if !req.authorized() {
            return unauthorized();
        }
        let body = req.body.clone().unwrap_or_default();
        let data = &body["data"];
        if body["mount"] != "pki" || body["operation"] != "issue" {
            return reply(StatusCode::NOT_FOUND, json!({"error": "no such mount or operation"}));
        }
        if data["issuer"] != "services" {
            return reply(StatusCode::BAD_REQUEST, json!({"error": "issuer not found"}));
        }
        let dns_names: Vec<String> = data["dns_names"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let hours: i64 = data["ttl"]
            .as_str()
            .and_then(|t| t.strip_suffix('h'))
            .and_then(|h| h.parse().ok())
            .unwrap_or(24);
        let leaf = |ca: &Ca, names: Vec<String>| {
            ca.issue(&LeafRequest {
                identity: None,
                dns_names: names,
                ips: vec![],
                days: hours / 24,
            })
            .expect("issue")
        };
        let mode = s.mode;
        let mut names = dns_names.clone();
        if mode == Mode::ExtraName {
            names.push("extra.example.net".into());
        }
        let issued = if mode == Mode::OtherIssuer {
            leaf(&s.other, names)
        } else {
            leaf(&s.ca, names)
        };
        let (cert, _) = split_leaf(&issued.chain_pem);
        let chain = s.ca.cert_pem().to_string();
        let key = match mode {
            Mode::OtherKey => leaf(&s.ca, dns_names).key_pem,
            Mode::BadKey => "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            _ => issued.key_pem,
        };
        let answer = match mode {
            Mode::OtherNames => json!({
                "certificate": cert,
                "chain": [cert, chain],
                "private_key": key,
            }),
            Mode::NoChain => json!({"data": {"cert_pem": cert, "key_pem": key}}),
            Mode::NoKey => json!({"data": {"cert_pem": cert, "chain_pem": chain}}),
            _ => json!({"data": {
                "cert_pem": cert,
                "chain_pem": chain,
                "key_pem": key,
                "serial": "01",
                "expires_at": "2099-01-01T00:00:00Z",
            }}),
        };
        reply(StatusCode::OK, answer)
    }

    /// A stand-in and a client of it with the right token (in the directory returned).
    async fn setup() -> (Fake, Metacrypt, tempfile::TempDir) {
        testing::setup(fake().await, |url, token| {
            client(url, token, None).expect("valid configuration")
        })
    }

    /// A client of `url` with the token in `token`, trusting `ca`.
    fn client(url: &str, token: &Path, ca: Option<PathBuf>) -> Result<Metacrypt, RestError> {
        Metacrypt::new(&MetacryptConfig {
            ca,
            ..MetacryptConfig::new(url, token)
        })
    }

    /// The call the shared checks make, with a client for (url, token file, CA).
    async fn issue(url: String, token: PathBuf, ca: Option<PathBuf>) -> Result<(), RestError> {
        client(&url, &token, ca)?
            .issue_server_cert("web", &names())
            .await
            .map(drop)
    }

    fn names() -> Vec<String> {
        vec!["web.svc.mcp.metacircular.net".into(), "www.example.net".into()]
    }

    #[tokio::test]
    async fn issue_gives_what_the_proxy_serves() {
        let (fake, metacrypt, _token) = setup().await;
        let ca: &dyn CertAuthority = &metacrypt;
        let cert = ca.issue("web", &names()).await.expect("issue");

        let seen = fake.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("POST", "/v1/engine/request")
        );
        assert_eq!(seen[0].auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(
            seen[0].body,
            Some(json!({
                "mount": "pki",
                "operation": "issue",
                "data": {
                    "issuer": "services",
                    "profile": "server",
                    "common_name": "web.svc.mcp.metacircular.net",
                    "dns_names": ["web.svc.mcp.metacircular.net", "www.example.net"],
                    "ttl": "2160h",
                },
            }))
        );

        // Full chain: the leaf, then the CA.
        let chain = parse_certs(cert.chain_pem.as_bytes()).expect("chain");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], parse_certs(fake.ca_pem().as_bytes()).expect("ca")[0]);

        // Written as ensure_cert_for writes it, read back as it reads it.
        let dir = tempfile::tempdir().expect("temp dir");
        let (pem, key) = (dir.path().join("web.pem"), dir.path().join("web.key"));
        Issued {
            chain_pem: cert.chain_pem.clone(),
            key_pem: cert.key_pem.clone(),
        }
        .write(&pem, &key)
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let written = std::fs::read_to_string(&pem).expect("read chain");
        let left = mcp_infra::pki::seconds_until_expiry(&written).expect("expiry");
        assert!((89 * 86400..=90 * 86400).contains(&left), "{left}");
        let (dns, _) = mcp_infra::pki::sans(&written);
        assert!(names().iter().all(|n| dns.contains(n)), "{dns:?}");
        let key_der = PrivateKeyDer::from_pem_file(&key).expect("key");
        let chain_der: Vec<_> = CertificateDer::pem_file_iter(&pem)
            .expect("chain file")
            .collect::<Result<_, _>>()
            .expect("chain");
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain_der, key_der)
            .expect("the proxy can serve it");

        // The common name is the service's own name when it is among them.
        ca.issue("www", &names()).await.expect("issue again");
        let seen = fake.seen();
        assert_eq!(
            seen[0].body.as_ref().expect("body")["data"]["common_name"],
            "www.example.net"
        );
        fake.stop().await;
    }

    #[tokio::test]
    async fn answers_in_other_shapes_are_read() {
        let (fake, metacrypt, _token) = setup().await;

        fake.mode(Mode::OtherNames);
        let cert = metacrypt.issue_server_cert("web", &names()).await.expect("other names");
        assert_eq!(
            parse_certs(cert.chain_pem.as_bytes()).expect("chain").len(),
            2,
            "leaf not repeated"
        );
        assert_eq!(fake.seen().len(), 1);

        // Without a chain: completed from the public endpoint, without the token.
        fake.mode(Mode::NoChain);
        let cert = metacrypt.issue_server_cert("web", &names()).await.expect("no chain");
        assert_eq!(parse_certs(cert.chain_pem.as_bytes()).expect("chain").len(), 2);
        let seen = fake.seen();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].path, "/v1/pki/pki/ca/chain?issuer=services");
        assert_eq!(seen[1].auth, None);

        let chain = metacrypt.ca_chain().await.expect("ca chain");
        assert_eq!(
            parse_certs(chain.as_bytes()).expect("chain"),
            parse_certs(fake.ca_pem().as_bytes()).expect("ca")
        );
        fake.stop().await;
    }

    #[tokio::test]
    async fn wrong_certificates_are_refused() {
        let (fake, metacrypt, _token) = setup().await;
        for (mode, expected) in [
            (Mode::ExtraName, "extra.example.net"),
            (Mode::OtherKey, "does not belong"),
            (Mode::OtherIssuer, "does not verify"),
            (Mode::BadKey, "cannot be used"),
            (Mode::NoKey, "no private key"),
        ] {
            fake.mode(mode);
            let err = metacrypt
                .issue_server_cert("web", &names())
                .await
                .err()
                .expect("refused");
            let text = err.to_string();
            assert!(is(&err, Refused, expected), "{mode:?}: {text}");
            assert!(
                !text.contains("PRIVATE KEY") && !text.contains(TOKEN),
                "{mode:?}: {text}"
            );
        }
        fake.stop().await;
    }

    #[tokio::test]
    async fn tokens_are_read_on_every_call_and_never_shown() {
        let fake = fake().await;
        check_tokens(&fake, issue).await;

        // The public chain needs no token.
        let missing = client(&fake.url(), Path::new("/nonexistent/mcias-token"), None).expect("valid");
        missing.ca_chain().await.expect("public chain");

        // An unknown issuer is the server's refusal, not ours.
        let (_tdir, token) = token_file(TOKEN);
        let other = Metacrypt::new(&MetacryptConfig {
            issuer: "nope".into(),
            ..MetacryptConfig::new(&fake.url(), &token)
        })
        .expect("valid");
        let err = other.issue_server_cert("web", &names()).await.err().expect("400");
        assert!(
            is(&err, Rejected, "400") && is(&err, Rejected, "issuer not found"),
            "{err}"
        );
        assert!(!format!("{other:?}").contains(TOKEN));
        fake.stop().await;
    }

    #[tokio::test]
    async fn server_down_is_unavailable() {
        check_down(issue).await;
        check_down(|url, token, _| async move { client(&url, &token, None)?.ca_chain().await.map(drop) }).await;
    }

    #[tokio::test]
    async fn bad_hostnames_are_refused_before_asking() {
        let (fake, metacrypt, _token) = setup().await;
        for bad in [
            vec![],
            vec!["we b.example.net".to_string()],
            vec!["*.example.net".to_string()],
        ] {
            let err = metacrypt.issue_server_cert("web", &bad).await.err().expect("invalid");
            assert!(is(&err, Invalid, ""), "{bad:?}: {err}");
        }
        assert!(fake.seen().is_empty(), "nothing was sent");
        // Case and trailing dots are normalised, duplicates dropped.
        let cert = metacrypt
            .issue_server_cert(
                "web",
                &[
                    "WEB.svc.mcp.metacircular.net.".into(),
                    "web.svc.mcp.metacircular.net".into(),
                ],
            )
            .await
            .expect("issue");
        assert_eq!(
            mcp_infra::pki::sans(&cert.chain_pem).0,
            vec!["web.svc.mcp.metacircular.net"]
        );
        fake.stop().await;
    }

    #[tokio::test]
    async fn https_with_the_configured_ca() {
        let fake = StandIn::start_tls(Issuer::new(), answer).await;
        // One request per certificate issued.
        check_tls(&fake, Some(1), issue).await;
        fake.stop().await;
    }

    #[test]
    fn config_defaults_and_errors() {
        let cfg: MetacryptConfig =
            toml::from_str("url = \"https://metacrypt.example:8443\"\ntoken_path = \"/srv/mcp/mcias-token\"")
                .expect("parse");
        assert_eq!(
            (
                cfg.mount.as_str(),
                cfg.issuer.as_str(),
                cfg.profile.as_str(),
                cfg.ttl_days
            ),
            ("pki", "services", "server", 90)
        );
        assert_eq!(cfg.ca, None);
        let err = toml::from_str::<MetacryptConfig>("url = \"x\"\ntoken_path = \"t\"\nkey_type = \"rsa\"")
            .expect_err("unknown field");
        assert!(err.to_string().contains("key_type"), "{err}");

        let bad = MetacryptConfig {
            url: "http://metacrypt.example:8443".into(),
            token_path: PathBuf::new(),
            ca: None,
            mount: "pki/../sys".into(),
            issuer: String::new(),
            profile: "client".into(),
            ttl_days: 0,
        };
        let text = Metacrypt::new(&bad).expect_err("invalid").to_string();
        for part in [
            "plain http",
            "token_path:",
            "mount:",
            "issuer:",
            "profile:",
            "ttl_days:",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let no_ca = MetacryptConfig::new("https://metacrypt.example", Path::new("/t"));
        assert!(
            Metacrypt::new(&no_ca)
                .expect_err("no ca")
                .to_string()
                .contains("ca: required")
        );
        let peer = MetacryptConfig {
            profile: "peer".into(),
            ..MetacryptConfig::new("http://localhost:1/metacrypt/", Path::new("/t"))
        };
        let m = Metacrypt::new(&peer).expect("peer over loopback http");
        assert!(format!("{m:?}").contains("peer"));
    }

    #[test]
    fn pem_encoding_round_trips() {
        for len in [1usize, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{len}: {e}\n{pem}"));
            assert_eq!(back.len(), 1, "{len}");
            assert_eq!(back[0].as_ref(), &der[..], "{len}");
            assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        }
    }
}
