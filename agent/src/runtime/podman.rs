//! Rootless podman through its Docker-compatible API (bollard): the one
//! real [`ContainerRuntime`], and the only module that talks to podman.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;

use super::spec::{ContainerSpec, LABEL_NODE, LABEL_SERVICE};
use super::{ContainerRuntime, LogStream, Observed, RuntimeError};

/// Handle on the podman API socket.
pub struct Podman {
    /// Replaced when the podman service is restarted.
    docker: std::sync::RwLock<Docker>,
    socket: PathBuf,
    stop_timeout: u32,
    binary: PathBuf,
}

fn reason(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        BollardError::DockerStreamError { error } => error.clone(),
        other => mcp_infra::tls::error_chain(other),
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

/// Default API socket of the current user.
pub fn default_socket() -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", unsafe { libc::getuid() })));
    runtime.join("podman/podman.sock")
}

impl Podman {
    /// Connects to the socket; when nothing answers there and `start` is
    /// set, starts `podman system service` on it (in its own process group,
    /// so it outlives the agent like the containers do) and waits for it.
    pub async fn connect(socket: &Path, start: bool, binary: &Path, stop_timeout: u32) -> Result<Podman, RuntimeError> {
        if let Ok(p) = Podman::attach(socket, stop_timeout, binary)
            && p.ping().await.is_ok()
        {
            return Ok(p);
        }
        if !start {
            let p = Podman::attach(socket, stop_timeout, binary)?;
            p.ping().await?;
            return Ok(p);
        }
        start_service(socket, binary)?;
        Podman::wait_ready(socket, stop_timeout, binary).await
    }

