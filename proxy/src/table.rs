//! The route table: an immutable snapshot, validated and built as a value,
//! swapped whole by the proxy. No IO here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::{Mode, ProxyError, ProxyRoute};

/// Routes by listener port and hostname, and by owning service.
#[derive(Debug, Default, Clone)]
pub(crate) struct Table {
    by_port: HashMap<u16, HashMap<String, Arc<ProxyRoute>>>,
    by_service: BTreeMap<String, Vec<ProxyRoute>>,
}

impl Table {
    /// The route for `hostname` (lower case) on `port`.
    pub(crate) fn get(&self, port: u16, hostname: &str) -> Option<Arc<ProxyRoute>> {
        self.by_port.get(&port)?.get(hostname).cloned()
    }

    /// Every route, ordered by port then hostname.
    pub(crate) fn routes(&self) -> Vec<ProxyRoute> {
        let mut all: Vec<ProxyRoute> = self.by_service.values().flatten().cloned().collect();
        all.sort_by(|a, b| (a.listener_port, &a.hostname).cmp(&(b.listener_port, &b.hostname)));
        all
    }

    /// This table with the routes of `service` replaced by `routes`, or why
    /// `routes` cannot be applied (the first problem found).
    pub(crate) fn with_service(
        &self,
        service: &str,
        routes: Vec<ProxyRoute>,
        listeners: &BTreeSet<u16>,
    ) -> Result<Table, ProxyError> {
        validate(service, &routes, Some(listeners))?;
        for r in &routes {
            if let Some(existing) = self.get(r.listener_port, &r.hostname)
                && existing.service != service
            {
                return Err(ProxyError::Conflict {
                    hostname: r.hostname.clone(),
                    port: r.listener_port,
                    owner: existing.service.clone(),
                });
            }
        }
        let mut next = self.without_service(service);
        for r in &routes {
            next.by_port
                .entry(r.listener_port)
                .or_default()
                .insert(r.hostname.clone(), Arc::new(r.clone()));
        }
        if !routes.is_empty() {
            next.by_service.insert(service.to_string(), routes);
        }
        Ok(next)
    }

    /// This table without any route of `service`.
    pub(crate) fn without_service(&self, service: &str) -> Table {
        let mut next = self.clone();
        if let Some(old) = next.by_service.remove(service) {
            for r in old {
                if let Some(hosts) = next.by_port.get_mut(&r.listener_port) {
                    hosts.remove(&r.hostname);
                    if hosts.is_empty() {
                        next.by_port.remove(&r.listener_port);
                    }
                }
            }
        }
        next
    }
}

/// Checks one service's route set on its own: owner, hostname, backend,
/// mode requirements, duplicates, and (when given) that each listener port
/// is configured.
pub fn validate(service: &str, routes: &[ProxyRoute], listeners: Option<&BTreeSet<u16>>) -> Result<(), ProxyError> {
    let mut seen = BTreeSet::new();
    for r in routes {
        let invalid = |reason: String| ProxyError::Invalid {
            hostname: r.hostname.clone(),
            port: r.listener_port,
            reason,
        };
        if r.service != service {
            return Err(invalid(format!(
                "route names service {:?} but is being set for {service:?}",
                r.service
            )));
        }
        check_hostname(&r.hostname).map_err(invalid)?;
        if r.listener_port == 0 {
            return Err(invalid("listener port 0 is not a port".into()));
        }
        if let Some(listeners) = listeners
            && !listeners.contains(&r.listener_port)
        {
            return Err(ProxyError::NoListener {
                port: r.listener_port,
                hostname: r.hostname.clone(),
            });
        }
        if split_host_port(&r.backend).is_none() {
            return Err(invalid(format!("backend {:?} is not host:port", r.backend)));
        }
        if r.mode == Mode::L7 && (r.cert.is_none() || r.key.is_none()) {
            return Err(invalid("an l7 route needs a certificate and a key".into()));
        }
        if r.mode == Mode::L4 && r.backend_tls {
            return Err(invalid(
                "backend_tls applies to l7 routes only (l4 passes the client's TLS through)".into(),
            ));
        }
        if !seen.insert((r.listener_port, r.hostname.as_str())) {
            return Err(invalid("listed twice".into()));
        }
    }
    Ok(())
}

/// A hostname the proxy can match: a lower-case DNS name.
pub(crate) fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 {
        return Err("hostname must be 1 to 253 characters".into());
    }
    if h != h.to_ascii_lowercase() {
        return Err("hostname must be lower case".into());
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!("{h:?} is not a valid DNS name"));
        }
    }
    Ok(())
}

