//! End-to-end tests of the agent and `mcp --direct` on real rootless podman,
//! with images pulled from a real local registry, over real mutual TLS.

use std::time::Duration;

use mcp_proto as proto;
use mcp_tests::{REGISTRY, Run, TestAgent, fresh_image_tag, http_get, user_dir};

const WAIT: Duration = Duration::from_secs(15);

fn web(tag: &str) -> String {
    format!("{REGISTRY}/mcp-test/web:{tag}")
}

/// Host port of a route from `mcp status --json`.
fn host_port(status: &serde_json::Value, component: &str, route: &str) -> u16 {
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["component"] == component && r["name"] == route)
        .unwrap_or_else(|| panic!("no route {component}/{route} in {status}"))["host_port"]
        .as_u64()
        .unwrap() as u16
}

fn component<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

/// Containers `mcp ps --json` lists.
fn ps_count(agent: &TestAgent) -> usize {
    agent.mcp(&["--json", "ps"]).json()["containers"]
        .as_array()
        .unwrap()
        .len()
}

fn env_of(port: u16) -> Vec<String> {
    let body = http_get(port, "/env.txt", WAIT).expect("env.txt served");
    body.lines().map(str::to_string).collect()
}

#[test]
fn deploy_lifecycle_two_components_three_routes() {
    let agent = TestAgent::start("life");
    let data = agent.dir.join("volumes/shop");
    user_dir(agent.user, &data);
    std::fs::write(data.join("hello.txt"), "from the host\n").unwrap();
    let pulled = fresh_image_tag(&agent, "life-pull");
    let def = format!(
        r#"
name = "shop"
[[components]]
name = "api"
image = "{pulled}"
env = ["LOG_LEVEL=debug", "GREETING=hello world"]
volumes = ["{data}:/www/data:ro"]
restart = "on-failure:3"
[[components.routes]]
name = "rest"
port = 8443
[[components.routes]]
name = "admin-api"
port = 9443
hostname = "admin.shop.example.net"
[[components]]
name = "worker"
image = "{web}"
cmd = ["sh", "-c", "id -u > /www/uid.txt; exec /bin/mcp-web"]
user = "1000:1000"
[[components.routes]]
port = 8080
"#,
        data = data.display(),
        web = web("v1"),
    );
    agent.define("shop", &def);

    // Deploy: the new tag must be pulled from the registry.
    let r = agent.mcp(&["--json", "deploy", "shop"]);
    r.expect_code(0, "deploy");
    let out = r.json();
    assert_eq!(out["changed"], true);
    let steps: Vec<&str> = out["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["ports", "certificates", "containers", "routes", "dns", "registry"]
    );
    let containers_step = &out["steps"][2];
    assert!(
        containers_step["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pulled {pulled}")),
        "{out}"
    );
    assert_eq!(agent.containers(), ["shop-api", "shop-worker"]);

    let status = agent.mcp(&["--json", "status", "shop"]).json();
    let rest = host_port(&status, "api", "rest");
    let admin = host_port(&status, "api", "admin-api");
    let worker = host_port(&status, "worker", "");
    let mut all = vec![rest, admin, worker];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "distinct host ports");
    assert!(
        all.iter().all(|p| (agent.ports.0..=agent.ports.1).contains(p)),
        "{all:?} in {:?}",
        agent.ports
    );

    // Env inside the containers, reached on the published host ports.
    let env = env_of(rest);
    for want in [
        format!("PORT_REST={rest}"),
        format!("PORT_ADMIN_API={admin}"),
        "LOG_LEVEL=debug".to_string(),
        "GREETING=hello world".to_string(),
    ] {
        assert!(env.contains(&want), "missing {want} in {env:?}");
    }
    assert!(!env.iter().any(|l| l.starts_with("PORT=")), "{env:?}");
    assert!(http_get(admin, "/version.txt", WAIT).is_some(), "admin port serves");
    let wenv = env_of(worker);
    assert!(wenv.contains(&format!("PORT={worker}")), "{wenv:?}");
    // cmd and user applied; volume mounted read-only.
    assert_eq!(http_get(worker, "/uid.txt", WAIT).unwrap().trim(), "1000");
    assert_eq!(http_get(rest, "/data/hello.txt", WAIT).unwrap(), "from the host\n");
    assert_eq!(
        agent.inspect("shop-api", "{{.HostConfig.RestartPolicy.Name}}").unwrap(),
        "on-failure"
    );
    assert_eq!(
        agent
            .inspect("shop-worker", "{{.HostConfig.RestartPolicy.Name}}")
            .unwrap(),
        "unless-stopped"
    );

    // `mcp ps` table: SERVICE COMPONENT NODE STATE VERSION UPTIME.
    let ps = agent.mcp(&["ps"]);
    ps.expect_code(0, "ps");
    let header: Vec<&str> = ps.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["SERVICE", "COMPONENT", "NODE", "STATE", "VERSION", "UPTIME"]);
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..5] == ["shop", "api", "life", "running", "life-pull"]),
        "{}",
        ps.stdout
    );

    // Redeploy unchanged: nothing happens.
    let ids = |a: &TestAgent| {
        (
            a.inspect("shop-api", "{{.Id}}").unwrap(),
            a.inspect("shop-worker", "{{.Id}}").unwrap(),
        )
    };
    let before = ids(&agent);
    let r = agent.mcp(&["--json", "deploy", "shop"]);
    r.expect_code(0, "no-op redeploy");
    assert_eq!(r.json()["changed"], false);
    assert_eq!(ids(&agent), before);

    // Changed image on one component: only that one is recreated.
    agent.define("shop", &def.replacen(&web("v1"), &web("v2"), 1));
    let r = agent.mcp(&["--json", "deploy", "shop"]);
    r.expect_code(0, "image redeploy");
    let detail = r.json()["steps"][2]["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("worker recreated (image changed)"), "{detail}");
    let after = ids(&agent);
    assert_eq!(after.0, before.0, "api untouched");
    assert_ne!(after.1, before.1, "worker recreated");
    assert_eq!(
        http_get(worker, "/version.txt", WAIT).unwrap().trim(),
        "v2",
        "same host port, new version"
    );

    // Changed env: recreated, same host port.
    let def2 = def
        .replacen(&web("v1"), &web("v2"), 1)
        .replace("LOG_LEVEL=debug", "LOG_LEVEL=warn");
    agent.define("shop", &def2);
    agent.mcp(&["deploy", "shop"]).expect_code(0, "env redeploy");
    let after_env = ids(&agent);
    assert_ne!(after_env.0, after.0, "api recreated on env change");
    assert_eq!(after_env.1, after.1, "worker untouched on api env change");
    assert!(env_of(rest).contains(&"LOG_LEVEL=warn".to_string()));

    // Failed deploy (image missing): previous version keeps running,
    // registry unchanged.
    let status_before = agent.mcp(&["--json", "status", "shop"]).json();
    agent.define("shop", &def2.replace(&web("v2"), &web("does-not-exist")));
    let r = agent.mcp(&["deploy", "shop"]);
    r.expect_code(1, "deploy of a missing image");
    assert!(
        r.stderr.contains("containers") && r.stderr.contains("does-not-exist"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
    assert_eq!(ids(&agent), after_env);
    assert_eq!(http_get(worker, "/version.txt", WAIT).unwrap().trim(), "v2");
    let status_after = agent.mcp(&["--json", "status", "shop"]).json();
    assert_eq!(status_after["components"], status_before["components"]);
    assert_eq!(status_after["routes"], status_before["routes"]);
    agent.define("shop", &def2);

    // Stop one component, then the service; start; restart.
    agent.mcp(&["stop", "shop/worker"]).expect_code(0, "stop component");
    assert_eq!(agent.inspect("shop-worker", "{{.State.Status}}").unwrap(), "exited");
    assert_eq!(agent.inspect("shop-api", "{{.State.Status}}").unwrap(), "running");
    agent.mcp(&["stop", "shop"]).expect_code(0, "stop");
    let st = agent.mcp(&["--json", "status", "shop"]).json();
    assert_eq!(component(&st, "api")["desired_state"], "stopped");
    assert_eq!(component(&st, "api")["state"], "exited");
    assert!(
        http_get(rest, "/version.txt", Duration::from_millis(300)).is_none(),
        "stopped service answers"
    );
    agent.mcp(&["start", "shop"]).expect_code(0, "start");
    assert!(http_get(rest, "/version.txt", WAIT).is_some());
    assert!(http_get(worker, "/version.txt", WAIT).is_some());
    let started = agent.inspect("shop-api", "{{.State.StartedAt}}").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    agent.mcp(&["restart", "shop"]).expect_code(0, "restart");
    assert_ne!(agent.inspect("shop-api", "{{.State.StartedAt}}").unwrap(), started);
    assert_eq!(
        host_port(&agent.mcp(&["--json", "status", "shop"]).json(), "api", "rest"),
        rest,
        "ports persist"
    );
    assert!(http_get(rest, "/version.txt", WAIT).is_some());

    // A container lost behind the agent's back is recreated by start.
    agent
        .podman(&["rm", "-f", "-t", "0", "shop-worker"])
        .expect_code(0, "rm");
    agent.mcp(&["start", "shop"]).expect_code(0, "start recreates");
    assert_eq!(http_get(worker, "/version.txt", WAIT).unwrap().trim(), "v2");

    // Events are recorded.
    let events = agent.mcp(&["--json", "status", "shop"]).json()["events"].clone();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["deployed", "redeployed", "deploy-failed", "stopped", "started"] {
        assert!(kinds.contains(&k), "event {k} in {kinds:?}");
    }

    // Undeploy: containers gone, ports released, registry empty.
    agent.mcp(&["undeploy", "shop"]).expect_code(0, "undeploy");
    assert!(agent.containers().is_empty(), "{:?}", agent.containers());
    let ps = agent.mcp(&["--json", "ps"]).json();
    assert_eq!(ps["containers"].as_array().unwrap().len(), 0);
    agent.mcp(&["status", "shop"]).expect_code(2, "status after undeploy");
}

#[test]
fn agent_restart_keeps_containers_and_registry() {
    let mut agent = TestAgent::start("restart");
    agent.define(
        "keep",
        &format!(
            "name = \"keep\"\n[[components]]\nname = \"keep\"\nimage = \"{}\"\n[[components.routes]]\nport = 80\n",
            web("v1")
        ),
    );
    agent.mcp(&["deploy", "keep"]).expect_code(0, "deploy");
    // A component named like its service gets the bare service name.
    assert_eq!(agent.containers(), ["keep"]);
    let before = agent.mcp(&["--json", "status", "keep"]).json();
    let port = host_port(&before, "keep", "");
    let id = agent.inspect("keep", "{{.Id}}").unwrap();

    agent.stop();
    assert_eq!(
        agent.inspect("keep", "{{.State.Status}}").unwrap(),
        "running",
        "SIGTERM leaves containers running"
    );
    assert!(http_get(port, "/version.txt", WAIT).is_some());
    assert!(agent.log().contains("containers keep running"));

    agent.run();
    let after = agent.mcp(&["--json", "status", "keep"]).json();
    assert_eq!(after["components"], before["components"]);
    assert_eq!(after["routes"], before["routes"]);
    assert_eq!(agent.inspect("keep", "{{.Id}}").unwrap(), id);
    let ps = agent.mcp(&["--json", "ps"]).json();
    let rows = ps["containers"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["state"], "running");
    assert_eq!(rows[0]["node"], "restart");

    // A crash (SIGKILL) likewise.
    agent.kill();
    assert_eq!(agent.inspect("keep", "{{.State.Status}}").unwrap(), "running");
    agent.run();
    agent.mcp(&["deploy", "keep"]).expect_code(0, "redeploy after crash");
    assert_eq!(agent.inspect("keep", "{{.Id}}").unwrap(), id, "no-op after crash");
}

#[test]
fn interrupted_replace_is_repaired_on_start() {
    let mut agent = TestAgent::start("repair");
    let def = |tag: &str| {
        format!(
            "name = \"fix\"\n[[components]]\nname = \"app\"\nimage = \"{}\"\n[[components.routes]]\nport = 80\n",
            web(tag)
        )
    };
    agent.define("fix", &def("v1"));
    agent.mcp(&["deploy", "fix"]).expect_code(0, "deploy");
    let port = host_port(&agent.mcp(&["--json", "status", "fix"]).json(), "app", "");
    // Simulate a crash in the middle of a replace: the old container was
    // renamed aside and stopped, the new one never got created.
    agent.kill();
    agent.podman(&["stop", "-t", "0", "fix-app"]).expect_code(0, "stop");
    agent
        .podman(&["rename", "fix-app", "fix-app-mcp-prev"])
        .expect_code(0, "rename");
    agent.run();
    assert_eq!(agent.containers(), ["fix-app"]);
    assert_eq!(http_get(port, "/version.txt", WAIT).unwrap().trim(), "v1");
    let events = agent.mcp(&["--json", "status", "fix"]).json()["events"].clone();
    assert!(
        events.as_array().unwrap().iter().any(|e| e["kind"] == "repaired"),
        "{events}"
    );
}

#[test]
fn logs_are_streamed() {
    let agent = TestAgent::start("logs");
    agent.define(
        "chatty",
        &format!(
            "name = \"chatty\"\n[[components]]\nname = \"a\"\nimage = \"{}\"\ncmd = [\"sh\", \"-c\", \"echo line-one; echo to-stderr >&2; exec /bin/mcp-web\"]\n[[components.routes]]\nport = 80\n[[components]]\nname = \"b\"\nimage = \"{REGISTRY}/mcp-test/sleeper:v1\"\n",
            web("v1"),
        ),
    );
    agent.mcp(&["deploy", "chatty"]).expect_code(0, "deploy");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = agent.mcp(&["logs", "chatty/a"]);
        r.expect_code(0, "logs");
        if r.stdout.contains("line-one") && r.stderr.contains("to-stderr") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs missing output: {} / {}",
            r.stdout,
            r.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // All components, prefixed.
    let r = agent.mcp(&["logs", "chatty"]);
    assert!(r.stdout.contains("a | line-one"), "{}", r.stdout);
    // Follow: the stream stays open and delivers output.
    let mut child = std::process::Command::new(mcp_tests::bin("mcp"))
        .args(["--direct", "--config"])
        .arg(agent.dir.join("mcp.toml"))
        .args(["logs", "-f", "chatty/a"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("line-one"), "{first}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "logs -f exited on its own");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn network_and_port_exhaustion() {
    // Two host ports only.
    let free = |n: u16| (n..n + 2).all(port_free);
    let base = (21000..59000).step_by(97).find(|b| free(*b)).unwrap();
    let mut agent = TestAgent::init("tight", (base, base + 1));
    agent.run();
    let net = format!("mcpnet-{}", std::process::id());
    agent.define(
        "three",
        &format!(
            "name = \"three\"\n[[components]]\nname = \"a\"\nimage = \"{w}\"\nnetwork = \"{net}\"\n[[components.routes]]\nname = \"x\"\nport = 1\n[[components.routes]]\nname = \"y\"\nport = 2\n[[components.routes]]\nname = \"z\"\nport = 3\n",
            w = web("v1")
        ),
    );
    let r = agent.mcp(&["deploy", "three"]);
    r.expect_code(1, "port exhaustion");
    assert!(
        r.stderr.contains(&format!("no free host port in {base}-{}", base + 1)),
        "{}",
        r.stderr
    );
    assert!(agent.containers().is_empty());
    assert_eq!(ps_count(&agent), 0);

    // Two routes fit, on a user-defined network created on demand.
    agent.define(
        "two",
        &format!(
            "name = \"two\"\n[[components]]\nname = \"a\"\nimage = \"{w}\"\nnetwork = \"{net}\"\n[[components.routes]]\nname = \"x\"\nport = 1\n[[components.routes]]\nname = \"y\"\nport = 2\n",
            w = web("v1")
        ),
    );
    agent.mcp(&["deploy", "two"]).expect_code(0, "deploy on network");
    let nets = agent
        .inspect("two-a", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}")
        .unwrap();
    assert!(nets.contains(&net), "{nets}");
    assert!(http_get(base, "/version.txt", WAIT).is_some());
    agent.mcp(&["undeploy", "two"]).expect_code(0, "undeploy");
    agent.podman(&["network", "rm", &net]);
}

fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()
}

#[test]
fn bad_input_through_the_cli_changes_nothing() {
    let agent = TestAgent::start("badcli");
    let good = format!(
        "name = \"svc\"\n[[components]]\nname = \"a\"\nimage = \"{}\"\n",
        web("v1")
    );
    let cases: Vec<(&str, String, i32, Vec<&str>)> = vec![
        ("invalid toml", "name = \n".into(), 2, vec!["svc.toml", "line 1"]),
        (
            "unknown field",
            format!("{good}colour = \"red\"\n"),
            2,
            vec!["svc.toml", "components[0].colour", "unknown field"],
        ),
        (
            "latest tag",
            good.replace(":v1", ":latest"),
            2,
            vec!["svc.toml", "components[a].image", "latest"],
        ),
        (
            "untagged",
            good.replace(":v1", ""),
            2,
            vec!["components[a].image", "no tag"],
        ),
        (
            "duplicate components",
            format!("{good}[[components]]\nname = \"a\"\nimage = \"{}\"\n", web("v1")),
            2,
            vec!["components[a].name", "duplicate component"],
        ),
        (
            "node and tier",
            good.replace("name = \"svc\"", "name = \"svc\"\nnode = \"badcli\"\ntier = \"core\""),
            2,
            vec!["node", "exclusive"],
        ),
        (
            "relative volume",
            format!("{good}volumes = [\"data:/data\"]\n"),
            2,
            vec!["volumes[0]", "absolute"],
        ),
        (
            "bad mode",
            format!("{good}[[components.routes]]\nport = 80\nmode = \"l5\"\n"),
            2,
            vec!["routes[0].mode", "l5"],
        ),
        (
            "bad hostname",
            format!("{good}[[components.routes]]\nport = 80\nhostname = \"x_y.example.net\"\n"),
            2,
            vec!["hostname"],
        ),
        (
            "unknown node",
            good.replace("name = \"svc\"", "name = \"svc\"\nnode = \"nowhere\""),
            2,
            vec!["unknown node \"nowhere\""],
        ),
        (
            "file/name mismatch",
            good.replace("name = \"svc\"", "name = \"other\""),
            2,
            vec!["does not match the file name"],
        ),
    ];
    for (what, toml, code, fragments) in cases {
        agent.define("svc", &toml);
        let r = agent.mcp(&["deploy", "svc"]);
        r.expect_code(code, what);
        for f in fragments {
            assert!(r.stderr.contains(f), "{what}: {f:?} not in {}", r.stderr);
        }
        assert!(agent.containers().is_empty(), "{what} created containers");
    }
    // Unknown --node, unknown service, component that does not exist.
    agent.define("svc", &good);
    agent
        .mcp(&["deploy", "svc", "--node", "ghost"])
        .expect_code(2, "unknown --node");
    agent.mcp(&["deploy", "nosuch"]).expect_code(2, "no definition");
    agent.mcp(&["deploy", "svc/zzz"]).expect_code(2, "unknown component");
    agent
        .mcp(&["stop", "svc"])
        .expect_code(2, "stop of an undeployed service");
    agent
        .mcp(&["undeploy", "svc"])
        .expect_code(2, "undeploy of an undeployed service");
    agent.mcp(&["frobnicate"]).expect_code(2, "unknown command");
    assert!(agent.containers().is_empty());
    assert_eq!(ps_count(&agent), 0);

    // `mcp validate` reports every problem at once.
    let dir = agent.dir.join("to-validate");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("svc.toml"),
        good.replace(":v1", ":latest").replace("name = \"a\"", "name = \"A\""),
    )
    .unwrap();
    std::fs::write(dir.join("ok.toml"), good.replace("name = \"svc\"", "name = \"ok\"")).unwrap();
    let r = agent.mcp(&["validate", dir.to_str().unwrap()]);
    r.expect_code(2, "validate");
    assert!(
        r.stderr.contains("components[0].name") && r.stderr.contains("image"),
        "{}",
        r.stderr
    );

    // An unreachable agent: clear error, exit 1.
    let cfg = std::fs::read_to_string(agent.dir.join("mcp.toml")).unwrap();
    let dead = cfg.replace(
        &format!("127.0.0.1:{}\"]", agent.port),
        &format!("127.0.0.1:{}\"]", mcp_tests::free_port()),
    );
    std::fs::write(agent.dir.join("dead.toml"), dead).unwrap();
    let out = std::process::Command::new(mcp_tests::bin("mcp"))
        .args(["--direct", "--config"])
        .arg(agent.dir.join("dead.toml"))
        .args(["deploy", "svc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn raw_spec(image: &str) -> proto::ServiceSpec {
    proto::ServiceSpec {
        name: "raw".into(),
        components: vec![proto::ComponentSpec {
            name: "a".into(),
            image: image.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_through_raw_grpc_changes_nothing() {
    let agent = TestAgent::start("badgrpc");
    let mut client = agent.client().await;
    let deploy = |spec: Option<proto::ServiceSpec>| proto::DeployRequest {
        service: spec,
        ..Default::default()
    };
    let mut pinned = raw_spec(&web("v1"));
    pinned.node = "elsewhere".into();
    let mut bad_route = raw_spec(&web("v1"));
    bad_route.components[0].routes.push(proto::RouteSpec {
        port: 70000,
        mode: "l9".into(),
        ..Default::default()
    });
    let mut dup = raw_spec(&web("v1"));
    dup.components.push(dup.components[0].clone());
    let cases: Vec<(&str, Option<proto::ServiceSpec>, tonic::Code, &str)> = vec![
        ("no service", None, tonic::Code::InvalidArgument, "no service"),
        (
            "latest",
            Some(raw_spec(&web("latest"))),
            tonic::Code::InvalidArgument,
            "components[a].image",
        ),
        (
            "pinned elsewhere",
            Some(pinned),
            tonic::Code::InvalidArgument,
            "pinned to node \"elsewhere\"",
        ),
        ("bad route", Some(bad_route), tonic::Code::InvalidArgument, "1..=65535"),
        (
            "duplicate component",
            Some(dup),
            tonic::Code::InvalidArgument,
            "duplicate component",
        ),
    ];
    for (what, spec, code, fragment) in cases {
        let e = client.deploy(deploy(spec)).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(e.message().contains(fragment), "{what}: {}", e.message());
    }
    let e = client
        .stop_service(proto::ServiceRequest {
            name: "ghost".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let listed = client
        .list_services(proto::ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.services.is_empty());
    assert!(agent.containers().is_empty());

    // Failed step: the error carries the per-step results.
    let e = client
        .deploy(deploy(Some(raw_spec(&web("missing-tag")))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    use prost::Message;
    let details = proto::OperationResponse::decode(e.details()).unwrap();
    let failed: Vec<_> = details
        .steps
        .iter()
        .filter(|s| !s.success)
        .map(|s| s.step.as_str())
        .collect();
    assert_eq!(failed, ["containers"]);
    assert!(
        client
            .list_services(proto::ListServicesRequest {})
            .await
            .unwrap()
            .into_inner()
            .services
            .is_empty()
    );

    // Identities: an agent certificate may not drive another agent; no
    // certificate at all is unauthenticated; a foreign CA is refused.
    let as_agent = agent.issue("agent/other");
    let mut c = agent.client_with(&as_agent).await.unwrap();
    let e = c.live_check(proto::LiveCheckRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let as_master = agent.issue("master");
    let mut c = agent.client_with(&as_master).await.unwrap();
    assert!(c.live_check(proto::LiveCheckRequest {}).await.unwrap().into_inner().ok);

    let other = TestAgent::init("foreign", (30000, 30001));
    let foreign = other.operator_tls();
    let mut mixed = foreign.clone();
    mixed.ca = agent.operator_tls().ca;
    // Server is trusted, but our client certificate comes from another CA.
    let refused = match agent.client_with(&mixed).await {
        Ok(mut c) => c.live_check(proto::LiveCheckRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client certificate from another CA was accepted");
    drop(other);
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_tls12_and_anonymous_clients_are_refused() {
    let agent = TestAgent::start("tlsonly");
    // Plain HTTP/2 (no TLS) gets nothing.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", agent.port))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    let refused = match plain.connect().await {
        Ok(ch) => proto::mcp_agent_service_client::McpAgentServiceClient::new(ch)
            .live_check(proto::LiveCheckRequest {})
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "plaintext gRPC answered");

    // TLS 1.2 only: the handshake fails.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &format!("127.0.0.1:{}", agent.port)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || text.contains("alert protocol version"),
        "TLS 1.2 accepted:\n{text}"
    );
    // TLS 1.3 works and negotiates h2.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_3",
            "-alpn",
            "h2",
            "-connect",
            &format!("127.0.0.1:{}", agent.port),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TLSv1.3") && text.contains("ALPN protocol: h2"), "{text}");

    // TLS 1.3 without a client certificate: Unauthenticated.
    let r = agent.mcp(&["node", "list"]);
    r.expect_code(0, "node list");
    let anonymous = {
        use std::sync::Arc;
        let files = agent.operator_tls();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls_roots(&files.ca))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    };
    let (ch, _) = mcp_infra::tls::connect(&[format!("127.0.0.1:{}", agent.port)], anonymous, Default::default())
        .await
        .unwrap();
    let e = proto::mcp_agent_service_client::McpAgentServiceClient::new(ch)
        .live_check(proto::LiveCheckRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
}

fn rustls_roots(ca: &std::path::Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in mcp_infra::tls::parse_certs(&std::fs::read(ca).unwrap()).unwrap() {
        roots.add(c).unwrap();
    }
    roots
}

#[test]
fn registry_and_keys_are_private() {
    let agent = TestAgent::start("modes");
    use std::os::unix::fs::PermissionsExt;
    for p in [
        "data/mcp.db",
        "data/ca/ca.key",
        "data/tls/agent.key",
        "operator/key.pem",
        "agent.toml",
    ] {
        let mode = std::fs::metadata(agent.dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{p}");
    }
    let db = rusqlite_journal_mode(&agent.dir.join("data/mcp.db"));
    assert_eq!(db, "wal");
    // A key readable by others is refused at start, with a clear message.
    let mut agent = agent;
    agent.stop();
    std::fs::set_permissions(
        agent.dir.join("data/tls/agent.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = mcp_tests::as_user(agent.user, &mcp_tests::bin("mcp-agent"))
        .args(["run", "--config"])
        .arg(agent.dir.join("agent.toml"))
        .output()
        .unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    r.expect_code(1, "open key");
    assert!(
        r.stderr.contains("agent.key is readable by group or others"),
        "{}",
        r.stderr
    );
}

fn rusqlite_journal_mode(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(path)
        .arg("PRAGMA journal_mode;")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
