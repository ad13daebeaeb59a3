//! Fleet benchmark (SPEC §13, issue 4): a real `mcp-master` process and, in
//! this one process, N simulated agents, each with its own `agent-<name>`
//! certificate and its own TLS 1.3 gRPC connection. Every agent registers,
//! then heartbeats every `heartbeat.interval` seconds (real time, 30 s by
//! default) with a random phase, for a fixed number of rounds. Prints the
//! heartbeat latency seen by the agents, the master's CPU and memory over
//! that window, and the wall time of `mcp ps` across 100 simulated nodes
//! (fake agent gRPC servers the master fans out to). Run with `bench/fleet`.
//!
//! `bench-fleet [--agents 1000,10000] [--rounds 3] [--interval 30]
//!              [--ps-nodes 100] [--ps-runs 10] [--ps-hung 0]`
//!
//! `--ps-hung K` then registers K more nodes that accept TCP but never
//! answer (a frozen agent) and times `mcp ps` twice more: the frozen nodes
//! should cost one dial timeout (`timeouts.health_check`), not one each.
//!
//! Master configuration: production `[heartbeat]` values (interval 30,
//! check_every 10) and `timeouts.health_check` 5, except `silent_after`,
//! raised to 3600 so the master never probes the simulated agents (they run
//! no server). `registration.register_interval` and
//! `registration.heartbeat_min_interval` are 0: the rate limiter is then
//! skipped. At 30 s intervals the production limits (60 s between
//! registrations, 10 s between heartbeats) would never refuse a simulated
//! agent anyway; 0 keeps a compressed `--interval` below 10 s usable.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_infra::pki::{Ca, LeafRequest};
use mcp_infra::tls::{self, TlsFiles};
use mcp_model::identity::{Identity, NODE_METADATA};
use mcp_proto as proto;
use mcp_proto::mcp_agent_service_server::{McpAgentService, McpAgentServiceServer};
use mcp_proto::mcp_registration_service_client::McpRegistrationServiceClient;
use mcp_tests::{TestMaster, median, proc_status_kib};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

type RegClient = McpRegistrationServiceClient<Channel>;

/// Connections opened at once during the ramp-up (the master accepts with
/// a queue of 64 handshakes).
const RAMP_CONCURRENCY: usize = 64;

struct Args {
    agents: Vec<usize>,
    rounds: u32,
    interval: u64,
    ps_nodes: usize,
    ps_runs: usize,
    ps_hung: usize,
}

