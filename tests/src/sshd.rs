//! A real OpenSSH server on a loopback port for fleet-operation tests: its
//! own host key, its own authorized_keys, torn down when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A client key pair for the CLI (OpenSSH ed25519, no passphrase).
pub struct ClientKey {
    pub private: PathBuf,
    pub public: String,
}

/// Creates an ed25519 key pair at `path` (private, 0600) and `path.pub`.
pub fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "mcp-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

impl ClientKey {
    /// A fresh key pair in `dir`.
    pub fn new(dir: &Path) -> ClientKey {
        let private = dir.join("id_ed25519");
        let public = keygen(&private);
        ClientKey { private, public }
    }
}

/// One sshd process.
pub struct TestSshd {
    pub dir: PathBuf,
    pub port: u16,
    /// The host's public key line (`ssh-ed25519 AAAA… comment`).
    pub host_key: String,
    child: Option<Child>,
}

impl TestSshd {
    /// Starts sshd on 127.0.0.1 accepting `client` for every user in
    /// `users` (public-key authentication only).
    pub fn start(client: &ClientKey, users: &[&str]) -> TestSshd {
        let dir = tempfile::Builder::new()
            .prefix("mcp-sshd-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let host_key = keygen(&dir.join("host_ed25519"));
        // Without PAM (pam_loginuid needs a real login session), sshd refuses
        // locked accounts ("!" in /etc/shadow), which is how useradd leaves
        // the test users: give them "*" (no password, not locked).
        for u in users.iter().filter(|u| **u != "root") {
            let shadow = Command::new("getent").args(["shadow", u]).output().unwrap();
            let entry = String::from_utf8_lossy(&shadow.stdout).to_string();
            if entry.split(':').nth(1).is_some_and(|p| p.starts_with('!')) {
                let ok = Command::new("usermod").args(["-p", "*", u]).status().unwrap();
                assert!(ok.success(), "usermod -p '*' {u}");
            }
        }
        std::fs::write(dir.join("authorized_keys"), &client.public).unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
             AllowUsers {users}\nLogLevel VERBOSE\nMaxStartups 100:30:200\nMaxSessions 50\n",
            d = dir.display(),
            users = users.join(" ")
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server) is installed");
        let mut s = TestSshd {
            dir,
            port,
            host_key,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd exited ({st}):\n{}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen within 10 s:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// The known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        let mut parts = self.host_key.split_whitespace();
        let (alg, key) = (parts.next().unwrap(), parts.next().unwrap());
        format!("[127.0.0.1]:{} {alg} {key}\n", self.port)
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("MCP_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A node as `mcp agent upgrade` sees it: a [`TestAgent`] whose binary is
/// `<dir>/mcp-agent`, (re)started by `<dir>/restart.sh` run as the agent's
/// user — what `systemctl restart mcp-agent` does on a real node (systemd
/// is not PID 1 in the test sandbox). The script stops the running agent
/// with SIGTERM (containers keep running) and starts the binary now in
/// place.
pub struct SshNode {
    pub agent: crate::TestAgent,
}

impl SshNode {
    /// Initializes an agent named `name`, installs `binary` as its
    /// `mcp-agent` and starts it through the restart script.
    pub fn start(name: &str, binary: &Path) -> SshNode {
        SshNode::new(crate::TestAgent::init(name, crate::port_range()), binary)
    }

    /// Like [`SshNode::start`] for an agent already initialized (or joined).
    pub fn new(agent: crate::TestAgent, binary: &Path) -> SshNode {
        let d = agent.dir.display().to_string();
        let script = format!(
            "#!/bin/sh\n# restarts the test agent like `systemctl restart mcp-agent`\nd={d}\n\
             export XDG_RUNTIME_DIR=/run/user/$(id -u) MCP_LOG=info\n\
             if [ -f $d/agent.pid ]; then\n  pid=$(cat $d/agent.pid)\n  kill -TERM $pid 2>/dev/null\n\
             \x20 i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\nfi\n\
             cd /\nsetsid $d/mcp-agent run --config $d/agent.toml >>$d/agent.log 2>&1 </dev/null &\n\
             echo $! > $d/agent.pid\n"
        );
        std::fs::write(agent.dir.join("restart.sh"), script).unwrap();
        let node = SshNode { agent };
        node.install(binary);
        let r = node.restart();
        assert_eq!(r.code, 0, "restart.sh: {}", r.stderr);
        node.wait_answering();
        node
    }

    /// Copies `binary` to `<dir>/mcp-agent` (owned by the agent's user).
    pub fn install(&self, binary: &Path) {
        let dst = self.agent.dir.join("mcp-agent");
        std::fs::copy(binary, &dst).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        crate::chown(self.agent.user, &dst);
    }

    /// The restart command line (for the CLI's `restart` key).
    pub fn restart_command(&self) -> String {
        format!("/bin/sh {}/restart.sh", self.agent.dir.display())
    }

    /// Runs the restart script as the agent's user.
    pub fn restart(&self) -> crate::Run {
        let out = crate::as_user(self.agent.user, Path::new("/bin/sh"))
            .arg(self.agent.dir.join("restart.sh"))
            .output()
            .unwrap();
        crate::Run::from(out)
    }

    /// Waits until the agent answers over TLS.
    pub fn wait_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.agent.mcp(&["node", "list", "--json"]).code != 0 {
            assert!(
                Instant::now() < deadline,
                "agent did not answer within 30 s:\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pid of the agent process the script started last.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.agent.dir.join("agent.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for SshNode {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) of the agent this node started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
