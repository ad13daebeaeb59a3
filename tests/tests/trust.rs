//! End-to-end tests of trust (SPEC §6): every RPC of every service by every
//! kind of caller against a real master and a real agent, join tokens, MCIAS
//! bearer tokens, rate limits, the registration guard, key file modes and
//! certificate renewal without restarts.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcp_infra::tls::{self, TlsFiles};
use mcp_model::identity::{self, Identity, NODE_METADATA, Policy, Role};
use mcp_proto as proto;
use mcp_proto::mcp_master_service_client::McpMasterServiceClient;
use mcp_proto::mcp_registration_service_client::McpRegistrationServiceClient;
use mcp_tests::{Run, TestAgent, TestMaster, mcptest, wait_for};
use prost::Message;
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use tonic::transport::Channel;

// ------------------------------------------------------------------ helpers

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn timeouts() -> tls::Timeouts {
    tls::Timeouts {
        connect: Duration::from_secs(5),
        request: Some(Duration::from_secs(15)),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The first certificate of a PEM chain, DER.
fn leaf_der(pem: &str) -> Vec<u8> {
    tls::parse_certs(pem.as_bytes()).unwrap()[0].to_vec()
}

/// The fleet CA, loaded from the master's data dir, to mint certificates
/// `mcp-master issue-cert` never would (expired, nearly due for renewal).
struct FleetCa {
    pem: String,
    key: rcgen::KeyPair,
}

impl FleetCa {
    fn load(dir: &Path) -> FleetCa {
        let pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
        FleetCa { pem, key }
    }

    /// A leaf for `id`, valid from `from` to `to`: (chain PEM, key PEM).
    fn issue(
        &self,
        id: &Identity,
        dns: &[String],
        ips: &[IpAddr],
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
    ) -> (String, String) {
        use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.common_name());
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(id.uri().try_into().unwrap())];
        sans.extend(dns.iter().map(|d| SanType::DnsName(d.clone().try_into().unwrap())));
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = from;
        params.not_after = to;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.pem, &self.key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (format!("{}{}", cert.pem(), self.pem), key.serialize_pem())
    }
}

/// Writes a client identity (chain, 0600 key, CA to trust) into `dir`.
fn write_identity(dir: &Path, chain: &str, key: &str, ca: &Path) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: ca.to_path_buf(),
    };
    mcp_infra::fsutil::write_atomic(&files.cert, chain.as_bytes(), 0o644).unwrap();
    mcp_infra::fsutil::write_private(&files.key, key.as_bytes()).unwrap();
    files
}

/// The leaf certificate a TLS listener serves right now (DER).
async fn served_leaf(addr: &str, ca: &Path, server: Identity) -> Vec<u8> {
    let cfg = tls::client_config_for(ca, None, Some(server)).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let conn = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A request acting for `node` (the `mcp-node` metadata).
fn as_node<T>(node: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(NODE_METADATA, node.parse().unwrap());
    r
}

/// A registration-service client presenting `files` to the master.
async fn registration(master: &TestMaster, files: &TlsFiles) -> McpRegistrationServiceClient<Channel> {
    McpRegistrationServiceClient::new(master.channel(files).await.unwrap())
}

fn register_request(node: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        name: node.into(),
        role: "worker".into(),
        address: "127.0.0.1:9".into(),
        ..Default::default()
    }
}

fn heartbeat_request(node: &str) -> proto::HeartbeatRequest {
    proto::HeartbeatRequest {
        name: node.into(),
        ..Default::default()
    }
}

/// A raw Join, the way `mcp-agent join` does it: the master is verified
/// against the fleet CA's fingerprint, the key stays here.
async fn raw_join(master: &TestMaster, name: &str, token: &str) -> Result<proto::JoinResponse, tonic::Status> {
    let ca = std::fs::read_to_string(master.ca_dir().join("ca.pem")).unwrap();
    let fp = mcp_infra::pki::fingerprint(&ca).unwrap();
    let cfg = tls::pinned_client_config(&fp, Identity::Master).unwrap();
    let (ch, _) = tls::connect(&[master.address()], cfg, timeouts()).await.unwrap();
    let csr = mcp_infra::pki::make_csr(&Identity::Agent(name.into()), &[], &[]).unwrap();
    McpRegistrationServiceClient::new(ch)
        .join(proto::JoinRequest {
            name: name.into(),
            token: token.into(),
            csr_pem: csr.csr_pem,
        })
        .await
        .map(|r| r.into_inner())
}

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, fragment: &str, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {e:?}");
    assert!(
        e.message().contains(fragment),
        "{what}: {fragment:?} not in {:?}",
        e.message()
    );
}

// ------------------------------------------------------------------ matrix

/// One RPC of the compiled protos.
#[derive(Debug, Clone)]
struct Rpc {
    /// `mcp.v1.McpAgentService`
    service: String,
    method: String,
    /// `/mcp.v1.McpAgentService/Deploy`
    path: String,
    server_streaming: bool,
    client_streaming: bool,
    /// Field number of the request's `name` string, if it has one.
    name_field: Option<i32>,
}

/// Every RPC of every service in the compiled descriptor set.
fn rpcs() -> Vec<Rpc> {
    use prost_types::field_descriptor_proto::Type;
    let fds = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let messages: HashMap<String, &prost_types::DescriptorProto> = fds
        .file
        .iter()
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| (format!(".{}.{}", f.package(), m.name()), m))
        })
        .collect();
    let mut out = Vec::new();
    for file in &fds.file {
        for svc in &file.service {
            for m in &svc.method {
                let input = messages
                    .get(m.input_type())
                    .unwrap_or_else(|| panic!("no message {}", m.input_type()));
                let service = format!("{}.{}", file.package(), svc.name());
                out.push(Rpc {
                    path: format!("/{service}/{}", m.name()),
                    service,
                    method: m.name().to_string(),
                    server_streaming: m.server_streaming(),
                    client_streaming: m.client_streaming(),
                    name_field: input
                        .field
                        .iter()
                        .find(|f| f.name() == "name" && f.r#type() == Type::String)
                        .map(|f| f.number()),
                });
            }
        }
    }
    out
}