    async fn wait_ready(socket: &Path, stop_timeout: u32, binary: &Path) -> Result<Podman, RuntimeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = match Podman::attach(socket, stop_timeout, binary) {
                Ok(p) => p.ping().await.map(|_| p),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(p) => return Ok(p),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Restarts the `podman system service` serving our socket (needed
    /// after `podman system reset`: the old service keeps answering pings
    /// from a stale namespace but hangs on create).
    pub async fn restart_service(&self) -> Result<(), RuntimeError> {
        let needle = format!("unix://{}", self.socket.display());
        for pid in service_pids(&needle) {
            tracing::info!(pid, socket = %self.socket.display(), "stopping podman system service");
            // SAFETY: plain kill(2) on a pid we just read from /proc.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..50 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        start_service(&self.socket, &self.binary)?;
        let fresh = Podman::wait_ready(&self.socket, self.stop_timeout, &self.binary).await?;
        *self.docker.write().unwrap_or_else(|p| p.into_inner()) = fresh.docker();
        Ok(())
    }

    /// The API client (cheap to clone).
    fn docker(&self) -> Docker {
        self.docker.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A client for the socket without checking it answers.
    fn attach(socket: &Path, stop_timeout: u32, binary: &Path) -> Result<Podman, RuntimeError> {
        let shown = socket.display().to_string();
        let docker = Docker::connect_with_unix(&shown, 300, bollard::API_DEFAULT_VERSION).map_err(|e| {
            RuntimeError::Unreachable {
                socket: shown.clone(),
                reason: reason(&e),
            }
        })?;
        Ok(Podman {
            docker: std::sync::RwLock::new(docker),
            socket: socket.to_path_buf(),
            stop_timeout,
            binary: binary.to_path_buf(),
        })
    }
}

/// Pids of `podman system service` processes whose command line has `needle`.
fn service_pids(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).replace('\0', " ");
                    c.contains("system service") && c.contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Starts `podman system service` on `socket`, in its own process group so
/// it outlives the agent like the containers do.
fn start_service(socket: &Path, binary: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::Other(format!("{}: {e}", dir.display())))?;
    }
    // A stale socket file from a dead service would make bind fail.
    let _ = std::fs::remove_file(socket);
    let log_path = socket.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| RuntimeError::Other(format!("{}: {e}", log_path.display())))?;
    let err_log = log.try_clone().map_err(|e| RuntimeError::Other(e.to_string()))?;
    tracing::info!(socket = %socket.display(), "starting podman system service");
    std::process::Command::new(binary)
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(|e| RuntimeError::Other(format!("cannot run {} system service: {e}", binary.display())))?;
    Ok(())
}

impl Podman {
    /// Checks the API answers.
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker()
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::Unreachable {
                socket: self.socket.display().to_string(),
                reason: reason(&e),
            })
    }

    /// Whether `image` is present locally.
    pub async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker().inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(RuntimeError::Pull {
                image: image.to_string(),
                reason: reason(&e),
            }),
        }
    }

    /// Pulls `image` (reference with tag or digest).
    pub async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let opts = CreateImageOptionsBuilder::default().from_image(image).build();
        let mut stream = self.docker().create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| RuntimeError::Pull {
                image: image.to_string(),
                reason: reason(&e),
            })?;
        }
        if self.has_image(image).await? {
            Ok(())
        } else {
            Err(RuntimeError::Pull {
                image: image.to_string(),
                reason: "pull finished but the image is not present".into(),
            })
        }
    }

    /// One request with an empty body to the API socket, for endpoints
    /// bollard does not cover or models too strictly. Returns status and body.
    async fn request(&self, method: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
        use http_body_util::{BodyExt, Empty};
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("{}: {e}", self.socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "podman")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body.to_vec()))
    }

    /// Containers, all or only those carrying `label` (`key` or
    /// `key=value`), by name.
    async fn list(&self, label: Option<&str>) -> Result<HashMap<String, Observed>, RuntimeError> {
        let mut path = "/v1.41/containers/json?all=true".to_string();
        if let Some(label) = label {
            let filter = serde_json::json!({ "label": [label] }).to_string();
            path.push_str("&filters=");
            path.push_str(&percent_encode(&filter));
        }
        let err = |reason: String| RuntimeError::Other(format!("list containers: {reason}"));
        let (status, body) = self.request("GET", &path).await.map_err(err)?;
        if status != 200 {
            return Err(err(format!("{} (HTTP {status})", api_message(&body))));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| err(e.to_string()))?;
        let mut out = HashMap::new();
        for c in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let name = c["Names"][0]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            out.insert(
                name.clone(),
                Observed {
                    id: c["Id"].as_str().unwrap_or_default().to_string(),
                    name,
                    state: c["State"].as_str().unwrap_or("unknown").to_string(),
                    image: c["Image"].as_str().unwrap_or_default().to_string(),
                    labels: labels(&c["Labels"]),
                    started_at: 0,
                    restart_count: 0,
                    ports: vec![],
                    exit_code: 0,
                },
            );
        }
        Ok(out)
    }
}

