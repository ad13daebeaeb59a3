//! SSH to nodes (russh) for `mcp agent upgrade` and `mcp node provision`:
//! host keys checked against known_hosts (never skipped), public-key
//! authentication, commands with stdin/stdout/exit status.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, client};

use crate::config::{NodeRef, SshSection};
use crate::error::usage;

/// Where and as whom to log in on a node.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// From a node's `ssh = "user@host"` and `ssh_port`; `user` replaces the
    /// configured user (provisioning logs in as root).
    pub fn of(node: &NodeRef, user: Option<&str>) -> Result<Target> {
        let Some(ssh) = &node.ssh else {
            usage!("node {}: no `ssh` configured in its [[nodes]] entry", node.name);
        };
        let (u, host) = match ssh.rsplit_once('@') {
            Some((u, h)) => (u.to_string(), h.to_string()),
            None => ("root".to_string(), ssh.clone()),
        };
        Ok(Target {
            node: node.name.clone(),
            user: user.map(str::to_string).unwrap_or(u),
            host,
            port: node.ssh_port.unwrap_or(22),
        })
    }

    /// `host` or `[host]:port`, as known_hosts spells it.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// How host keys are checked.
#[derive(Debug, Clone)]
pub struct HostKeys {
    pub known_hosts: PathBuf,
    /// Record the key of a host known_hosts does not list yet (first
    /// contact). A changed key is refused regardless.
    pub accept_new: bool,
}

/// Login settings shared by every node.
#[derive(Debug, Clone)]
pub struct Login {
    pub host_keys: HostKeys,
    pub identity: PathBuf,
    pub connect_timeout: Duration,
}

impl Login {
    /// The `[ssh]` settings; `accept_new` records unknown host keys.
    pub fn new(ssh: &SshSection, accept_new: bool) -> Login {
        Login {
            host_keys: HostKeys {
                known_hosts: ssh.known_hosts.clone(),
                accept_new,
            },
            identity: ssh.identity.clone(),
            connect_timeout: Duration::from_secs(ssh.connect_timeout),
        }
    }
}

/// What the host-key check decided, kept for the error message.
#[derive(Debug, Clone)]
enum Verdict {
    Known,
    Learned,
    Unknown { fingerprint: String },
    Changed { line: usize, fingerprint: String },
    Certificate,
    Error(String),
}

struct Handler {
    target: Target,
    host_keys: HostKeys,
    verdict: Arc<Mutex<Option<Verdict>>>,
}

impl Handler {
    fn decide(&self, key: &PublicKey) -> Verdict {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let path = &self.host_keys.known_hosts;
        let recorded = match russh::keys::known_hosts::known_host_keys_path(&self.target.host, self.target.port, path) {
            Ok(r) => r,
            Err(e) => return Verdict::Error(format!("reading {}: {e}", path.display())),
        };
        if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
            return Verdict::Known;
        }
        // Any recorded key for this host that is not the offered one counts
        // as a change, whatever its algorithm: a downgrade to another key
        // type must not pass as "first contact".
        if let Some((line, _)) = recorded.first() {
            return Verdict::Changed {
                line: *line,
                fingerprint,
            };
        }
        if !self.host_keys.accept_new {
            return Verdict::Unknown { fingerprint };
        }
        match russh::keys::known_hosts::learn_known_hosts_path(&self.target.host, self.target.port, key, path) {
            Ok(()) => Verdict::Learned,
            Err(e) => Verdict::Error(format!("recording the host key in {}: {e}", path.display())),
        }
    }
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.decide(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Verdict::Certificate,
        };
        let ok = matches!(verdict, Verdict::Known | Verdict::Learned);
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
        Ok(ok)
    }
}