/// Who may call an RPC according to SPEC §6 (written from the spec, not
/// from `identity::TABLE`, which the test checks against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// CLI → master and master → agent: human and mcp-master.
    Operators,
    /// agent → master: `agent-<node>` for its own node only.
    AgentSelf,
    /// Join: the join token in the request is the credential.
    Token,
}

fn spec_kind(rpc: &Rpc) -> Kind {
    match (rpc.service.as_str(), rpc.method.as_str()) {
        ("mcp.v1.McpRegistrationService", "Join") => Kind::Token,
        ("mcp.v1.McpRegistrationService", _) => Kind::AgentSelf,
        ("mcp.v1.McpMasterService" | "mcp.v1.McpAgentService", _) => Kind::Operators,
        (other, _) => panic!(
            "{}: no SPEC §6 expectation for service {other}: add one here and a row to identity::TABLE",
            rpc.path
        ),
    }
}

/// The callers of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Operator certificate (`human-tester`).
    Human,
    /// `mcp-master` certificate.
    Master,
    /// `agent-a`, acting for node `a`.
    AgentSelf,
    /// `agent-a`, claiming to act for node `b`.
    AgentClaimingOther,
    /// TLS 1.3 without a client certificate.
    NoCert,
    /// A fleet-CA certificate of an operator that expired yesterday.
    Expired,
    /// An operator certificate from another CA.
    ForeignCa,
    /// A valid operator certificate over TLS 1.2.
    Tls12,
}

const CALLERS: [Caller; 8] = [
    Caller::Human,
    Caller::Master,
    Caller::AgentSelf,
    Caller::AgentClaimingOther,
    Caller::NoCert,
    Caller::Expired,
    Caller::ForeignCa,
    Caller::Tls12,
];

impl Caller {
    /// The `mcp-node` metadata the caller sends.
    fn claimed(self) -> &'static str {
        if self == Caller::AgentClaimingOther { "b" } else { "a" }
    }
}

/// What must happen to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The authorization layer lets it through to the handler.
    Reaches,
    /// `PermissionDenied` from the authorization layer.
    Denied,
    /// `Unauthenticated`: no credentials.
    Unauthenticated,
    /// The TLS handshake fails: the server answers with this fatal alert.
    Handshake(&'static str),
}

fn expect(kind: Kind, caller: Caller) -> Expect {
    use Caller::*;
    match (caller, kind) {
        (Expired, _) => Expect::Handshake("CertificateExpired"),
        (ForeignCa, _) => Expect::Handshake("UnknownCA"),
        (Tls12, _) => Expect::Handshake("ProtocolVersion"),
        (_, Kind::Token) => Expect::Reaches,
        (NoCert, _) => Expect::Unauthenticated,
        (Human | Master, Kind::Operators) => Expect::Reaches,
        (AgentSelf, Kind::AgentSelf) => Expect::Reaches,
        _ => Expect::Denied,
    }
}

/// What a call returned.
#[derive(Debug, Clone)]
enum Outcome {
    /// The connection could not be made at all (why, with every cause).
    NoConnection(String),
    /// The call failed on the client side because the connection broke
    /// (tonic's code and every cause): no server ever answered.
    Transport(String),
    /// The server's status (`Ok` for a successful answer) and message.
    Status(Code, String),
}

/// A request with at most `name` (field 1) set; every other field empty.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// Calls `rpc` generically: no generated client, the body is `body`.
async fn call(ch: &Channel, rpc: &Rpc, claimed: &str, body: Named) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    if let Err(e) = grpc.ready().await {
        return Outcome::NoConnection(format!("not ready: {e}"));
    }
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(rpc.path.as_str()).unwrap();
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(NODE_METADATA, claimed.parse().unwrap());
    let codec = tonic_prost::ProstCodec::<Named, ()>::default();
    let result = if rpc.client_streaming {
        // One message; the metadata travels with the stream.
        let (meta, ext, msg) = req.into_parts();
        let streamed = tonic::Request::from_parts(meta, ext, tonic::codegen::tokio_stream::iter(vec![msg]));
        grpc.client_streaming(streamed, path, codec).await.map(|_| ())
    } else if rpc.server_streaming {
        match grpc.server_streaming(req, path, codec).await {
            Ok(r) => r.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        }
    } else {
        grpc.unary(req, path, codec).await.map(|_| ())
    };
    match result {
        Ok(()) => Outcome::Status(Code::Ok, String::new()),
        // Statuses made from a transport error carry it as their source;
        // statuses a server sent have none.
        Err(s) if std::error::Error::source(&s).is_some() => {
            Outcome::Transport(format!("{:?}: {}", s.code(), tls::error_chain(&s)))
        }
        Err(s) => Outcome::Status(s.code(), s.message().to_string()),
    }
}

/// A listener under test.
struct Target {
    name: &'static str,
    addr: String,
    server: Identity,
    /// Services it serves; the others answer `Unimplemented` once authorized.
    serves: &'static [&'static str],
}

/// Checks one cell; `Err` describes the mismatch.
fn check_cell(target: &Target, rpc: &Rpc, kind: Kind, want: Expect, got: &Outcome) -> Result<(), String> {
    let served = target.serves.contains(&rpc.service.as_str());
    let ok = match (want, got) {
        // The handshake itself is checked by `handshake_alert`; the gRPC call
        // never gets an answer from a server. TLS 1.2 is refused at the
        // ClientHello, so connecting fails. Over TLS 1.3 the client has
        // finished its side of the handshake before the server checks the
        // client certificate: connecting succeeds and the server's fatal
        // alert breaks the connection under the first request (tonic:
        // Unknown "transport error" or Cancelled "operation was canceled").
        (Expect::Handshake(_), Outcome::NoConnection(_) | Outcome::Transport(_)) => true,
        (Expect::Denied, Outcome::Status(Code::PermissionDenied, _)) => true,
        (Expect::Unauthenticated, Outcome::Status(Code::Unauthenticated, _)) => true,
        (Expect::Reaches, Outcome::Status(code, _)) if !served => *code == Code::Unimplemented,
        // Join's own credential is the token in the body: the handler
        // refuses the empty one as Unauthenticated, naming the join token.
        (Expect::Reaches, Outcome::Status(Code::Unauthenticated, msg)) if kind == Kind::Token => {
            msg.contains("join token")
        }
        (Expect::Reaches, Outcome::Status(code, _)) => !matches!(
            code,
            Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented
                | Code::Unavailable
                | Code::Unknown
                | Code::Internal
        ),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{} {}: expected {want:?}, got {got:?}", target.name, rpc.path))
    }
}

