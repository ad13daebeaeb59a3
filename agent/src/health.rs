//! Health probes of a component (tcp, http, grpc) on its host port, used
//! by the boot sequence and recovery.

use std::time::Duration;

use mcp_model::service::{ComponentDef, HealthDef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::registry::ServiceRecord;

/// What to probe for one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub component: String,
    /// tcp | http | grpc
    pub kind: String,
    pub port: u16,
    pub path: String,
}

/// The probes of a service: each component's own `health`, else the
/// stage default applied to its first route; components without routes
/// are probed by "running" only (none here).
pub fn probes(rec: &ServiceRecord, stage_default: Option<&str>) -> Vec<Probe> {
    let mut out = Vec::new();
    for c in &rec.def.components {
        let health: Option<HealthDef> = c.health.clone().or_else(|| {
            stage_default.map(|k| HealthDef {
                kind: k.to_string(),
                port: None,
                path: None,
            })
        });
        let Some(h) = health else { continue };
        let Some(port) = route_port(rec, c, h.port.as_deref()) else {
            continue;
        };
        out.push(Probe {
            component: c.name.clone(),
            kind: h.kind.clone(),
            port,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
        });
    }
    out
}

/// Host port of the named route (or the component's first route).
fn route_port(rec: &ServiceRecord, c: &ComponentDef, name: Option<&str>) -> Option<u16> {
    let key = match name {
        Some(n) => n.to_string(),
        None => c.routes.first()?.key().to_string(),
    };
    rec.routes
        .iter()
        .find(|r| r.component == c.name && r.name == key)
        .map(|r| r.host_port)
}

/// One probe attempt against 127.0.0.1; Ok when healthy.
pub async fn check(p: &Probe, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match p.kind.as_str() {
            "tcp" => TcpStream::connect(("127.0.0.1", p.port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "http" => http(p.port, &p.path).await,
            "grpc" => grpc(p.port).await,
            other => Err(format!("unknown health check {other:?}")),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(|e| format!("{} {} on port {}: {e}", p.component, p.kind, p.port)),
        Err(_) => Err(format!(
            "{} {} on port {}: no answer within {timeout:?}",
            p.component, p.kind, p.port
        )),
    }
}

/// GET `path` over HTTP/1.0: healthy on 2xx or 3xx.
async fn http(port: u16, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: mcp-agent\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 16];
    let n = s.read(&mut head).await.map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("HTTP {code}")),
        None => Err(format!("not an HTTP answer: {line:?}")),
    }
}

/// grpc.health.v1 Check (plaintext h2) for the whole server: SERVING.
async fn grpc(port: u16) -> Result<(), String> {
    use crate::pb::health::health_check_response::ServingStatus;
    use crate::pb::health::{HealthCheckRequest, health_client::HealthClient};
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    if r.into_inner().status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err("not SERVING".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /healthz") {
                    "200 OK"
                } else {
                    "503 Unavailable"
                };
                let _ = s.write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes()).await;
            }
        });
        let probe = |kind: &str, path: &str| Probe {
            component: "c".into(),
            kind: kind.into(),
            port,
            path: path.into(),
        };
        let t = Duration::from_secs(2);
        assert!(check(&probe("tcp", "/"), t).await.is_ok());
        assert!(check(&probe("http", "/healthz"), t).await.is_ok());
        let e = check(&probe("http", "/"), t).await.unwrap_err();
        assert!(e.contains("HTTP 503"), "{e}");
        let closed = TcpStream::connect(("127.0.0.1", 1)).await.is_err();
        assert!(closed);
        let dead = Probe {
            port: 1,
            ..probe("tcp", "/")
        };
        assert!(check(&dead, t).await.is_err());
    }
}
