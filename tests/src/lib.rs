//! Harness for end-to-end tests: real processes in temp directories, real
//! rootless podman (a dedicated test user), a real OCI registry on loopback,
//! real TLS. Everything a test starts is torn down when its handle drops.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mcp_common::identity::Identity;
use mcp_common::proto::mcp_agent_service_client::McpAgentServiceClient;
use mcp_common::tls::{self, TlsFiles};
use tonic::transport::Channel;

/// Rootless podman user of the tests.
pub const TEST_USER: &str = "mcptest";
/// Its pinned UID.
pub const TEST_UID: u32 = 8501;
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
            .args([TEST_USER, &TEST_UID.to_string(), "5055"])
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
fn port_range() -> (u16, u16) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().rotate_left(16);
    let base = 20000 + (seed % 190) as u16 * 200;
    (base, base + 199)
}

fn user_ids() -> (u32, u32) {
    (TEST_UID, TEST_UID)
}

/// `runuser`-style command as the test user, with its rootless environment.
pub fn as_user(program: &Path) -> Command {
    let mut c = Command::new(program);
    let (uid, gid) = user_ids();
    c.uid(uid)
        .gid(gid)
        .env("XDG_RUNTIME_DIR", format!("/run/user/{TEST_UID}"))
        .env("HOME", format!("/home/{TEST_USER}"))
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
    fn from(o: Output) -> Run {
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

/// One agent process with its own data dir, podman API socket, CA and an
/// operator certificate, plus a CLI configuration pointing at it.
pub struct TestAgent {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub ports: (u16, u16),
    child: Option<Child>,
}

impl TestAgent {
    /// Initializes and starts an agent named `name`.
    pub fn start(name: &str) -> TestAgent {
        let mut a = TestAgent::init(name, port_range());
        a.run();
        a
    }

    /// Initializes (config, CA, certificates) without starting.
    pub fn init(name: &str, ports: (u16, u16)) -> TestAgent {
        env();
        let dir = tempfile::Builder::new()
            .prefix(&format!("mcp-it-{name}-"))
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir);
        std::fs::create_dir_all(dir.join("services")).unwrap();
        std::fs::create_dir_all(dir.join("volumes")).unwrap();
        chown(&dir.join("volumes"));
        let port = free_port();
        let out = as_user(&bin("mcp-agent"))
            .args(["init", "--config"])
            .arg(dir.join("agent.toml"))
            .args(["--name", name, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.join("data"))
            .arg("--podman-socket")
            .arg(dir.join("podman.sock"))
            .args(["--port-min", &ports.0.to_string(), "--port-max", &ports.1.to_string()])
            .args(["--operator", "tester", "--operator-dir"])
            .arg(dir.join("operator"))
            .output()
            .unwrap();
        Run::from(out).expect_code(0, "mcp-agent init");
        let dead = free_port();
        let cli = format!(
            "[auth]\ncert = \"{d}/operator/cert.pem\"\nkey = \"{d}/operator/key.pem\"\nca = \"{d}/operator/ca.pem\"\n\
             [services]\ndir = \"{d}/services\"\n\
             [[nodes]]\nname = \"{name}\"\n# the first address is dead: fallback addresses are tried in order\n\
             address = [\"127.0.0.1:{dead}\", \"127.0.0.1:{port}\"]\n",
            d = dir.display()
        );
        std::fs::write(dir.join("mcp.toml"), cli).unwrap();
        TestAgent {
            name: name.to_string(),
            dir,
            port,
            ports,
            child: None,
        }
    }

    /// Starts the agent process and waits until it answers over TLS.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = as_user(&bin("mcp-agent"))
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .env("MCP_LOG", "info,mcp_agent=debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.mcp(&["node", "list", "--json"]);
            if r.code == 0 {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited ({status}) during start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not answer within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "agent exited with {status} on SIGTERM:\n{}",
                        self.log()
                    );
                    return;
                }
                assert!(Instant::now() < deadline, "agent ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills the agent with SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Writes a service definition into the CLI's services dir.
    pub fn define(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.dir.join("services").join(format!("{name}.toml"));
        std::fs::write(&p, toml).unwrap();
        p
    }

    /// Runs `mcp --direct --config <ours> args…`.
    pub fn mcp(&self, args: &[&str]) -> Run {
        let out = Command::new(bin("mcp"))
            .arg("--direct")
            .arg("--config")
            .arg(self.dir.join("mcp.toml"))
            .args(args)
            .env_remove("MCP_CONFIG")
            .output()
            .unwrap();
        Run::from(out)
    }

    /// Runs podman as the test user against this agent's API socket.
    pub fn podman(&self, args: &[&str]) -> Run {
        let out = as_user(Path::new("/usr/bin/podman"))
            .arg("--url")
            .arg(format!("unix://{}", self.dir.join("podman.sock").display()))
            .args(args)
            .output()
            .unwrap();
        Run::from(out)
    }

    /// `podman inspect --format <fmt> <container>`, trimmed; None if absent.
    pub fn inspect(&self, container: &str, format: &str) -> Option<String> {
        let r = self.podman(&["inspect", "--format", format, container]);
        (r.code == 0).then(|| r.stdout.trim().to_string())
    }

    /// Names of containers this agent created (label mcp.node).
    pub fn containers(&self) -> Vec<String> {
        let r = self.podman(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=mcp.node={}", self.name),
            "--format",
            "{{.Names}}",
        ]);
        let mut v: Vec<String> = r.stdout.lines().map(str::to_string).filter(|s| !s.is_empty()).collect();
        v.sort();
        v
    }

    /// TLS files of the operator certificate.
    pub fn operator_tls(&self) -> TlsFiles {
        let d = self.dir.join("operator");
        TlsFiles {
            cert: d.join("cert.pem"),
            key: d.join("key.pem"),
            ca: d.join("ca.pem"),
        }
    }

    /// A raw gRPC client authenticated with `files`.
    pub async fn client_with(&self, files: &TlsFiles) -> Result<McpAgentServiceClient<Channel>, String> {
        let cfg = tls::client_config(files, Some(Identity::Agent(self.name.clone()))).map_err(|e| e.to_string())?;
        let (ch, _) = tls::connect(&[format!("127.0.0.1:{}", self.port)], cfg, tls::Timeouts::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(McpAgentServiceClient::new(ch))
    }

    /// A raw gRPC client as the operator.
    pub async fn client(&self) -> McpAgentServiceClient<Channel> {
        self.client_with(&self.operator_tls()).await.unwrap()
    }

    /// Issues a certificate for `identity` (e.g. `agent/other`) from this
    /// agent's CA into a new directory.
    pub fn issue(&self, identity: &str) -> TlsFiles {
        let out_dir = self.dir.join(format!("issued-{}", identity.replace('/', "-")));
        let out = Command::new(bin("mcp-agent"))
            .args(["issue-cert", "--ca-dir"])
            .arg(self.dir.join("data/ca"))
            .args(["--identity", identity, "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        Run::from(out).expect_code(0, "issue-cert");
        TlsFiles {
            cert: out_dir.join("cert.pem"),
            key: out_dir.join("key.pem"),
            ca: out_dir.join("ca.pem"),
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
        for c in self.containers() {
            self.podman(&["rm", "-f", "-t", "0", &c]);
        }
        // The podman API service the agent started for its socket.
        let sock = self.dir.join("podman.sock");
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("unix://{}", sock.display()))
            .status();
        if std::env::var_os("MCP_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn chown(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (uid, gid) = user_ids();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0, "chown {}", p.display());
}

/// Makes `p` a directory owned by the test user (for volumes).
pub fn user_dir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    chown(p);
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