/// The innermost cause of an error chain joined by `: `.
fn last_cause(chain: &str) -> &str {
    chain.rsplit(": ").next().unwrap_or(chain)
}

/// Handshakes with `addr` and reads: the error that ends the connection
/// (a refused client is told why by a fatal TLS alert).
async fn handshake_alert(addr: &str, cfg: Arc<rustls::ClientConfig>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let mut conn = match tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await {
        Ok(c) => c,
        Err(e) => return format!("handshake failed: {}", tls::error_chain(&e)),
    };
    // The HTTP/2 preface: a server that accepted us would answer SETTINGS.
    let _ = conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
        Ok(Err(e)) => format!("after the client's Finished: {}", tls::error_chain(&e)),
        Ok(Ok(n)) => format!("the server answered {n} bytes"),
        Err(_) => "no answer within 5 s".into(),
    }
}

/// TLS 1.2-only client presenting a valid operator certificate.
fn tls12_config(files: &TlsFiles) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::parse_certs(&std::fs::read(&files.ca).unwrap()).unwrap() {
        roots.add(c).unwrap();
    }
    let chain = tls::parse_certs(&std::fs::read(&files.cert).unwrap()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&std::fs::read(&files.key).unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

#[test]
fn every_rpc_by_every_identity() {
    let rpcs = rpcs();
    // Sanity: the walk found the three services, streaming included.
    for path in [
        "/mcp.v1.McpAgentService/Deploy",
        "/mcp.v1.McpAgentService/Logs",
        "/mcp.v1.McpMasterService/AddNode",
        "/mcp.v1.McpRegistrationService/Join",
        "/mcp.v1.McpRegistrationService/IssueCertificate",
    ] {
        assert!(
            rpcs.iter().any(|r| r.path == path),
            "{path} not found in the descriptor set"
        );
    }
    assert!(rpcs.iter().any(|r| r.server_streaming));

    // The table covers every RPC (unknown paths are denied, so a new RPC
    // without a row would be unusable), says what SPEC §6 says, and has no
    // row that matches nothing.
    for rpc in &rpcs {
        let policy =
            identity::policy(&rpc.path).unwrap_or_else(|| panic!("{} has no row in identity::TABLE", rpc.path));
        let agrees = match (spec_kind(rpc), policy) {
            (Kind::Token, Policy::Token) | (Kind::AgentSelf, Policy::AgentSelf) => true,
            (Kind::Operators, Policy::Roles(roles)) => {
                roles.len() == 2 && roles.contains(&Role::Human) && roles.contains(&Role::Master)
            }
            _ => false,
        };
        assert!(
            agrees,
            "{}: identity::TABLE says {policy:?}, SPEC §6 says {:?}",
            rpc.path,
            spec_kind(rpc)
        );
        if spec_kind(rpc) == Kind::AgentSelf {
            assert_eq!(
                rpc.name_field,
                Some(1),
                "{}: agent RPCs name their node in field 1",
                rpc.path
            );
        }
    }
    for (prefix, _) in identity::TABLE {
        assert!(
            rpcs.iter().any(|r| r.path.starts_with(prefix)),
            "identity::TABLE row {prefix} matches no RPC"
        );
    }

    // A master and an agent joined to it (so it trusts the fleet CA).
    let master = TestMaster::start("mx");
    let mut agent = TestAgent::join(&master, mcptest(), "mx-node", "worker");
    agent.run();
    wait_for("the agent to register", Duration::from_secs(20), || {
        master.node_status("mx-node").is_some()
    });
    // Sync with no services undeploys everything placed: nothing must be.
    assert_eq!(master.sql("select count(*) from placements"), "0");
    let tokens_before = master.sql("select count(*) from join_tokens");

    let ca = master.operator_tls().ca;
    let human = master.operator_tls();
    let as_master = master.issue("master");
    let agent_a = master.issue("agent/a");
    let scratch = tempfile::tempdir().unwrap();
    let expired = {
        let fleet = FleetCa::load(&master.ca_dir());
        let now = time::OffsetDateTime::now_utc();
        let (chain, key) = fleet.issue(
            &Identity::Human("expired".into()),
            &[],
            &[],
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        );
        let d = scratch.path().join("expired");
        write_identity(&d, &chain, &key, &ca)
    };
    let foreign = {
        let d = scratch.path().join("foreign-ca");
        let other = mcp_infra::pki::Ca::create(&d, "foreign").unwrap();
        let issued = other
            .issue(&mcp_infra::pki::LeafRequest {
                identity: Some(Identity::Human("tester".into())),
                days: 30,
                ..Default::default()
            })
            .unwrap();
        write_identity(&d, &issued.chain_pem, &issued.key_pem, &ca)
    };

    let targets = [
        Target {
            name: "master",
            addr: master.address(),
            server: Identity::Master,
            serves: &["mcp.v1.McpMasterService", "mcp.v1.McpRegistrationService"],
        },
        Target {
            name: "agent",
            addr: format!("127.0.0.1:{}", agent.port),
            server: Identity::Agent("mx-node".into()),
            serves: &["mcp.v1.McpAgentService"],
        },
    ];

    let rt = runtime();
    let mut failures = Vec::new();
    let mut table = String::new();
    for target in &targets {
        for caller in CALLERS {
            let config = |files: &TlsFiles| tls::client_config(files, Some(target.server.clone())).unwrap();
            let cfg = match caller {
                Caller::Human => config(&human),
                Caller::Master => config(&as_master),
                Caller::AgentSelf | Caller::AgentClaimingOther => config(&agent_a),
                Caller::NoCert => tls::client_config_for(&ca, None, Some(target.server.clone())).unwrap(),
                Caller::Expired => config(&expired),
                Caller::ForeignCa => config(&foreign),
                Caller::Tls12 => tls12_config(&human),
            };
            // A fresh connection per call: a refused handshake poisons the
            // connection for the calls after it.
            let outcomes: Vec<Outcome> = rt.block_on(async {
                let mut v = Vec::new();
                for rpc in &rpcs {
                    // Agent RPCs name the caller's own node in the body, so
                    // the handler has no reason to refuse them for the name:
                    // a PermissionDenied can only come from the authz layer.
                    let body = Named {
                        name: if spec_kind(rpc) == Kind::AgentSelf {
                            "a".into()
                        } else {
                            String::new()
                        },
                    };
                    let outcome = match tls::connect(std::slice::from_ref(&target.addr), cfg.clone(), timeouts()).await
                    {
                        Err(e) => Outcome::NoConnection(tls::error_chain(&e)),
                        Ok((ch, _)) => call(&ch, rpc, caller.claimed(), body).await,
                    };
                    v.push(outcome);
                }
                v
            });
            for (rpc, got) in rpcs.iter().zip(&outcomes) {
                let kind = spec_kind(rpc);
                let want = expect(kind, caller);
                let shown = match got {
                    Outcome::NoConnection(why) => format!("no connection: {}", last_cause(why)),
                    Outcome::Transport(why) => format!("transport error: {}", last_cause(why)),
                    Outcome::Status(c, _) => format!("{c:?}"),
                };
                table.push_str(&format!(
                    "{:<7} {:<20} {:<48} {:<32} {shown}\n",
                    target.name,
                    format!("{caller:?}"),
                    rpc.path,
                    format!("{want:?}")
                ));
                if let Err(e) = check_cell(target, rpc, kind, want, got) {
                    failures.push(format!("{caller:?} → {e}"));
                }
            }
            // The handshake fails with the alert that says why.
            if let Expect::Handshake(alert) = expect(Kind::Operators, caller) {
                let why = rt.block_on(handshake_alert(&target.addr, cfg.clone()));
                eprintln!("{} {caller:?}: {why}", target.name);
                if !why.contains(&format!("received fatal alert: {alert}")) {
                    failures.push(format!(
                        "{caller:?} → {}: handshake: expected alert {alert}, got {why}",
                        target.name
                    ));
                }
            }
        }
    }
    eprintln!("{table}");
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The allowed calls with empty requests changed nothing.
    assert_eq!(master.sql("select count(*) from placements"), "0");
    assert_eq!(master.sql("select group_concat(name) from nodes"), "mx-node");
    assert_eq!(master.sql("select count(*) from join_tokens"), tokens_before);
    assert!(agent.containers().is_empty());
    assert_eq!(
        agent.mcp(&["--json", "ps"]).json()["containers"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

// ------------------------------------------------------------- join tokens

/// `mcp-agent join` run to completion (as root: it fails before writing).
fn agent_join(dir: &Path, master: &str, token: &str) -> Run {
    let out = std::process::Command::new(mcp_tests::bin("mcp-agent"))
        .args(["join", "--config"])
        .arg(dir.join("agent.toml"))
        .args([
            "--master",
            master,
            "--token",
            token,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// `text` without ANSI colour sequences (logs are coloured at a terminal).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `mcp node add <node> [--ttl <ttl>]`: (token, expires_at).
fn node_add(master: &TestMaster, node: &str, ttl: Option<u64>) -> (String, i64) {
    let ttl = ttl.map(|t| t.to_string());
    let mut args = vec!["--json", "node", "add", node];
    if let Some(t) = &ttl {
        args.extend(["--ttl", t.as_str()]);
    }
    let r = master.mcp(&args);
    r.expect_code(0, "node add");
    let v = r.json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["expires_at"].as_i64().unwrap(),
    )
}

#[test]
fn join_tokens_are_single_use_expiring_and_bound_to_their_node() {
    let mut master = TestMaster::init("joinm");
    master.configure(|c| c["registration"]["join_token_ttl"] = 1.into());
    master.run();
    let rt = runtime();
    let unused = |node: &str| {
        master.sql(&format!(
            "select count(*) from join_tokens where node = '{node}' and used_at is null"
        ))
    };

    // The token's lifetime defaults to registration.join_token_ttl.
    let (late, expires) = node_add(&master, "late", None);
    assert!(expires - unix_now() <= 1, "expires in {} s", expires - unix_now());
    // Stored hashed: the secret is nowhere in the database.
    let secret = late.split('.').nth(2).unwrap();
    assert_eq!(
        master.sql(&format!(
            "select count(*) from join_tokens where secret_hash = '{}'",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret))
        )),
        "1"
    );
    let dump = std::process::Command::new("sqlite3")
        .arg(master.dir.join("data/fleet.db"))
        .arg(".dump")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&dump.stdout).contains(secret),
        "the join token secret is stored in clear"
    );

    // Single use: the first join gets an agent-once certificate, the second
    // is refused.
    let (once, _) = node_add(&master, "once", Some(600));
    let joined = rt.block_on(raw_join(&master, "once", &once)).expect("first join");
    let leaf = leaf_der(&joined.cert_chain_pem);
    assert_eq!(mcp_infra::tls::identity_of(&leaf), Some(Identity::Agent("once".into())));
    assert_eq!(
        joined.ca_pem,
        std::fs::read_to_string(master.ca_dir().join("ca.pem")).unwrap()
    );
    assert_status(
        rt.block_on(raw_join(&master, "once", &once)),
        Code::Unauthenticated,
        "already used",
        "reused token",
    );
    // `mcp-agent join` with it: refused, nothing written.
    let scratch = tempfile::tempdir().unwrap();
    let r = agent_join(scratch.path(), &master.address(), &once);
    r.expect_code(1, "mcp-agent join with a used token");
    assert!(
        r.stderr.contains("already used") && r.stderr.contains("Unauthenticated"),
        "{}",
        r.stderr
    );
    assert!(!scratch.path().join("agent.toml").exists() && !scratch.path().join("data").exists());

    // Bound to its node: a token for x cannot join y, and the refusal does
    // not burn it.
    let (for_x, _) = node_add(&master, "x", Some(600));
    assert_status(
        rt.block_on(raw_join(&master, "y", &for_x)),
        Code::PermissionDenied,
        "join token is for node \"x\"",
        "token for another node",
    );
    assert_eq!(unused("x"), "1");
    rt.block_on(raw_join(&master, "x", &for_x))
        .expect("the token still works for its own node");

    // Expired (1 s lifetime).
    while unix_now() <= expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_status(
        rt.block_on(raw_join(&master, "late", &late)),
        Code::Unauthenticated,
        "expired",
        "expired token",
    );
    assert_eq!(unused("late"), "1", "an expired token is refused, not consumed");

    // A damaged token fails before anything is sent: nothing even connects.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let (fresh, _) = node_add(&master, "pin", Some(600));
    let damaged = fresh[..fresh.len() - 1].to_string();
    let r = agent_join(scratch.path(), &listener.local_addr().unwrap().to_string(), &damaged);
    r.expect_code(1, "damaged token");
    assert!(r.stderr.contains("--token: join token is damaged"), "{}", r.stderr);
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "mcp-agent join connected with a damaged token"
    );

    // A token whose CA fingerprint is not the master's: the join stops at
    // the TLS handshake, before the token is sent, so it stays usable.
    let parts: Vec<&str> = fresh.split('.').collect();
    let wrong_ca = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        parts[2],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"another CA"))
    );
    let r = agent_join(scratch.path(), &master.address(), &wrong_ca);
    r.expect_code(1, "token pinning another CA");
    assert!(
        r.stderr.contains("did not present the CA pinned by the join token"),
        "{}",
        r.stderr
    );
    assert!(!scratch.path().join("agent.toml").exists() && !scratch.path().join("data").exists());
    assert_eq!(unused("pin"), "1");
    let log = plain(&master.log());
    assert!(
        log.lines().any(|l| l.contains("join refused") && l.contains("node=y")),
        "{log}"
    );
    let heard = log
        .lines()
        .any(|l| (l.contains("join refused") || l.contains("node joined")) && l.contains("node=pin"));
    assert!(!heard, "the master heard of the join:\n{}", master.log());

    // Nothing of this registered a node.
    assert_eq!(master.sql("select count(*) from nodes"), "0");
    let listed = master.mcp(&["--json", "node", "list"]).json();
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 0, "{listed}");
    // The raw token is never logged.
    for t in [&late, &once, &for_x, &fresh] {
        assert!(
            !master.log().contains(t.split('.').nth(2).unwrap()),
            "token secret in the master log"
        );
    }
}

