//! Observability end to end: the `/metrics` listeners of a real master and
//! a real agent (rootless podman, TLS, built-in proxy, DNS), scraped over
//! HTTP, parsed with a Prometheus parser and linted with `promtool check
//! metrics`; and the alert rules checked and unit-tested with promtool.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mcp_tests::{REGISTRY, TestAgent, TestMaster, dig, fleet_users, free_port, http_get, repo_root, wait_for};
use prometheus_parse::{Scrape, Value};

const WAIT: Duration = Duration::from_secs(30);

/// GET /metrics, linted by promtool and parsed.
fn scrape(port: u16) -> Scrape {
    let text = http_get(port, "/metrics", Duration::from_secs(10)).expect("metrics endpoint answers 200");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    lint.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition parses")
}

/// Value of the counter or gauge `metric` whose labels include `labels`;
/// `None` when there is no such series.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a counter or gauge"),
        })
}

/// Observations in the histogram `metric` with `labels` (its +Inf bucket).
fn observations(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Histogram(b) => b.iter().find(|b| b.less_than.is_infinite()).map_or(0.0, |b| b.count),
            _ => panic!("{metric} is not a histogram"),
        })
        .unwrap_or(0.0)
}

fn metrics_section(port: u16) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("listen".into(), format!("127.0.0.1:{port}").into());
    t.into()
}

