//! A real master process for tests, with fast heartbeat intervals.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcp_infra::tls::{self, TlsFiles};
use mcp_model::identity::Identity;
use tonic::transport::Channel;

use crate::{Run, bin, env, free_port};

/// One master process with its own data dir and an operator certificate,
/// plus a CLI configuration pointing at it.
pub struct TestMaster {
    pub dir: PathBuf,
    pub port: u16,
    /// Node the master runs on (core tier).
    pub node: String,
    child: Option<Child>,
}

impl TestMaster {
    /// Initializes and starts a master for node `node`.
    pub fn start(node: &str) -> TestMaster {
        let mut m = TestMaster::init(node);
        m.run();
        m
    }

    /// Initializes (CA, certificates, database, config) without starting.
    /// Intervals are shortened so health tests run in seconds.
    pub fn init(node: &str) -> TestMaster {
        env();
        let dir = tempfile::Builder::new()
            .prefix("mcp-it-master-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let port = free_port();
        let out = Command::new(bin("mcp-master"))
            .args(["init", "--config"])
            .arg(dir.join("master.toml"))
            .args(["--node", node, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.join("data"))
            .args(["--operator", "tester", "--operator-dir"])
            .arg(dir.join("operator"))
            .output()
            .unwrap();
        Run::from(out).expect_code(0, "mcp-master init");
        let m = TestMaster {
            dir,
            port,
            node: node.to_string(),
            child: None,
        };
        m.configure(|c| {
            c["heartbeat"]["interval"] = 1.into();
            c["heartbeat"]["silent_after"] = 3.into();
            c["heartbeat"]["check_every"] = 1.into();
            c["registration"]["register_interval"] = 0.into();
            c["registration"]["heartbeat_min_interval"] = 0.into();
            c["timeouts"]["health_check"] = 3.into();
        });
        let cli = format!(
            "[master]\naddress = \"127.0.0.1:{port}\"\n[auth]\ncert = \"{d}/operator/cert.pem\"\nkey = \"{d}/operator/key.pem\"\n\
             ca = \"{d}/operator/ca.pem\"\n[services]\ndir = \"{d}/services\"\n",
            d = m.dir.display()
        );
        std::fs::create_dir_all(m.dir.join("services")).unwrap();
        std::fs::write(m.dir.join("mcp.toml"), cli).unwrap();
        m
    }

    /// Edits the master's configuration file.
    pub fn configure(&self, edit: impl FnOnce(&mut toml::Table)) {
        let path = self.dir.join("master.toml");
        let mut cfg: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        edit(&mut cfg);
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    }

    /// Edits the configuration so the master serves its DNS zone on
    /// 127.0.0.1:`port`.
    pub fn serve_dns(&self, port: u16) {
        self.configure(|c| {
            let mut dns = toml::Table::new();
            dns.insert(
                "listen".into(),
                vec![toml::Value::from(format!("127.0.0.1:{port}"))].into(),
            );
            c.insert("dns".into(), dns.into());
        });
    }

    /// `host:port` of the master.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the master and waits until it answers.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "master already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("master.log"))
            .unwrap();
        let child = Command::new(bin("mcp-master"))
            .args(["run", "--config"])
            .arg(self.dir.join("master.toml"))
            .env("MCP_LOG", "info,mcp_master=debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.mcp(&["node", "list", "--json"]).code == 0 {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("master exited ({status}) during start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "master did not answer within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the master with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The master's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("master.log")).unwrap_or_default()
    }

    /// Runs `mcp --config <ours> args…` (through the master).
    pub fn mcp(&self, args: &[&str]) -> Run {
        let out = Command::new(bin("mcp"))
            .arg("--config")
            .arg(self.dir.join("mcp.toml"))
            .args(args)
            .env_remove("MCP_CONFIG")
            .output()
            .unwrap();
        Run::from(out)
    }

    /// Writes a service definition into the CLI's services dir.
    pub fn define(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.dir.join("services").join(format!("{name}.toml"));
        std::fs::write(&p, toml).unwrap();
        p
    }

    /// Removes a service definition from the services dir.
    pub fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join("services").join(format!("{name}.toml")));
    }

    /// A fresh join token for `node` (`mcp node add`).
    pub fn join_token(&self, node: &str) -> String {
        let r = self.mcp(&["--json", "node", "add", node]);
        r.expect_code(0, "node add");
        r.json()["token"].as_str().unwrap().to_string()
    }

    /// `mcp node list --json` rows by name: (status, containers).
    pub fn node_status(&self, node: &str) -> Option<serde_json::Value> {
        let r = self.mcp(&["--json", "node", "list"]);
        r.expect_code(0, "node list");
        r.json()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .cloned()
    }

    /// Runs SQL against the fleet database (sqlite3 CLI), output trimmed.
    pub fn sql(&self, query: &str) -> String {
        let out = Command::new("sqlite3")
            .arg(self.dir.join("data/fleet.db"))
            .arg(query)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Issues a certificate for `identity` from the fleet CA.
    pub fn issue(&self, identity: &str) -> TlsFiles {
        let out_dir = self.dir.join(format!("issued-{}", identity.replace('/', "-")));
        let out = Command::new(bin("mcp-master"))
            .args(["issue-cert", "--config"])
            .arg(self.dir.join("master.toml"))
            .args(["--identity", identity, "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        Run::from(out).expect_code(0, "mcp-master issue-cert");
        TlsFiles {
            cert: out_dir.join("cert.pem"),
            key: out_dir.join("key.pem"),
            ca: out_dir.join("ca.pem"),
        }
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

    /// A channel to the master authenticated with `files`.
    pub async fn channel(&self, files: &TlsFiles) -> Result<Channel, String> {
        let cfg = tls::client_config(files, Some(Identity::Master)).map_err(|e| e.to_string())?;
        let (ch, _) = tls::connect(&[self.address()], cfg, tls::Timeouts::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(ch)
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("MCP_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl TestMaster {
    /// Runs `mcp --config <config> args…` against this master with another
    /// CLI configuration (e.g. one authenticating with an MCIAS token).
    pub fn mcp_with(&self, config: &std::path::Path, args: &[&str]) -> Run {
        let out = Command::new(bin("mcp"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("MCP_CONFIG")
            .output()
            .unwrap();
        Run::from(out)
    }

    /// Directory of the fleet CA (`ca.pem`, `ca.key`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("data/ca")
    }

    /// Process id of the running master.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `mcp-master run` in the foreground, expecting it to refuse to
    /// start: panics (after killing it) if it still runs after `within`.
    pub fn run_refused(&self, within: Duration) -> Run {
        let mut child = Command::new(bin("mcp-master"))
            .args(["run", "--config"])
            .arg(self.dir.join("master.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + within;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "mcp-master started although it should have refused:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Run::from(child.wait_with_output().unwrap())
    }
}