// -------------------------------------------------------------------- MCIAS

type Hits = Arc<Mutex<HashMap<String, usize>>>;

/// A stand-in for MCIAS's validate endpoint on loopback (the contract in
/// `common/src/mcias.rs`), counting validations per token. Runs on its own
/// thread; `stop` closes the listener, so MCIAS is then down.
struct FakeMcias {
    addr: SocketAddr,
    hits: Hits,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeMcias {
    fn start() -> FakeMcias {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Hits = Default::default();
        let counter = hits.clone();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let counter = counter.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| validate(req, counter.clone()));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
            // Dropping the runtime ends the connection tasks too.
        });
        FakeMcias {
            addr,
            hits,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self, token: &str) -> usize {
        self.hits.lock().unwrap().get(token).copied().unwrap_or(0)
    }

    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for FakeMcias {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The validate contract: the token comes as bearer and in the JSON body.
async fn validate(
    req: hyper::Request<hyper::body::Incoming>,
    hits: Hits,
) -> Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, Infallible> {
    use http_body_util::BodyExt;
    let reply = |status: u16, body: serde_json::Value| {
        Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body.to_string())))
            .unwrap())
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/token/validate" {
        return reply(404, serde_json::json!({"error": "not found"}));
    }
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let in_body = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string));
    let token = match (bearer, in_body) {
        (Some(a), Some(b)) if a == b => a,
        _ => return reply(400, serde_json::json!({"error": "malformed request"})),
    };
    *hits.lock().unwrap().entry(token.clone()).or_default() += 1;
    let in_an_hour = unix_now() + 3600;
    let valid = |username: &str, roles: &[&str], exp: i64| {
        serde_json::json!({
            "valid": true, "sub": "5d0c1f4e-2b7a-4c8e-9f13-6a2d8e4b7c90", "username": username,
            "roles": roles, "expires_at": exp,
        })
    };
    match token.as_str() {
        "human-token" => reply(200, valid("kyle", &["admin"], in_an_hour)),
        "operator-token" => reply(200, valid("alice", &["user", "mcp-operator"], in_an_hour)),
        "agent-token" => reply(200, valid("agent-a", &[], in_an_hour)),
        "guest-token" => reply(200, valid("guest", &["guest"], in_an_hour)),
        // Called valid, but its expiry has passed.
        "stale-token" => reply(200, valid("kyle", &["admin"], unix_now() - 60)),
        "expired-token" => reply(200, serde_json::json!({"valid": false, "error": "token expired"})),
        "revoked-token" => reply(200, serde_json::json!({"valid": false, "error": "token revoked"})),
        _ => reply(401, serde_json::json!({"error": "invalid token"})),
    }
}

