//! Harness for end-to-end tests: real processes in temp directories, real
//! rootless podman (a dedicated test user), a real OCI registry on loopback,
//! real TLS. Everything a test starts is torn down when its handle drops.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod agent;
mod master;
pub mod sshd;

pub use agent::TestAgent;
pub use master::{TestMaster, wait_for};

/// A rootless podman user the tests run agents as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub name: &'static str,
    pub uid: u32,
}

/// A test user, shifted by the slot in `MCP_TEST_SLOT` (default 0) so that
/// several checkouts can run their suites at once without sharing podman
/// storage or container names: slot n adds 20·n to the UID and suffixes the
/// name with n.
pub fn test_user(name: &str, uid: u32) -> User {
    static SLOT: OnceLock<u32> = OnceLock::new();
    let slot = *SLOT.get_or_init(|| {
        std::env::var("MCP_TEST_SLOT")
            .ok()
            .map(|s| s.parse().expect("MCP_TEST_SLOT must be a small integer"))
            .unwrap_or(0)
    });
    if slot == 0 {
        return User {
            name: Box::leak(name.to_string().into_boxed_str()),
            uid,
        };
    }
    User {
        name: Box::leak(format!("{name}s{slot}").into_boxed_str()),
        uid: uid + 20 * slot,
    }
}

/// The default test user.
pub fn mcptest() -> User {
    test_user("mcptest", 8501)
}

/// Separate users for the nodes of fleet tests: each agent is truly its
/// own node, with its own podman storage.
pub fn fleet_users() -> [User; 3] {
    [
        test_user("mcpt1", 8511),
        test_user("mcpt2", 8512),
        test_user("mcpt3", 8513),
    ]
}
/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`, `RssAnon`, …) in
/// KiB; 0 when the process or the field is gone.
pub fn proc_status_kib(pid: impl std::fmt::Display, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `dig` for an A record at a DNS server on 127.0.0.1:`port` (no
/// recursion, one 2 s try): its whole answer.
pub fn dig(port: u16, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+norecurse",
            "+time=2",
            "+tries=1",
            name,
            "A",
        ])
        .output()
        .expect("dig (bind9-dnsutils) is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Median of benchmark samples (sorts them).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Local registry on loopback.
pub const REGISTRY: &str = "127.0.0.1:5055";

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Sets up (idempotently) the test user, registry and images, once per
/// process. Panics with the reason when that is impossible: a suite that
/// cannot reach podman must fail, not skip.
pub fn env() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "end-to-end tests set up a rootless podman user and must run as root (use ./dev/test)"
        );
        let script = repo_root().join("dev/lib/test-env.sh");
        let out = Command::new(&script)
            .args([mcptest().name, &mcptest().uid.to_string(), "5055"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "test environment setup failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Sets up (idempotently) another rootless podman user, once per process.
pub fn ensure_user(user: User) {
    env();
    static DONE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if done.contains(&user.uid) {
        return;
    }
    let script = repo_root().join("dev/lib/podman-user.sh");
    // Under the lock of test-env.sh: concurrent suites append to
    // /etc/subuid and /etc/subgid.
    let out = Command::new("flock")
        .arg("/run/.mcp-test-env.lock")
        .arg(&script)
        .args([user.name, &user.uid.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setting up user {}: {}{}",
        user.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    done.push(user.uid);
}

/// Path of a workspace binary built next to this test binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests live in target/<profile>/deps/, binaries (and benches built as
    // binaries) in target/<profile>/.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A random 200-port range for one agent's host ports, so concurrent test
/// agents do not race for the same ports.
pub fn port_range() -> (u16, u16) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().rotate_left(16);
    let base = 20000 + (seed % 190) as u16 * 200;
    (base, base + 199)
}

/// `runuser`-style command as `user`, with its rootless environment.
pub fn as_user(user: User, program: &Path) -> Command {
    let mut c = Command::new(program);
    c.uid(user.uid)
        .gid(user.uid)
        .env("XDG_RUNTIME_DIR", format!("/run/user/{}", user.uid))
        .env("HOME", format!("/home/{}", user.name))
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir("/");
    c
}

/// Output of a finished command with a readable dump for assertions.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub(crate) fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics unless the exit code is `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Run {
        assert_eq!(
            self.code, code,
            "{what}: exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

pub(crate) fn chown(user: User, p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::chown(c.as_ptr(), user.uid, user.uid) },
        0,
        "chown {}",
        p.display()
    );
}

/// Makes `p` a directory owned by `user` (for volumes).
pub fn user_dir(user: User, p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    chown(user, p);
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0), retrying until `timeout`.
/// Returns the body of a 200 response.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = (|| -> std::io::Result<Option<String>> {
            let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            let ok = buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200");
            Ok(ok.then(|| {
                buf.split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or_default()
            }))
        })();
        if let Ok(Some(body)) = attempt {
            return Some(body);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pushes a copy of the web:v1 image under a fresh tag and removes it from
/// the user's local store, so a deploy of it must pull from the registry.
pub fn fresh_image_tag(agent: &TestAgent, tag: &str) -> String {
    let src = format!("{REGISTRY}/mcp-test/web:v1");
    let dst = format!("{REGISTRY}/mcp-test/web:{tag}");
    agent.podman(&["pull", &src]).expect_code(0, "pull web:v1");
    agent.podman(&["tag", &src, &dst]).expect_code(0, "tag");
    agent.podman(&["push", &dst]).expect_code(0, "push");
    agent.podman(&["rmi", &dst]).expect_code(0, "rmi");
    dst
}
