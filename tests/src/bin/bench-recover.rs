//! Benchmark (issue 7): `mcp agent recover` of N containers that podman
//! lost, against running the equivalent raw `podman run -d` commands (the
//! ones `mcp render` prints) one after the other, same run, alternating
//! which goes first. Run with `bench/recover [N] [rounds]`.

use std::path::Path;
use std::time::{Duration, Instant};

use mcp_tests::{REGISTRY, TestAgent, as_user, http_get, median, port_range, test_user};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let image = format!("{REGISTRY}/mcp-test/web:v1");
    let user = test_user("mcpbench", 8507);
    let mut agent = TestAgent::init_as(user, "recov", port_range());
    agent.run();
    agent.podman(&["pull", &image]).expect_code(0, "pull");
    let podman = Path::new("/usr/bin/podman");
    let names: Vec<String> = (0..n).map(|i| format!("rec{i}")).collect();
    let mut ports = Vec::new();
    let mut commands = Vec::new();
    for name in &names {
        agent.define(
            name,
            &format!(
                "name = \"{name}\"\n[[components]]\nname = \"{name}\"\nimage = \"{image}\"\nenv = [\"MODE=bench\"]\n[[components.routes]]\nport = 8080\n"
            ),
        );
        agent.mcp(&["deploy", name]).expect_code(0, "deploy");
        let st = agent.mcp(&["--json", "status", name]).json();
        ports.push(st["routes"][0]["host_port"].as_u64().unwrap() as u16);
        let script = agent.mcp(&["render", name]).expect_code(0, "render").stdout.clone();
        commands.extend(
            script
                .lines()
                .filter(|l| l.starts_with("podman run"))
                .map(str::to_string),
        );
    }
    assert_eq!(commands.len(), n);
    let wipe = || {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend(names.iter().map(String::as_str));
        let out = as_user(user, podman).args(&args).output().unwrap();
        assert!(out.status.success(), "rm: {}", String::from_utf8_lossy(&out.stderr));
    };
    let all_serve = || {
        for p in &ports {
            assert!(
                http_get(*p, "/version.txt", Duration::from_secs(10)).is_some(),
                "port {p} serves"
            );
        }
    };
    let run_mcp = || {
        let t = Instant::now();
        let r = agent.mcp(&["--json", "agent", "recover", "recov"]);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        r.expect_code(0, "recover");
        assert_eq!(r.json()["nodes"][0]["created"].as_u64(), Some(n as u64), "{}", r.stdout);
        ms
    };
    let run_raw = || {
        let t = Instant::now();
        for c in &commands {
            let out = as_user(user, Path::new("/bin/sh")).args(["-c", c]).output().unwrap();
            assert!(out.status.success(), "{c}: {}", String::from_utf8_lossy(&out.stderr));
        }
        t.elapsed().as_secs_f64() * 1000.0
    };
    // Warm-up, not measured.
    wipe();
    run_raw();
    wipe();
    run_mcp();
    let (mut mcp_ms, mut raw_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    println!("N = {n} containers, {rounds} rounds");
    println!("round  mcp agent recover (ms)  {n} x podman run -d (ms)  ratio");
    for i in 0..rounds {
        let (m, r) = if i % 2 == 0 {
            wipe();
            let m = run_mcp();
            all_serve();
            wipe();
            let r = run_raw();
            all_serve();
            (m, r)
        } else {
            wipe();
            let r = run_raw();
            all_serve();
            wipe();
            let m = run_mcp();
            all_serve();
            (m, r)
        };
        println!("{i:>5}  {m:>22.1}  {r:>24.1}  {:>5.2}", m / r);
        mcp_ms.push(m);
        raw_ms.push(r);
        ratios.push(m / r);
    }
    println!();
    println!("median mcp agent recover  {:.1} ms", median(&mut mcp_ms));
    println!("median {n} x podman run -d  {:.1} ms", median(&mut raw_ms));
    println!(
        "median ratio              {:.2}x (target <= 1.20x)",
        median(&mut ratios)
    );
    for name in &names {
        agent.mcp(&["undeploy", name]).expect_code(0, "undeploy");
    }
    agent.stop();
}