/// A CLI configuration authenticating to `master` with an MCIAS token
/// file (0600) and no client certificate.
fn token_cli(master: &TestMaster, token: &str) -> PathBuf {
    let dir = master.dir.join("mcias-cli");
    let token_path = dir.join(format!("{token}.txt"));
    mcp_infra::fsutil::write_private(&token_path, format!("{token}\n").as_bytes()).unwrap();
    let cfg = dir.join(format!("{token}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[master]\naddress = \"{}\"\n[auth]\nca = \"{}\"\ntoken_path = \"{}\"\n",
            master.address(),
            master.operator_tls().ca.display(),
            token_path.display()
        ),
    )
    .unwrap();
    cfg
}

/// Calls ListNodes (or, with `node`, Register for it) with a bearer token
/// and no client certificate.
async fn with_token(master: &TestMaster, token: &str, node: Option<&str>) -> Result<(), tonic::Status> {
    let cfg = tls::client_config_for(&master.operator_tls().ca, None, Some(Identity::Master)).unwrap();
    let (ch, _) = tls::connect(&[master.address()], cfg, timeouts()).await.unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    match node {
        None => {
            let mut req = tonic::Request::new(proto::ListNodesRequest {});
            req.metadata_mut().insert("authorization", bearer);
            McpMasterServiceClient::new(ch).list_nodes(req).await.map(|_| ())
        }
        Some(n) => {
            let mut req = as_node(
                n,
                proto::RegisterRequest {
                    name: n.into(),
                    ..Default::default()
                },
            );
            req.metadata_mut().insert("authorization", bearer);
            McpRegistrationServiceClient::new(ch).register(req).await.map(|_| ())
        }
    }
}

