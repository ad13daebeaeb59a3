//! Deploy steps 2, 4 and 5 (SPEC §4): certificates, proxy routes, DNS, and
//! the edge side of public routes. The pure parts (which names, which
//! routes, which domains) are plain functions with unit tests; the rest
//! calls the platform traits of [`crate::platform`] and the proxy.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::config::AgentConfig;
use mcp_model::service::{RouteMode, ServiceDef, check_hostname};

use crate::handle::Agent;
use crate::outcome::OpError;
use crate::platform::{Mode, ProxyRoute};
use crate::registry::{EdgeRoute, ServiceRecord};

/// Internal name of a service.
pub fn internal_name(service: &str, zone: &str) -> String {
    format!("{service}.{zone}")
}

/// Whether the service needs a TLS certificate: any L7 route.
pub fn needs_cert(def: &ServiceDef) -> bool {
    def.components
        .iter()
        .flat_map(|c| &c.routes)
        .any(|r| r.mode() == RouteMode::L7)
}

/// Names the service's certificate carries: its internal name and the
/// hostname of every L7 route, sorted and unique.
pub fn cert_hostnames(def: &ServiceDef, zone: &str) -> Vec<String> {
    let mut names = vec![internal_name(&def.name, zone)];
    for r in def
        .components
        .iter()
        .flat_map(|c| &c.routes)
        .filter(|r| r.mode() == RouteMode::L7)
    {
        names.push(r.hostname_or_default(&def.name, zone));
    }
    names.sort();
    names.dedup();
    names
}

/// Certificate and key paths of a service (or an edge hostname).
pub fn cert_paths(cfg: &AgentConfig, name: &str) -> (PathBuf, PathBuf) {
    let dir = cfg.certs_dir();
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
}

/// Proxy routes of a recorded service: each route at its hostname; public
/// routes also at the internal name (edges reach the worker by it).
pub fn routes_for(rec: &ServiceRecord, cfg: &AgentConfig) -> Vec<ProxyRoute> {
    let zone = &cfg.network.zone;
    let (cert, key) = cert_paths(cfg, &rec.def.name);
    let mut out: Vec<ProxyRoute> = Vec::new();
    for c in &rec.def.components {
        for r in &c.routes {
            let Some(held) = rec.routes.iter().find(|x| x.component == c.name && x.name == r.key()) else {
                continue;
            };
            let l7 = r.mode() == RouteMode::L7;
            let route = |hostname: String| ProxyRoute {
                service: rec.def.name.clone(),
                listener_port: r.port as u16,
                hostname,
                mode: if l7 { Mode::L7 } else { Mode::L4 },
                backend: format!("{}:{}", cfg.agent.address, held.host_port),
                backend_tls: r.backend_tls,
                backend_name: None,
                cert: l7.then(|| cert.clone()),
                key: l7.then(|| key.clone()),
            };
            let hostname = r.hostname_or_default(&rec.def.name, zone);
            let internal = internal_name(&rec.def.name, zone);
            if r.public && hostname != internal {
                out.push(route(internal));
            }
            out.push(route(hostname));
        }
    }
    // (port, hostname) is unique per service by validation; an internal
    // alias may repeat when several public routes share a port.
    out.sort_by(|a, b| (a.listener_port, &a.hostname).cmp(&(b.listener_port, &b.hostname)));
    out.dedup_by(|a, b| a.listener_port == b.listener_port && a.hostname == b.hostname);
    out
}

/// Whether `hostname` is under one of `allowed` domains, label-wise:
/// `a.example.net` and `example.net` match `example.net`;
/// `evilexample.net` does not.
pub fn domain_allowed(hostname: &str, allowed: &[String]) -> bool {
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|d| {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        host == d || host.ends_with(&format!(".{d}"))
    })
}

/// The key edges use for their own routes and certificates.
fn edge_owner(hostname: &str) -> String {
    format!("edge-{hostname}")
}

impl Agent {
    /// Step 2: reuse the service's certificate if it covers every name and
    /// has more than `renew_days` left, else issue a new one.
    pub async fn ensure_cert(&self, def: &ServiceDef) -> Result<String, String> {
        let names = cert_hostnames(def, &self.cfg.network.zone);
        self.ensure_cert_for(&def.name, &def.name, &names).await
    }

