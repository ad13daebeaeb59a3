//! Benchmark of the built-in proxy (SPEC §13, issue 6): the same backend
//! reached directly and through the proxy, L4 and L7, in one run.
//!
//! Each case runs a bounded load generator on loopback: `--connections`
//! keep-alive HTTP/1.1 connections, for `--seconds` each, in two phases:
//!
//! - **saturation**: every connection sends its next request as soon as the
//!   previous answer arrived (closed loop): requests/s and latency at full load;
//! - **paced**: `--rate` requests/s in total on a fixed schedule (open loop;
//!   a request sent late because the previous one was slow counts from its
//!   scheduled time, so a stall is not hidden): the latency a client sees at
//!   a moderate load.
//!
//! Cases: L4 = TLS client → proxy (SNI passthrough) → TLS backend, against
//! TLS client → the same backend; L7 = TLS client → proxy (terminates) →
//! plain HTTP/1.1 backend, against plain client → the same backend (and, as
//! a reference, a TLS client → the TLS backend: what direct costs when the
//! client pays for TLS as it does through the proxy).
//!
//! Backend, proxy and load generator run on separate tokio runtimes (one
//! worker thread each by default) in this one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use mcp_infra::pki::{Ca, LeafRequest};
use mcp_proxy::{BuiltinProxy, Mode, ProxyConfig, ProxyRoute};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