#[test]
fn mcias_bearer_tokens_end_to_end() {
    let mut mcias = FakeMcias::start();
    let mut master = TestMaster::init("mciasm");
    let url = mcias.url();
    master.configure(|c| {
        let mut t = toml::Table::new();
        t.insert("url".into(), url.into());
        c.insert("mcias".into(), t.into());
    });
    master.run();
    let rt = runtime();

    // A valid operator token: the CLI works without any certificate.
    let human = token_cli(&master, "human-token");
    let r = master.mcp_with(&human, &["--json", "node", "list"]);
    let validated = Instant::now();
    r.expect_code(0, "node list with an MCIAS token");
    assert_eq!(mcias.hits("human-token"), 1);
    // Cached (30 s): the next call does not ask MCIAS.
    master
        .mcp_with(&human, &["node", "list"])
        .expect_code(0, "cached token");
    rt.block_on(with_token(&master, "human-token", None))
        .expect("cached token over raw gRPC");
    assert_eq!(
        mcias.hits("human-token"),
        1,
        "a validated token was checked again within 30 s"
    );

    // Refused tokens: Unauthenticated, with MCIAS's reason.
    for (token, reason) in [
        ("expired-token", "token expired"),
        ("revoked-token", "token revoked"),
        ("stale-token", "token expired"),
        ("forged-token", "invalid token"),
        ("guest-token", "has no mcp role"),
    ] {
        assert_status(
            rt.block_on(with_token(&master, token, None)),
            Code::Unauthenticated,
            reason,
            token,
        );
        let r = master.mcp_with(&token_cli(&master, token), &["node", "list"]);
        r.expect_code(1, token);
        assert!(
            r.stderr.contains("mcias token refused") && r.stderr.contains(reason),
            "{token}: {}",
            r.stderr
        );
    }
    // Roles map to identities: an operator token cannot act as an agent,
    // an agent token (account agent-a) cannot drive the fleet but reaches
    // the registration handler for its own node.
    assert_status(
        rt.block_on(with_token(&master, "human-token", Some("a"))),
        Code::PermissionDenied,
        "only agents",
        "human token on Register",
    );
    assert_status(
        rt.block_on(with_token(&master, "agent-token", None)),
        Code::PermissionDenied,
        "agent-a may not call",
        "agent token on ListNodes",
    );
    assert_status(
        rt.block_on(with_token(&master, "agent-token", Some("a"))),
        Code::InvalidArgument,
        "unknown role",
        "agent token on Register",
    );
    assert_status(
        rt.block_on(with_token(&master, "agent-token", Some("b"))),
        Code::PermissionDenied,
        "may not act for node b",
        "agent token for another node",
    );
    // A token file others can read is refused before anything is sent.
    let open = token_cli(&master, "operator-token");
    chmod(&master.dir.join("mcias-cli/operator-token.txt"), 0o644);
    let r = master.mcp_with(&open, &["node", "list"]);
    r.expect_code(1, "token file 0644");
    assert!(
        r.stderr.contains("operator-token.txt is readable by group or others"),
        "{}",
        r.stderr
    );
    assert_eq!(mcias.hits("operator-token"), 0);
    chmod(&master.dir.join("mcias-cli/operator-token.txt"), 0o600);

    // MCIAS goes down.
    mcias.stop();
    assert!(
        validated.elapsed() < Duration::from_secs(25),
        "too slow to test the cache: {:?}",
        validated.elapsed()
    );
    // Validated less than 30 s ago: still accepted, from the cache.
    master
        .mcp_with(&human, &["node", "list"])
        .expect_code(0, "cached token while MCIAS is down");
    // Never validated: Unavailable — an outage lets nobody in.
    assert_status(
        rt.block_on(with_token(&master, "operator-token", None)),
        Code::Unavailable,
        "mcias unavailable",
        "MCIAS down",
    );
    let r = master.mcp_with(&open, &["node", "list"]);
    r.expect_code(1, "MCIAS down");
    assert!(
        r.stderr.contains("mcias unavailable") && r.stderr.contains("unreachable or overloaded"),
        "{}",
        r.stderr
    );
    // Once the 30 s are over, the cached token needs MCIAS again.
    let end = validated + Duration::from_secs(31);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    assert_status(
        rt.block_on(with_token(&master, "human-token", None)),
        Code::Unavailable,
        "mcias unavailable",
        "cache expired, MCIAS down",
    );
    master
        .mcp_with(&human, &["node", "list"])
        .expect_code(1, "cache expired, MCIAS down");
    assert_eq!(mcias.hits("human-token"), 1);

    // Tokens never reach the log.
    let log = master.log();
    for token in [
        "human-token",
        "operator-token",
        "agent-token",
        "expired-token",
        "revoked-token",
        "forged-token",
    ] {
        assert!(!log.contains(token), "{token} in the master log");
    }
}