fn args() -> Args {
    let mut a = Args {
        agents: vec![1000, 10000],
        rounds: 3,
        interval: 30,
        ps_nodes: 100,
        ps_runs: 10,
        ps_hung: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = |v: &str| -> u64 { v.parse().unwrap_or_else(|_| panic!("{flag} {v:?}: not a number")) };
        match flag.as_str() {
            "--agents" => a.agents = value.split(',').map(|v| num(v) as usize).filter(|&n| n > 0).collect(),
            "--rounds" => a.rounds = num(value) as u32,
            "--interval" => a.interval = num(value),
            "--ps-nodes" => a.ps_nodes = num(value) as usize,
            "--ps-runs" => a.ps_runs = num(value) as usize,
            "--ps-hung" => a.ps_hung = num(value) as usize,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

// ------------------------------------------------------------------ stats

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// splitmix64: reproducible phases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ------------------------------------------------------------ /proc probes

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Soft "Max open files" of a process.
fn nofile_limit(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Pid of the `mcp-master run` whose configuration lives in `dir` (the
/// harness does not expose its child).
fn master_pid(dir: &Path) -> String {
    let config = dir.join("master.toml");
    let config = config.to_string_lossy();
    for e in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(e) = e else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("mcp-master"))
            && args.iter().any(|a| a == "run")
            && args.iter().any(|a| *a == *config)
        {
            return name;
        }
    }
    panic!("no mcp-master process for {config}");
}

/// Raises our RLIMIT_NOFILE to the hard limit; children (the master)
/// inherit it. Returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------ certificates

fn write_file(path: &Path, data: &[u8], mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Issues `agent-<name>` certificates from the master's CA, in parallel,
/// and writes them (key 0600) under `out/<name>/`. No fsync: they live as
/// long as the benchmark.
fn issue_agents(master: &TestMaster, names: &[String], out: &Path) -> Vec<TlsFiles> {
    let ca_dir = master.dir.join("data/ca");
    let ca_pem = Ca::cert_path(&ca_dir);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let chunk = names.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                let ca_dir = &ca_dir;
                let ca_pem = &ca_pem;
                s.spawn(move || {
                    let ca = Ca::load(ca_dir).expect("fleet CA");
                    part.iter()
                        .map(|name| {
                            let issued = ca
                                .issue(&LeafRequest {
                                    identity: Some(Identity::Agent(name.clone())),
                                    ips: vec!["127.0.0.1".parse().expect("ip")],
                                    days: 1,
                                    ..Default::default()
                                })
                                .expect("issue agent certificate");
                            let dir = out.join(name);
                            std::fs::create_dir_all(&dir).expect("cert dir");
                            let files = TlsFiles {
                                cert: dir.join("cert.pem"),
                                key: dir.join("key.pem"),
                                ca: ca_pem.clone(),
                            };
                            write_file(&files.key, issued.key_pem.as_bytes(), 0o600);
                            write_file(&files.cert, issued.chain_pem.as_bytes(), 0o644);
                            files
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("issuing thread"))
            .collect()
    })
}

// ------------------------------------------------------- simulated agents

/// Starts a master with production heartbeat settings (see the module doc).
fn start_master(node: &str, interval: u64) -> TestMaster {
    let mut m = TestMaster::init(node);
    m.configure(|c| {
        let mut hb = toml::Table::new();
        hb.insert("interval".into(), (interval as i64).into());
        hb.insert("silent_after".into(), 3600.into());
        hb.insert("check_every".into(), 10.into());
        c.insert("heartbeat".into(), toml::Value::Table(hb));
        c["registration"]["register_interval"] = 0.into();
        c["registration"]["heartbeat_min_interval"] = 0.into();
        c["timeouts"]["health_check"] = 5.into();
    });
    m.run();
    m
}

/// Adds the `mcp-node` metadata, as the agent does.
fn request<T>(node: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(NODE_METADATA, node.parse().expect("node names are ASCII"));
    r
}

/// One simulated agent's link: its own TLS connection, registered.
struct Link {
    name: String,
    client: RegClient,
}

/// Connects with the agent's certificate (the agent's own code path:
/// `tls::client_config` from files, `tls::connect`) and registers.
async fn link(master: String, name: String, files: TlsFiles, address: String) -> Result<(Link, u32), String> {
    let config = tls::client_config(&files, Some(Identity::Master)).map_err(|e| e.to_string())?;
    let timeouts = tls::Timeouts {
        connect: Duration::from_secs(10),
        request: Some(Duration::from_secs(15)),
    };
    let (channel, _) = tls::connect(&[master], config, timeouts)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = McpRegistrationServiceClient::new(channel);
    let reg = proto::RegisterRequest {
        name: name.clone(),
        role: "worker".into(),
        address,
        arch: "x86_64".into(),
        version: mcp_infra::VERSION.into(),
        cpus: 4,
        memory_total_bytes: 8 << 30,
    };
    let interval = client
        .register(request(&name, reg))
        .await
        .map_err(|s| format!("register: {} ({:?})", s.message(), s.code()))?
        .into_inner()
        .heartbeat_seconds;
    Ok((Link { name, client }, interval))
}

struct Ramp {
    links: Vec<Link>,
    secs: f64,
    /// Connect + register time per agent, µs, sorted.
    times: Vec<u64>,
    errors: Vec<String>,
    interval: u32,
}

/// Opens every agent's connection and registers it, `RAMP_CONCURRENCY` at
/// a time.
async fn ramp(master: &str, agents: Vec<(String, TlsFiles)>) -> Ramp {
    let sem = Arc::new(tokio::sync::Semaphore::new(RAMP_CONCURRENCY));
    let t0 = Instant::now();
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|(name, files)| {
            let sem = sem.clone();
            let master = master.to_string();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                let t = Instant::now();
                // Nothing listens on the discard port: the master never
                // dials these agents (silent_after is large).
                let r = link(master, name, files, "127.0.0.1:9".into()).await;
                (r, t.elapsed().as_micros() as u64)
            })
        })
        .collect();
    let mut out = Ramp {
        links: Vec::new(),
        secs: 0.0,
        times: Vec::new(),
        errors: Vec::new(),
        interval: 0,
    };
    for t in tasks {
        let (r, us) = t.await.expect("ramp task");
        match r {
            Ok((l, interval)) => {
                out.links.push(l);
                out.times.push(us);
                out.interval = interval;
            }
            Err(e) => out.errors.push(e),
        }
    }
    out.secs = t0.elapsed().as_secs_f64();
    out.times.sort_unstable();
    out
}

/// A heartbeat with plausible node facts.
fn heartbeat_msg(name: &str, rng: &mut Rng) -> proto::HeartbeatRequest {
    proto::HeartbeatRequest {
        name: name.to_string(),
        cpu_load: rng.unit() * 4.0,
        memory_total_bytes: 8 << 30,
        memory_available_bytes: (2 << 30) + (rng.next() % (4 << 30)),
        disk_total_bytes: 100 << 30,
        disk_available_bytes: (40 << 30) + (rng.next() % (20 << 30)),
        containers: (rng.next() % 12) as u32,
        cpus: 4,
    }
}

/// Heartbeats of one agent: `rounds` calls at start + phase + k·interval.
/// Returns each call's latency (µs) and when it ended (seconds into the
/// window), or its error.
async fn beat(
    mut link: Link,
    start: tokio::time::Instant,
    phase: Duration,
    interval: Duration,
    rounds: u32,
    seed: u64,
) -> (Link, Vec<Result<(u64, f64), String>>) {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(rounds as usize);
    for k in 0..rounds {
        tokio::time::sleep_until(start + phase + interval * k).await;
        let msg = heartbeat_msg(&link.name, &mut rng);
        let t = Instant::now();
        let r = link.client.heartbeat(request(&link.name, msg)).await;
        out.push(match r {
            Ok(_) => Ok((t.elapsed().as_micros() as u64, start.elapsed().as_secs_f64())),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        });
    }
    (link, out)
}

/// Results of one fleet size.
struct FleetResult {
    n: usize,
    ramp_secs: f64,
    ramp_p99: u64,
    ramp_errors: usize,
    ok: usize,
    errors: usize,
    p50: u64,
    p99: u64,
    max: u64,
    rate: f64,
    window: f64,
    master_cpu: f64,
    sim_cpu: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn fleet(rt: &tokio::runtime::Runtime, n: usize, a: &Args) -> FleetResult {
    println!("== N = {n} simulated agents (load average before: {})", loadavg());
    let master = start_master("bench-master", a.interval);
    let pid = master_pid(&master.dir);
    let limit = nofile_limit(&pid);
    if (limit as usize) < n + 100 {
        println!("   warning: the master may open only {limit} files, fewer than {n} connections");
    }

    let names: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    let t = Instant::now();
    let certs = issue_agents(&master, &names, &master.dir.join("sim"));
    println!("   issued {n} agent certificates in {:.1} s", t.elapsed().as_secs_f64());

    let address = master.address();
    let r = rt.block_on(ramp(&address, names.into_iter().zip(certs).collect()));
    println!(
        "   ramp-up: {} TLS connections + Register in {:.1} s ({:.0}/s, {RAMP_CONCURRENCY} at a time); \
         connect+register p50 {:.1} ms p99 {:.1} ms; {} errors",
        r.links.len(),
        r.secs,
        r.links.len() as f64 / r.secs,
        ms(pct(&r.times, 50.0)),
        ms(pct(&r.times, 99.0)),
        r.errors.len()
    );
    for e in r.errors.iter().take(3) {
        println!("     ramp error: {e}");
    }
    assert_eq!(
        r.interval as u64, a.interval,
        "the master answered a heartbeat interval other than the one configured"
    );

    // Measurement window: every agent heartbeats `rounds` times at its own
    // random phase within each interval.
    let interval = Duration::from_secs(a.interval);
    let mut rng = Rng(0x5eed ^ n as u64);
    let cpu0 = cpu_seconds(&pid);
    let sim0 = cpu_seconds("self");
    let t0 = Instant::now();
    let wall0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (links, samples) = rt.block_on(async {
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = r
            .links
            .into_iter()
            .map(|l| {
                let phase = interval.mul_f64(rng.unit());
                tokio::spawn(beat(l, start, phase, interval, a.rounds, rng.next()))
            })
            .collect();
        let mut links = Vec::new();
        let mut samples = Vec::new();
        for t in tasks {
            let (l, s) = t.await.expect("heartbeat task");
            links.push(l);
            samples.extend(s);
        }
        (links, samples)
    });
    let window = t0.elapsed().as_secs_f64();
    let master_cpu = (cpu_seconds(&pid) - cpu0) / window * 100.0;
    let sim_cpu = (cpu_seconds("self") - sim0) / window * 100.0;
    let rss_kib = proc_status_kib(&pid, "VmRSS");
    let hwm_kib = proc_status_kib(&pid, "VmHWM");

    let mut timed: Vec<(u64, f64)> = samples.iter().filter_map(|s| s.as_ref().ok().copied()).collect();
    timed.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
    let mut lat: Vec<u64> = timed.iter().map(|t| t.0).collect();
    lat.sort_unstable();
    let mut errs: BTreeMap<&str, usize> = BTreeMap::new();
    for e in samples.iter().filter_map(|s| s.as_ref().err()) {
        *errs.entry(e.as_str()).or_default() += 1;
    }
    let errors = errs.values().sum();
    let res = FleetResult {
        n,
        ramp_secs: r.secs,
        ramp_p99: pct(&r.times, 99.0),
        ramp_errors: r.errors.len(),
        ok: lat.len(),
        errors,
        p50: pct(&lat, 50.0),
        p99: pct(&lat, 99.0),
        max: lat.last().copied().unwrap_or(0),
        rate: lat.len() as f64 / window,
        window,
        master_cpu,
        sim_cpu,
        rss_kib,
        hwm_kib,
    };
    println!(
        "   heartbeats: {} rounds every {} s over {:.1} s (from unix time {wall0:.3}): {} ok, {} errors, {:.1}/s",
        a.rounds, a.interval, window, res.ok, res.errors, res.rate
    );
    for (e, count) in errs.iter().take(5) {
        println!("     {count} × {e}");
    }
    println!(
        "   heartbeat latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(res.p50),
        ms(res.p99),
        ms(res.max)
    );
    let over = |limit_ms: u64| lat.iter().filter(|&&us| us > limit_ms * 1000).count();
    println!(
        "   slow heartbeats: {} over 10 ms, {} over 50 ms; slowest at (s into the window): {}",
        over(10),
        over(50),
        timed
            .iter()
            .take(5)
            .map(|(us, at)| format!("{:.1} ms @ {at:.2}", ms(*us)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "   master: CPU {:.1} % of one core over the window, RSS {:.1} MiB (peak {:.1} MiB), open-files limit {limit}",
        master_cpu,
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    println!("   simulator: CPU {sim_cpu:.1} % of one core over the window");
    // Close the agents' connections before the master goes.
    rt.block_on(async move { drop(links) });
    drop(master);
    res
}

// ------------------------------------------------------ fake agent servers

/// A test double of the agent's gRPC service: enough for `mcp ps` (the
/// master's ListServices fan-out) and health probes.
struct FakeAgent {
    node: String,
}

fn fake_service(node: &str, name: &str, image: &str) -> proto::ServiceInfo {
    proto::ServiceInfo {
        name: name.into(),
        active: true,
        components: vec![proto::ComponentInfo {
            name: "main".into(),
            container: format!("{name}-main"),
            image: image.into(),
            desired_state: "running".into(),
            observed_state: "running".into(),
            started_at: 1_700_000_000,
            version: "v1".into(),
            container_id: "0123456789ab".into(),
            restart_count: 0,
        }],
        routes: vec![],
        node: node.into(),
        updated_at: 1_700_000_000,
    }
}

fn fake(what: &str) -> Status {
    Status::unimplemented(format!("{what}: the benchmark's fake agent only lists services"))
}

#[tonic::async_trait]
impl McpAgentService for FakeAgent {
    async fn deploy(&self, _: Request<proto::DeployRequest>) -> Result<Response<proto::OperationResponse>, Status> {
        Err(fake("Deploy"))
    }

    async fn stop_service(
        &self,
        _: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        Err(fake("StopService"))
    }

    async fn start_service(
        &self,
        _: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        Err(fake("StartService"))
    }

    async fn restart_service(
        &self,
        _: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        Err(fake("RestartService"))
    }

    async fn undeploy_service(
        &self,
        _: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        Err(fake("UndeployService"))
    }

    async fn list_services(
        &self,
        _: Request<proto::ListServicesRequest>,
    ) -> Result<Response<proto::ListServicesResponse>, Status> {
        Ok(Response::new(proto::ListServicesResponse {
            services: vec![
                fake_service(&self.node, "web", "registry.local/web:v1"),
                fake_service(&self.node, "cache", "registry.local/cache:v7"),
            ],
            node: self.node.clone(),
        }))
    }

    async fn get_service_status(
        &self,
        _: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::ServiceStatus>, Status> {
        Err(fake("GetServiceStatus"))
    }

    async fn live_check(
        &self,
        _: Request<proto::LiveCheckRequest>,
    ) -> Result<Response<proto::LiveCheckResponse>, Status> {
        Ok(Response::new(proto::LiveCheckResponse {
            ok: true,
            node: self.node.clone(),
            version: mcp_infra::VERSION.into(),
        }))
    }

    async fn node_status(
        &self,
        _: Request<proto::NodeStatusRequest>,
    ) -> Result<Response<proto::NodeStatusResponse>, Status> {
        Err(fake("NodeStatus"))
    }

    type LogsStream = tonic::codegen::BoxStream<proto::LogChunk>;

    async fn logs(&self, _: Request<proto::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        Err(fake("Logs"))
    }

    async fn list_proxy_routes(
        &self,
        _: Request<proto::ListProxyRoutesRequest>,
    ) -> Result<Response<proto::ListProxyRoutesResponse>, Status> {
        Err(fake("ListProxyRoutes"))
    }

    async fn setup_edge_route(
        &self,
        _: Request<proto::SetupEdgeRouteRequest>,
    ) -> Result<Response<proto::EdgeRouteResponse>, Status> {
        Err(fake("SetupEdgeRoute"))
    }

    async fn remove_edge_route(
        &self,
        _: Request<proto::RemoveEdgeRouteRequest>,
    ) -> Result<Response<proto::EdgeRouteResponse>, Status> {
        Err(fake("RemoveEdgeRoute"))
    }

    async fn recover(&self, _: Request<proto::RecoverRequest>) -> Result<Response<proto::RecoverResponse>, Status> {
        Err(fake("Recover"))
    }

    async fn render_service(
        &self,
        _: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::RenderResponse>, Status> {
        Err(fake("RenderService"))
    }

    async fn adopt_containers(
        &self,
        _: Request<proto::AdoptRequest>,
    ) -> Result<Response<proto::AdoptResponse>, Status> {
        Err(fake("AdoptContainers"))
    }

    type ExportServiceDataStream = tonic::codegen::BoxStream<proto::DataChunk>;

    async fn export_service_data(
        &self,
        _: Request<proto::ExportServiceDataRequest>,
    ) -> Result<Response<Self::ExportServiceDataStream>, Status> {
        Err(fake("ExportServiceData"))
    }

    async fn import_service_data(
        &self,
        _: Request<tonic::Streaming<proto::ImportServiceDataRequest>>,
    ) -> Result<Response<proto::ImportServiceDataResponse>, Status> {
        Err(fake("ImportServiceData"))
    }
}

/// Serves a fake agent like the real one does (TLS 1.3 with its
/// `agent-<name>` certificate, client certificates verified against the
/// fleet CA, the same authorization layer); returns its address.
async fn serve_fake(node: String, files: &TlsFiles) -> String {
    let (config, _store) = tls::server_config(files).expect("fake agent TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local addr").to_string();
    tokio::spawn(async move {
        let svc = McpAgentServiceServer::new(FakeAgent { node });
        let _ = tonic::transport::Server::builder()
            .layer(tls::AuthzLayer::new())
            .add_service(svc)
            .serve_with_incoming(tls::incoming(listener, config))
            .await;
    });
    address
}

struct PsResult {
    nodes: usize,
    cold: f64,
    median: f64,
    max: f64,
    node_list: f64,
}

fn timed(master: &TestMaster, args: &[&str]) -> f64 {
    let t = Instant::now();
    let r = master.mcp(args);
    let elapsed = t.elapsed().as_secs_f64() * 1000.0;
    r.expect_code(0, &format!("mcp {}", args.join(" ")));
    elapsed
}

fn ps(rt: &tokio::runtime::Runtime, a: &Args) -> PsResult {
    let n = a.ps_nodes;
    println!(
        "== mcp ps over {n} simulated nodes (load average before: {})",
        loadavg()
    );
    let master = start_master("bench-master", a.interval);
    let names: Vec<String> = (0..n).map(|i| format!("node-{i:03}")).collect();
    let certs = issue_agents(&master, &names, &master.dir.join("fake"));
    let address = master.address();
    let links = rt.block_on(async {
        let mut links = Vec::new();
        for (name, files) in names.iter().zip(&certs) {
            let agent_address = serve_fake(name.clone(), files).await;
            let (l, _) = link(address.clone(), name.clone(), files.clone(), agent_address)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            links.push(l);
        }
        links
    });

    // The first call dials every agent; later calls reuse the connections.
    let cold = timed(&master, &["ps"]);
    let listed = master.mcp(&["--json", "ps"]);
    listed.expect_code(0, "mcp --json ps");
    let json = listed.stdout.clone();
    let services = json.matches("\"registry.local/").count();
    assert!(
        services >= 2 * n,
        "mcp ps listed {services} components, expected {}:\n{json}",
        2 * n
    );
    let mut runs: Vec<f64> = (0..a.ps_runs).map(|_| timed(&master, &["ps"])).collect();
    let max = runs.iter().copied().fold(0.0, f64::max);
    let mut base: Vec<f64> = (0..a.ps_runs).map(|_| timed(&master, &["node", "list"])).collect();
    let res = PsResult {
        nodes: n,
        cold,
        median: median(&mut runs),
        max,
        node_list: median(&mut base),
    };
    println!(
        "   mcp ps: first (master dials {n} agents) {:.1} ms; next {} runs median {:.1} ms, max {:.1} ms",
        res.cold, a.ps_runs, res.median, res.max
    );
    println!("   baseline mcp node list (no fan-out) median {:.1} ms", res.node_list);
    if a.ps_hung > 0 {
        ps_hung(rt, &master, a.ps_hung);
    }
    rt.block_on(async move { drop(links) });
    drop(master);
    res
}

/// `mcp ps` when `k` nodes are frozen: their TCP port accepts (the kernel
/// completes the handshake) but nothing ever answers TLS.
fn ps_hung(rt: &tokio::runtime::Runtime, master: &TestMaster, k: usize) {
    let names: Vec<String> = (0..k).map(|i| format!("hung-{i:03}")).collect();
    let certs = issue_agents(master, &names, &master.dir.join("hung"));
    let listeners: Vec<std::net::TcpListener> = (0..k)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let address = master.address();
    let links = rt.block_on(async {
        let mut links = Vec::new();
        for ((name, files), l) in names.iter().zip(&certs).zip(&listeners) {
            let at = l.local_addr().expect("local addr").to_string();
            let (link, _) = link(address.clone(), name.clone(), files.clone(), at)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            links.push(link);
        }
        links
    });
    for run in ["first", "second"] {
        let t = Instant::now();
        let r = master.mcp(&["ps"]);
        let elapsed = t.elapsed().as_secs_f64() * 1000.0;
        let shown = r
            .stdout
            .lines()
            .chain(r.stderr.lines())
            .filter(|l| l.contains("hung-"))
            .count();
        println!(
            "   mcp ps with {k} frozen nodes ({run} run): {elapsed:.0} ms, exit {}, {shown} lines name them",
            r.code
        );
        if shown == 0 {
            println!("     stderr: {}", r.stderr.trim());
        }
    }
    rt.block_on(async move { drop(links) });
    drop(listeners);
}

fn main() {
    let a = args();
    let nofile = raise_nofile();
    println!(
        "fleet benchmark: {} cores, open-files limit {nofile} (inherited by the master), heartbeat every {} s, {} rounds",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        a.interval,
        a.rounds
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let t = Instant::now();
    let results: Vec<FleetResult> = a.agents.iter().map(|&n| fleet(&rt, n, &a)).collect();
    let p = (a.ps_nodes > 0).then(|| ps(&rt, &a));

    println!();
    println!(
        "summary (heartbeat every {} s, {} rounds per N, real time)",
        a.interval, a.rounds
    );
    print!("{:<34}", "");
    for r in &results {
        print!("{:>14}", format!("N={}", r.n));
    }
    println!("  target");
    let row = |label: &str, f: &dyn Fn(&FleetResult) -> String, target: &str| {
        print!("{label:<34}");
        for r in &results {
            print!("{:>14}", f(r));
        }
        println!("  {target}");
    };
    row("ramp-up (connect+register)", &|r| format!("{:.1} s", r.ramp_secs), "");
    row(
        "ramp-up p99 connect+register",
        &|r| format!("{:.1} ms", ms(r.ramp_p99)),
        "",
    );
    row("ramp-up errors", &|r| r.ramp_errors.to_string(), "0");
    row("measured window", &|r| format!("{:.1} s", r.window), "");
    row("heartbeats ok", &|r| r.ok.to_string(), "");
    row("heartbeat errors", &|r| r.errors.to_string(), "0");
    row("heartbeats/s", &|r| format!("{:.1}", r.rate), "");
    row("heartbeat p50", &|r| format!("{:.2} ms", ms(r.p50)), "");
    row(
        "heartbeat p99",
        &|r| format!("{:.2} ms", ms(r.p99)),
        "< 50 ms at N=10000",
    );
    row("heartbeat max", &|r| format!("{:.2} ms", ms(r.max)), "");
    row("master CPU (% of one core)", &|r| format!("{:.1} %", r.master_cpu), "");
    row(
        "master RSS (VmRSS)",
        &|r| format!("{:.1} MiB", r.rss_kib as f64 / 1024.0),
        "",
    );
    row(
        "master peak RSS (VmHWM)",
        &|r| format!("{:.1} MiB", r.hwm_kib as f64 / 1024.0),
        "",
    );
    row("simulator CPU (% of one core)", &|r| format!("{:.1} %", r.sim_cpu), "");
    if let Some(p) = &p {
        println!(
            "mcp ps over {} nodes: median {:.1} ms, max {:.1} ms over {} runs (first run, dialling every agent: {:.1} ms; \
             mcp node list baseline {:.1} ms)  target <= 150 ms",
            p.nodes, p.median, p.max, a.ps_runs, p.cold, p.node_list
        );
    }
    println!("total benchmark time {:.0} s", t.elapsed().as_secs_f64());
}
