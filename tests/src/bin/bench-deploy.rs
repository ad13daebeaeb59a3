//! Benchmark (SPEC §13): `mcp --direct deploy` of an already-pulled image
//! against the equivalent raw `podman run -d` as the same user, interleaved,
//! and the agent's idle RSS. Run with `bench/run`.

use std::process::Command;
use std::time::{Duration, Instant};

use mcp_tests::{REGISTRY, TestAgent, as_user, free_port, http_get, median};

fn status_mib(pid: u32, field: &str) -> f64 {
    mcp_tests::proc_status_kib(pid, field) as f64 / 1024.0
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(15);
    let image = format!("{REGISTRY}/mcp-test/web:v1");
    let agent = TestAgent::start("bench");
    // Make sure the image is present: both sides measure an already-pulled image.
    agent.podman(&["pull", &image]).expect_code(0, "pull");
    let podman = std::path::Path::new("/usr/bin/podman");

    // Warm-up (not measured): first create on a fresh podman service is slow.
    agent.define(
        "warm",
        &format!(
            "name = \"warm\"\n[[components]]\nname = \"web\"\nimage = \"{image}\"\n[[components.routes]]\nport = 8080\n"
        ),
    );
    agent.mcp(&["deploy", "warm"]).expect_code(0, "warm-up deploy");
    agent.mcp(&["undeploy", "warm"]).expect_code(0, "warm-up undeploy");

    let mut mcp_ms = Vec::new();
    let mut raw_ms = Vec::new();
    let mut ratios = Vec::new();
    println!("round  mcp deploy (ms)  podman run -d (ms)  ratio");
    for i in 0..rounds {
        let svc = format!("bench{i}");
        agent.define(
            &svc,
            &format!(
                "name = \"{svc}\"\n[[components]]\nname = \"web\"\nimage = \"{image}\"\nenv = [\"MODE=bench\"]\n[[components.routes]]\nport = 8080\n"
            ),
        );
        let raw_name = format!("raw-bench{i}-{}", std::process::id());
        let port = free_port();
        // Alternate which goes first so neither side always runs on a warmer system.
        let run_mcp = || {
            let t = Instant::now();
            agent.mcp(&["deploy", &svc]).expect_code(0, "deploy");
            t.elapsed().as_secs_f64() * 1000.0
        };
        let run_raw = || {
            let t = Instant::now();
            let out = as_user(agent.user, podman)
                .args(["run", "-d", "--name", &raw_name, "--restart", "unless-stopped"])
                .args([
                    "-p",
                    &format!("0.0.0.0:{port}:{port}"),
                    "-e",
                    "MODE=bench",
                    "-e",
                    &format!("PORT={port}"),
                ])
                .args(["--label", "mcp.bench=raw", &image])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "podman run: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed().as_secs_f64() * 1000.0
        };
        let (m, r) = if i % 2 == 0 {
            let m = run_mcp();
            (m, run_raw())
        } else {
            let r = run_raw();
            (run_mcp(), r)
        };
        // Both must actually serve.
        assert!(
            http_get(port, "/version.txt", Duration::from_secs(10)).is_some(),
            "raw container serves"
        );
        println!("{i:>5}  {m:>15.1}  {r:>18.1}  {:>5.2}", m / r);
        mcp_ms.push(m);
        raw_ms.push(r);
        ratios.push(m / r);
        agent.mcp(&["undeploy", &svc]).expect_code(0, "undeploy");
        let _ = Command::new(podman);
        as_user(agent.user, podman)
            .args(["rm", "-f", "-t", "0", &raw_name])
            .output()
            .unwrap();
    }
    let (mm, rm, ratio) = (median(&mut mcp_ms), median(&mut raw_ms), median(&mut ratios));
    println!();
    println!("median mcp deploy     {mm:.1} ms");
    println!("median podman run -d  {rm:.1} ms");
    println!("median ratio          {ratio:.2}x (target <= 1.30x)");

    // Idle RSS: give the agent a moment with nothing to do.
    std::thread::sleep(Duration::from_secs(3));
    let pid = agent.pid().expect("agent running");
    println!(
        "agent idle RSS        {:.1} MiB (target <= 15 MiB)",
        status_mib(pid, "VmRSS")
    );
    // Where it sits: the agent's own code pages (file-backed) vs its heap.
    println!(
        "  of which            {:.1} MiB anonymous (heap, stacks), {:.1} MiB file-backed (code)",
        status_mib(pid, "RssAnon"),
        status_mib(pid, "RssFile")
    );
    let bin = mcp_tests::bin("mcp-agent");
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!(
        "agent binary          {:.1} MiB ({})",
        size as f64 / 1048576.0,
        bin.display()
    );
}
