//! End-to-end networking: service certificates from the fleet CA, the
//! master's DNS zone, the agent's built-in proxy (L7 over h1 and h2, L4
//! passthrough), and edge routes — real master, real agents on rootless
//! podman, real clients (curl, openssl, dig).

use std::process::Command;
use std::time::Duration;

use mcp_tests::{REGISTRY, TestAgent, TestMaster, dig, fleet_users, free_port, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn web() -> String {
    format!("{REGISTRY}/mcp-test/web:v1")
}

/// Adds a built-in proxy with a listener port map to an agent's config.
fn with_proxy(agent: &TestAgent, map: &[(u16, u16)]) {
    agent.configure(|c| {
        let mut proxy = toml::Table::new();
        let listeners: Vec<toml::Value> = map
            .iter()
            .map(|(port, bind)| {
                let mut l = toml::Table::new();
                l.insert("port".into(), i64::from(*port).into());
                l.insert("bind".into(), format!("127.0.0.1:{bind}").into());
                l.into()
            })
            .collect();
        proxy.insert("listeners".into(), listeners.into());
        proxy.insert("idle_timeout".into(), 5.into());
        proxy.insert("handshake_timeout".into(), 3.into());
        c.insert("proxy".into(), proxy.into());
    });
}

fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn certificates_dns_proxy_and_edge() {
    let dns_port = free_port();
    let mut master = TestMaster::init("w1");
    master.serve_dns(dns_port);
    master.run();
    let (https, raw, edge_https) = (free_port(), free_port(), free_port());
    let mut worker = TestAgent::join(&master, fleet_users()[0], "w1", "master");
    with_proxy(&worker, &[(443, https), (9000, raw)]);
    worker.run();
    let mut edge = TestAgent::join(&master, fleet_users()[1], "e1", "edge");
    with_proxy(&edge, &[(443, edge_https)]);
    edge.configure(|c| {
        let mut e = toml::Table::new();
        e.insert("allowed_domains".into(), vec![toml::Value::from("example.net")].into());
        c.insert("edge".into(), e.into());
    });
    edge.run();
    for n in ["w1", "e1"] {
        wait_for(&format!("{n} healthy"), WAIT, || {
            master.node_status(n).is_some_and(|s| s["status"] == "healthy")
        });
    }
    let ca = master.dir.join("operator/ca.pem");
    let ca = ca.to_str().unwrap();

    // A service with an L7 route (TLS terminated by the proxy with a
    // certificate from the fleet CA) and an L4 route (bytes passed through).
    master.define(
        "site",
        &format!(
            r#"name = "site"
node = "w1"
[[components]]
name = "web"
image = "{web}"
[[components.routes]]
name = "https"
port = 443
mode = "l7"
hostname = "site.example.net"
[[components]]
name = "raw"
image = "{web}"
cmd = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 5 | nc -l -p $PORT > /www/last.bin; done"]
[[components.routes]]
port = 9000
mode = "l4"
hostname = "raw.example.net"
"#,
            web = web()
        ),
    );
    let r = master.mcp(&["--json", "deploy", "site"]);
    r.expect_code(0, "deploy site");
    let steps = r.json()["steps"].clone();
    let step = |name: &str| {
        steps
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .unwrap()
            .clone()
    };
    assert!(
        step("certificates")["detail"].as_str().unwrap().starts_with("issued"),
        "{steps}"
    );
    assert_eq!(step("routes")["success"], true, "{steps}");
    assert!(
        step("dns")["detail"]
            .as_str()
            .unwrap()
            .contains("site.svc.mcp.metacircular.net A 127.0.0.1"),
        "{steps}"
    );

    // L7 over HTTP/1.1 and h2 through the proxy, chain verified by the CA.
    let resolve = format!("site.example.net:{https}:127.0.0.1");
    let url = format!("https://site.example.net:{https}/version.txt");
    for proto in ["--http1.1", "--http2"] {
        let (code, body, err) = curl(&[
            proto,
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            &url,
            "-w",
            " %{http_version}",
        ]);
        assert_eq!(code, 0, "{proto}: {err}");
        assert!(body.starts_with("v1"), "{proto}: {body}");
        let want = if proto == "--http2" { " 2" } else { " 1.1" };
        assert!(body.ends_with(want), "{proto} negotiated: {body}");
    }
    // The certificate carries the internal name too (edges dial it).
    let pem = std::fs::read_to_string(worker.dir.join("data/certs/site.pem")).unwrap();
    let (names, _) = mcp_infra::pki::sans(&pem);
    assert_eq!(names, ["site.example.net", "site.svc.mcp.metacircular.net"]);
    // openssl sees the full chain (leaf + CA) and verifies it.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{https}"),
            "-servername",
            "site.example.net",
        ])
        .args(["-CAfile", ca, "-showcerts", "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2, "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    // Unknown name on the L7 listener: no route → connection closed.
    let (code, _, _) = curl(&[
        "--cacert",
        ca,
        "--resolve",
        &format!("nope.example.net:{https}:127.0.0.1"),
        &format!("https://nope.example.net:{https}/"),
    ]);
    assert_ne!(code, 0);

    // L4: the client's TLS bytes reach the container untouched (here a
    // plain listener records them), with the SNI the proxy routed on.
    let _ = Command::new("timeout")
        .args([
            "3",
            "openssl",
            "s_client",
            "-connect",
            &format!("127.0.0.1:{raw}"),
            "-servername",
            "raw.example.net",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(worker.inspect("site-raw", "{{.State.Status}}").unwrap(), "running");
    wait_for("the ClientHello at the backend", WAIT, || {
        worker
            .podman(&["exec", "site-raw", "cat", "/www/last.bin"])
            .stdout
            .contains("raw.example.net")
    });

    // DNS: the record is served after deploy, NXDOMAIN after stop, back on start.
    let name = "site.svc.mcp.metacircular.net";
    assert!(dig(dns_port, name).contains("127.0.0.1"), "{}", dig(dns_port, name));
    let listing = master.mcp(&["--json", "dns", "list"]).json();
    assert_eq!(listing["records"][0]["name"], name);
    master.mcp(&["stop", "site"]).expect_code(0, "stop");
    assert!(dig(dns_port, name).contains("NXDOMAIN"), "{}", dig(dns_port, name));
    let (code, _, _) = curl(&["--cacert", ca, "--resolve", &resolve, &url]);
    assert_ne!(code, 0, "no route after stop");
    master.mcp(&["start", "site"]).expect_code(0, "start");
    assert!(dig(dns_port, name).contains("127.0.0.1"));
    let (code, body, err) = curl(&["--cacert", ca, "--resolve", &resolve, &url]);
    assert_eq!((code, body.trim()), (0, "v1"), "{err}");

    // `mcp route list` groups by listener.
    let routes = master.mcp(&["route", "list"]);
    routes.expect_code(0, "route list");
    assert!(
        routes.stdout.contains("w1 listener :443") && routes.stdout.contains("site.example.net"),
        "{}",
        routes.stdout
    );

    // Certificates: reused with more than 30 days left; renewed below.
    let pem_path = worker.dir.join("data/certs/site.pem");
    let serial = |p: &std::path::Path| {
        mcp_infra::pki::serial_and_expiry(&std::fs::read_to_string(p).unwrap())
            .unwrap()
            .0
    };
    let first = serial(&pem_path);
    master.mcp(&["restart", "site"]).expect_code(0, "restart");
    assert_eq!(serial(&pem_path), first, "reused with 90 days left");
    let short = mcp_infra::pki::Ca::load(&master.dir.join("data/ca"))
        .unwrap()
        .issue(&mcp_infra::pki::LeafRequest {
            dns_names: vec!["site.example.net".into(), "site.svc.mcp.metacircular.net".into()],
            days: 10,
            ..Default::default()
        })
        .unwrap();
    worker.plant_file("data/certs/site.pem", &short.chain_pem, 0o644);
    worker.plant_file("data/certs/site.key", &short.key_pem, 0o600);
    let planted = serial(&pem_path);
    master.mcp(&["restart", "site"]).expect_code(0, "restart renews");
    assert_ne!(serial(&pem_path), planted, "a certificate with 10 days left is renewed");

    // CA unreachable: the certificate step fails, nothing half-applied.
    master.kill();
    worker.define(
        "other",
        &format!("name = \"other\"\n[[components]]\nname = \"app\"\nimage = \"{}\"\n[[components.routes]]\nport = 443\nmode = \"l7\"\nhostname = \"other.example.net\"\n", web()),
    );
    let r = worker.mcp(&["deploy", "other"]);
    r.expect_code(1, "deploy with the CA down");
    assert!(
        r.stderr.contains("certificates") && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    assert!(worker.inspect("other-app", "{{.Id}}").is_none(), "no container");
    let routes = worker.mcp(&["--json", "route", "list"]).json();
    let hosts: Vec<&str> = routes["nodes"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hostname"].as_str().unwrap())
        .collect();
    assert!(!hosts.contains(&"other.example.net"), "{hosts:?}");
    master.run();

    // Edge: a public route is served by the edge with its own certificate,
    // proxied to the worker over TLS by the internal name.
    master.define(
        "shop",
        &format!(
            "name = \"shop\"\nnode = \"w1\"\n[[components]]\nname = \"app\"\nimage = \"{}\"\n[[components.routes]]\nport = 443\nmode = \"l7\"\nhostname = \"shop.example.net\"\npublic = true\n",
            web()
        ),
    );
    let r = master.mcp(&["--json", "deploy", "shop"]);
    r.expect_code(0, "deploy shop with a public route");
    let edge_url = format!("https://shop.example.net:{edge_https}/version.txt");
    let (code, body, err) = curl(&[
        "--cacert",
        ca,
        "--resolve",
        &format!("shop.example.net:{edge_https}:127.0.0.1"),
        &edge_url,
    ]);
    assert_eq!((code, body.trim()), (0, "v1"), "through the edge: {err}");
    let edges = master.mcp(&["--json", "edge", "status"]).json();
    let row = &edges["edge_routes"][0];
    assert_eq!(
        (
            row["hostname"].as_str(),
            row["edge_node"].as_str(),
            row["state"].as_str()
        ),
        (Some("shop.example.net"), Some("e1"), Some("ok"))
    );
    assert!(!row["cert_serial"].as_str().unwrap().is_empty());

    // Refusals: a domain the edge may not serve, with a clear error.
    master.define(
        "evil",
        &format!(
            "name = \"evil\"\nnode = \"w1\"\n[[components]]\nname = \"app\"\nimage = \"{}\"\n[[components.routes]]\nport = 443\nmode = \"l7\"\nhostname = \"shop.evilexample.net\"\npublic = true\n",
            web()
        ),
    );
    let r = master.mcp(&["deploy", "evil"]);
    r.expect_code(1, "deploy with a disallowed public domain");
    assert!(
        r.stderr.contains("edge") && r.stderr.contains("not under an allowed domain"),
        "{}",
        r.stderr
    );

    // The edge itself refuses a backend outside the internal zone and a
    // backend without TLS, whoever asks.
    let as_master = master.issue("master");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = edge.client_with(&as_master).await.unwrap();
        let base = mcp_proto::SetupEdgeRouteRequest {
            hostname: "ok.example.net".into(),
            backend_hostname: "shop.svc.mcp.metacircular.net".into(),
            backend_port: 443,
            backend_tls: true,
            service: "shop".into(),
            port: 443,
            backend_address: "127.0.0.1:1".into(),
        };
        let cases = [
            (
                "backend outside the zone",
                mcp_proto::SetupEdgeRouteRequest {
                    backend_hostname: "shop.example.org".into(),
                    ..base.clone()
                },
                "internal zone",
            ),
            (
                "backend without TLS",
                mcp_proto::SetupEdgeRouteRequest {
                    backend_tls: false,
                    ..base.clone()
                },
                "needs TLS",
            ),
            (
                "look-alike domain",
                mcp_proto::SetupEdgeRouteRequest {
                    hostname: "evilexample.net".into(),
                    ..base.clone()
                },
                "allowed domain",
            ),
        ];
        for (what, req, fragment) in cases {
            let e = c.setup_edge_route(req).await.expect_err(what);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
            assert!(e.message().contains(fragment), "{what}: {}", e.message());
        }
    });

    // Undeploy removes the worker side first, then the edge.
    master.mcp(&["undeploy", "shop"]).expect_code(0, "undeploy shop");
    let edges = master.mcp(&["--json", "edge", "list"]).json();
    assert!(
        edges["edge_routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["hostname"] != "shop.example.net")
    );
    let (code, _, _) = curl(&[
        "--cacert",
        ca,
        "--resolve",
        &format!("shop.example.net:{edge_https}:127.0.0.1"),
        &edge_url,
    ]);
    assert_ne!(code, 0, "edge no longer serves shop");
    drop(edge);
    drop(worker);
}
