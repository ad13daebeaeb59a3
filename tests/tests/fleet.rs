//! End-to-end tests of the master with three agents as real processes,
//! each its own rootless podman user (so truly separate nodes), over real
//! mutual TLS.

use std::time::Duration;

use mcp_tests::{REGISTRY, TestAgent, TestMaster, fleet_users, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn image(name: &str) -> String {
    format!("{REGISTRY}/mcp-test/{name}")
}

/// A one-component service; `extra` goes at the top level (tier, node).
fn service(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\n{extra}\n[[components]]\nname = \"app\"\nimage = \"{}\"\n[[components.routes]]\nport = 8080\n",
        image("web:v1")
    )
}

/// A master for node <tag>1 and agents <tag>1 (role master), <tag>2,
/// <tag>3 (workers). Tests use distinct tags: they share the podman users,
/// and an agent's containers are labelled with its node name.
struct Fleet {
    master: TestMaster,
    agents: Vec<TestAgent>,
    tag: &'static str,
}

impl Fleet {
    fn start(tag: &'static str) -> Fleet {
        let n = |i: usize| format!("{tag}{i}");
        let master = TestMaster::start(&n(1));
        let mut agents = vec![
            TestAgent::join(&master, fleet_users()[0], &n(1), "master"),
            TestAgent::join(&master, fleet_users()[1], &n(2), "worker"),
            TestAgent::join(&master, fleet_users()[2], &n(3), "worker"),
        ];
        for a in &mut agents {
            a.run();
        }
        for n in [n(1), n(2), n(3)] {
            wait_for(&format!("{n} healthy"), WAIT, || {
                master.node_status(&n).is_some_and(|s| s["status"] == "healthy")
            });
        }
        Fleet { master, agents, tag }
    }

    /// Node name `<tag><i>`.
    fn n(&self, i: usize) -> String {
        format!("{}{i}", self.tag)
    }

    fn agent(&mut self, name: &str) -> &mut TestAgent {
        self.agents.iter_mut().find(|a| a.name == name).unwrap()
    }