#[test]
fn agent_accepts_mcias_tokens_in_direct_mode() {
    let mcias = FakeMcias::start();
    let mut agent = TestAgent::init("mciasa", mcp_tests::port_range());
    let path = agent.dir.join("agent.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let mut section = toml::Table::new();
    section.insert("url".into(), mcias.url().into());
    cfg.insert("mcias".into(), section.into());
    // Rewritten in place: owner and mode stay.
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    agent.run();
    let cli = |token: &str| {
        let token_path = agent.dir.join(format!("{token}.txt"));
        mcp_infra::fsutil::write_private(&token_path, token.as_bytes()).unwrap();
        let cfg = agent.dir.join(format!("{token}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[auth]\nca = \"{}\"\ntoken_path = \"{}\"\n[[nodes]]\nname = \"mciasa\"\naddress = \"127.0.0.1:{}\"\n",
                agent.operator_tls().ca.display(),
                token_path.display(),
                agent.port
            ),
        )
        .unwrap();
        let out = std::process::Command::new(mcp_tests::bin("mcp"))
            .args(["--direct", "--config"])
            .arg(&cfg)
            .args(["node", "list"])
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = cli("human-token");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(mcias.hits("human-token"), 1);
    let (code, out) = cli("revoked-token");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("token revoked"), "{out}");
    // An agent account is no operator of another agent.
    let (code, out) = cli("agent-token");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("agent-a may not call"), "{out}");
}

// -------------------------------------------------------------- rate limits

#[test]
fn register_and_heartbeat_rate_limits_hit_and_recover() {
    let mut master = TestMaster::init("ratem");
    master.configure(|c| {
        c["registration"]["register_interval"] = 2.into();
        c["registration"]["heartbeat_min_interval"] = 2.into();
    });
    master.run();
    let rl = master.issue("agent/rl");
    let other = master.issue("agent/rl2");
    let rt = runtime();
    rt.block_on(async {
        let mut c = registration(&master, &rl).await;
        c.register(as_node("rl", register_request("rl")))
            .await
            .expect("first register");
        assert_status(
            c.register(as_node("rl", register_request("rl"))).await,
            Code::ResourceExhausted,
            "limited to once per 2 s",
            "second register",
        );
        c.heartbeat(as_node("rl", heartbeat_request("rl")))
            .await
            .expect("first heartbeat");
        assert_status(
            c.heartbeat(as_node("rl", heartbeat_request("rl"))).await,
            Code::ResourceExhausted,
            "limited to once per 2 s",
            "second heartbeat",
        );
        // Per node: another node is not held back by rl's calls.
        let mut o = registration(&master, &other).await;
        o.register(as_node("rl2", register_request("rl2")))
            .await
            .expect("other node registers");
        o.heartbeat(as_node("rl2", heartbeat_request("rl2")))
            .await
            .expect("other node heartbeats");
        // After the interval, both work again.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        c.register(as_node("rl", register_request("rl")))
            .await
            .expect("register after the interval");
        c.heartbeat(as_node("rl", heartbeat_request("rl")))
            .await
            .expect("heartbeat after the interval");
    });
}

// -------------------------------------------------------- registration guard

#[test]
fn allowlist_and_max_nodes_guard_registration() {
    let mut master = TestMaster::start("guardm");
    // Tokens issued before the operator tightened the configuration.
    let (outsider_token, _) = node_add(&master, "outsider", Some(600));
    let (ok2_token, _) = node_add(&master, "ok2", Some(600));
    master.kill();
    master.configure(|c| {
        c["registration"]["allowlist"] = toml::Value::Array(vec!["ok1".into(), "ok2".into()]);
        c["registration"]["max_nodes"] = 1.into();
    });
    master.run();
    let rt = runtime();

    // Outside the allowlist: no token, no join, no registration.
    let r = master.mcp(&["node", "add", "outsider"]);
    r.expect_code(1, "node add outside the allowlist");
    assert!(r.stderr.contains("not in registration.allowlist"), "{}", r.stderr);
    assert_status(
        rt.block_on(raw_join(&master, "outsider", &outsider_token)),
        Code::PermissionDenied,
        "not in registration.allowlist",
        "join outside the allowlist",
    );
    let outsider = master.issue("agent/outsider");
    rt.block_on(async {
        let mut c = registration(&master, &outsider).await;
        assert_status(
            c.register(as_node("outsider", register_request("outsider"))).await,
            Code::PermissionDenied,
            "not in registration.allowlist",
            "register outside the allowlist",
        );
    });

    // max_nodes = 1: ok1 fits, ok2 does not.
    let ok1 = master.issue("agent/ok1");
    let ok2 = master.issue("agent/ok2");
    rt.block_on(async {
        let mut c = registration(&master, &ok1).await;
        c.register(as_node("ok1", register_request("ok1")))
            .await
            .expect("ok1 registers");
        let mut c2 = registration(&master, &ok2).await;
        assert_status(
            c2.register(as_node("ok2", register_request("ok2"))).await,
            Code::ResourceExhausted,
            "max_nodes = 1",
            "register beyond max_nodes",
        );
        // A known node may register again.
        c.register(as_node("ok1", register_request("ok1")))
            .await
            .expect("ok1 registers again");
    });
    let r = master.mcp(&["node", "add", "ok2"]);
    r.expect_code(1, "node add beyond max_nodes");
    assert!(r.stderr.contains("max_nodes = 1"), "{}", r.stderr);
    assert_status(
        rt.block_on(raw_join(&master, "ok2", &ok2_token)),
        Code::ResourceExhausted,
        "max_nodes",
        "join beyond max_nodes",
    );
    assert_eq!(master.sql("select group_concat(name) from nodes"), "ok1");
    assert_eq!(
        master.sql("select count(*) from join_tokens where used_at is not null"),
        "0"
    );
}