/// Output of a remote command.
#[derive(Debug, Default)]
pub struct Output {
    pub code: Option<u32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// An authenticated SSH session with one node.
pub struct Session {
    pub target: Target,
    handle: client::Handle<Handler>,
    /// True when this connection recorded the host key in known_hosts.
    pub learned_host_key: bool,
}

impl Session {
    /// Connects, checks the host key, authenticates with the identity key.
    pub async fn connect(target: &Target, login: &Login) -> Result<Session> {
        let node = &target.node;
        let key = russh::keys::load_secret_key(&login.identity, None)
            .with_context(|| format!("loading SSH key {}", login.identity.display()))?;
        let verdict = Arc::new(Mutex::new(None));
        let handler = Handler {
            target: target.clone(),
            host_keys: login.host_keys.clone(),
            verdict: verdict.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: Some(Duration::from_secs(15)),
            ..Default::default()
        });
        let addr = (target.host.clone(), target.port);
        let connecting = tokio::time::timeout(login.connect_timeout, client::connect(config, addr, handler)).await;
        let verdict = verdict.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let name = target.known_hosts_name();
        let kh = login.host_keys.known_hosts.display();
        let mut handle = match connecting {
            Err(_) => bail!(
                "node {node}: no SSH answer from {name} within {} s",
                login.connect_timeout.as_secs()
            ),
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return Err(match verdict {
                    Some(Verdict::Unknown { fingerprint }) => anyhow!(
                        "node {node}: host key of {name} ({fingerprint}) is not in {kh}; \
                         refusing to connect. Verify the fingerprint out of band, then run again with \
                         --accept-new-host-key (first contact only)"
                    ),
                    Some(Verdict::Changed { line, fingerprint }) => anyhow!(
                        "node {node}: HOST KEY CHANGED for {name}: it offers {fingerprint}, which differs \
                         from {kh} line {line}; refusing to connect (possible man-in-the-middle). If the \
                         host was reinstalled, remove that line after checking the new key"
                    ),
                    Some(Verdict::Certificate) => {
                        anyhow!("node {node}: {name} offered an SSH certificate; only plain host keys are supported")
                    }
                    Some(Verdict::Error(e)) => anyhow!("node {node}: host key check: {e}"),
                    _ => anyhow!("node {node}: SSH to {name}: {e}"),
                });
            }
        };
        let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
        let auth = tokio::time::timeout(
            login.connect_timeout,
            handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)),
        )
        .await
        .map_err(|_| anyhow!("node {node}: SSH authentication on {name} timed out"))?
        .with_context(|| format!("node {node}: SSH authentication on {name}"))?;
        if !auth.success() {
            bail!(
                "node {node}: {name} refused public-key authentication as {:?} with {}",
                target.user,
                login.identity.display()
            );
        }
        Ok(Session {
            target: target.clone(),
            handle,
            learned_host_key: matches!(verdict, Some(Verdict::Learned)),
        })
    }

    /// Runs `command` (a shell command line) with `stdin` fed in chunks;
    /// `sent` is called with the bytes sent so far.
    pub async fn exec_with_input(&self, command: &str, stdin: &[u8], mut sent: impl FnMut(usize)) -> Result<Output> {
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .with_context(|| format!("node {}: opening an SSH channel", self.target.node))?;
        ch.exec(true, command)
            .await
            .with_context(|| format!("node {}: starting `{command}`", self.target.node))?;
        const CHUNK: usize = 1 << 20;
        let mut done = 0;
        for chunk in stdin.chunks(CHUNK) {
            ch.data(chunk)
                .await
                .with_context(|| format!("node {}: sending data to `{command}`", self.target.node))?;
            done += chunk.len();
            sent(done);
        }
        ch.eof().await.ok();
        let mut out = Output::default();
        let (mut o, mut e) = (Vec::new(), Vec::new());
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => o.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => e.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.code = Some(exit_status),
                _ => {}
            }
        }
        out.stdout = String::from_utf8_lossy(&o).into_owned();
        out.stderr = String::from_utf8_lossy(&e).into_owned();
        Ok(out)
    }

    /// Runs `command` without input.
    pub async fn exec(&self, command: &str) -> Result<Output> {
        self.exec_with_input(command, &[], |_| {}).await
    }

    /// Runs `command`; its stdout on success, else an error with stderr.
    pub async fn run(&self, command: &str) -> Result<String> {
        let out = self.exec(command).await?;
        if !out.success() {
            bail!(
                "node {}: `{command}` failed ({}): {}",
                self.target.node,
                out.code.map_or("no exit status".to_string(), |c| format!("exit {c}")),
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// Quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes a path for a POSIX shell.
pub fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        for (input, want) in [
            ("/srv/mcp", "/srv/mcp"),
            ("a b", "'a b'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
        ] {
            assert_eq!(quote(input), want, "{input}");
        }
    }
}
