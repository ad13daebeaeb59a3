//! Output: aligned tables for people, stable JSON for scripts.

use std::io::IsTerminal;

use crate::config::NodeRef;
use comfy_table::{Cell, Color, Table, presets};
use mcp_proto as proto;
use serde_json::{Value, json};

/// Output mode.
pub struct Out {
    pub json: bool,
}

/// Prints a JSON value on stdout.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("a Value always serializes")
    );
}

/// Whether to colour output: stdout is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>).
pub fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether to colour what goes to stderr (same rules, for stderr).
pub fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A table cell for a state word, coloured by meaning when colour is on.
fn state_cell(text: &str) -> Cell {
    let cell = Cell::new(text);
    match text {
        "ok" | "healthy" | "reachable" | "running" | "deployed" => cell.fg(Color::Green),
        "FAILED" | "failed" | "unhealthy" | "unreachable" | "exited" | "missing" | "unknown" => cell.fg(Color::Red),
        "skipped" | "stopped" | "deploying" | "created" => cell.fg(Color::Yellow),
        _ => cell,
    }
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    if color() {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    t
}

pub(crate) fn print_table(t: &Table) {
    // comfy-table pads the first column with one space; trim it so the
    // table lines up with the rest of the output.
    for line in t.to_string().lines() {
        println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
    }
}

/// 1 when any step of `r` failed.
fn exit_code(r: &proto::OperationResponse) -> u8 {
    if r.steps.iter().any(|s| !s.success) { 1 } else { 0 }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// "3d4h", "5m12s": time since `since` (Unix seconds).
pub fn age(since: i64) -> String {
    if since <= 0 {
        return "-".into();
    }
    duration((now() - since).max(0) as u64)
}

/// Copies a log stream to stdout/stderr; with `prefix`, each line is
/// prefixed with its component.
pub async fn stream_logs(mut stream: tonic::Streaming<proto::LogChunk>, prefix: bool) -> Result<(), tonic::Status> {
    use std::io::Write;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(chunk) = stream.message().await? {
        let w: &mut dyn Write = if chunk.stderr { &mut stderr } else { &mut stdout };
        if prefix {
            for line in String::from_utf8_lossy(&chunk.data).split_inclusive('\n') {
                let _ = write!(w, "{} | {line}", chunk.component);
            }
        } else {
            let _ = w.write_all(&chunk.data);
        }
        let _ = w.flush();
    }
    Ok(())
}

/// Compact duration.
pub fn duration(s: u64) -> String {
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{}s", s % 60)
    } else {
        format!("{s}s")
    }
}

fn step_json(s: &proto::StepResult) -> Value {
    json!({
        "step": s.step, "success": s.success, "skipped": s.skipped,
        "detail": s.detail, "error": s.error, "duration_ms": s.duration_ms,
    })
}

fn component_json(c: &proto::ComponentInfo) -> Value {
    json!({
        "name": c.name, "container": c.container, "image": c.image, "version": c.version,
        "desired_state": c.desired_state, "state": c.observed_state, "started_at": c.started_at,
        "container_id": c.container_id, "restart_count": c.restart_count,
    })
}

fn route_json(r: &proto::RouteInfo) -> Value {
    json!({
        "component": r.component, "name": r.name, "port": r.port, "mode": r.mode,
        "hostname": r.hostname, "public": r.public, "host_port": r.host_port,
    })
}

fn service_json(s: &proto::ServiceInfo) -> Value {
    json!({
        "name": s.name, "node": s.node, "active": s.active, "updated_at": s.updated_at,
        "components": s.components.iter().map(component_json).collect::<Vec<_>>(),
        "routes": s.routes.iter().map(route_json).collect::<Vec<_>>(),
    })
}

/// A spinner with the elapsed time on stderr; removes itself when dropped.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Out {
    /// A spinner for long work (deploys, which include image pulls and
    /// upgrades) on a terminal; hidden with --json or when stderr is not a
    /// terminal.
    pub fn progress(&self, msg: &str) -> Progress {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let bar = if !self.json && std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        let template = if color_stderr() {
            "{spinner:.cyan} {msg} {elapsed:.dim}"
        } else {
            "{spinner} {msg} {elapsed}"
        };
        bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Progress { bar }
    }

    /// Per-step results of an operation; returns the exit code (1 when a
    /// step failed).
    pub fn operation(&self, node: &str, r: &proto::OperationResponse, ok: bool) -> u8 {
        if self.json {
            let v = json!({
                "node": node, "ok": ok && r.steps.iter().all(|s| s.success), "changed": r.changed,
                "steps": r.steps.iter().map(step_json).collect::<Vec<_>>(),
                "warnings": r.warnings,
                "service": r.service.as_ref().map(service_json),
            });
            if ok {
                print_json(&v);
            } else {
                // The error goes to stderr; keep stdout for the success shape.
                eprintln!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("a Value always serializes")
                );
            }
            return exit_code(r);
        }
        let mut t = table(&["STEP", "RESULT", "TIME", "DETAIL"]);
        for s in &r.steps {
            let result = if !s.success {
                "FAILED"
            } else if s.skipped {
                "skipped"
            } else {
                "ok"
            };
            let detail = if s.success { s.detail.clone() } else { s.error.clone() };
            t.add_row(vec![
                Cell::new(&s.step),
                state_cell(result),
                Cell::new(format!("{}ms", s.duration_ms)),
                Cell::new(detail),
            ]);
        }
        let print = |line: String| {
            if ok { println!("{line}") } else { eprintln!("{line}") }
        };
        for line in t.to_string().lines() {
            print(line.strip_prefix(' ').unwrap_or(line).trim_end().to_string());
        }
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        if ok && let Some(s) = &r.service {
            for c in &s.components {
                println!("{}/{} on {node}: {} ({})", s.name, c.name, c.observed_state, c.image);
            }
            for route in &s.routes {
                let name = if route.name.is_empty() {
                    String::new()
                } else {
                    format!(" {}", route.name)
                };
                println!(
                    "  route {}{name}: port {} → host port {}",
                    route.component, route.port, route.host_port
                );
            }
        }
        for s in r.steps.iter().filter(|s| !s.success) {
            eprintln!("error: {} step failed: {}", s.step, s.error);
        }
        exit_code(r)
    }

    /// `mcp ps`: SERVICE COMPONENT NODE STATE VERSION UPTIME. `missing`:
    /// placed services their node does not report; `orphans`: services
    /// running where the master did not place them.
    pub fn ps(
        &self,
        listed: &[(String, Result<proto::ListServicesResponse, String>)],
        missing: &[String],
        orphans: &[String],
    ) {
        if self.json {
            let mut rows = Vec::new();
            let mut unreachable = Vec::new();
            for (node, r) in listed {
                match r {
                    Ok(l) => rows.extend(l.services.iter().flat_map(|s| {
                        s.components.iter().map(move |c| {
                            json!({
                                "service": s.name, "component": c.name, "node": node,
                                "state": c.observed_state, "desired_state": c.desired_state,
                                "version": c.version, "image": c.image, "started_at": c.started_at,
                            })
                        })
                    })),
                    Err(e) => unreachable.push(json!({"node": node, "error": e})),
                }
            }
            print_json(
                &json!({"containers": rows, "unreachable": unreachable, "missing": missing, "orphans": orphans}),
            );
            return;
        }
        let mut t = table(&["SERVICE", "COMPONENT", "NODE", "STATE", "VERSION", "UPTIME"]);
        for (node, r) in listed {
            match r {
                Ok(l) => {
                    for s in &l.services {
                        for c in &s.components {
                            let state = if c.desired_state != "running" && c.observed_state != "running" {
                                format!("{} ({})", c.observed_state, c.desired_state)
                            } else if c.desired_state == "running" && c.observed_state != "running" {
                                format!("{} (want running)", c.observed_state)
                            } else {
                                c.observed_state.clone()
                            };
                            t.add_row(vec![
                                s.name.clone(),
                                c.name.clone(),
                                node.clone(),
                                state,
                                c.version.clone(),
                                age(c.started_at),
                            ]);
                        }
                    }
                }
                Err(_) => {
                    t.add_row(vec![
                        "-".into(),
                        "-".into(),
                        node.clone(),
                        "unreachable".into(),
                        "-".into(),
                        "-".into(),
                    ]);
                }
            }
        }
        print_table(&t);
        for (node, r) in listed {
            if let Err(e) = r {
                eprintln!("warning: node {node} unreachable: {e}");
            }
        }
        for m in missing {
            eprintln!("warning: placed but not running: {m}");
        }
        for o in orphans {
            eprintln!("warning: orphan (not placed there by the master): {o}");
        }
    }

    /// Result of an operation through the master; returns the exit code.
    pub fn fleet_operation(&self, r: &proto::FleetOperationResponse) -> u8 {
        let Some(result) = &r.result else { return 0 };
        if !self.json && !r.placement.is_empty() {
            println!("placement: {} ({})", r.node, r.placement);
        }
        self.operation(&r.node, result, true)
    }

    /// `mcp dns list`.
    pub fn dns(&self, r: &proto::ListDnsRecordsResponse) {
        if self.json {
            let rows: Vec<Value> = r
                .records
                .iter()
                .map(|d| json!({"name": d.name, "type": d.r#type, "value": d.value, "ttl": d.ttl, "node": d.node, "service": d.service}))
                .collect();
            print_json(&json!({"zone": r.zone, "listen": r.listen, "records": rows}));
            return;
        }
        let served = if r.listen.is_empty() {
            "not served".to_string()
        } else {
            format!("served on {}", r.listen.join(", "))
        };
        println!("zone {} ({served})", r.zone);
        let mut t = table(&["NAME", "TYPE", "VALUE", "TTL", "NODE", "SERVICE"]);
        for d in &r.records {
            t.add_row(vec![
                d.name.clone(),
                d.r#type.clone(),
                d.value.clone(),
                d.ttl.to_string(),
                d.node.clone(),
                d.service.clone(),
            ]);
        }
        print_table(&t);
    }

    /// `mcp route list`: routes grouped by node and listener.
    pub fn routes(&self, nodes: &[proto::NodeRoutes]) {
        if self.json {
            let rows: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    json!({"node": n.node, "error": n.error, "routes": n.routes.iter().map(|r| json!({
                        "service": r.service, "listener_port": r.listener_port, "listener": r.listener,
                        "hostname": r.hostname, "mode": r.mode, "backend": r.backend, "backend_tls": r.backend_tls,
                        "cert": r.cert})).collect::<Vec<_>>()})
                })
                .collect();
            print_json(&json!({ "nodes": rows }));
            return;
        }
        for n in nodes {
            if !n.error.is_empty() {
                println!("{}: unreachable ({})", n.node, n.error);
                continue;
            }
            let mut ports: Vec<u32> = n.routes.iter().map(|r| r.listener_port).collect();
            ports.sort();
            ports.dedup();
            if ports.is_empty() {
                println!("{}: no routes", n.node);
            }
            for port in ports {
                let bind = n
                    .routes
                    .iter()
                    .find(|r| r.listener_port == port)
                    .map(|r| r.listener.clone())
                    .unwrap_or_default();
                println!(
                    "{} listener :{port}{}",
                    n.node,
                    if bind.is_empty() {
                        String::new()
                    } else {
                        format!(" ({bind})")
                    }
                );
                let mut t = table(&["HOSTNAME", "MODE", "BACKEND", "SERVICE"]);
                for r in n.routes.iter().filter(|r| r.listener_port == port) {
                    let backend = if r.backend_tls {
                        format!("{} (tls)", r.backend)
                    } else {
                        r.backend.clone()
                    };
                    t.add_row(vec![r.hostname.clone(), r.mode.clone(), backend, r.service.clone()]);
                }
                for line in t.to_string().lines() {
                    println!("  {}", line.strip_prefix(' ').unwrap_or(line).trim_end());
                }
            }
        }
    }

    /// `mcp edge list|status`.
    pub fn edges(&self, routes: &[proto::EdgeRouteInfo], status: bool) {
        if self.json {
            let rows: Vec<Value> = routes
                .iter()
                .map(|e| {
                    json!({"hostname": e.hostname, "service": e.service, "edge_node": e.edge_node,
                           "backend_hostname": e.backend_hostname, "backend_port": e.backend_port,
                           "cert_serial": e.cert_serial, "cert_expires_at": e.cert_expires_at, "state": e.state})
                })
                .collect();
            print_json(&json!({ "edge_routes": rows }));
            return;
        }
        let mut header = vec!["HOSTNAME", "SERVICE", "EDGE", "BACKEND", "CERT SERIAL", "EXPIRES IN"];
        if status {
            header.push("STATE");
        }
        let mut t = table(&header);
        for e in routes {
            let mut row = vec![
                e.hostname.clone(),
                e.service.clone(),
                e.edge_node.clone(),
                format!("{}:{}", e.backend_hostname, e.backend_port),
                e.cert_serial.clone(),
                if e.cert_expires_at > 0 {
                    duration((e.cert_expires_at - now()).max(0) as u64)
                } else {
                    "-".into()
                },
            ];
            if status {
                row.push(e.state.clone());
            }
            t.add_row(row);
        }
        print_table(&t);
    }

    /// The plan (and results) of `mcp sync`.
    pub fn sync(&self, r: &proto::SyncResponse) {
        if self.json {
            let rows: Vec<Value> = r
                .actions
                .iter()
                .map(|a| {
                    json!({"service": a.service, "action": a.action, "node": a.node, "changed": a.changed,
                           "success": a.success, "error": a.error})
                })
                .collect();
            print_json(&json!({"dry_run": r.dry_run, "actions": rows}));
            return;
        }
        let mut t = table(&["SERVICE", "ACTION", "NODE", "CHANGED", "RESULT"]);
        for a in &r.actions {
            let result = if r.dry_run {
                "planned".to_string()
            } else if a.success {
                "ok".to_string()
            } else {
                format!("FAILED: {}", a.error)
            };
            t.add_row(vec![
                a.service.clone(),
                a.action.clone(),
                if a.node.is_empty() { "-".into() } else { a.node.clone() },
                if a.changed.is_empty() {
                    "-".into()
                } else {
                    a.changed.join(", ")
                },
                result,
            ]);
        }
        print_table(&t);
        if r.dry_run {
            println!("dry run: nothing was changed");
        }
    }

    /// `mcp node list` through the master.
    pub fn fleet_nodes(&self, nodes: &[proto::NodeInfo]) {
        if self.json {
            let rows: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    json!({"name": n.name, "address": n.address, "version": n.version, "status": n.status,
                           "status_reason": n.status_reason, "role": n.role, "arch": n.arch, "last_seen": n.last_seen,
                           "containers": n.containers, "cpus": n.cpus, "cpu_load": n.cpu_load,
                           "memory_total_bytes": n.memory_total_bytes, "memory_available_bytes": n.memory_available_bytes,
                           "disk_total_bytes": n.disk_total_bytes, "disk_available_bytes": n.disk_available_bytes})
                })
                .collect();
            print_json(&json!({ "nodes": rows }));
            return;
        }
        let mut t = table(&[
            "NAME",
            "ADDRESS",
            "VERSION",
            "STATUS",
            "ROLE",
            "ARCH",
            "LAST SEEN",
            "CONTAINERS",
        ]);
        for n in nodes {
            t.add_row(vec![
                Cell::new(&n.name),
                Cell::new(&n.address),
                Cell::new(&n.version),
                state_cell(&n.status),
                Cell::new(&n.role),
                Cell::new(&n.arch),
                Cell::new(format!("{} ago", age(n.last_seen))),
                Cell::new(n.containers),
            ]);
        }
        print_table(&t);
        for n in nodes.iter().filter(|n| !n.status_reason.is_empty()) {
            eprintln!("note: {}: {}", n.name, n.status_reason);
        }
    }

    /// A fresh join token and how to use it.
    pub fn join_token(&self, r: &proto::AddNodeResponse, master: &str) {
        if self.json {
            print_json(&json!({"node": r.name, "token": r.token, "expires_at": r.expires_at}));
            return;
        }
        println!(
            "join token for {} (single use, expires in {}):",
            r.name,
            duration((r.expires_at - now()).max(0) as u64)
        );
        println!("{}", r.token);
        println!();
        println!("on {}: mcp-agent join --master {master} --token <token>", r.name);
    }

    /// `mcp status <svc>`.
    pub fn status(&self, node: &str, st: &proto::ServiceStatus) {
        let Some(s) = &st.service else { return };
        if self.json {
            let mut v = service_json(s);
            v["events"] = st
                .events
                .iter()
                .map(|e| json!({"time_ms": e.time, "component": e.component, "kind": e.kind, "message": e.message}))
                .collect();
            print_json(&v);
            return;
        }
        println!(
            "service {}  node {node}  active {}",
            s.name,
            if s.active { "yes" } else { "no" }
        );
        println!();
        let mut t = table(&[
            "COMPONENT",
            "CONTAINER",
            "IMAGE",
            "DESIRED",
            "STATE",
            "UPTIME",
            "RESTARTS",
        ]);
        for c in &s.components {
            t.add_row(vec![
                c.name.clone(),
                c.container.clone(),
                c.image.clone(),
                c.desired_state.clone(),
                c.observed_state.clone(),
                age(c.started_at),
                c.restart_count.to_string(),
            ]);
        }
        print_table(&t);
        if !s.routes.is_empty() {
            println!();
            let mut t = table(&["COMPONENT", "ROUTE", "PORT", "MODE", "HOSTNAME", "HOST PORT", "PUBLIC"]);
            for r in &s.routes {
                t.add_row(vec![
                    r.component.clone(),
                    if r.name.is_empty() { "-".into() } else { r.name.clone() },
                    r.port.to_string(),
                    r.mode.clone(),
                    r.hostname.clone(),
                    r.host_port.to_string(),
                    if r.public { "yes".into() } else { "no".into() },
                ]);
            }
            print_table(&t);
        }
        if !st.events.is_empty() {
            println!();
            let mut t = table(&["AGE", "COMPONENT", "EVENT", "MESSAGE"]);
            for e in &st.events {
                t.add_row(vec![
                    age(e.time / 1000),
                    if e.component.is_empty() {
                        "-".into()
                    } else {
                        e.component.clone()
                    },
                    e.kind.clone(),
                    e.message.clone(),
                ]);
            }
            print_table(&t);
        }
    }

    /// `mcp node list` in direct mode.
    pub fn nodes(&self, results: &[(NodeRef, Result<proto::NodeStatusResponse, String>)]) {
        if self.json {
            let rows: Vec<Value> = results
                .iter()
                .map(|(n, r)| match r {
                    Ok(s) => json!({
                        "name": n.name, "address": n.address.list(), "status": "reachable",
                        "version": s.version, "commit": s.git_commit, "arch": s.arch,
                        "uptime_seconds": s.uptime_seconds, "podman": s.podman_version,
                        "services": s.services, "containers": s.containers, "containers_running": s.containers_running,
                        "cpus": s.cpus, "load1": s.load1,
                        "memory_total_bytes": s.memory_total_bytes, "memory_available_bytes": s.memory_available_bytes,
                        "disk_total_bytes": s.disk_total_bytes, "disk_available_bytes": s.disk_available_bytes,
                        "cgroup_version": s.cgroup_version, "limits_enforced": s.limits_enforced,
                        "boot": s.boot.iter().map(|b| json!({
                            "stage": b.name, "state": b.state, "detail": b.detail, "services": b.services,
                        })).collect::<Vec<_>>(),
                        "monitor_last_run": s.monitor_last_run, "drifted": s.drifted,
                    }),
                    Err(e) => json!({"name": n.name, "address": n.address.list(), "status": "unreachable", "error": e}),
                })
                .collect();
            print_json(&json!({ "nodes": rows }));
            return;
        }
        let mut t = table(&[
            "NAME",
            "ADDRESS",
            "VERSION",
            "STATUS",
            "ARCH",
            "UPTIME",
            "CONTAINERS",
            "PODMAN",
        ]);
        for (n, r) in results {
            let addr = n.address.list().join(",");
            match r {
                Ok(s) => t.add_row(vec![
                    Cell::new(&n.name),
                    Cell::new(addr),
                    Cell::new(&s.version),
                    state_cell("reachable"),
                    Cell::new(&s.arch),
                    Cell::new(duration(s.uptime_seconds)),
                    Cell::new(format!("{}/{}", s.containers_running, s.containers)),
                    Cell::new(&s.podman_version),
                ]),
                Err(_) => t.add_row(vec![
                    Cell::new(&n.name),
                    Cell::new(addr),
                    Cell::new("-"),
                    state_cell("unreachable"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                ]),
            };
        }
        print_table(&t);
        for (n, r) in results {
            if let Err(e) = r {
                eprintln!("warning: node {} unreachable: {e}", n.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m5s");
        assert_eq!(duration(3 * 3600 + 120), "3h2m");
        assert_eq!(duration(2 * 86400 + 3600), "2d1h");
    }
}