#[derive(Parser, Debug)]
#[command(about = "built-in proxy vs direct connection, L4 and L7")]
struct Args {
    /// Concurrent keep-alive connections per case.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds per phase and case (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Total requests/s of the paced phase.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Worker threads of the proxy's runtime.
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 256)]
    body: usize,
    /// Rounds over all cases (interleaved); the table shows each metric's
    /// median over the rounds, which damps noise from other load.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("bench-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("temp dir")?;
    let result = run(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn runtime(name: &str, threads: usize) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .context("runtime")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn run(args: &Args, dir: &Path) -> Result<()> {
    let ca = Ca::create(dir, "bench")?;
    let issue = |name: &str, dns: &str| -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        ca.issue(&LeafRequest {
            identity: None,
            dns_names: vec![dns.to_string()],
            ips: vec![],
            days: 1,
        })?
        .write(&cert, &key)?;
        Ok((cert, key))
    };
    let backend_cert = issue("backend", "l4.bench")?;
    let l7_cert = issue("l7", "l7.bench")?;
    let ca_path = Ca::cert_path(dir);

    let backend_rt = runtime("backend", 1)?;
    let proxy_rt = runtime("proxy", args.proxy_threads)?;
    let client_rt = runtime("client", 1)?;

    let body = Bytes::from(vec![b'x'; args.body]);
    let tls_cfg = server_config(&backend_cert)?;
    let (plain, tls) = backend_rt.block_on(async {
        let plain = spawn_backend(None, body.clone()).await?;
        let tls = spawn_backend(Some(tls_cfg), body.clone()).await?;
        anyhow::Ok((plain, tls))
    })?;

    let proxy = proxy_rt.block_on(async {
        let mut cfg = ProxyConfig::new([(443, "127.0.0.1:0".parse()?)].into());
        cfg.max_connections = 10_000;
        let proxy = BuiltinProxy::start(cfg)?;
        let route = |host: &str, mode, backend: SocketAddr, cert: Option<&(PathBuf, PathBuf)>| ProxyRoute {
            service: "bench".into(),
            listener_port: 443,
            hostname: host.into(),
            mode,
            backend: backend.to_string(),
            backend_tls: false,
            backend_name: None,
            cert: cert.map(|c| c.0.clone()),
            key: cert.map(|c| c.1.clone()),
        };
        proxy
            .set_routes(
                "bench",
                vec![
                    route("l4.bench", Mode::L4, tls, None),
                    route("l7.bench", Mode::L7, plain, Some(&l7_cert)),
                ],
            )
            .await?;
        anyhow::Ok(proxy)
    })?;
    let proxy_addr = proxy.local_addr(443).context("proxy listener")?;
    let client_tls = client_config(&ca_path)?;

    let cases = [
        ("L4", "direct", Target::tls(tls, "l4.bench", &client_tls)),
        ("L4", "proxy", Target::tls(proxy_addr, "l4.bench", &client_tls)),
        ("L7", "direct", Target::plain(plain)),
        ("L7", "proxy", Target::tls(proxy_addr, "l7.bench", &client_tls)),
        // Reference only: the client paying for TLS as it does via the proxy.
        ("L7", "tls-ref", Target::tls(tls, "l4.bench", &client_tls)),
    ];
    println!(
        "bench-proxy: {} connections, {} s per phase, paced at {} req/s, {} B bodies, proxy on {} thread(s), {} CPUs",
        args.connections,
        args.seconds,
        args.rate,
        args.body,
        args.proxy_threads,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let mut runs: Vec<Vec<(Stats, Stats)>> = vec![Vec::new(); cases.len()];
    for round in 1..=args.rounds.max(1) {
        for (i, (mode, path, target)) in cases.iter().enumerate() {
            let sat = client_rt.block_on(load(target, args, None))?;
            let paced = client_rt.block_on(load(target, args, Some(args.rate)))?;
            println!(
                "round {round} {mode} {path:<7}: saturated {:>6.0} req/s p50 {:.3} p99 {:.3} ms | paced p50 {:.3} p99 {:.3} ms",
                sat.rps, sat.p50_ms, sat.p99_ms, paced.p50_ms, paced.p99_ms
            );
            runs[i].push((sat, paced));
        }
    }
    let rows: Vec<_> = cases
        .iter()
        .zip(&runs)
        .map(|((mode, path, _), r)| {
            let sat: Vec<Stats> = r.iter().map(|x| x.0).collect();
            let paced: Vec<Stats> = r.iter().map(|x| x.1).collect();
            (*mode, *path, Stats::median(&sat), Stats::median(&paced))
        })
        .collect();
    print_table(&rows);
    drop(proxy);
    Ok(())
}

fn print_table(rows: &[(&str, &str, Stats, Stats)]) {
    println!();
    println!("median over rounds:");
    println!(
        "{:<5} {:<7} | {:>10} {:>9} {:>9} {:>6} | {:>9} {:>9} {:>9} {:>6}",
        "mode", "path", "sat req/s", "p50 ms", "p99 ms", "errors", "paced r/s", "p50 ms", "p99 ms", "errors"
    );
    println!("{}", "-".repeat(100));
    for (mode, path, s, p) in rows {
        println!(
            "{:<5} {:<7} | {:>10.0} {:>9.3} {:>9.3} {:>6} | {:>9.0} {:>9.3} {:>9.3} {:>6}",
            mode, path, s.rps, s.p50_ms, s.p99_ms, s.errors, p.rps, p.p50_ms, p.p99_ms, p.errors
        );
    }
    println!();
    let find = |mode: &str, path: &str| rows.iter().find(|r| r.0 == mode && r.1 == path);
    let verdict = |ratio: f64| if ratio <= 1.5 { "ok" } else { "over 1.5x" };
    for (mode, base) in [("L4", "direct"), ("L7", "direct"), ("L7", "tls-ref")] {
        if let (Some(d), Some(x)) = (find(mode, base), find(mode, "proxy")) {
            let sat = x.2.p99_ms / d.2.p99_ms;
            let paced = x.3.p99_ms / d.3.p99_ms;
            println!(
                "{mode} proxy vs {base:<8} throughput {:.2}x   p99 saturated {:.2}x ({})   p99 paced {:.2}x ({})",
                x.2.rps / d.2.rps,
                sat,
                verdict(sat),
                paced,
                verdict(paced)
            );
        }
    }
}

// ---------------------------------------------------------------- TLS

fn server_config(pair: &(PathBuf, PathBuf)) -> Result<Arc<rustls::ServerConfig>> {
    let chain = mcp_infra::tls::parse_certs(&std::fs::read(&pair.0)?).map_err(anyhow::Error::msg)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&std::fs::read(&pair.1)?)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in mcp_infra::tls::parse_certs(&std::fs::read(ca)?).map_err(anyhow::Error::msg)? {
        roots.add(c)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

// ---------------------------------------------------------------- backend

async fn spawn_backend(tls: Option<Arc<rustls::ServerConfig>>, body: Bytes) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------- load

struct Target {
    addr: SocketAddr,
    tls: Option<(String, Arc<rustls::ClientConfig>)>,
}

impl Target {
    fn tls(addr: SocketAddr, sni: &str, cfg: &Arc<rustls::ClientConfig>) -> Target {
        Target {
            addr,
            tls: Some((sni.to_string(), cfg.clone())),
        }
    }

    fn plain(addr: SocketAddr) -> Target {
        Target { addr, tls: None }
    }

    fn host(&self) -> &str {
        self.tls.as_ref().map_or("backend", |(h, _)| h.as_str())
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let sender = match &self.tls {
            None => {
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                s
            }
            Some((sni, cfg)) => {
                let name = ServerName::try_from(sni.clone())?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await?;
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                s
            }
        };
        Ok(sender)
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

impl Stats {
    /// Each metric's median over rounds; errors summed.
    fn median(runs: &[Stats]) -> Stats {
        let med = |f: fn(&Stats) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        Stats {
            rps: med(|s| s.rps),
            p50_ms: med(|s| s.p50_ms),
            p99_ms: med(|s| s.p99_ms),
            errors: runs.iter().map(|s| s.errors).sum(),
        }
    }
}

/// One phase against `target`: a 1 s warm-up, then `args.seconds` measured.
/// `rate`: total requests/s on a fixed schedule; `None`: closed loop.
async fn load(target: &Target, args: &Args, rate: Option<u64>) -> Result<Stats> {
    let mut senders = Vec::new();
    for _ in 0..args.connections {
        senders.push(target.connect().await?);
    }
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(args.seconds);
    let start = tokio::time::Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let interval = rate.map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(1) as f64));
    let host = target.host().to_string();
    let n = args.connections.max(1) as f64;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let host = host.clone();
        tasks.spawn(async move {
            let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            // Spread the paced connections' schedules evenly.
            let mut next = start + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n));
            loop {
                let sent_at = match interval {
                    Some(iv) => {
                        let now = tokio::time::Instant::now();
                        let at = if now < next {
                            // Ahead of schedule: wait, and count from when the
                            // timer let us go (its ~1 ms slack is the load
                            // generator's, not the system's).
                            tokio::time::sleep_until(next).await;
                            tokio::time::Instant::now()
                        } else {
                            // Behind (the previous answer was late): count
                            // from the scheduled time, so a stall is not hidden.
                            next
                        };
                        next += iv;
                        at
                    }
                    None => tokio::time::Instant::now(),
                };
                if sent_at >= end {
                    break;
                }
                let req = hyper::Request::get("/")
                    .header("host", host.as_str())
                    .body(Empty::new())
                    .expect("static request");
                let ok = match sender.send_request(req).await {
                    Ok(resp) => resp.status().is_success() && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if sent_at >= measure_from {
                    if ok {
                        let us = sent_at.elapsed().as_micros();
                        lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
                if !ok {
                    break;
                }
            }
            (lat_us, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, e) = r?;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i]) / 1000.0
    };
    Ok(Stats {
        rps: all.len() as f64 / measure.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    })
}