// ---------------------------------------------------------------- key modes

#[test]
fn keys_and_database_are_private_and_open_keys_refused() {
    let mut master = TestMaster::init("modem");
    let dir = master.dir.clone();
    let d = |p: &str| dir.join(p);
    assert_eq!(mode(&d("data")), 0o700);
    for p in [
        "data/ca/ca.key",
        "data/tls/master.key",
        "data/fleet.db",
        "master.toml",
        "operator/key.pem",
    ] {
        assert_eq!(mode(&d(p)), 0o600, "{p}");
    }
    assert_eq!(mode(&d("data/ca/ca.pem")), 0o644);
    master.run();
    node_add(&master, "someone", None);
    for p in ["data/fleet.db", "data/fleet.db-wal", "data/fleet.db-shm"] {
        if d(p).exists() {
            assert_eq!(mode(&d(p)), 0o600, "{p}");
        }
    }
    let issued = master.issue("human/alice");
    assert_eq!(mode(&issued.key), 0o600);
    master.kill();

    // A key others can read: the master refuses to start, naming it.
    for (key, open) in [("data/tls/master.key", 0o644), ("data/ca/ca.key", 0o640)] {
        chmod(&d(key), open);
        let r = master.run_refused(Duration::from_secs(20));
        r.expect_code(1, key);
        let want = format!("{} is readable by group or others", d(key).display());
        assert!(r.stderr.contains(&want), "{key}: {}", r.stderr);
        chmod(&d(key), 0o600);
    }
    // A database others can read is closed again, not refused.
    chmod(&d("data/fleet.db"), 0o644);
    master.run();
    assert_eq!(mode(&d("data/fleet.db")), 0o600);
    // The CLI refuses an operator key others can read.
    chmod(&d("operator/key.pem"), 0o640);
    let r = master.mcp(&["node", "list"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("key.pem is readable by group or others"),
        "{}",
        r.stderr
    );
    chmod(&d("operator/key.pem"), 0o600);
}

// ------------------------------------------------------------------ renewal

#[test]
fn certificates_renew_without_restart() {
    let now = time::OffsetDateTime::now_utc();
    let (from, to) = (now - time::Duration::hours(60), now + time::Duration::hours(12));

    // The master renews its own certificate (checked at start, then hourly)
    // once less than a third of its lifetime is left.
    let mut master = TestMaster::init("renewm");
    let fleet = FleetCa::load(&master.ca_dir());
    let cert = master.dir.join("data/tls/master.pem");
    let (dns, ips) = mcp_infra::pki::sans(&std::fs::read_to_string(&cert).unwrap());
    let (chain, key) = fleet.issue(&Identity::Master, &dns, &ips, from, to);
    mcp_infra::fsutil::write_private(&master.dir.join("data/tls/master.key"), key.as_bytes()).unwrap();
    std::fs::write(&cert, &chain).unwrap();
    master.run();
    let rt = runtime();
    let ca = master.operator_tls().ca;
    wait_for("the master to renew its certificate", Duration::from_secs(20), || {
        let pem = std::fs::read_to_string(&cert).unwrap();
        pem != chain && rt.block_on(served_leaf(&master.address(), &ca, Identity::Master)) == leaf_der(&pem)
    });
    let (left, _) = mcp_infra::pki::lifetime(&std::fs::read_to_string(&cert).unwrap()).unwrap();
    assert!(left > 360 * 86400, "renewed for {left} s");
    assert!(master.log().contains("master certificate renewed"));

    // The agent renews over IssueCertificate after a heartbeat, and its
    // listener serves the new certificate without a restart.
    let mut agent = TestAgent::join(&master, mcptest(), "renewa", "worker");
    agent.run();
    wait_for("the agent to register", Duration::from_secs(20), || {
        master.node_status("renewa").is_some()
    });
    let pid = agent.pid().unwrap();
    let (dns, ips) = mcp_infra::pki::sans(&agent.cert_pem());
    let (planted, key) = fleet.issue(&Identity::Agent("renewa".into()), &dns, &ips, from, to);
    agent.plant_tls(&planted, &key);
    let agent_addr = format!("127.0.0.1:{}", agent.port);
    let server = Identity::Agent("renewa".into());
    wait_for("the agent to renew its certificate", Duration::from_secs(30), || {
        agent.cert_pem() != planted
    });
    let renewed = agent.cert_pem();
    let leaf = leaf_der(&renewed);
    assert_eq!(mcp_infra::tls::identity_of(&leaf), Some(server.clone()));
    let (left, total) = mcp_infra::pki::lifetime(&renewed).unwrap();
    assert!(
        total >= 90 * 86400 && left > 89 * 86400,
        "renewed for {left} of {total} s"
    );
    assert_eq!(
        mcp_infra::pki::sans(&renewed),
        (dns, ips),
        "the renewed certificate keeps its names"
    );
    wait_for(
        "the listener to serve the renewed certificate",
        Duration::from_secs(10),
        || rt.block_on(served_leaf(&agent_addr, &ca, server.clone())) == leaf,
    );
    assert_eq!(agent.pid(), Some(pid));
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the agent restarted");
    assert!(agent.log().contains("agent certificate renewed"), "{}", agent.log());
    assert!(master.log().contains("certificate renewed"));
    agent
        .mcp(&["node", "list"])
        .expect_code(0, "--direct with the renewed certificate");
    let tls_dir = agent.dir.join("data/tls");
    assert_eq!(mode(&tls_dir.join("agent.key")), 0o600);
    assert_eq!(mode(&tls_dir.join("agent.pem")), 0o644);
    for p in ["data/mcp.db", "agent.toml"] {
        assert_eq!(mode(&agent.dir.join(p)), 0o600, "{p}");
    }
    // The link reconnects with the new certificate and keeps heartbeating.
    let after = unix_now();
    wait_for("a heartbeat after the renewal", Duration::from_secs(20), || {
        master
            .node_status("renewa")
            .is_some_and(|n| n["last_seen"].as_i64().unwrap() > after)
    });
}