    /// Node of each service according to `mcp ps --json` (through the master).
    fn placed(&self) -> Vec<(String, String)> {
        let r = self.master.mcp(&["--json", "ps"]);
        let mut v: Vec<(String, String)> = r.json()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["service"].as_str().unwrap().to_string(),
                    c["node"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn node_of(&self, service: &str) -> Option<String> {
        self.placed().into_iter().find(|(s, _)| s == service).map(|(_, n)| n)
    }
}

#[test]
fn placement_health_and_master_crash_recovery() {
    let mut f = Fleet::start("p");
    let (n1, n2, n3) = (f.n(1), f.n(2), f.n(3));
    let m = &f.master;

    // `mcp node list` through the master: STATUS, ROLE, ARCH, VERSION, LAST SEEN.
    let list = m.mcp(&["node", "list"]);
    list.expect_code(0, "node list");
    let header: Vec<&str> = list
        .stdout
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for col in ["NAME", "STATUS", "ROLE", "ARCH", "VERSION", "LAST SEEN"] {
        assert!(header.contains(&col), "{col} missing in {header:?}");
    }
    assert_eq!(m.node_status(&n1).unwrap()["role"], "master");

    // Core tier → the master's node; worker tier → the worker with the
    // fewest containers (ties by name), never the master's node while a
    // worker fits; a pin wins.
    m.define("core1", &service("core1", "tier = \"core\""));
    m.define("w1", &service("w1", ""));
    m.define("w2", &service("w2", ""));
    m.define("pinned", &service("pinned", &format!("node = \"{n3}\"")));
    for s in ["core1", "w1", "w2", "pinned"] {
        let r = m.mcp(&["deploy", s]);
        r.expect_code(0, &format!("deploy {s}"));
    }
    assert_eq!(f.node_of("core1"), Some(n1.clone()));
    assert_eq!(f.node_of("w1"), Some(n2.clone()), "tie broken by name");
    assert_eq!(f.node_of("w2"), Some(n3.clone()), "fewest containers");
    assert_eq!(f.node_of("pinned"), Some(n3.clone()));
    let deploy_out = m.mcp(&["deploy", "w1"]);
    deploy_out.expect_code(0, "redeploy w1");
    assert!(
        deploy_out.stdout.contains(&format!("placement: {n2} (kept on {n2})")),
        "{}",
        deploy_out.stdout
    );

    // Bad placements are refused clearly, nothing recorded.
    m.define("ghost", &service("ghost", "node = \"nowhere\""));
    let r = m.mcp(&["deploy", "ghost"]);
    r.expect_code(2, "pin to an unknown node");
    assert!(
        r.stderr.contains("nowhere") && r.stderr.contains("not registered"),
        "{}",
        r.stderr
    );
    assert_eq!(m.sql("select count(*) from placements where service = 'ghost'"), "0");

    // A node going silent: probed, unhealthy, excluded from placement.
    f.agent(&n3).kill();
    let m = &f.master;
    wait_for("node 3 unhealthy", WAIT, || {
        m.node_status(&n3).is_some_and(|s| s["status"] == "unhealthy")
    });
    m.define("w3", &service("w3", ""));
    m.mcp(&["deploy", "w3"]).expect_code(0, "deploy w3 while n3 is down");
    assert_ne!(f.node_of("w3"), Some(n3.clone()));
    let m = &f.master;
    let r = m.mcp(&["deploy", "pinned"]);
    r.expect_code(1, "redeploy pinned to an unhealthy node");
    assert!(r.stderr.contains("unhealthy"), "{}", r.stderr);
    // `mcp ps` shows the unreachable node and does not hang.
    let t = std::time::Instant::now();
    let ps = m.mcp(&["ps"]);
    assert_eq!(ps.code, 1);
    assert!(
        ps.stdout.contains("unreachable") && ps.stdout.contains(&n3),
        "{}",
        ps.stdout
    );
    assert!(t.elapsed() < Duration::from_secs(10), "ps took {:?}", t.elapsed());
    // The next heartbeat heals it.
    f.agent(&n3).run();
    let m = &f.master;
    wait_for("node 3 healthy again", WAIT, || {
        m.node_status(&n3).is_some_and(|s| s["status"] == "healthy")
    });
    assert!(m.log().contains("node healthy again"), "heal logged");

    // kill -9 of the master in the middle of a deploy: the agent's podman
    // is frozen, so the agent is inside the deploy when the master dies.
    let node = f.node_of("w1").unwrap();
    let sock = f.agent(&node).dir.join("podman.sock");
    let out = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(format!("unix://{}", sock.display()))
        .output()
        .unwrap();
    let podman_pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("podman service pid");
    let m = &f.master;
    m.define("w1", &service("w1", "").replace("web:v1", "web:v2"));
    unsafe { libc::kill(podman_pid, libc::SIGSTOP) };
    let mut cli = std::process::Command::new(mcp_tests::bin("mcp"))
        .arg("--config")
        .arg(m.dir.join("mcp.toml"))
        .args(["deploy", "w1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("placement in flight", WAIT, || {
        m.sql("select state from placements where service = 'w1'") == "deploying"
    });
    let agent = f.agent(&node);
    wait_for("agent inside the deploy", WAIT, || {
        agent.log().contains("service=w1") && agent.log().contains("deploy")
    });
    f.master.kill();
    let _ = cli.kill();
    let _ = cli.wait();
    unsafe { libc::kill(podman_pid, libc::SIGCONT) };
    // The agent finishes the deploy on its own (it does not depend on the caller).
    let agent = f.agent(&node);
    wait_for("agent finished the deploy", WAIT, || {
        agent
            .inspect("w1-app", "{{.Config.Image}}")
            .is_some_and(|i| i.ends_with("web:v2"))
    });
    // Restart: reconciliation settles the placement and reports it.
    f.master.run();
    let m = &f.master;
    assert_eq!(m.sql("select state from placements where service = 'w1'"), "deployed");
    assert!(m.log().contains("w1: deploy"), "reconciliation report in the log");
    let st = m.mcp(&["--json", "status", "w1"]);
    st.expect_code(0, "status w1");
    assert!(st.stdout.contains("web:v2"), "{}", st.stdout);
    // A re-run of the deploy completes (and is a no-op on the agent).
    let r = m.mcp(&["--json", "deploy", "w1"]);
    r.expect_code(0, "re-run deploy");
    assert_eq!(r.json()["changed"], false);

    // --direct works while the master is down.
    f.master.kill();
    let a = f.agent(&n2);
    let direct = a.mcp(&["--json", "ps"]);
    direct.expect_code(0, "direct ps with the master down");
    f.master.run();
}

#[test]
fn sync_dry_run_changes_nothing_then_applies() {
    let f = Fleet::start("s");
    let m = &f.master;
    m.define("alpha", &service("alpha", ""));
    m.define("beta", &service("beta", ""));
    m.mcp(&["sync"]).expect_code(0, "first sync");
    assert_eq!(f.placed().len(), 2);

    // Change one, remove one, add one.
    m.define("alpha", &service("alpha", "").replace("web:v1", "web:v2"));
    m.forget("beta");
    m.define("gamma", &service("gamma", ""));
    let placements_before = m.sql("select service, node, state, definition from placements order by service");
    let containers_before: Vec<Vec<String>> = f
        .agents
        .iter()
        .map(|a| {
            let label = format!("label=mcp.node={}", a.name);
            let r = a.podman(&[
                "ps",
                "-a",
                "--filter",
                &label,
                "--format",
                "{{.Names}} {{.ID}} {{.Image}}",
            ]);
            let mut v: Vec<String> = r.stdout.lines().map(str::to_string).collect();
            v.sort();
            v
        })
        .collect();
    let plan = m.mcp(&["--json", "sync", "--dry-run"]);
    plan.expect_code(0, "dry run");
    let actions: Vec<(String, String)> = plan.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["service"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("alpha".to_string(), "redeploy".to_string()),
            ("beta".to_string(), "undeploy".to_string()),
            ("gamma".to_string(), "deploy".to_string())
        ]
    );
    let changed = &plan.json()["actions"][0]["changed"];
    assert_eq!(changed, &serde_json::json!(["components[app].image"]));
    // Nothing changed: not in the database, not in podman.
    assert_eq!(
        m.sql("select service, node, state, definition from placements order by service"),
        placements_before
    );
    let containers_after: Vec<Vec<String>> = f
        .agents
        .iter()
        .map(|a| {
            let label = format!("label=mcp.node={}", a.name);
            let r = a.podman(&[
                "ps",
                "-a",
                "--filter",
                &label,
                "--format",
                "{{.Names}} {{.ID}} {{.Image}}",
            ]);
            let mut v: Vec<String> = r.stdout.lines().map(str::to_string).collect();
            v.sort();
            v
        })
        .collect();
    assert_eq!(containers_after, containers_before);

    // Now apply it.
    m.mcp(&["sync"]).expect_code(0, "sync");
    let placed: Vec<String> = f.placed().into_iter().map(|(s, _)| s).collect();
    assert_eq!(placed, ["alpha", "gamma"]);
    let st = m.mcp(&["--json", "status", "alpha"]).json();
    assert!(st["components"][0]["image"].as_str().unwrap().ends_with("web:v2"));
    // An invalid definition makes sync refuse everything.
    m.define(
        "broken",
        "name = \"broken\"\n[[components]]\nname = \"x\"\nimage = \"busybox:latest\"\n",
    );
    let r = m.mcp(&["sync"]);
    r.expect_code(2, "sync with an invalid definition");
    assert!(
        r.stderr.contains("broken.toml") && r.stderr.contains("latest"),
        "{}",
        r.stderr
    );
    assert_eq!(f.placed().len(), 2);
}

#[test]
fn orphans_and_concurrent_deploys() {
    let mut f = Fleet::start("o");
    let n2name = f.n(2);
    // A service started behind the master's back (direct to node 2) is an orphan.
    let n2 = f.agent(&n2name);
    n2.define("stray", &service("stray", ""));
    n2.mcp(&["deploy", "stray"]).expect_code(0, "direct deploy");
    f.master.kill();
    f.master.run();
    let ps = f.master.mcp(&["ps"]);
    assert!(
        ps.stderr.contains("orphan") && ps.stderr.contains(&format!("{n2name}/stray")),
        "{}",
        ps.stderr
    );

    // Two concurrent deploys of the same service: serialized, both succeed,
    // one placement.
    let m = &f.master;
    m.define("twice", &service("twice", ""));
    let spawn = || {
        std::process::Command::new(mcp_tests::bin("mcp"))
            .arg("--config")
            .arg(m.dir.join("mcp.toml"))
            .args(["deploy", "twice"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(m.sql("select count(*) from placements where service = 'twice'"), "1");
    assert_eq!(f.placed().iter().filter(|(s, _)| s == "twice").count(), 1);

    // Render and recover through the master.
    let node = f.node_of("twice").unwrap();
    let script = f
        .master
        .mcp(&["render", "twice"])
        .expect_code(0, "render")
        .stdout
        .clone();
    assert!(script.contains("podman run -d --name twice-app"), "{script}");
    f.master
        .mcp(&["render", "nosuch"])
        .expect_code(2, "render of an unknown service");
    f.agent(&node)
        .podman(&["rm", "-f", "-t", "0", "twice-app"])
        .expect_code(0, "rm");
    let r = f.master.mcp(&["--json", "agent", "recover", &node]);
    r.expect_code(0, "recover through the master");
    assert_eq!(r.json()["nodes"][0]["created"], 1, "{}", r.stdout);
    assert!(f.agent(&node).inspect("twice-app", "{{.State.Running}}").as_deref() == Some("true"));
    f.master
        .mcp(&["agent", "recover", "nosuch"])
        .expect_code(2, "unknown node");

    // Undeploy through the master removes the containers and the placement.
    f.master.mcp(&["undeploy", "twice"]).expect_code(0, "undeploy");
    assert_eq!(
        f.master.sql("select count(*) from placements where service = 'twice'"),
        "0"
    );
    assert!(f.agent(&node).inspect("twice-app", "{{.Id}}").is_none());
}
