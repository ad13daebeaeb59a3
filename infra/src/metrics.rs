//! Prometheus metrics: the shared pieces of the agent's and the master's
//! `/metrics` endpoint (a separate plain-HTTP listener, `[metrics] listen`).
//!
//! Each daemon keeps its own metric families (`mcp_agent_…`, `mcp_master_…`)
//! in a process-wide registry; this module holds the label and histogram
//! helpers, the text encoding (Prometheus text format 0.0.4) and the tiny
//! HTTP server that answers `GET /metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;
/// Counters by labels.
pub type CounterFamily = Family<Labels, Counter>;
/// Float gauges by labels.
pub type GaugeFamily = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;
/// One float gauge without labels.
pub type GaugeF64 = Gauge<f64, std::sync::atomic::AtomicU64>;
/// Histograms by labels.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Label pairs from `(name, value)` slices.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A histogram of durations in seconds: 5 ms … ~10 min.
pub fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// A new histogram family of durations in seconds.
pub fn seconds_histogram_family() -> HistogramFamily {
    Family::new_with_constructor(seconds_histogram as fn() -> Histogram)
}

/// Registers `metric` as `name` with its `help` text and returns it (a
/// handle to the same series), so a family is declared in one expression.
pub fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// The registry in the Prometheus text format (0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, registry);
    out
}

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What the metrics listener serves: called on every scrape, returns the
/// exposition text (gauges computed at scrape time are refreshed inside).
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Answers `GET /metrics` (and `/`) on `listener` until the task is dropped.
/// Plain HTTP/1.x, one request per connection; anything else gets 404/405.
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), answer(tcp, render)).await {
                tracing::debug!(%peer, error = %e, "metrics: request timed out");
            }
        });
    }
}

async fn answer(mut tcp: TcpStream, render: Render) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head (up to 8 KiB); the body, if any, is ignored.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 8192 {
            let _ = respond(
                &mut tcp,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            )
            .await;
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            let body = if method == "HEAD" {
                String::new()
            } else {
                render().await
            };
            let _ = respond(&mut tcp, "200 OK", CONTENT_TYPE, &body).await;
        }
        ("GET" | "HEAD", _) => {
            let _ = respond(&mut tcp, "404 Not Found", "text/plain", "metrics are at /metrics\n").await;
        }
        _ => {
            let _ = respond(&mut tcp, "405 Method Not Allowed", "text/plain", "GET only\n").await;
        }
    }
}

async fn respond(tcp: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}

/// Starts the metrics listener on `addr` in a task; an address that cannot
/// be bound is an error (the daemon refuses to start rather than run blind).
pub async fn start(addr: SocketAddr, render: Render) -> std::io::Result<SocketAddr> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, "metrics listener started (plain HTTP, GET /metrics)");
    tokio::spawn(serve(listener, render));
    Ok(local)
}

/// Starts the listener when the daemon has a `[metrics]` section; the
/// error names the setting.
pub async fn start_configured(
    section: Option<&crate::config::MetricsSection>,
    render: Render,
) -> Result<Option<SocketAddr>, String> {
    let Some(cfg) = section else {
        return Ok(None);
    };
    start(cfg.listen, render)
        .await
        .map(Some)
        .map_err(|e| format!("metrics.listen {}: {e}", cfg.listen))
}

/// Deploys by result and the durations of the steps that ran: the agent
/// counts the deploys it runs, the master those it coordinates.
pub struct DeployMetrics {
    deploys: CounterFamily,
    step_duration: HistogramFamily,
}

impl DeployMetrics {
    /// Registers `<prefix>_deploys` and `<prefix>_deploy_step_duration_seconds`
    /// with their help texts; every one of `results` exists from the start
    /// at 0, so `increase()` in alert rules sees the first deploy.
    pub fn register(
        registry: &mut Registry,
        prefix: &str,
        results: &[&str],
        (deploys_help, steps_help): (&str, &str),
    ) -> DeployMetrics {
        let m = DeployMetrics {
            deploys: Default::default(),
            step_duration: seconds_histogram_family(),
        };
        for r in results {
            let _ = m.deploys.get_or_create(&labels(&[("result", r)]));
        }
        registry.register(format!("{prefix}_deploys"), deploys_help, m.deploys.clone());
        registry.register(
            format!("{prefix}_deploy_step_duration_seconds"),
            steps_help,
            m.step_duration.clone(),
        );
        m
    }

    /// Counts one deploy with `result` and observes the durations of its
    /// steps, given as (step, milliseconds) for the steps that ran.
    pub fn record<'a>(&self, result: &str, steps: impl IntoIterator<Item = (&'a str, u64)>) {
        self.deploys.get_or_create(&labels(&[("result", result)])).inc();
        for (step, ms) in steps {
            self.step_duration
                .get_or_create(&labels(&[("step", step)]))
                .observe(ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_label_escaping_encode_as_text_0_0_4() {
        let mut reg = Registry::default();
        let c = CounterFamily::default();
        let h = seconds_histogram_family();
        reg.register("mcp_test_things", "Things counted", c.clone());
        reg.register("mcp_test_step_duration_seconds", "Step durations", h.clone());
        c.get_or_create(&labels(&[("result", "a\"b\\c\nd")])).inc();
        h.get_or_create(&labels(&[("step", "ports")])).observe(0.2);
        let text = encode(&reg);
        assert!(text.contains("# TYPE mcp_test_things_total counter"), "{text}");
        assert!(
            text.contains(r#"mcp_test_things_total{result="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_test_step_duration_seconds_bucket{step="ports",le="0.25"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_test_step_duration_seconds_bucket{step="ports",le="0.1"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_test_step_duration_seconds_count{step="ports"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_refuses_other_paths() {
        let addr = start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|| Box::pin(async { "mcp_up 1\n".to_string() })),
        )
        .await
        .unwrap();
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nmcp_up 1\n"), "{ok}");
        let missing = get("GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get("POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    }
}