#[test]
fn metrics_follow_deploys_dns_proxy_and_drift() {
    let (dns_port, master_metrics, agent_metrics, https) = (free_port(), free_port(), free_port(), free_port());
    let mut master = TestMaster::init("o1");
    master.serve_dns(dns_port);
    master.configure(|c| {
        c.insert("metrics".into(), metrics_section(master_metrics));
    });
    master.run();
    let mut agent = TestAgent::join(&master, fleet_users()[0], "o1", "master");
    agent.configure(|c| {
        let mut l = toml::Table::new();
        l.insert("port".into(), 443.into());
        l.insert("bind".into(), format!("127.0.0.1:{https}").into());
        let mut proxy = toml::Table::new();
        proxy.insert("listeners".into(), vec![toml::Value::from(l)].into());
        c.insert("proxy".into(), proxy.into());
        c.insert("metrics".into(), metrics_section(agent_metrics));
        let mut monitor = toml::Table::new();
        monitor.insert("interval".into(), 1.into());
        c.insert("monitor".into(), monitor.into());
    });
    agent.run();
    wait_for("o1 healthy", WAIT, || {
        master.node_status("o1").is_some_and(|s| s["status"] == "healthy")
    });

    // Before any deploy: the node is counted (with the disk of its first
    // heartbeat), nothing deployed yet.
    wait_for("first heartbeat in metrics", WAIT, || {
        value(
            &scrape(master_metrics),
            "mcp_master_node_disk_total_bytes",
            &[("node", "o1")],
        )
        .is_some_and(|v| v > 0.0)
    });
    let m0 = scrape(master_metrics);
    assert_eq!(value(&m0, "mcp_master_nodes", &[("status", "healthy")]), Some(1.0));
    assert_eq!(value(&m0, "mcp_master_nodes", &[("status", "unhealthy")]), Some(0.0));
    assert_eq!(
        value(&m0, "mcp_master_node_healthy", &[("node", "o1"), ("role", "master")]),
        Some(1.0)
    );
    let age = value(&m0, "mcp_master_node_heartbeat_age_seconds", &[("node", "o1")]).unwrap();
    assert!((0.0..10.0).contains(&age), "heartbeat age {age}");
    assert!(value(&m0, "mcp_master_node_disk_total_bytes", &[("node", "o1")]).unwrap() > 0.0);
    assert_eq!(
        value(&m0, "mcp_master_deploys_total", &[("result", "success")]),
        Some(0.0)
    );
    let a0 = scrape(agent_metrics);
    assert_eq!(
        value(&a0, "mcp_agent_deploys_total", &[("result", "success")]),
        Some(0.0)
    );
    let own_cert = value(
        &a0,
        "mcp_agent_cert_expiry_seconds",
        &[("kind", "agent"), ("name", "o1")],
    )
    .unwrap();
    assert!(own_cert > 86400.0, "agent certificate expires in {own_cert} s");
    assert!(value(&a0, "mcp_agent_disk_available_bytes", &[]).unwrap() > 0.0);

    // A deploy with an L7 route: every step runs.
    master.define(
        "obs",
        &format!(
            "name = \"obs\"\nnode = \"o1\"\n[[components]]\nname = \"web\"\nimage = \"{REGISTRY}/mcp-test/web:v1\"\n\
             [[components.routes]]\nport = 443\nmode = \"l7\"\nhostname = \"obs.example.net\"\n"
        ),
    );
    master.mcp(&["deploy", "obs"]).expect_code(0, "deploy obs");
    // A bad definition is refused by the master: a rejected deploy.
    master.define(
        "obsbad",
        &format!(
            "name = \"obsbad\"\nnode = \"nowhere\"\n[[components]]\nname = \"web\"\nimage = \"{REGISTRY}/mcp-test/web:v1\"\n"
        ),
    );
    master
        .mcp(&["deploy", "obsbad"])
        .expect_code(2, "deploy pinned to an unknown node");

    let m1 = scrape(master_metrics);
    assert_eq!(
        value(&m1, "mcp_master_deploys_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m1, "mcp_master_deploys_total", &[("result", "rejected")]),
        Some(1.0)
    );
    for step in ["ports", "certificates", "containers", "routes", "dns", "registry"] {
        assert_eq!(
            observations(&m1, "mcp_master_deploy_step_duration_seconds", &[("step", step)]),
            1.0,
            "master step {step}"
        );
    }
    assert_eq!(value(&m1, "mcp_master_placements", &[("state", "deployed")]), Some(1.0));
    let a1 = scrape(agent_metrics);
    assert_eq!(
        value(&a1, "mcp_agent_deploys_total", &[("result", "success")]),
        Some(1.0)
    );
    for step in ["ports", "certificates", "containers", "routes", "dns", "registry"] {
        assert_eq!(
            observations(&a1, "mcp_agent_deploy_step_duration_seconds", &[("step", step)]),
            1.0,
            "agent step {step}"
        );
    }
    let svc_cert = value(
        &a1,
        "mcp_agent_cert_expiry_seconds",
        &[("kind", "service"), ("name", "obs")],
    )
    .unwrap();
    assert!(svc_cert > 86400.0, "service certificate expires in {svc_cert} s");
    assert_eq!(
        value(
            &a1,
            "mcp_agent_container_up",
            &[("service", "obs"), ("component", "web")]
        ),
        Some(1.0)
    );

    // A deploy that fails at a step on the agent (the image does not exist):
    // counted as failed on both sides, with the failed step's duration; the
    // CLI's error names the request id, which master and agent logged.
    master.define(
        "obsfail",
        &format!(
            "name = \"obsfail\"\nnode = \"o1\"\n[[components]]\nname = \"web\"\nimage = \"{REGISTRY}/mcp-test/web:absent\"\n"
        ),
    );
    let failed = master.mcp(&["deploy", "obsfail"]);
    failed.expect_code(1, "deploy of a missing image");
    let id = failed
        .stderr
        .split("(request ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no request id in the CLI error: {}", failed.stderr))
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    assert!(master.log().contains(&id), "request {id} not in the master log");
    assert!(agent.log().contains(&id), "request {id} not in the agent log");
    let m_fail = scrape(master_metrics);
    assert_eq!(
        value(&m_fail, "mcp_master_deploys_total", &[("result", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        observations(
            &m_fail,
            "mcp_master_deploy_step_duration_seconds",
            &[("step", "containers")]
        ),
        2.0
    );
    let a_fail = scrape(agent_metrics);
    assert_eq!(
        value(&a_fail, "mcp_agent_deploys_total", &[("result", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        observations(
            &a_fail,
            "mcp_agent_deploy_step_duration_seconds",
            &[("step", "containers")]
        ),
        2.0
    );

    // An unchanged redeploy counts as such on the agent.
    master.mcp(&["deploy", "obs"]).expect_code(0, "redeploy obs");
    let a2 = scrape(agent_metrics);
    assert_eq!(
        value(&a2, "mcp_agent_deploys_total", &[("result", "unchanged")]),
        Some(1.0)
    );
    assert_eq!(
        value(&a2, "mcp_agent_deploys_total", &[("result", "success")]),
        Some(1.0)
    );

    // DNS: one answer, one NXDOMAIN.
    assert!(dig(dns_port, "obs.svc.mcp.metacircular.net").contains("127.0.0.1"));
    assert!(dig(dns_port, "nothing.svc.mcp.metacircular.net").contains("NXDOMAIN"));
    let m2 = scrape(master_metrics);
    assert_eq!(
        value(&m2, "mcp_master_dns_queries_total", &[("rcode", "NOERROR")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m2, "mcp_master_dns_queries_total", &[("rcode", "NXDOMAIN")]),
        Some(1.0)
    );

    // The proxy: one connection, two requests answered by the backend.
    let ca = master.dir.join("operator/ca.pem");
    let resolve = format!("obs.example.net:{https}:127.0.0.1");
    let url = format!("https://obs.example.net:{https}/version.txt");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http1.1", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &resolve, &url, &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let a3 = scrape(agent_metrics);
    assert_eq!(
        value(
            &a3,
            "mcp_agent_proxy_connections_total",
            &[("route", "obs.example.net"), ("mode", "l7")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &a3,
            "mcp_agent_proxy_requests_total",
            &[("route", "obs.example.net"), ("status", "200")]
        ),
        Some(2.0)
    );

    // Drift: the container is stopped behind the agent's back. The monitor
    // (every second here, no auto-repair) records one drift event.
    agent
        .podman(&["stop", "-t", "1", "obs-web"])
        .expect_code(0, "podman stop");
    wait_for("drift visible in metrics", WAIT, || {
        let s = scrape(agent_metrics);
        value(
            &s,
            "mcp_agent_container_up",
            &[("service", "obs"), ("component", "web")],
        ) == Some(0.0)
            && value(
                &s,
                "mcp_agent_drift_events_total",
                &[("service", "obs"), ("component", "web"), ("kind", "exited")],
            ) == Some(1.0)
    });

    // The listener answers only /metrics; other paths get 404.
    assert!(http_get(agent_metrics, "/other", Duration::from_secs(1)).is_none());
    master.mcp(&["undeploy", "obs"]).expect_code(0, "undeploy obs");

    // The node goes silent: the master counts it unhealthy.
    agent.kill();
    wait_for("o1 unhealthy in metrics", WAIT, || {
        let s = scrape(master_metrics);
        value(&s, "mcp_master_nodes", &[("status", "unhealthy")]) == Some(1.0)
            && value(&s, "mcp_master_node_healthy", &[("node", "o1")]) == Some(0.0)
    });
    let age = value(
        &scrape(master_metrics),
        "mcp_master_node_heartbeat_age_seconds",
        &[("node", "o1")],
    )
    .unwrap();
    assert!(age >= 2.0, "heartbeat age {age} of a silent node");
}

#[test]
fn a_metrics_address_in_use_stops_the_agent_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let master = TestMaster::start("o9");
    let agent = TestAgent::join(&master, fleet_users()[1], "o9", "master");
    agent.configure(|c| {
        c.insert("metrics".into(), metrics_section(port));
    });
    let out = mcp_tests::as_user(agent.user, &mcp_tests::bin("mcp-agent"))
        .args(["run", "--config"])
        .arg(agent.dir.join("agent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("metrics.listen 127.0.0.1:{port}")), "{err}");
}

/// The alert rules pass `promtool check rules`, and every rule has a unit
/// test in `deploy/alerts_test.yml` that `promtool test rules` runs.
#[test]
fn alert_rules_check_and_unit_tests_pass() {
    let deploy = repo_root().join("deploy");
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy.join("alerts.yml"))
        .output()
        .expect("promtool (Debian package prometheus) is installed");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&deploy)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    let rules = std::fs::read_to_string(deploy.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy.join("alerts_test.yml")).unwrap();
    for alert in [
        "ServiceDown",
        "NodeUnhealthy",
        "CertExpiringSoon",
        "Flapping",
        "LowDisk",
        "DeployFailures",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "rule {alert} missing");
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "no unit test for {alert}"
        );
    }
}
