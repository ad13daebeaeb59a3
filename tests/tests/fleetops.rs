//! Fleet operations against real processes: `mcp agent upgrade` over a real
//! sshd on loopback (host-key checks, checksum, atomic swap, rollback,
//! unreachable nodes, interrupted uploads), `mcp agent status`, `mcp node
//! provision` against this host, the systemd units, and the arm64 agent
//! under qemu.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mcp_tests::sshd::{ClientKey, SshNode, TestSshd};
use mcp_tests::{REGISTRY, Run, TestAgent, bin, free_port, repo_root};
use sha2::{Digest, Sha256};

fn sha256(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn temp(prefix: &str) -> PathBuf {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A copy of the built agent whose embedded commit is changed (same
/// length, every occurrence): a different binary that really runs and
/// really reports another version — "version B" without a second build.
fn agent_b(a_path: &Path, dir: &Path) -> (PathBuf, String) {
    let a_v = a_version();
    let a = a_v.rsplit_once("(commit ").unwrap().1.trim_end_matches(')');
    let b: String = a.chars().map(|c| if c == 'b' { 'c' } else { 'b' }).collect();
    let mut bytes = std::fs::read(a_path).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(off) = bytes[i..].windows(a.len()).position(|w| w == a.as_bytes()) {
        let at = i + off;
        bytes[at..at + a.len()].copy_from_slice(b.as_bytes());
        n += 1;
        i = at + a.len();
    }
    assert!(n > 0, "commit {a} not found in mcp-agent");
    let p = dir.join("amd64/mcp-agent");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v = Command::new(&p).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(v.contains(&format!("(commit {b})")), "patched agent reports {v}");
    (p, format!("{} (commit {b})", mcp_infra::VERSION))
}

/// The built agent without debug info (31 MB instead of ~200 MB): the same
/// program, so uploads and checksums in the tests stay quick.
fn agent_a(dir: &Path) -> PathBuf {
    let p = dir.join("mcp-agent-a");
    std::fs::copy(bin("mcp-agent"), &p).unwrap();
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg(&p)
        .status()
        .expect("strip (binutils)");
    assert!(ok.success());
    p
}

/// A "release" whose agent passes `--version` but cannot start.
fn agent_broken(dir: &Path) -> PathBuf {
    let p = dir.join("amd64/mcp-agent");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(
        &p,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'mcp-agent 9.9.9 (commit c0ffeec0ffee)'; exit 0; fi\n\
         echo 'mcp-agent: broken build, cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// "<version> (commit <c>)" as the built agent reports it (not this test's
/// own build: a commit between the two builds must not matter).
fn a_version() -> String {
    let out = Command::new(bin("mcp-agent")).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    v.strip_prefix("mcp-agent ")
        .unwrap_or_else(|| panic!("{v}"))
        .to_string()
}

/// A CLI configuration for upgrade tests.
struct Cli {
    dir: PathBuf,
    config: PathBuf,
    known_hosts: PathBuf,
}

/// One `[[nodes]]` entry.
struct NodeEntry {
    name: String,
    address: String,
    ssh_user: String,
    ssh_port: u16,
    install_dir: PathBuf,
    restart: String,
}

impl NodeEntry {
    fn of(node: &SshNode, sshd: &TestSshd) -> NodeEntry {
        NodeEntry {
            name: node.agent.name.clone(),
            address: format!("127.0.0.1:{}", node.agent.port),
            ssh_user: node.agent.user.name.to_string(),
            ssh_port: sshd.port,
            install_dir: node.agent.dir.clone(),
            restart: node.restart_command(),
        }
    }
}

impl Cli {
    /// Config with the operator credentials in `auth_dir` and `nodes`.
    fn new(auth_dir: &Path, key: &ClientKey, dir: &Path, nodes: &[NodeEntry]) -> Cli {
        let known_hosts = dir.join("known_hosts");
        let mut s = format!(
            "[auth]\ncert = \"{a}/cert.pem\"\nkey = \"{a}/key.pem\"\nca = \"{a}/ca.pem\"\n\
             [ssh]\nknown_hosts = \"{kh}\"\nidentity = \"{id}\"\nconnect_timeout = 5\n\
             [upgrade]\nwait = 20\n",
            a = auth_dir.display(),
            kh = known_hosts.display(),
            id = key.private.display(),
        );
        for n in nodes {
            s += &format!(
                "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh = \"{}@127.0.0.1\"\nssh_port = {}\narch = \"amd64\"\n\
                 install_dir = \"{}\"\nrestart = \"{}\"\n",
                n.name,
                n.address,
                n.ssh_user,
                n.ssh_port,
                n.install_dir.display(),
                n.restart
            );
        }
        let config = dir.join("mcp.toml");
        std::fs::write(&config, s).unwrap();
        Cli {
            dir: dir.to_path_buf(),
            config,
            known_hosts,
        }
    }

    fn mcp(&self, args: &[&str]) -> Run {
        let out = Command::new(bin("mcp"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("MCP_CONFIG")
            .output()
            .unwrap();
        run_of(out)
    }
}

fn run_of(o: std::process::Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn node_json<'a>(r: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .unwrap_or_else(|| panic!("no {node} in {r}"))
}

/// (container id, started at) of `container`.
fn container_identity(agent: &TestAgent, container: &str) -> (String, String) {
    let id = agent.inspect(container, "{{.Id}}").expect("container exists");
    let started = agent.inspect(container, "{{.State.StartedAt}}").unwrap();
    let running = agent.inspect(container, "{{.State.Running}}").unwrap();
    assert_eq!(running, "true", "{container} is not running");
    (id, started)
}

fn agent_reports(cli: &Cli, node: &str) -> String {
    let r = cli.mcp(&["--json", "agent", "status", node]);
    let j = r.json();
    let n = node_json(&j, node);
    format!(
        "{} (commit {})",
        n["version"].as_str().unwrap_or("-"),
        n["commit"].as_str().unwrap_or("-")
    )
}

#[test]
fn upgrade_over_ssh_checks_host_keys_survives_interruption_and_rolls_back() {
    let work = temp("mcp-upgrade-");
    let key = ClientKey::new(&work);
    let a_path = agent_a(&work);
    let node = SshNode::start("up1", &a_path);
    let sshd = TestSshd::start(&key, &[node.agent.user.name]);
    // A node whose SSH port nothing listens on.
    let ghost = NodeEntry {
        name: "ghost".into(),
        address: format!("127.0.0.1:{}", free_port()),
        ssh_user: node.agent.user.name.into(),
        ssh_port: free_port(),
        install_dir: "/nonexistent".into(),
        restart: "true".into(),
    };
    let cli = Cli::new(
        &node.agent.dir.join("operator"),
        &key,
        &work,
        &[NodeEntry::of(&node, &sshd), ghost],
    );
    let cur = node.agent.dir.join("mcp-agent");
    let sha_a = sha256(&cur);
    let (b_path, b_version) = agent_b(&a_path, &work.join("dist-b"));
    let dist_b = work.join("dist-b");

    // A running container, which must survive every upgrade and rollback.
    node.agent.define(
        "keep",
        &format!("name = \"keep\"\n[[components]]\nname = \"keep\"\nimage = \"{REGISTRY}/mcp-test/sleeper:v1\"\n"),
    );
    node.agent.mcp(&["deploy", "keep"]).expect_code(0, "deploy keep");
    let before = container_identity(&node.agent, "keep");
    assert_eq!(agent_reports(&cli, "up1"), a_version());

    // 1. Unknown host key: refused, naming the node; nothing recorded, nothing uploaded.
    let r = cli.mcp(&["agent", "upgrade", "up1", "--dist", dist_b.to_str().unwrap()]);
    r.expect_code(1, "upgrade with an unknown host key");
    assert!(r.stderr.contains("up1: FAILED at connect"), "{}", r.stderr);
    assert!(
        r.stderr.contains("is not in") && r.stderr.contains("--accept-new-host-key"),
        "{}",
        r.stderr
    );
    assert!(!cli.known_hosts.exists(), "known_hosts was written");
    assert!(!node.agent.dir.join("mcp-agent.new").exists());

    // 2. Interrupted upload (the CLI is killed mid-transfer): the old binary
    //    stays in place and keeps running.
    let mut child = Command::new(bin("mcp"))
        .arg("--config")
        .arg(&cli.config)
        .args([
            "agent",
            "upgrade",
            "up1",
            "--accept-new-host-key",
            "--dist",
            dist_b.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work.join("interrupted.log")).unwrap())
        .spawn()
        .unwrap();
    let partial = node.agent.dir.join("mcp-agent.new");
    let full = std::fs::metadata(&b_path).unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if size > 0 {
            child.kill().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "upload never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "upgrade finished before it could be interrupted:\n{}",
            std::fs::read_to_string(work.join("interrupted.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(size < full, "upload completed ({size} of {full} bytes) before the kill");
    assert_eq!(sha256(&cur), sha_a, "interrupted upload touched mcp-agent");
    assert!(!node.agent.dir.join("mcp-agent.prev").exists());
    assert_eq!(agent_reports(&cli, "up1"), a_version());
    // First contact was accepted and recorded.
    let kh = std::fs::read_to_string(&cli.known_hosts).unwrap();
    assert_eq!(kh.trim(), sshd.known_hosts_line().trim(), "known_hosts: {kh}");

    // 3. All nodes: up1 goes A → B while the unreachable ghost is reported.
    let r = cli.mcp(&["--json", "agent", "upgrade", "--dist", dist_b.to_str().unwrap()]);
    r.expect_code(1, "upgrade with an unreachable node");
    let j = r.json();
    let up1 = node_json(&j, "up1");
    assert_eq!(up1["result"], "upgraded", "{j}\n{}", r.stderr);
    assert_eq!(up1["from"], a_version());
    assert_eq!(up1["to"], b_version);
    let g = node_json(&j, "ghost");
    assert_eq!(g["result"], "failed", "{j}");
    assert_eq!(g["stage"], "connect", "{j}");
    assert!(r.stderr.contains("ghost: FAILED at connect"), "{}", r.stderr);
    assert_eq!(sha256(&cur), sha256(&b_path));
    assert_eq!(sha256(&node.agent.dir.join("mcp-agent.prev")), sha_a);
    assert!(!partial.exists(), "mcp-agent.new left behind");
    assert_eq!(agent_reports(&cli, "up1"), b_version);
    assert_eq!(
        container_identity(&node.agent, "keep"),
        before,
        "container restarted by the upgrade"
    );

    // 4. `mcp agent status`: version, arch, uptime; the ghost is unreachable.
    let r = cli.mcp(&["agent", "status"]);
    r.expect_code(1, "status with an unreachable node");
    assert!(r.stdout.contains("NODE") && r.stdout.contains("UPTIME"), "{}", r.stdout);
    let line = r.stdout.lines().find(|l| l.starts_with("up1")).unwrap();
    assert!(
        line.contains(&b_version.split(' ').next().unwrap().to_string()) && line.contains("amd64"),
        "{line}"
    );

    // 5. A release that cannot start: rolled back to B, reported failed.
    let dist_c = work.join("dist-c");
    agent_broken(&dist_c);
    let t0 = Instant::now();
    let r = cli.mcp(&[
        "agent",
        "upgrade",
        "up1",
        "--wait",
        "5",
        "--dist",
        dist_c.to_str().unwrap(),
    ]);
    r.expect_code(1, "upgrade to a broken release");
    assert!(
        r.stdout.contains("FAILED (wait), rolled back"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("rolled back"), "{}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert_eq!(sha256(&cur), sha256(&b_path), "the previous binary is not back");
    assert_eq!(agent_reports(&cli, "up1"), b_version);
    assert_eq!(
        container_identity(&node.agent, "keep"),
        before,
        "container restarted by the rollback"
    );

    // 6. Same release again: nothing to do.
    let r = cli.mcp(&["--json", "agent", "upgrade", "up1", "--dist", dist_b.to_str().unwrap()]);
    r.expect_code(0, "repeated upgrade");
    assert_eq!(node_json(&r.json(), "up1")["result"], "unchanged", "{}", r.stdout);

    // 7. Back to A, so the version skew flag can be seen with two nodes.
    let dist_a = work.join("dist-a");
    std::fs::create_dir_all(dist_a.join("amd64")).unwrap();
    std::fs::copy(&a_path, dist_a.join("amd64/mcp-agent")).unwrap();
    let r = cli.mcp(&["agent", "upgrade", "up1", "--dist", dist_a.to_str().unwrap()]);
    r.expect_code(0, "upgrade back to A");
    assert_eq!(agent_reports(&cli, "up1"), a_version());
    assert_eq!(container_identity(&node.agent, "keep"), before);
    drop(sshd);
    let _ = std::fs::remove_dir_all(&cli.dir);
}

#[test]
fn changed_host_key_is_refused_even_with_accept_new() {
    let work = temp("mcp-hostkey-");
    let key = ClientKey::new(&work);
    let sshd = TestSshd::start(&key, &["root"]);
    let dist = work.join("dist");
    std::fs::create_dir_all(dist.join("amd64")).unwrap();
    // Never uploaded: the connection is refused first.
    std::fs::write(
        dist.join("amd64/mcp-agent"),
        "#!/bin/sh\necho 'mcp-agent 9.9.9 (commit 000000000000)'\n",
    )
    .unwrap();
    let install = temp("mcp-hostkey-install-");
    std::fs::write(install.join("mcp-agent"), "old").unwrap();
    let entry = NodeEntry {
        name: "victim".into(),
        address: format!("127.0.0.1:{}", free_port()),
        ssh_user: "root".into(),
        ssh_port: sshd.port,
        install_dir: install.clone(),
        restart: "true".into(),
    };
    let cli = Cli::new(&work, &key, &work, &[entry]);
    // known_hosts holds another key for this host:port.
    let other = mcp_tests::sshd::keygen(&work.join("other_host_key"));
    let mut p = other.split_whitespace();
    let line = format!(
        "[127.0.0.1]:{} {} {}\n",
        sshd.port,
        p.next().unwrap(),
        p.next().unwrap()
    );
    std::fs::write(&cli.known_hosts, &line).unwrap();
    for extra in [&[][..], &["--accept-new-host-key"][..]] {
        let mut args = vec!["agent", "upgrade", "--dist", dist.to_str().unwrap()];
        args.extend_from_slice(extra);
        let r = cli.mcp(&args);
        r.expect_code(1, "upgrade with a changed host key");
        assert!(
            r.stderr.contains("victim") && r.stderr.contains("HOST KEY CHANGED"),
            "{}",
            r.stderr
        );
        assert!(r.stdout.contains("FAILED (connect), unchanged"), "{}", r.stdout);
    }
    assert_eq!(
        std::fs::read_to_string(&cli.known_hosts).unwrap(),
        line,
        "known_hosts changed"
    );
    assert_eq!(std::fs::read_to_string(install.join("mcp-agent")).unwrap(), "old");
    assert!(!install.join("mcp-agent.new").exists());
    // Nothing in sshd's log past the key exchange: no authentication.
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    // Config errors are usage errors (exit 2) naming the node.
    let bad = work.join("bad.toml");
    std::fs::write(
        &bad,
        "[[nodes]]\nname = \"n\"\naddress = \"a:1\"\ninstall_dir = \"relative\"\n",
    )
    .unwrap();
    let out = run_of(
        Command::new(bin("mcp"))
            .args(["--config", bad.to_str().unwrap(), "agent", "upgrade"])
            .output()
            .unwrap(),
    );
    out.expect_code(2, "relative install_dir");
    assert!(out.stderr.contains("nodes[0].install_dir"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&install);
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    // verify checks that ExecStart's binary exists and that every unit it
    // references resolves; give it a root with the units installed, the
    // binaries in their production places and this host's system units.
    let root = temp("mcp-units-");
    for (dir, b) in [("srv/mcp", "mcp-agent"), ("srv/mcp-master", "mcp-master")] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::copy(bin(b), root.join(dir).join(b)).unwrap();
    }
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for u in ["mcp-agent.service", "mcp-master.service"] {
        std::fs::copy(repo_root().join("systemd").join(u), units.join(u)).unwrap();
    }
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(root.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(cp.success());
    let verify = |unit: &str| {
        run_of(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(format!("--root={}", root.display()))
                .arg(unit)
                .output()
                .expect("systemd-analyze is installed"),
        )
    };
    for u in ["mcp-agent.service", "mcp-master.service"] {
        let r = verify(u);
        r.expect_code(0, &format!("systemd-analyze verify {u}"));
        assert!(!r.stderr.contains(u), "warnings about {u}:\n{}", r.stderr);
    }
    // The check can fail: without its binary the agent unit is refused.
    std::fs::remove_file(root.join("srv/mcp/mcp-agent")).unwrap();
    let r = verify("mcp-agent.service");
    assert_ne!(r.code, 0, "verify passed without /srv/mcp/mcp-agent");
    assert!(r.stderr.contains("/srv/mcp/mcp-agent"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&root);
}

/// The arm64 agent: `dist/arm64/mcp-agent` (from `dev/release`) when
/// present, else a debug build of the agent alone for
/// aarch64-unknown-linux-musl with cargo-zigbuild.
fn arm64_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("MCP_ARM64_AGENT") {
        return PathBuf::from(p);
    }
    let dist = repo_root().join("dist/arm64/mcp-agent");
    if dist.exists() {
        return dist;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let out = Command::new("cargo")
        .current_dir(repo_root())
        .args(["zigbuild", "--locked", "-p", "mcp-agent", "--bin", "mcp-agent"])
        .args(["--target", "aarch64-unknown-linux-musl"])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo is installed");
    let r = run_of(out);
    r.expect_code(
        0,
        "cargo zigbuild for aarch64 (dev/lib/install-deps.sh installs cargo-zigbuild and ziglang)",
    );
    target.join("aarch64-unknown-linux-musl/debug/mcp-agent")
}

#[test]
fn arm64_agent_reports_its_version_under_qemu() {
    let agent = arm64_agent();
    let file = run_of(Command::new("file").arg("-b").arg(&agent).output().unwrap());
    assert!(
        file.stdout.contains("ARM aarch64"),
        "{}: {}",
        agent.display(),
        file.stdout
    );
    assert!(
        file.stdout.contains("statically linked") || file.stdout.contains("static-pie"),
        "{}",
        file.stdout
    );
    let r = run_of(
        Command::new("qemu-aarch64-static")
            .arg(&agent)
            .arg("--version")
            .output()
            .expect("qemu-aarch64-static is installed"),
    );
    r.expect_code(0, "arm64 mcp-agent --version under qemu");
    let v = r.stdout.trim();
    let rest = v.strip_prefix("mcp-agent ").unwrap_or_else(|| panic!("{v}"));
    let (version, commit) = rest.split_once(" (commit ").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(version, mcp_infra::VERSION, "{v}");
    let commit = commit.trim_end_matches(')');
    assert!(
        commit.len() >= 7 && commit.trim_end_matches("-dirty").chars().all(|c| c.is_ascii_hexdigit()),
        "{v}"
    );
}

fn remove_user(name: &str) {
    let _ = Command::new("userdel").args(["-r", name]).output();
    let _ = std::fs::remove_file(format!("/var/lib/systemd/linger/{name}"));
}

fn uid_of(name: &str) -> Option<String> {
    let o = Command::new("id").args(["-u", name]).output().unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// `mcp node provision` against this host (as root over the loopback sshd)
/// with a throwaway user, install dir, unit dir and resolver file.
#[test]
fn provision_is_idempotent_and_never_renumbers() {
    let work = temp("mcp-provision-");
    let key = ClientKey::new(&work);
    let sshd = TestSshd::start(&key, &["root"]);
    let user = mcp_tests::test_user("mcpprov", 8599);
    remove_user(user.name);
    let master = mcp_tests::TestMaster::start("provmaster");
    let dist = work.join("dist");
    std::fs::create_dir_all(dist.join("amd64")).unwrap();
    let agent = agent_a(&work);
    std::fs::copy(&agent, dist.join("amd64/mcp-agent")).unwrap();
    let resolv = work.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.99.0.53\n").unwrap();
    let install = work.join("srv-mcp");
    let units = work.join("units");
    let op = master.dir.join("operator");
    let config = |name: &str, uid: u32| {
        let p = work.join(format!("mcp-{name}-{uid}.toml"));
        std::fs::write(
            &p,
            format!(
                "[master]\naddress = \"{m}\"\n[auth]\ncert = \"{o}/cert.pem\"\nkey = \"{o}/key.pem\"\nca = \"{o}/ca.pem\"\n\
                 [ssh]\nknown_hosts = \"{w}/known_hosts\"\nidentity = \"{id}\"\n\
                 [upgrade]\ndist = \"{dist}\"\n\
                 [provision]\nuser = \"{name}\"\nuid = {uid}\npackages = [\"podman\", \"uidmap\"]\nunit_dir = \"{units}\"\n\
                 resolv_conf = \"{resolv}\"\nfallback_dns = [\"192.0.2.53\", \"10.99.0.53\"]\n\
                 [[nodes]]\nname = \"prov1\"\naddress = \"127.0.0.1:{port}\"\nssh = \"root@127.0.0.1\"\nssh_port = {sp}\n\
                 arch = \"amd64\"\ninstall_dir = \"{install}\"\n",
                m = master.address(),
                o = op.display(),
                w = work.display(),
                id = key.private.display(),
                dist = dist.display(),
                units = units.display(),
                resolv = resolv.display(),
                port = free_port(),
                sp = sshd.port,
                install = install.display(),
            ),
        )
        .unwrap();
        p
    };
    // Under the lock the test harness takes while it edits /etc/subuid.
    let provision = |cfg: &Path, extra: &[&str]| {
        run_of(
            Command::new("flock")
                .arg("/run/.mcp-test-env.lock")
                .arg(bin("mcp"))
                .arg("--config")
                .arg(cfg)
                .args(["--json", "node", "provision", "prov1"])
                .args(extra)
                .env_remove("MCP_CONFIG")
                .output()
                .unwrap(),
        )
    };
    let results = |r: &Run| -> Vec<(String, String)> {
        r.json()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap().to_string(),
                    s["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let good = config(user.name, user.uid);

    // First run: everything is set up.
    let r = provision(&good, &["--accept-new-host-key"]);
    r.expect_code(0, "first provision");
    let first = results(&r);
    let get = |v: &[(String, String)], step: &str| v.iter().find(|(s, _)| s == step).map(|(_, r)| r.clone());
    for step in [
        "user",
        "linger",
        "directory",
        "binary",
        "config",
        "unit",
        "dns-fallback",
    ] {
        assert_eq!(
            get(&first, step).as_deref(),
            Some("changed"),
            "{step}: {first:?}\n{}",
            r.stderr
        );
    }
    // No systemd as PID 1 here: the unit is installed, the start reported.
    assert_eq!(get(&first, "start").as_deref(), Some("skipped"), "{first:?}");
    assert!(r.stderr.contains("systemd is not running"), "{}", r.stderr);
    assert_eq!(uid_of(user.name).as_deref(), Some(user.uid.to_string().as_str()));
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap();
    assert!(
        subuid.lines().any(|l| l.starts_with(&format!("{}:", user.name))),
        "{subuid}"
    );
    assert!(Path::new(&format!("/var/lib/systemd/linger/{}", user.name)).exists());
    let stat = run_of(
        Command::new("stat")
            .args(["-c", "%U:%a"])
            .arg(&install)
            .output()
            .unwrap(),
    );
    // 0750 from provisioning, 0700 once `mcp-agent join` made it its data dir.
    assert!(
        [format!("{}:750", user.name), format!("{}:700", user.name)].contains(&stat.stdout.trim().to_string()),
        "{}",
        stat.stdout
    );
    assert_eq!(sha256(&install.join("mcp-agent")), sha256(&agent));
    let conf = install.join("mcp-agent.toml");
    let conf_text = std::fs::read_to_string(&conf).unwrap();
    assert!(conf_text.contains(&master.address()), "{conf_text}");
    assert!(
        install.join("tls/agent.key").exists() || conf_text.contains("key"),
        "{conf_text}"
    );
    let unit = std::fs::read_to_string(units.join("mcp-agent.service")).unwrap();
    assert!(unit.contains(&format!("User={}\n", user.name)), "{unit}");
    assert!(
        unit.contains(&format!("ExecStart={}/mcp-agent run", install.display())),
        "{unit}"
    );
    let rc = std::fs::read_to_string(&resolv).unwrap();
    assert_eq!(rc, "nameserver 10.99.0.53\nnameserver 192.0.2.53\n");

    // Second run: a no-op.
    let r = provision(&good, &[]);
    r.expect_code(0, "second provision");
    let second = results(&r);
    for (step, result) in &second {
        assert!(
            result == "unchanged" || (step == "start" && result == "skipped"),
            "second run changed {step}: {second:?}"
        );
    }
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), conf_text);
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), rc);

    // The UID belongs to another user: refused, nothing created.
    let other = format!("{}x", user.name);
    remove_user(&other);
    let r = provision(&config(&other, user.uid), &[]);
    r.expect_code(1, "provision onto a taken UID");
    assert!(
        r.stderr
            .contains(&format!("UID {} is taken by user {}", user.uid, user.name)),
        "{}",
        r.stderr
    );
    assert_eq!(uid_of(&other), None);

    // The user exists with another UID: never renumbered.
    let r = provision(&config(user.name, user.uid + 1), &[]);
    r.expect_code(1, "provision with another UID");
    assert!(r.stderr.contains("refusing to renumber"), "{}", r.stderr);
    assert_eq!(uid_of(user.name).as_deref(), Some(user.uid.to_string().as_str()));

    remove_user(user.name);
    drop(sshd);
    let _ = std::fs::remove_dir_all(&work);
}

/// Benchmark (not a timed test): upgrade 5 nodes, each behind its own sshd
/// on loopback, in parallel and then one at a time, with the static release
/// agent (`dist/amd64/mcp-agent` from `dev/release`, or `MCP_BENCH_AGENT`).
/// Run: `cargo test -p mcp-tests --test fleetops bench_upgrade -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_upgrade_five_nodes() {
    let release = std::env::var_os("MCP_BENCH_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("dist/amd64/mcp-agent"));
    assert!(
        release.exists(),
        "{} is missing: run dev/release first",
        release.display()
    );
    let work = temp("mcp-bench-upgrade-");
    // R2: the release binary with another embedded commit.
    let r_version = run_of(Command::new(&release).arg("--version").output().unwrap());
    let commit = r_version
        .stdout
        .trim()
        .rsplit_once("(commit ")
        .map(|(_, c)| c.trim_end_matches(')').to_string())
        .unwrap();
    let mut bytes = std::fs::read(&release).unwrap();
    let other: String = commit.chars().map(|c| if c == 'b' { 'c' } else { 'b' }).collect();
    let mut i = 0;
    while let Some(off) = bytes[i..].windows(commit.len()).position(|w| w == commit.as_bytes()) {
        bytes[i + off..i + off + commit.len()].copy_from_slice(other.as_bytes());
        i += off + commit.len();
    }
    let (dist_r, dist_r2) = (work.join("dist-r"), work.join("dist-r2"));
    for (d, b) in [(&dist_r, std::fs::read(&release).unwrap()), (&dist_r2, bytes)] {
        std::fs::create_dir_all(d.join("amd64")).unwrap();
        std::fs::write(d.join("amd64/mcp-agent"), b).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("amd64/mcp-agent"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let key = ClientKey::new(&work);
    let master = mcp_tests::TestMaster::start("benchm");
    let user = mcp_tests::mcptest();
    let mut nodes = Vec::new();
    let mut sshds = Vec::new();
    let mut entries = Vec::new();
    for i in 1..=5 {
        let agent = TestAgent::join(&master, user, &format!("bench{i}"), "worker");
        let node = SshNode::new(agent, &release);
        let sshd = TestSshd::start(&key, &[user.name]);
        entries.push(NodeEntry::of(&node, &sshd));
        nodes.push(node);
        sshds.push(sshd);
    }
    let cli = Cli::new(&master.dir.join("operator"), &key, &work, &entries);
    let kh: String = sshds.iter().map(TestSshd::known_hosts_line).collect();
    std::fs::write(&cli.known_hosts, kh).unwrap();
    let time = |dist: &Path, parallel: &str| {
        let t0 = Instant::now();
        let r = cli.mcp(&[
            "agent",
            "upgrade",
            "--parallel",
            parallel,
            "--dist",
            dist.to_str().unwrap(),
        ]);
        let secs = t0.elapsed().as_secs_f64();
        r.expect_code(0, "bench upgrade");
        assert_eq!(r.stdout.matches("upgraded").count(), 5, "{}", r.stdout);
        secs
    };
    let parallel = time(&dist_r2, "5");
    let sequential = time(&dist_r, "1");
    let size = std::fs::metadata(&release).unwrap().len();
    println!(
        "static agent binary: {} bytes ({:.1} MiB; target <= 25 MiB)",
        size,
        size as f64 / 1048576.0
    );
    println!("upgrade 5 nodes (5 sshd on loopback), parallel (--parallel 5): {parallel:.2} s");
    println!("upgrade 5 nodes (5 sshd on loopback), sequential (--parallel 1): {sequential:.2} s");
    println!("speed-up: {:.2}x", sequential / parallel);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&work);
}

/// nix/: both files parse, and the module evaluates (against a minimal
/// stand-in for nixpkgs, see nix/tests/eval-module.nix) to the documented
/// wiring. Debian's nix-bin has no nixpkgs and no network here, so the
/// flake's package build is not exercised.
#[test]
fn nix_flake_parses_and_module_evaluates() {
    let nix = repo_root().join("nix");
    for f in ["flake.nix", "module.nix", "tests/eval-module.nix"] {
        let r = run_of(
            Command::new("nix-instantiate")
                .arg("--parse")
                .arg(nix.join(f))
                .output()
                .expect("nix-instantiate (Debian package nix-bin) is installed"),
        );
        r.expect_code(0, &format!("nix-instantiate --parse {f}"));
    }
    let r = run_of(
        Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json"])
            .arg(nix.join("tests/eval-module.nix"))
            .output()
            .unwrap(),
    );
    r.expect_code(0, "evaluating the NixOS module");
    let j = r.json();
    assert_eq!(
        j["execStart"], "/srv/mcp/mcp-agent run --config /srv/mcp/mcp-agent.toml",
        "{j}"
    );
    assert_eq!(j["uid"], 850);
    assert_eq!(j["user"], "mcp");
    assert_eq!(j["linger"], true);
    assert_eq!(j["subUid"][0]["count"], 65536);
    assert_eq!(j["noNewPrivileges"], true);
    assert_eq!(j["protectSystem"], "strict");
    assert_eq!(j["killMode"], "process");
    assert_eq!(j["requires"][0], "user@850.service");
    assert_eq!(j["doas"][0]["args"], serde_json::json!(["restart", "mcp-agent"]));
    assert_eq!(j["nameservers"], serde_json::json!(["9.9.9.9"]));
    for o in ["enable", "package", "settings", "uid", "fallbackResolvers"] {
        assert!(j["agentOptions"].as_array().unwrap().iter().any(|x| x == o), "{o}: {j}");
    }
}