/// `(host, port)` of `host:port` or `[v6]:port`; the host without brackets.
pub(crate) fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        (h, p.strip_prefix(':')?)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn route(service: &str, port: u16, host: &str, mode: Mode) -> ProxyRoute {
        ProxyRoute {
            service: service.into(),
            listener_port: port,
            hostname: host.into(),
            mode,
            backend: "127.0.0.1:10001".into(),
            backend_tls: false,
            backend_name: None,
            cert: (mode == Mode::L7).then(|| PathBuf::from("/c.pem")),
            key: (mode == Mode::L7).then(|| PathBuf::from("/c.key")),
        }
    }

    fn listeners() -> BTreeSet<u16> {
        [443, 8443].into()
    }

    /// Applies `routes` for `service` on top of `base`; the error text or
    /// the resulting (port, host, owner) list.
    fn check(base: &Table, service: &str, routes: Vec<ProxyRoute>, expected: Result<&[(u16, &str, &str)], &str>) {
        let got = base
            .with_service(service, routes, &listeners())
            .map(|t| {
                t.routes()
                    .into_iter()
                    .map(|r| (r.listener_port, r.hostname, r.service))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string());
        let expected = expected
            .map(|l| {
                l.iter()
                    .map(|(p, h, s)| (*p, h.to_string(), s.to_string()))
                    .collect::<Vec<_>>()
            })
            .map_err(str::to_string);
        assert_eq!(got, expected);
    }

    #[test]
    fn route_sets_validate_and_replace() {
        let empty = Table::default();
        check(
            &empty,
            "web",
            vec![
                route("web", 443, "web.example.net", Mode::L7),
                route("web", 8443, "web.example.net", Mode::L4),
            ],
            Ok(&[(443, "web.example.net", "web"), (8443, "web.example.net", "web")]),
        );
        check(
            &empty,
            "web",
            vec![route("web", 9999, "web.example.net", Mode::L4)],
            Err("route web.example.net on port 9999: no proxy listener is configured for port 9999"),
        );
        check(
            &empty,
            "web",
            vec![route("web", 443, "Web.example.net", Mode::L4)],
            Err("route Web.example.net on port 443: hostname must be lower case"),
        );
        check(
            &empty,
            "web",
            vec![route("web", 443, "-bad.example.net", Mode::L4)],
            Err("route -bad.example.net on port 443: \"-bad.example.net\" is not a valid DNS name"),
        );
        check(
            &empty,
            "web",
            vec![route("api", 443, "web.example.net", Mode::L4)],
            Err("route web.example.net on port 443: route names service \"api\" but is being set for \"web\""),
        );
        let mut no_cert = route("web", 443, "web.example.net", Mode::L7);
        no_cert.key = None;
        check(
            &empty,
            "web",
            vec![no_cert],
            Err("route web.example.net on port 443: an l7 route needs a certificate and a key"),
        );
        let mut l4_tls = route("web", 443, "web.example.net", Mode::L4);
        l4_tls.backend_tls = true;
        check(
            &empty,
            "web",
            vec![l4_tls],
            Err(
                "route web.example.net on port 443: backend_tls applies to l7 routes only (l4 passes the client's TLS through)",
            ),
        );
        let mut bad_backend = route("web", 443, "web.example.net", Mode::L4);
        bad_backend.backend = "nowhere".into();
        check(
            &empty,
            "web",
            vec![bad_backend],
            Err("route web.example.net on port 443: backend \"nowhere\" is not host:port"),
        );
        check(
            &empty,
            "web",
            vec![
                route("web", 443, "web.example.net", Mode::L4),
                route("web", 443, "web.example.net", Mode::L7),
            ],
            Err("route web.example.net on port 443: listed twice"),
        );

        let base = empty
            .with_service(
                "web",
                vec![route("web", 443, "web.example.net", Mode::L7)],
                &listeners(),
            )
            .expect("valid");
        check(
            &base,
            "api",
            vec![route("api", 443, "web.example.net", Mode::L4)],
            Err("route web.example.net on port 443 already belongs to service web"),
        );
        // Same hostname on another port is another route.
        check(
            &base,
            "api",
            vec![route("api", 8443, "web.example.net", Mode::L4)],
            Ok(&[(443, "web.example.net", "web"), (8443, "web.example.net", "api")]),
        );
        // Replacing a service's set drops its old hostnames.
        check(
            &base,
            "web",
            vec![route("web", 443, "www.example.net", Mode::L7)],
            Ok(&[(443, "www.example.net", "web")]),
        );
        check(&base, "web", vec![], Ok(&[]));
        assert!(base.without_service("web").get(443, "web.example.net").is_none());
        assert!(
            base.get(443, "web.example.net").is_some(),
            "the old snapshot is untouched"
        );
    }

    #[test]
    fn host_port_splits() {
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("127.0.0.1:10001", Some(("127.0.0.1", 10001))),
            ("web.svc.zone:443", Some(("web.svc.zone", 443))),
            ("[::1]:8443", Some(("::1", 8443))),
            ("::1:8443", None),
            ("web", None),
            (":443", None),
            ("web:0", None),
            ("web:70000", None),
            ("[::1]8443", None),
        ];
        for (input, expected) in cases {
            assert_eq!(split_host_port(input), *expected, "{input}");
        }
    }
}
