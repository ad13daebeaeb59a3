//! A real agent process for tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcp_infra::tls::{self, TlsFiles};
use mcp_model::identity::Identity;
use mcp_proto::mcp_agent_service_client::McpAgentServiceClient;
use tonic::transport::Channel;

use crate::{Run, TestMaster, User, as_user, bin, chown, ensure_user, env, free_port, mcptest, port_range};

/// One agent process with its own data dir, podman API socket, CA and an
/// operator certificate, plus a CLI configuration pointing at it.
pub struct TestAgent {
    pub name: String,
    pub user: User,
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

    /// A temp directory for an agent run by `user`.
    fn make_dir(user: User, name: &str) -> PathBuf {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mcp-it-{name}-"))
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(user, &dir);
        std::fs::create_dir_all(dir.join("services")).unwrap();
        std::fs::create_dir_all(dir.join("volumes")).unwrap();
        chown(user, &dir.join("volumes"));
        dir
    }

    /// Initializes a stand-alone agent (config, local CA, certificates)
    /// run by the default test user, without starting it.
    pub fn init(name: &str, ports: (u16, u16)) -> TestAgent {
        TestAgent::init_as(mcptest(), name, ports)
    }

    /// Like [`TestAgent::init`], run by `user` (a test that wipes podman
    /// storage needs a user of its own).
    pub fn init_as(user: User, name: &str, ports: (u16, u16)) -> TestAgent {
        env();
        ensure_user(user);
        let dir = TestAgent::make_dir(user, name);
        let port = free_port();
        let out = as_user(user, &bin("mcp-agent"))
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
            user,
            dir,
            port,
            ports,
            child: None,
        }
    }

    /// Joins `master`'s fleet as node `name`, run by `user` (not started).
    pub fn join(master: &TestMaster, user: User, name: &str, role: &str) -> TestAgent {
        ensure_user(user);
        let dir = TestAgent::make_dir(user, name);
        let port = free_port();
        let ports = port_range();
        let token = master.join_token(name);
        let out = as_user(user, &bin("mcp-agent"))
            .args(["join", "--config"])
            .arg(dir.join("agent.toml"))
            .args(["--master", &master.address(), "--token", &token, "--role", role])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.join("data"))
            .arg("--podman-socket")
            .arg(dir.join("podman.sock"))
            .args(["--port-min", &ports.0.to_string(), "--port-max", &ports.1.to_string()])
            .output()
            .unwrap();
        Run::from(out).expect_code(0, "mcp-agent join");
        // Direct-mode CLI config with the fleet's operator certificate.
        let op = master.dir.join("operator");
        let cli = format!(
            "[auth]\ncert = \"{o}/cert.pem\"\nkey = \"{o}/key.pem\"\nca = \"{o}/ca.pem\"\n\
             [services]\ndir = \"{d}/services\"\n[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\n",
            o = op.display(),
            d = dir.display()
        );
        std::fs::write(dir.join("mcp.toml"), cli).unwrap();
        let d = dir.join("operator");
        std::fs::create_dir_all(&d).unwrap();
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::copy(op.join(f), d.join(f)).unwrap();
        }
        TestAgent {
            name: name.to_string(),
            user,
            dir,
            port,
            ports,
            child: None,
        }
    }

    /// Starts the agent process and waits until it answers over TLS.
    pub fn run(&mut self) {
        self.run_with_env(&[]);
    }

    /// Starts the agent with extra environment variables.
    pub fn run_with_env(&mut self, vars: &[(&str, &str)]) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = as_user(self.user, &bin("mcp-agent"))
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .env("MCP_LOG", "info,mcp_agent=debug")
            .envs(vars.iter().copied())
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

    /// Writes `rel` (under the agent's dir) owned by its user with `mode`.
    pub fn plant_file(&self, rel: &str, contents: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.join(rel);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        chown(self.user, &p);
    }

    /// Edits the agent's configuration file (keeps its owner and mode).
    pub fn configure(&self, edit: impl FnOnce(&mut toml::Table)) {
        let path = self.dir.join("agent.toml");
        let mut cfg: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        edit(&mut cfg);
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
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
        let out = as_user(self.user, Path::new("/usr/bin/podman"))
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

impl TestAgent {
    /// Replaces the agent's certificate chain and key on disk (owned by
    /// its user, key 0600), as if another certificate had been issued.
    pub fn plant_tls(&self, chain_pem: &str, key_pem: &str) {
        let tls = self.dir.join("data/tls");
        mcp_infra::fsutil::write_private(&tls.join("agent.key"), key_pem.as_bytes()).unwrap();
        mcp_infra::fsutil::write_atomic(&tls.join("agent.pem"), chain_pem.as_bytes(), 0o644).unwrap();
        chown(self.user, &tls.join("agent.key"));
        chown(self.user, &tls.join("agent.pem"));
    }

    /// The agent's certificate chain as on disk (PEM).
    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/tls/agent.pem")).unwrap()
    }
}
