//! Fault injection on real rootless podman: drift, flapping and alerts,
//! auto-repair, the boot sequence, `mcp agent recover` after `podman system
//! reset`, `mcp render` executed, adoption, and crashes at every deploy
//! step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_tests::{REGISTRY, TestAgent, as_user, env, http_get, port_range, test_user, user_dir, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn web(tag: &str) -> String {
    format!("{REGISTRY}/mcp-test/web:{tag}")
}

fn simple_def(name: &str, image: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
[[components]]
name = "{name}"
image = "{image}"
{extra}
[[components.routes]]
port = 8080
"#
    )
}

/// `mcp status --json` of a service.
fn status(agent: &TestAgent, service: &str) -> serde_json::Value {
    agent
        .mcp(&["--json", "status", service])
        .expect_code(0, "status")
        .json()
}

fn host_port(st: &serde_json::Value) -> u16 {
    st["routes"][0]["host_port"].as_u64().expect("host port") as u16
}

fn event_kinds(agent: &TestAgent, service: &str) -> Vec<String> {
    status(agent, service)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

fn event_time(agent: &TestAgent, service: &str, kind: &str) -> Option<i64> {
    status(agent, service)["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == kind)
        .map(|e| e["time_ms"].as_i64().unwrap())
}

/// A container's environment without HOSTNAME (its ID, new with every
/// container).
fn without_hostname(env: &str) -> String {
    env.lines()
        .filter(|l| !l.starts_with("HOSTNAME="))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn state(agent: &TestAgent, container: &str) -> String {
    agent
        .inspect(container, "{{.State.Status}}")
        .unwrap_or_else(|| "missing".into())
}

/// An alert command that appends each alert (JSON from stdin, plus the
/// MCP_EVENT_KIND variable) to a file the test reads.
fn alert_sink(agent: &TestAgent) -> PathBuf {
    let out = agent.dir.join("alerts.log");
    let script = agent.dir.join("alert.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread -r line\necho \"$MCP_EVENT_KIND $MCP_EVENT_SERVICE $line\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&out, "").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
    script
}

fn alerts(path: &Path, kind: &str, service: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("{kind} {service} ")))
        .map(str::to_string)
        .collect()
}

fn monitor(agent: &TestAgent, auto_repair: bool, alert: &Path) {
    let alert = alert.display().to_string();
    agent.configure(|c| {
        let mut m = toml::Table::new();
        m.insert("interval".into(), 1.into());
        m.insert("auto_repair".into(), auto_repair.into());
        m.insert("flap_restarts".into(), 3.into());
        m.insert("flap_window".into(), 120.into());
        m.insert("repair_backoff_max".into(), 4.into());
        m.insert("alert_command".into(), toml::Value::Array(vec![alert.into()]));
        c.insert("monitor".into(), m.into());
    });
}

#[test]
fn monitor_reports_drift_and_flapping_then_repairs() {
    let mut agent = TestAgent::init("mon", port_range());
    let sink = alert_sink(&agent);
    monitor(&agent, false, &sink);
    agent.run();
    let alerts_log = agent.dir.join("alerts.log");
    for name in ["gone", "flappy", "swapped"] {
        agent.define(name, &simple_def(name, &web("v1"), ""));
        agent.mcp(&["deploy", name]).expect_code(0, "deploy");
    }
    let gone_port = host_port(&status(&agent, "gone"));

    // Removed out of band: one drift event, one alert, however many passes.
    agent.podman(&["rm", "-f", "-t", "0", "gone"]).expect_code(0, "rm -f");
    wait_for("drift-missing alert", WAIT, || {
        !alerts(&alerts_log, "drift-missing", "gone").is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alerts(&alerts_log, "drift-missing", "gone").len(), 1);
    let line = &alerts(&alerts_log, "drift-missing", "gone")[0];
    let json: serde_json::Value = serde_json::from_str(line.splitn(3, ' ').nth(2).unwrap()).unwrap();
    assert_eq!(json["service"], "gone");
    assert_eq!(json["node"], "mon");
    assert!(json["message"].as_str().unwrap().contains("gone"), "{json}");
    assert_eq!(
        event_kinds(&agent, "gone")
            .iter()
            .filter(|k| *k == "drift-missing")
            .count(),
        1
    );
    assert_eq!(
        state(&agent, "gone"),
        "missing",
        "without auto_repair the monitor only reports"
    );

    // Its process crashes again and again: podman restarts it (restart
    // policy), the monitor counts restarts and alerts once.
    for i in 0..4 {
        wait_for("flappy running", WAIT, || state(&agent, "flappy") == "running");
        let before = agent.inspect("flappy", "{{.RestartCount}}").unwrap();
        let pid: i32 = agent.inspect("flappy", "{{.State.Pid}}").unwrap().parse().unwrap();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_for(&format!("flappy restarted ({i})"), WAIT, || {
            agent.inspect("flappy", "{{.RestartCount}}").unwrap() != before
        });
        std::thread::sleep(Duration::from_millis(1200));
    }
    wait_for("flapping alert", WAIT, || {
        !alerts(&alerts_log, "flapping", "flappy").is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        alerts(&alerts_log, "flapping", "flappy").len(),
        1,
        "one alert, not one per restart"
    );
    assert_eq!(
        event_kinds(&agent, "flappy")
            .iter()
            .filter(|k| *k == "flapping")
            .count(),
        1
    );

    // Image changed out of band.
    agent.podman(&["rm", "-f", "-t", "0", "swapped"]).expect_code(0, "rm");
    let port = host_port(&status(&agent, "swapped"));
    agent
        .podman(&[
            "run",
            "-d",
            "--name",
            "swapped",
            "--label",
            "mcp.service=swapped",
            "-p",
            &format!("{port}:{port}"),
            "-e",
            &format!("PORT={port}"),
            &web("v2"),
        ])
        .expect_code(0, "run v2 by hand");
    wait_for("drift-image alert", WAIT, || {
        !alerts(&alerts_log, "drift-image", "swapped").is_empty()
    });

    // Now with auto_repair: the agent restarts (its boot brings back what is
    // missing), then the monitor repairs what breaks later.
    agent.stop();
    monitor(&agent, true, &sink);
    agent.run();
    wait_for("gone back", WAIT, || state(&agent, "gone") == "running");
    assert_eq!(host_port(&status(&agent, "gone")), gone_port, "same host port");
    wait_for("swapped back on v1", WAIT, || {
        http_get(port, "/version.txt", Duration::from_secs(1)).is_some_and(|v| v.trim() == "v1")
    });
    agent
        .podman(&["rm", "-f", "-t", "0", "gone"])
        .expect_code(0, "rm -f again");
    wait_for("gone repaired by the monitor", WAIT, || {
        state(&agent, "gone") == "running"
    });
    wait_for("repaired event", WAIT, || {
        event_kinds(&agent, "gone").contains(&"repaired".to_string())
    });
    assert!(
        http_get(gone_port, "/version.txt", WAIT).is_some(),
        "serves again on its port"
    );
    // `podman kill` counts as a stop by the user for podman's restart
    // policy (the container stays exited): the monitor brings it back, each
    // time, with backoff, and the repeated restarts are one flapping alert.
    std::fs::write(&alerts_log, "").unwrap();
    for i in 0..4 {
        wait_for("flappy running", WAIT, || state(&agent, "flappy") == "running");
        let started = agent.inspect("flappy", "{{.State.StartedAt}}").unwrap();
        agent.podman(&["kill", "flappy"]).expect_code(0, "podman kill");
        wait_for(&format!("flappy repaired ({i})"), WAIT, || {
            state(&agent, "flappy") == "running" && agent.inspect("flappy", "{{.State.StartedAt}}").unwrap() != started
        });
        // Let a monitor pass see it in sync before the next kill.
        std::thread::sleep(Duration::from_millis(1500));
    }
    wait_for("flapping alert (kill)", WAIT, || {
        !alerts(&alerts_log, "flapping", "flappy").is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alerts(&alerts_log, "flapping", "flappy").len(), 1, "one flapping alert");
    assert!(
        alerts(&alerts_log, "drift-exited", "flappy").len() >= 4,
        "{}",
        std::fs::read_to_string(&alerts_log).unwrap()
    );
    assert!(
        event_kinds(&agent, "flappy")
            .iter()
            .filter(|k| *k == "repaired")
            .count()
            >= 4,
        "{:?}",
        event_kinds(&agent, "flappy")
    );
    // A stopped service is not "drifted": the monitor leaves it alone.
    agent.mcp(&["stop", "flappy"]).expect_code(0, "stop");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(state(&agent, "flappy"), "exited");
    let node = agent.mcp(&["--json", "node", "list"]).json();
    assert!(node["nodes"][0]["monitor_last_run"].as_i64().unwrap() > 0, "{node}");
    agent.stop();
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

#[test]
fn boot_sequence_waits_for_the_foundation() {
    let mut agent = TestAgent::init("boot", port_range());
    let sink = alert_sink(&agent);
    monitor(&agent, false, &sink);
    agent.run();
    let ready = agent.dir.join("volumes/ready");
    user_dir(agent.user, &ready);
    // The foundation is healthy only once /ready/ok.txt exists.
    let found = format!(
        r#"
name = "found"
[[components]]
name = "found"
image = "{}"
volumes = ["{}:/www/ready:ro"]
health = {{ kind = "http", path = "/ready/ok.txt" }}
[[components.routes]]
port = 8080
"#,
        web("v1"),
        ready.display()
    );
    agent.define("found", &found);
    agent.define("corea", &simple_def("corea", &web("v1"), ""));
    agent.define("later", &simple_def("later", &web("v1"), ""));
    for s in ["found", "corea", "later"] {
        agent.mcp(&["deploy", s]).expect_code(0, "deploy");
    }
    // A reboot: the agent goes down and podman's containers are gone.
    agent.stop();
    for s in ["found", "corea", "later"] {
        agent.podman(&["rm", "-f", "-t", "0", s]).expect_code(0, "rm");
    }
    agent.configure(|c| {
        let stage = |name: &str, svc: &str, timeout: &str| {
            let mut t = toml::Table::new();
            t.insert("name".into(), name.into());
            t.insert("services".into(), toml::Value::Array(vec![svc.into()]));
            t.insert("timeout".into(), timeout.into());
            toml::Value::Table(t)
        };
        let mut boot = toml::Table::new();
        boot.insert(
            "sequence".into(),
            toml::Value::Array(vec![stage("foundation", "found", "3s"), stage("core", "corea", "10s")]),
        );
        c.insert("boot".into(), boot.into());
    });
    agent.run();
    let alerts_log = agent.dir.join("alerts.log");
    wait_for("foundation retry alert", WAIT, || {
        !alerts(&alerts_log, "boot-blocked", "found").is_empty()
    });
    let node = agent.mcp(&["--json", "node", "list"]).json();
    let boot = &node["nodes"][0]["boot"];
    assert_eq!(boot[0]["stage"], "foundation", "{node}");
    assert!(
        ["retrying", "starting"].contains(&boot[0]["state"].as_str().unwrap()),
        "{node}"
    );
    assert_eq!(boot[1]["state"], "pending", "{node}");
    assert_eq!(state(&agent, "found"), "running", "the foundation is started");
    assert_eq!(
        state(&agent, "corea"),
        "missing",
        "later stages wait for the foundation"
    );
    assert_eq!(state(&agent, "later"), "missing");

    let healed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::fs::write(ready.join("ok.txt"), "ok\n").unwrap();
    wait_for("all stages up", Duration::from_secs(60), || {
        state(&agent, "corea") == "running" && state(&agent, "later") == "running"
    });
    let t_found = event_time(&agent, "found", "boot").expect("boot event of found");
    let t_core = event_time(&agent, "corea", "boot").expect("boot event of corea");
    let t_later = event_time(&agent, "later", "boot").expect("boot event of later");
    assert!(t_found < healed, "the foundation started first");
    assert!(healed <= t_core, "core waited for the foundation to be healthy");
    assert!(t_core <= t_later, "unstaged services come last");
    wait_for("boot status healthy", WAIT, || {
        let node = agent.mcp(&["--json", "node", "list"]).json();
        node["nodes"][0]["boot"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "healthy")
    });
    let log = agent.log();
    assert!(log.contains("foundation stage failed; retrying"), "{log}");
    agent.stop();
}

#[test]
fn recover_after_podman_system_reset() {
    // Its own podman user: `podman system reset` wipes everything it owns.
    let user = test_user("mcpreset", 8505);
    let mut agent = TestAgent::init_as(user, "phoenix", port_range());
    agent.run();
    let data = agent.dir.join("volumes/keep");
    user_dir(user, &data);
    std::fs::write(data.join("precious.txt"), "do not lose me\n").unwrap();
    let mut before = Vec::new();
    for i in 0..3 {
        let name = format!("svc{i}");
        let extra = format!(
            "env = [\"INDEX={i}\", \"GREETING=hello world\"]\nvolumes = [\"{}:/www/keep\"]",
            data.display()
        );
        agent.define(&name, &simple_def(&name, &web("v1"), &extra));
        agent.mcp(&["deploy", &name]).expect_code(0, "deploy");
        let port = host_port(&status(&agent, &name));
        let env = without_hostname(&http_get(port, "/env.txt", WAIT).expect("env served"));
        before.push((name, port, env));
    }
    // A stopped service stays stopped through recovery.
    agent.define("idle", &simple_def("idle", &web("v1"), ""));
    agent.mcp(&["deploy", "idle"]).expect_code(0, "deploy idle");
    agent.mcp(&["stop", "idle"]).expect_code(0, "stop idle");

    let reset = as_user(user, Path::new("/usr/bin/podman"))
        .args(["system", "reset", "--force"])
        .output()
        .unwrap();
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    let ps = as_user(user, Path::new("/usr/bin/podman"))
        .args(["ps", "-a", "-q"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "reset removed every container"
    );

    let r = agent.mcp(&["--json", "agent", "recover", "phoenix"]);
    r.expect_code(0, "agent recover");
    let j = r.json();
    assert_eq!(j["nodes"][0]["created"], 3, "{j}");
    assert!(
        agent.log().contains("restarting the podman API service"),
        "the stale API service was detected and restarted:\n{}",
        agent.log()
    );
    for (name, port, env) in &before {
        assert_eq!(host_port(&status(&agent, name)), *port, "{name} keeps its host port");
        let after = without_hostname(&http_get(*port, "/env.txt", WAIT).expect("served after recovery"));
        assert_eq!(&after, env, "{name} has the same environment");
        let kept = http_get(*port, "/keep/precious.txt", WAIT).expect("volume mounted");
        assert_eq!(kept, "do not lose me\n");
    }
    assert_eq!(
        state(&agent, "idle"),
        "missing",
        "stopped services are not started by recovery"
    );
    // Idempotent.
    let again = agent.mcp(&["--json", "agent", "recover", "phoenix"]);
    again.expect_code(0, "recover again");
    assert_eq!(again.json()["nodes"][0]["created"], 0, "{}", again.stdout);
    assert_eq!(again.json()["nodes"][0]["started"], 0, "{}", again.stdout);
    assert!(event_kinds(&agent, "svc0").contains(&"recover".to_string()));
    for i in 0..3 {
        agent.mcp(&["undeploy", &format!("svc{i}")]).expect_code(0, "undeploy");
    }
    agent.mcp(&["undeploy", "idle"]).expect_code(0, "undeploy");
    agent.stop();
}

/// An unclean shutdown in the middle of a stop (host or conmon killed while
/// podman waits for the container to exit) leaves the container "stopping"
/// in podman's database for good: podman neither starts nor stops it. The
/// agent's boot makes it again from the registry.
#[test]
fn a_container_wedged_in_stopping_is_recreated_at_boot() {
    let mut agent = TestAgent::start("wedge");
    // PID 1 of the container ignores SIGTERM, so a stop waits its full grace.
    let cmd = r#"cmd = ["sh", "-c", "trap '' TERM; exec httpd -f -p 0.0.0.0:$PORT -h /www"]"#;
    agent.define("wedged", &simple_def("wedged", &web("v1"), cmd));
    agent.mcp(&["deploy", "wedged"]).expect_code(0, "deploy");
    let port = host_port(&status(&agent, "wedged"));
    assert!(http_get(port, "/version.txt", WAIT).is_some(), "serves");
    let id_before = agent.inspect("wedged", "{{.Id}}").expect("container");

    agent.stop();
    let field = |f: &str| agent.inspect("wedged", f).expect("inspect");
    let (pid, conmon) = (field("{{.State.Pid}}"), field("{{.State.ConmonPid}}"));
    let mut stopper = as_user(agent.user, Path::new("/usr/bin/podman"))
        .args(["stop", "-t", "120", "wedged"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("podman stopping the container", WAIT, || {
        state(&agent, "wedged") == "stopping"
    });
    let _ = stopper.kill();
    let _ = stopper.wait();
    for p in [&conmon, &pid] {
        unsafe { libc::kill(p.parse().expect("pid"), libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        state(&agent, "wedged"),
        "stopping",
        "the precondition: a wedged container"
    );
    let refused = agent.podman(&["start", "wedged"]);
    assert_ne!(refused.code, 0, "podman itself cannot start it");

    agent.run();
    let deadline = std::time::Instant::now() + WAIT;
    let recreated = loop {
        let done = state(&agent, "wedged") == "running"
            && agent.inspect("wedged", "{{.Id}}").is_some_and(|id| id != id_before);
        if done || std::time::Instant::now() > deadline {
            break done;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        recreated,
        "the container recreated and running (state {}):\n{}",
        state(&agent, "wedged"),
        agent.log()
    );
    assert_eq!(host_port(&status(&agent, "wedged")), port, "same host port");
    assert!(http_get(port, "/version.txt", WAIT).is_some(), "serves again");
    assert!(
        agent.log().contains("recreating a container podman cannot start"),
        "{}",
        agent.log()
    );
    // Nothing left to do.
    let again = agent.mcp(&["--json", "agent", "recover", "wedge"]);
    again.expect_code(0, "recover");
    assert_eq!(again.json()["nodes"][0]["created"], 0, "{}", again.stdout);
    agent.mcp(&["undeploy", "wedged"]).expect_code(0, "undeploy");
    agent.stop();
}

#[test]
fn render_output_runs_and_adopt_takes_over() {
    let mut agent = TestAgent::start("rend");
    let data = agent.dir.join("volumes/r");
    user_dir(agent.user, &data);
    std::fs::write(data.join("f.txt"), "file\n").unwrap();
    let def = format!(
        r#"
name = "rendered"
[[components]]
name = "api"
image = "{}"
env = ["GREETING=it's a \"quoted\" $HOME world"]
volumes = ["{}:/www/data:ro"]
[[components.routes]]
port = 8080
[[components]]
name = "side"
image = "{}"
cmd = ["sh", "-c", "echo side > /www/side.txt; exec /bin/mcp-web"]
[[components.routes]]
port = 9090
"#,
        web("v1"),
        data.display(),
        web("v2")
    );
    agent.define("rendered", &def);
    agent.mcp(&["deploy", "rendered"]).expect_code(0, "deploy");
    let st = status(&agent, "rendered");
    let port = st["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["component"] == "api")
        .unwrap()["host_port"]
        .as_u64()
        .unwrap() as u16;
    let env_before = without_hostname(&http_get(port, "/env.txt", WAIT).unwrap());
    let script = agent
        .mcp(&["render", "rendered"])
        .expect_code(0, "render")
        .stdout
        .clone();
    assert!(script.contains("podman run -d --name rendered-api"), "{script}");
    // What podman records about the agent's container, to compare with the
    // one the rendered command creates: same network mode (podman's own
    // default, not the Docker API's bridge) and the same stop grace.
    let settings = |agent: &TestAgent| {
        agent
            .podman(&[
                "inspect",
                "--format",
                "{{.HostConfig.NetworkMode}} {{.Config.StopTimeout}}",
                "rendered-api",
            ])
            .expect_code(0, "inspect")
            .stdout
            .trim()
            .to_string()
    };
    let by_agent = settings(&agent);

    // The agent is gone and so are the containers: paste the commands.
    agent.stop();
    agent
        .podman(&["rm", "-f", "-t", "0", "rendered-api", "rendered-side"])
        .expect_code(0, "rm");
    let path = agent.dir.join("render.sh");
    std::fs::write(&path, format!("set -e\n{script}")).unwrap();
    let out = as_user(agent.user, Path::new("/bin/sh")).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "render output failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env_after = without_hostname(&http_get(port, "/env.txt", WAIT).expect("the rendered container serves"));
    assert_eq!(env_after, env_before, "same environment, quoting intact");
    assert_eq!(http_get(port, "/data/f.txt", WAIT).unwrap(), "file\n");
    assert_eq!(
        settings(&agent),
        by_agent,
        "agent and `podman run` create the same network and stop grace"
    );
    // The agent takes the rendered containers as its own: nothing to redo.
    agent.run();
    let r = agent.mcp(&["--json", "deploy", "rendered"]);
    r.expect_code(0, "redeploy");
    assert!(!r.json()["changed"].as_bool().unwrap_or(true), "{}", r.stdout);

    // Adopt: a container started by hand, following the naming.
    let lport = agent.ports.1 - 1;
    let _ = agent.podman(&["rm", "-f", "-t", "0", "legacy-web"]); // left by an earlier failed run
    agent
        .podman(&[
            "run",
            "-d",
            "--name",
            "legacy-web",
            "-p",
            &format!("{lport}:{lport}"),
            "-e",
            &format!("PORT={lport}"),
            &web("v1"),
        ])
        .expect_code(0, "run by hand");
    let id = agent.inspect("legacy-web", "{{.Id}}").unwrap();
    agent.mcp(&["adopt", "nothing-here"]).expect_code(2, "adopt of nothing");
    let r = agent.mcp(&["--json", "adopt", "legacy"]);
    r.expect_code(0, "adopt");
    assert_eq!(r.json()["adopted"][0], "legacy-web");
    assert_eq!(
        agent.inspect("legacy-web", "{{.Id}}").unwrap(),
        id,
        "adoption leaves it running untouched"
    );
    let st = status(&agent, "legacy");
    assert_eq!(st["components"][0]["name"], "web");
    assert_eq!(st["components"][0]["state"], "running");
    let rendered = agent
        .mcp(&["render", "legacy"])
        .expect_code(0, "render adopted")
        .stdout
        .clone();
    assert!(rendered.contains(&format!("-p 0.0.0.0:{lport}:{lport}")), "{rendered}");
    agent.mcp(&["adopt", "legacy"]).expect_code(2, "nothing left to adopt");
    agent.mcp(&["stop", "legacy"]).expect_code(0, "stop adopted");
    assert_eq!(state(&agent, "legacy-web"), "exited");
    agent.mcp(&["undeploy", "legacy"]).expect_code(0, "undeploy adopted");
    agent.mcp(&["undeploy", "rendered"]).expect_code(0, "undeploy");
    agent.stop();
}

#[test]
fn crash_at_every_deploy_step_is_repaired() {
    env();
    let mut agent = TestAgent::start("crash");
    let def = |step: &str| simple_def("crashy", &web("v1"), &format!("env = [\"STEP={step}\"]"));
    agent.define("crashy", &def("initial"));
    agent.mcp(&["deploy", "crashy"]).expect_code(0, "deploy");
    let port = host_port(&status(&agent, "crashy"));
    for step in [
        "ports",
        "certificates",
        "containers",
        "renamed",
        "routes",
        "dns",
        "registry",
    ] {
        agent.stop();
        agent.run_with_env(&[("MCP_AGENT_CRASH_AFTER", step)]);
        agent.define("crashy", &def(step));
        let r = agent.mcp(&["deploy", "crashy"]);
        assert_ne!(r.code, 0, "the agent died during the deploy ({step})");
        agent.kill(); // reap the aborted process
        agent.run();
        // Consistent: podman runs what the registry says (render shows the
        // registry's spec), nothing half-done is left behind.
        let script = agent.mcp(&["render", "crashy"]).expect_code(0, "render").stdout.clone();
        wait_for(&format!("crashy running after a crash at {step}"), WAIT, || {
            state(&agent, "crashy") == "running"
        });
        let served = http_get(port, "/env.txt", WAIT).expect("serves after the crash");
        let recorded_step = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("STEP="))
            .expect("STEP in render")
            .to_string();
        assert!(
            served.contains(&format!("STEP={recorded_step}\n")),
            "crash at {step}: registry says STEP={recorded_step}, container has:\n{served}"
        );
        assert!(
            agent.inspect("crashy-mcp-prev", "{{.Id}}").is_none(),
            "crash at {step}: the set-aside container is gone"
        );
        // A re-run completes.
        agent.mcp(&["deploy", "crashy"]).expect_code(0, "re-run deploy");
        let served = http_get(port, "/env.txt", WAIT).unwrap();
        assert!(served.contains(&format!("STEP={step}\n")), "{step}: {served}");
        assert_eq!(host_port(&status(&agent, "crashy")), port, "the host port survives");
    }
    agent.mcp(&["undeploy", "crashy"]).expect_code(0, "undeploy");
    agent.stop();
}