    /// Certificate `file` (under the certs dir) for `names` of `service`.
    async fn ensure_cert_for(&self, service: &str, file: &str, names: &[String]) -> Result<String, String> {
        let (cert, key) = cert_paths(&self.cfg, file);
        let renew = self.cfg.network.renew_days * 86400;
        if let Ok(pem) = std::fs::read_to_string(&cert)
            && key.exists()
            && let Some(left) = mcp_infra::pki::seconds_until_expiry(&pem)
        {
            let (have, _) = mcp_infra::pki::sans(&pem);
            if left > renew && names.iter().all(|n| have.contains(n)) {
                return Ok(format!("reused {} ({} days left)", cert.display(), left / 86400));
            }
        }
        let Some(ca) = &self.ca else {
            return Err("no certificate authority is configured (network.ca); an L7 route needs one".into());
        };
        let issued = ca.issue(service, names).await?;
        mcp_infra::fsutil::private_dir(&self.cfg.certs_dir()).map_err(|e| e.to_string())?;
        mcp_infra::pki::Issued {
            chain_pem: issued.chain_pem,
            key_pem: issued.key_pem,
        }
        .write(&cert, &key)
        .map_err(|e| e.to_string())?;
        Ok(format!("issued {} for {}", cert.display(), names.join(", ")))
    }