/// Host ports of an inspect `PortBindings` object, sorted.
fn published(v: &serde_json::Value) -> Vec<u16> {
    let mut ports: Vec<u16> = v
        .as_object()
        .map(|m| {
            m.values()
                .flat_map(|b| b.as_array().cloned().unwrap_or_default())
                .filter_map(|b| b["HostPort"].as_str().and_then(|p| p.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    ports.sort();
    ports.dedup();
    ports
}

/// Container labels from an API JSON object.
fn labels(v: &serde_json::Value) -> HashMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes a query parameter value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `message` of a podman API error body, or the body itself.
fn api_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

fn restart_policy(s: &str) -> RestartPolicy {
    let (name, count) = match s.split_once(':') {
        Some(("on-failure", n)) => (RestartPolicyNameEnum::ON_FAILURE, n.parse().ok()),
        _ => (
            match s {
                "no" => RestartPolicyNameEnum::NO,
                "always" => RestartPolicyNameEnum::ALWAYS,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                _ => RestartPolicyNameEnum::UNLESS_STOPPED,
            },
            None,
        ),
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: count,
    }
}

/// Parses an RFC 3339 timestamp (as podman prints) into Unix seconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = t.unix_timestamp();
    // Podman reports "0001-01-01T00:00:00Z" for never-started containers.
    (secs > 0).then_some(secs)
}

#[async_trait::async_trait]
impl ContainerRuntime for Podman {
    /// Podman's version string.
    async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .docker()
            .version()
            .await
            .map_err(|e| RuntimeError::Other(reason(&e)))?;
        Ok(v.version.unwrap_or_default())
    }

    /// Pulls `image` unless present.
    async fn ensure_image(&self, image: &str) -> Result<bool, RuntimeError> {
        if self.has_image(image).await? {
            return Ok(false);
        }
        self.pull(image).await?;
        Ok(true)
    }

    /// Creates a network if it does not exist.
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self
            .docker()
            .inspect_network(name, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                let body = bollard::models::NetworkCreateRequest {
                    name: name.to_string(),
                    ..Default::default()
                };
                self.docker()
                    .create_network(body)
                    .await
                    .map(|_| ())
                    .map_err(|e| RuntimeError::Other(format!("network {name}: {}", reason(&e))))
            }
            Err(e) => Err(RuntimeError::Other(format!("network {name}: {}", reason(&e)))),
        }
    }

    /// Creates (does not start) a container from `spec` under `spec.name`.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let err = |e: BollardError| RuntimeError::Container {
            name: spec.name.clone(),
            action: "create",
            reason: reason(&e),
        };
        let mut port_bindings = HashMap::new();
        for p in &spec.ports {
            port_bindings.insert(
                format!("{p}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("0.0.0.0".into()),
                    host_port: Some(p.to_string()),
                }]),
            );
        }
        let restart = restart_policy(&spec.restart);
        let host_config = HostConfig {
            binds: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            restart_policy: Some(restart),
            // Without a network the Docker-compatible API puts a container
            // on podman's "bridge" network, where `podman run` (and so the
            // commands of `mcp render`) uses podman's own default
            // (slirp4netns on podman 4, pasta on 5). "private" asks for that
            // default: the same network as `podman run`, and ~70 ms faster
            // to start than the bridge with its rootless network namespace.
            network_mode: Some(spec.network.clone().unwrap_or_else(|| "private".to_string())),
            memory: spec.memory.map(|m| m as i64),
            nano_cpus: spec.nano_cpus,
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(spec.env.clone()),
            user: spec.user.clone(),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: (!spec.ports.is_empty()).then(|| spec.ports.iter().map(|p| format!("{p}/tcp")).collect()),
            // The compatible API records 0 (kill at once) otherwise; a
            // `podman stop` by hand or at host shutdown gets the agent's grace.
            stop_timeout: Some(i64::from(self.stop_timeout)),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let t = std::time::Instant::now();
        let resp = self.docker().create_container(Some(opts), body).await.map_err(err)?;
        tracing::debug!(container = %spec.name, ms = t.elapsed().as_millis() as u64, "podman create");
        Ok(resp.id)
    }

    /// Starts a container. Uses podman's native (libpod) endpoint: on
    /// podman 4.3 the Docker-compatible start takes ~60 ms longer for the
    /// same work, which is most of a deploy's overhead over `podman run`.
    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let err = |reason: String| RuntimeError::Container {
            name: name.to_string(),
            action: "start",
            reason,
        };
        let t = std::time::Instant::now();
        let (status, body) = self
            .request("POST", &format!("/v4.0.0/libpod/containers/{name}/start"))
            .await
            .map_err(err)?;
        tracing::debug!(container = %name, ms = t.elapsed().as_millis() as u64, status, "podman start");
        match status {
            // 304: already running.
            204 | 304 => Ok(()),
            _ => Err(err(format!("{} (HTTP {status})", api_message(&body)))),
        }
    }

    /// Stops a container (no error if already stopped or missing).
    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let opts = StopContainerOptionsBuilder::default()
            .t(self.stop_timeout as i32)
            .build();
        match self.docker().stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404, ..
            }) => Ok(()),
            Err(e) => Err(RuntimeError::Container {
                name: name.to_string(),
                action: "stop",
                reason: reason(&e),
            }),
        }
    }

    /// Removes a container, stopping it first (no error if missing).
    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.stop(name).await?;
        self.discard(name).await
    }

    /// Removes a container at once, without a stop and its grace (podman
    /// kills what still runs); no error if missing. For a container that
    /// cannot be stopped any more.
    async fn discard(&self, name: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker().remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(RuntimeError::Container {
                name: name.to_string(),
                action: "remove",
                reason: reason(&e),
            }),
        }
    }

    /// Renames a container.
    async fn rename(&self, from: &str, to: &str) -> Result<(), RuntimeError> {
        let opts = RenameContainerOptionsBuilder::default().name(to).build();
        self.docker()
            .rename_container(from, opts)
            .await
            .map_err(|e| RuntimeError::Container {
                name: from.to_string(),
                action: "rename",
                reason: reason(&e),
            })
    }

    /// Inspects one container; `None` if it does not exist. Read as plain
    /// JSON: podman reports states (e.g. `configured`, `stopped`) that a
    /// strictly typed Docker model rejects.
    async fn inspect(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        let Some(v) = self.inspect_raw(name).await? else {
            return Ok(None);
        };
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Ok(Some(Observed {
            id: text(&v["Id"]),
            name: text(&v["Name"]).trim_start_matches('/').to_string(),
            state: v["State"]["Status"].as_str().unwrap_or("unknown").to_string(),
            image: text(&v["Config"]["Image"]),
            labels: labels(&v["Config"]["Labels"]),
            started_at: v["State"]["StartedAt"].as_str().and_then(parse_rfc3339).unwrap_or(0),
            restart_count: v["RestartCount"].as_u64().unwrap_or(0) as u32,
            ports: published(&v["HostConfig"]["PortBindings"]),
            exit_code: v["State"]["ExitCode"].as_i64().unwrap_or(0),
        }))
    }

    /// Every container, managed or not, by name.
    async fn list_all(&self) -> Result<HashMap<String, Observed>, RuntimeError> {
        self.list(None).await
    }

    /// The full inspect document of a container (None: no such container).
    async fn inspect_raw(&self, name: &str) -> Result<Option<serde_json::Value>, RuntimeError> {
        let err = |reason: String| RuntimeError::Container {
            name: name.to_string(),
            action: "inspect",
            reason,
        };
        let (status, body) = self
            .request("GET", &format!("/v1.41/containers/{name}/json"))
            .await
            .map_err(err)?;
        match status {
            200 => serde_json::from_slice(&body).map(Some).map_err(|e| err(e.to_string())),
            404 => Ok(None),
            _ => Err(err(format!("{} (HTTP {status})", api_message(&body)))),
        }
    }

    /// Every container carrying the mcp service label, by name.
    async fn list_managed(&self) -> Result<HashMap<String, Observed>, RuntimeError> {
        self.list(Some(LABEL_SERVICE)).await
    }

    /// (all, running) containers this node's agent created.
    async fn count_node(&self, node: &str) -> Result<(u32, u32), RuntimeError> {
        let ours = self.list(Some(&format!("{LABEL_NODE}={node}"))).await?;
        let running = ours.values().filter(|o| o.running()).count();
        Ok((ours.len() as u32, running as u32))
    }

    /// Count of all containers and of running ones (managed or not).
    async fn count(&self) -> Result<(u32, u32), RuntimeError> {
        let all = self.list(None).await?;
        let running = all.values().filter(|o| o.running()).count();
        Ok((all.len() as u32, running as u32))
    }

    /// Output of a container as a stream of (is_stderr, bytes).
    fn logs(&self, name: &str, follow: bool, tail: u32) -> LogStream {
        let tail = if tail == 0 { "all".to_string() } else { tail.to_string() };
        let opts = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let name = name.to_string();
        Box::pin(self.docker().logs(&name, Some(opts)).map(move |item| match item {
            Ok(bollard::container::LogOutput::StdErr { message }) => Ok((true, message)),
            Ok(other) => Ok((false, other.into_bytes())),
            Err(e) => Err(RuntimeError::Container {
                name: name.clone(),
                action: "logs",
                reason: reason(&e),
            }),
        }))
    }

    /// Runs `sh -c <command>` in a running container and waits for it;
    /// returns its exit code and combined output (last 4 KiB).
    async fn exec(&self, container: &str, command: &str) -> Result<(i64, String), RuntimeError> {
        use bollard::exec::{StartExecOptions, StartExecResults};
        use bollard::models::ExecConfig;
        let failed = |reason: String| RuntimeError::Container {
            name: container.to_string(),
            action: "exec",
            reason,
        };
        let created = self
            .docker()
            .create_exec(
                container,
                ExecConfig {
                    cmd: Some(vec!["sh".into(), "-c".into(), command.to_string()]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(reason(&e)))?;
        let mut output = Vec::new();
        if let StartExecResults::Attached { output: mut stream, .. } = self
            .docker()
            .start_exec(&created.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| failed(reason(&e)))?
        {
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| failed(reason(&e)))?;
                output.extend_from_slice(&item.into_bytes());
                if output.len() > 8192 {
                    output.drain(..output.len() - 4096);
                }
            }
        }
        let inspected = self
            .docker()
            .inspect_exec(&created.id)
            .await
            .map_err(|e| failed(reason(&e)))?;
        let text = String::from_utf8_lossy(&output);
        let tail: String = text
            .chars()
            .rev()
            .take(4096)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Ok((inspected.exit_code.unwrap_or(-1), tail.trim().to_string()))
    }

    /// Whether the `podman system service` on our socket lives in a user
    /// namespace that rootless podman abandoned: `podman system reset`
    /// kills the pause process that holds the namespace, and a service left
    /// in the old one answers pings but hangs on create. Compared by the
    /// namespace of `$XDG_RUNTIME_DIR/libpod/tmp/pause.pid`; no pause
    /// process at all also means a reset happened.
    fn stale(&self) -> bool {
        let needle = format!("unix://{}", self.socket.display());
        let pids = service_pids(&needle);
        if pids.is_empty() {
            return false;
        }
        let runtime =
            std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| format!("/run/user/{}", unsafe { libc::getuid() }));
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
        let Some(pause) = std::fs::read_to_string(format!("{runtime}/libpod/tmp/pause.pid"))
            .ok()
            .and_then(|p| ns(p.trim()))
        else {
            return true;
        };
        !pids.iter().any(|pid| ns(&pid.to_string()).as_ref() == Some(&pause))
    }

    /// Makes sure the API service answers from podman's current state:
    /// restarts it when it is stale or down and `manage` (the agent starts
    /// its own service); returns whether it restarted it.
    async fn ensure_fresh(&self, manage: bool) -> Result<bool, RuntimeError> {
        let stale = self.stale();
        let down = self.ping().await.is_err();
        if (stale || down) && manage {
            tracing::warn!(stale, down, socket = %self.socket.display(), "restarting the podman API service");
            self.restart_service().await?;
            return Ok(true);
        }
        if stale {
            tracing::warn!(
                socket = %self.socket.display(),
                "the podman API service is stale (podman system reset?); restart it"
            );
        }
        if down {
            self.ping().await?;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        let p = restart_policy("on-failure:3");
        assert_eq!(p.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(p.maximum_retry_count, Some(3));
        assert_eq!(restart_policy("always").name, Some(RestartPolicyNameEnum::ALWAYS));
        assert_eq!(
            restart_policy("unless-stopped").name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_rfc3339("2024-05-01T10:00:00.123456789+02:00"), Some(1714550400));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
    }
}