    /// Step 4: the service's routes, as the proxy should serve them.
    /// Returns what was there before, for undo.
    pub async fn apply_routes(&self, rec: &ServiceRecord) -> Result<(String, Vec<ProxyRoute>), String> {
        let Some(proxy) = &self.proxy else {
            return Ok(("no proxy is configured on this node; routes recorded".into(), vec![]));
        };
        let before: Vec<ProxyRoute> = proxy
            .routes()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.service == rec.def.name)
            .collect();
        let routes = routes_for(rec, &self.cfg);
        let n = routes.len();
        proxy
            .set_routes(&rec.def.name, routes)
            .await
            .map_err(|e| e.to_string())?;
        Ok((format!("{n} routes on the {} proxy", self.proxy_kind()), before))
    }

    /// Puts back the routes a failed deploy replaced.
    pub async fn restore_routes(&self, service: &str, before: Vec<ProxyRoute>) {
        if let Some(proxy) = &self.proxy {
            let r = if before.is_empty() {
                proxy.remove_routes(service).await
            } else {
                proxy.set_routes(service, before).await
            };
            if let Err(e) = r {
                tracing::warn!(%service, error = %e, "could not restore routes");
            }
        }
    }

    /// Removes the routes of a service from the proxy.
    pub async fn remove_routes(&self, service: &str) -> Result<String, String> {
        match &self.proxy {
            Some(p) => p
                .remove_routes(service)
                .await
                .map(|_| "routes removed".into())
                .map_err(|e| e.to_string()),
            None => Ok("no proxy is configured on this node".into()),
        }
    }

    fn node_ipv4(&self) -> Option<Ipv4Addr> {
        self.cfg.agent.address.parse().ok()
    }

    /// Step 5: `<service>.<zone>` → this node.
    pub async fn register_dns(&self, service: &str) -> Result<String, String> {
        let Some(dns) = &self.dns else {
            return Ok("no DNS service is configured on this node".into());
        };
        let name = internal_name(service, &self.cfg.network.zone);
        let Some(addr) = self.node_ipv4() else {
            return Err(format!(
                "agent.address {:?} is not an IPv4 address for {name}",
                self.cfg.agent.address
            ));
        };
        let r = dns.register(service, &name, addr).await;
        {
            let mut pending = self.dns_pending.lock().unwrap_or_else(|p| p.into_inner());
            match &r {
                Err(e) if e.starts_with(crate::platform::UNAVAILABLE_PREFIX) => pending.insert(service.to_string()),
                _ => pending.remove(service),
            };
        }
        match r {
            Ok(()) => Ok(format!("{name} A {addr}")),
            // The DNS service is down (e.g. the master, while an operator
            // deploys with --direct): the service runs anyway and the agent
            // registers the record when it can (hourly, and on start).
            Err(e) if e.starts_with(crate::platform::UNAVAILABLE_PREFIX) => {
                tracing::warn!(%service, error = %e, "DNS registration deferred");
                Ok(format!("deferred ({e}); the agent retries"))
            }
            Err(e) => Err(e),
        }
    }

    /// Withdraws the service's record.
    pub async fn remove_dns(&self, service: &str) -> Result<String, String> {
        let Some(dns) = &self.dns else {
            return Ok("no DNS service is configured on this node".into());
        };
        let name = internal_name(service, &self.cfg.network.zone);
        self.dns_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service);
        match dns.remove(service, &name).await {
            Ok(()) => Ok(format!("{name} removed")),
            Err(e) if e.starts_with(crate::platform::UNAVAILABLE_PREFIX) => {
                tracing::warn!(%service, error = %e, "DNS removal deferred");
                Ok(format!(
                    "deferred ({e}); the record stays until the DNS service is back"
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes a service's certificate files.
    pub fn remove_cert(&self, service: &str) -> String {
        let (cert, key) = cert_paths(&self.cfg, service);
        let existed = cert.exists();
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        if existed {
            format!("removed {}", cert.display())
        } else {
            "no certificate".into()
        }
    }

    /// Name of the proxy in use.
    pub fn proxy_kind(&self) -> &'static str {
        match (&self.proxy, self.cfg.proxy.as_ref().map(|p| p.backend.as_str())) {
            (None, _) => "none",
            (Some(_), Some("mc-proxy")) => "mc-proxy",
            (Some(_), _) => "builtin",
        }
    }

    /// Routes the proxy serves, each with the address its listener binds
    /// (empty when the listener map does not name it).
    pub async fn proxy_routes(&self) -> Result<Vec<(String, ProxyRoute)>, OpError> {
        let Some(proxy) = &self.proxy else { return Ok(vec![]) };
        let routes = proxy.routes().await.map_err(|e| OpError::Invalid(e.to_string()))?;
        let binds = self.cfg.proxy.as_ref().map(|p| p.listeners.clone()).unwrap_or_default();
        Ok(routes
            .into_iter()
            .map(|r| {
                let bind = binds
                    .iter()
                    .find(|l| l.port == r.listener_port)
                    .map(|l| l.bind.to_string())
                    .unwrap_or_default();
                (bind, r)
            })
            .collect())
    }

    /// On start: routes of every running service back into the proxy (the
    /// built-in proxy starts empty), and DNS records re-registered.
    pub async fn reapply_all(&self) {
        let services = match self.registry.services() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the registry to re-apply routes");
                return;
            }
        };
        for rec in services {
            let running = rec.wants_running();
            if !running || rec.routes.is_empty() {
                continue;
            }
            if let Err(e) = self.apply_routes(&rec).await {
                tracing::warn!(service = %rec.def.name, error = %e, "could not re-apply routes");
            }
            if let Err(e) = self.register_dns(&rec.def.name).await {
                tracing::warn!(service = %rec.def.name, error = %e, "could not re-register DNS");
            }
        }
        self.reapply_edges().await;
    }

    /// Registers the DNS records that were deferred while the DNS service
    /// was down (every monitor pass).
    pub async fn retry_deferred_dns(&self) {
        let pending: Vec<String> = self
            .dns_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for service in pending {
            match self.register_dns(&service).await {
                Ok(d) if !d.starts_with("deferred") => self.report(
                    &service,
                    "",
                    "dns-registered",
                    &format!("deferred record registered: {d}"),
                    false,
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(%service, error = %e, "DNS registration failed"),
            }
        }
    }

    /// Hourly upkeep: DNS records of running services registered again
    /// (deferred ones, or lost ones), then certificate renewals.
    pub async fn upkeep(&self) {
        for rec in self.registry.services().unwrap_or_default() {
            let running = rec.wants_running();
            if running
                && !rec.routes.is_empty()
                && let Err(e) = self.register_dns(&rec.def.name).await
            {
                tracing::warn!(service = %rec.def.name, error = %e, "DNS registration failed");
            }
        }
        self.renew_certs().await;
    }

    /// Renews service and edge certificates that have fewer than
    /// `network.renew_days` left (the proxy picks up the new files).
    pub async fn renew_certs(&self) {
        let services = self.registry.services().unwrap_or_default();
        for rec in services {
            let running = rec.wants_running();
            if !running || !needs_cert(&rec.def) {
                continue;
            }
            match self.ensure_cert(&rec.def).await {
                Ok(d) if d.starts_with("issued") => {
                    tracing::info!(service = %rec.def.name, detail = %d, "certificate renewed")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(service = %rec.def.name, error = %e, "certificate renewal failed; will retry"),
            }
        }
        for r in self.registry.edges().unwrap_or_default() {
            let owner = edge_owner(&r.hostname);
            match self
                .ensure_cert_for(&r.service, &owner, std::slice::from_ref(&r.hostname))
                .await
            {
                Ok(d) if d.starts_with("issued") => tracing::info!(hostname = %r.hostname, "edge certificate renewed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(hostname = %r.hostname, error = %e, "edge certificate renewal failed"),
            }
        }
    }

    /// Edge nodes: serve `hostname` with a public certificate, proxying to
    /// the service's internal name over TLS.
    /// Returns the serial and expiry (unix seconds) of the edge's certificate.
    pub async fn setup_edge_route(&self, r: EdgeRoute) -> Result<(String, i64), OpError> {
        let Some(edge) = &self.cfg.edge else {
            return Err(OpError::Conflict(format!(
                "node {} is not an edge node ([edge] is not configured)",
                self.name()
            )));
        };
        check_hostname(&r.hostname).map_err(|e| OpError::Invalid(format!("hostname: {e}")))?;
        if !domain_allowed(&r.hostname, &edge.allowed_domains) {
            return Err(OpError::Invalid(format!(
                "{} is not under an allowed domain ({})",
                r.hostname,
                edge.allowed_domains.join(", ")
            )));
        }
        let zone = &self.cfg.network.zone;
        if !r.backend_hostname.ends_with(&format!(".{zone}")) || check_hostname(&r.backend_hostname).is_err() {
            return Err(OpError::Invalid(format!(
                "backend {:?} is not a name in the internal zone {zone}",
                r.backend_hostname
            )));
        }
        if !r.backend_tls {
            return Err(OpError::Invalid(
                "an edge route needs TLS to its backend (backend_tls)".into(),
            ));
        }
        let port = u16::try_from(r.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| OpError::Invalid("port 0".into()))?;
        let backend_port = u16::try_from(r.backend_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| OpError::Invalid("backend_port 0".into()))?;
        let Some(proxy) = &self.proxy else {
            return Err(OpError::Conflict(format!(
                "edge node {} has no proxy configured",
                self.name()
            )));
        };
        let owner = edge_owner(&r.hostname);
        self.ensure_cert_for(&r.service, &owner, std::slice::from_ref(&r.hostname))
            .await
            .map_err(|e| OpError::Conflict(format!("certificate for {}: {e}", r.hostname)))?;
        let (cert, key) = cert_paths(&self.cfg, &owner);
        let backend = if r.backend_address.is_empty() {
            format!("{}:{backend_port}", r.backend_hostname)
        } else {
            r.backend_address.clone()
        };
        let route = ProxyRoute {
            service: owner.clone(),
            listener_port: port,
            hostname: r.hostname.clone(),
            mode: Mode::L7,
            backend,
            backend_tls: true,
            backend_name: Some(r.backend_hostname.clone()),
            cert: Some(cert.clone()),
            key: Some(key),
        };
        proxy
            .set_routes(&owner, vec![route])
            .await
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        self.registry.save_edge(&r).map_err(OpError::Registry)?;
        let pem = std::fs::read_to_string(&cert).unwrap_or_default();
        let (serial, expires) = mcp_infra::pki::serial_and_expiry(&pem).unwrap_or_default();
        tracing::info!(hostname = %r.hostname, backend = %r.backend_hostname, "edge route set up");
        Ok((serial, expires))
    }

    /// Edge nodes: stop serving `hostname`.
    pub async fn remove_edge_route(&self, hostname: &str) -> Result<(), OpError> {
        let owner = edge_owner(hostname);
        if let Some(proxy) = &self.proxy {
            proxy
                .remove_routes(&owner)
                .await
                .map_err(|e| OpError::Invalid(e.to_string()))?;
        }
        self.registry.delete_edge(hostname).map_err(OpError::Registry)?;
        self.remove_cert(&owner);
        Ok(())
    }

    /// Edge routes recorded in the registry, back into the proxy on start.
    async fn reapply_edges(&self) {
        let edges = match self.registry.edges() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read edge routes");
                return;
            }
        };
        for r in edges {
            let hostname = r.hostname.clone();
            if let Err(e) = self.setup_edge_route(r).await {
                tracing::warn!(%hostname, error = %e, "could not re-apply edge route");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_match_label_wise() {
        let allowed = vec!["example.net".to_string()];
        for (host, ok) in [
            ("example.net", true),
            ("shop.example.net", true),
            ("a.b.example.net", true),
            ("SHOP.Example.NET", true),
            ("evilexample.net", false),
            ("example.net.evil.org", false),
            ("example.org", false),
            ("net", false),
        ] {
            assert_eq!(domain_allowed(host, &allowed), ok, "{host}");
        }
    }

    #[test]
    fn names_and_routes() {
        let def = mcp_model::service::parse(
            "t",
            r#"
name = "shop"
[[components]]
name = "api"
image = "r/s:v1"
[[components.routes]]
name = "web"
port = 443
mode = "l7"
hostname = "shop.example.net"
public = true
[[components.routes]]
name = "raw"
port = 8443
"#,
        )
        .unwrap();
        assert!(needs_cert(&def));
        assert_eq!(cert_hostnames(&def, "svc.z"), ["shop.example.net", "shop.svc.z"]);
    }
}
