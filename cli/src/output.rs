//! Output: aligned tables for people, stable JSON for scripts.

use std::io::IsTerminal;

use comfy_table::{Cell, Color, Table, presets};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::NodeRef;
use crate::view::{
    Component, DnsZone, EdgeRoute, FleetNode, JoinToken, Listing, LogChunk, NodeRoutes, NodeStatus, Operation, Placed,
    ServiceStatus, Step, SyncReport,
};

/// Output mode.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

/// `v` as pretty JSON. Objects go through `serde_json::Value`, whose keys
/// are sorted: the output does not depend on field order.
pub fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    let v = serde_json::to_value(v).expect("view types have string keys only");
    serde_json::to_string_pretty(&v).expect("a Value always serializes")
}

/// Prints `v` as JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(v: &T) {
    println!("{}", to_json(v));
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

/// A borderless table with `header`, styled only when colour is on.
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

/// A table of nodes: name, address, version and status, then `more`.
fn node_table(more: &[&str]) -> Table {
    table(&[&["NAME", "ADDRESS", "VERSION", "STATUS"], more].concat())
}

/// Prints `t` flush left, without trailing blanks.
pub(crate) fn print_table(t: &Table) {
    for line in lines(t) {
        println!("{line}");
    }
}

/// The lines of `t` as printed. comfy-table pads the first column with one
/// space; it is trimmed so the table lines up with the rest of the output.
fn lines(t: &Table) -> Vec<String> {
    t.to_string()
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end().to_string())
        .collect()
}

/// STEP RESULT TIME DETAIL: a failed step shows its error.
fn steps_table(steps: &[Step]) -> Table {
    let mut t = table(&["STEP", "RESULT", "TIME", "DETAIL"]);
    for s in steps {
        let result = if !s.success {
            "FAILED"
        } else if s.skipped {
            "skipped"
        } else {
            "ok"
        };
        let detail = if s.success { &s.detail } else { &s.error };
        t.add_row(vec![
            Cell::new(&s.step),
            state_cell(result),
            Cell::new(format!("{}ms", s.duration_ms)),
            Cell::new(detail),
        ]);
    }
    t
}

/// SERVICE ACTION NODE CHANGED RESULT: the plan, or what it did.
fn sync_table(r: &SyncReport) -> Table {
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
    t
}

/// The STATE column of `mcp ps`: what runs, and what should when that differs.
fn ps_state(c: &Component) -> String {
    if c.desired_state != "running" && c.observed_state != "running" {
        format!("{} ({})", c.observed_state, c.desired_state)
    } else if c.desired_state == "running" && c.observed_state != "running" {
        format!("{} (want running)", c.observed_state)
    } else {
        c.observed_state.clone()
    }
}

/// SERVICE COMPONENT NODE STATE VERSION UPTIME, a row per container.
fn ps_table(listing: &Listing) -> Table {
    let mut t = table(&["SERVICE", "COMPONENT", "NODE", "STATE", "VERSION", "UPTIME"]);
    for n in &listing.nodes {
        let Ok(services) = &n.services else {
            t.add_row(vec!["-", "-", n.node.as_str(), "unreachable", "-", "-"]);
            continue;
        };
        for s in services {
            for c in &s.components {
                t.add_row(vec![
                    s.name.clone(),
                    c.name.clone(),
                    n.node.clone(),
                    ps_state(c),
                    c.version.clone(),
                    age(c.started_at),
                ]);
            }
        }
    }
    t
}

/// 1 when any step of `r` failed.
fn exit_code(r: &Operation) -> u8 {
    u8::from(!r.succeeded())
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

/// Writes container output to stdout/stderr as it arrives.
pub struct LogSink {
    /// Prefix each line with its component (output of several components).
    prefix: bool,
}

impl LogSink {
    /// A sink; with `prefix`, each line is prefixed with its component.
    pub fn new(prefix: bool) -> LogSink {
        LogSink { prefix }
    }

    /// Writes one chunk; a closed stdout or stderr is not an error here.
    pub fn write(&self, chunk: &LogChunk) {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        let w: &mut dyn Write = if chunk.stderr { &mut stderr } else { &mut stdout };
        if self.prefix {
            for line in String::from_utf8_lossy(&chunk.data).split_inclusive('\n') {
                let _ = write!(w, "{} | {line}", chunk.component);
            }
        } else {
            let _ = w.write_all(&chunk.data);
        }
        let _ = w.flush();
    }
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
    pub fn operation(&self, node: &str, r: &Operation, ok: bool) -> u8 {
        if self.json {
            let v = json!({
                "node": node, "ok": ok && r.succeeded(), "changed": r.changed,
                "steps": r.steps, "warnings": r.warnings, "service": r.service,
            });
            if ok {
                print_json(&v);
            } else {
                // The error goes to stderr; keep stdout for the success shape.
                eprintln!("{}", to_json(&v));
            }
            return exit_code(r);
        }
        for line in lines(&steps_table(&r.steps)) {
            if ok { println!("{line}") } else { eprintln!("{line}") }
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

    /// `mcp ps`: SERVICE COMPONENT NODE STATE VERSION UPTIME, then warnings
    /// for unreachable nodes, missing and orphaned services.
    pub fn ps(&self, listing: &Listing) {
        if self.json {
            let mut rows = Vec::new();
            let mut unreachable = Vec::new();
            for n in &listing.nodes {
                match &n.services {
                    Ok(services) => rows.extend(services.iter().flat_map(|s| {
                        s.components.iter().map(move |c| {
                            json!({
                                "service": s.name, "component": c.name, "node": n.node,
                                "state": c.observed_state, "desired_state": c.desired_state,
                                "version": c.version, "image": c.image, "started_at": c.started_at,
                            })
                        })
                    })),
                    Err(e) => unreachable.push(json!({"node": n.node, "error": e})),
                }
            }
            print_json(&json!({
                "containers": rows, "unreachable": unreachable,
                "missing": listing.missing, "orphans": listing.orphans,
            }));
            return;
        }
        print_table(&ps_table(listing));
        for n in &listing.nodes {
            if let Err(e) = &n.services {
                eprintln!("warning: node {} unreachable: {e}", n.node);
            }
        }
        for m in &listing.missing {
            eprintln!("warning: placed but not running: {m}");
        }
        for o in &listing.orphans {
            eprintln!("warning: orphan (not placed there by the master): {o}");
        }
    }

    /// Result of an operation and where it ran; returns the exit code.
    pub fn placed(&self, r: &Placed) -> u8 {
        let Some(result) = &r.result else { return 0 };
        if !self.json && !r.placement.is_empty() {
            println!("placement: {} ({})", r.node, r.placement);
        }
        self.operation(&r.node, result, true)
    }

    /// `mcp dns list`.
    pub fn dns(&self, r: &DnsZone) {
        if self.json {
            print_json(r);
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
            t.add_row([
                d.name.as_str(),
                &d.kind,
                &d.value,
                &d.ttl.to_string(),
                &d.node,
                &d.service,
            ]);
        }
        print_table(&t);
    }

    /// `mcp route list`: routes grouped by node and listener.
    pub fn routes(&self, nodes: &[NodeRoutes]) {
        if self.json {
            print_json(&json!({ "nodes": nodes }));
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
                for line in lines(&t) {
                    println!("  {line}");
                }
            }
        }
    }

    /// `mcp edge list|status`.
    pub fn edges(&self, routes: &[EdgeRoute], status: bool) {
        if self.json {
            print_json(&json!({ "edge_routes": routes }));
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
    pub fn sync(&self, r: &SyncReport) {
        if self.json {
            print_json(r);
            return;
        }
        print_table(&sync_table(r));
        if r.dry_run {
            println!("dry run: nothing was changed");
        }
    }

    /// `mcp node list` through the master.
    pub fn fleet_nodes(&self, nodes: &[FleetNode]) {
        if self.json {
            print_json(&json!({ "nodes": nodes }));
            return;
        }
        let mut t = node_table(&["ROLE", "ARCH", "LAST SEEN", "CONTAINERS"]);
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
    pub fn join_token(&self, r: &JoinToken, master: &str) {
        if self.json {
            print_json(r);
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
    pub fn status(&self, node: &str, st: &ServiceStatus) {
        let Some(s) = &st.service else { return };
        if self.json {
            let mut v = serde_json::to_value(s).expect("a service has string keys only");
            v["events"] = json!(st.events);
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
            let (uptime, restarts) = (age(c.started_at), c.restart_count.to_string());
            t.add_row([
                &c.name,
                &c.container,
                &c.image,
                &c.desired_state,
                &c.observed_state,
                &uptime,
                &restarts,
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
                    age(e.time_ms / 1000),
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
    pub fn nodes(&self, results: &[(NodeRef, Result<NodeStatus, String>)]) {
        if self.json {
            let rows: Vec<Value> = results
                .iter()
                .map(|(n, r)| match r {
                    Ok(s) => {
                        let mut row = serde_json::to_value(s).expect("a node status has string keys only");
                        row["name"] = json!(n.name);
                        row["address"] = json!(n.address.list());
                        row["status"] = json!("reachable");
                        row
                    }
                    Err(e) => json!({"name": n.name, "address": n.address.list(), "status": "unreachable", "error": e}),
                })
                .collect();
            print_json(&json!({ "nodes": rows }));
            return;
        }
        let mut t = node_table(&["ARCH", "UPTIME", "CONTAINERS", "PODMAN"]);
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
    use crate::view::{NodeServices, Service, SyncAction};

    #[test]
    fn durations() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m5s");
        assert_eq!(duration(3 * 3600 + 120), "3h2m");
        assert_eq!(duration(2 * 86400 + 3600), "2d1h");
    }

    fn component(name: &str, desired: &str, observed: &str) -> Component {
        Component {
            name: name.into(),
            desired_state: desired.into(),
            observed_state: observed.into(),
            version: "1.2".into(),
            ..Component::default()
        }
    }

    #[test]
    fn ps_states() {
        for (desired, observed, want) in [
            ("running", "running", "running"),
            ("running", "exited", "exited (want running)"),
            ("stopped", "exited", "exited (stopped)"),
            ("stopped", "running", "running"),
            ("ignore", "missing", "missing (ignore)"),
        ] {
            assert_eq!(
                ps_state(&component("api", desired, observed)),
                want,
                "{desired}/{observed}"
            );
        }
    }

    #[test]
    fn ps_rows() {
        let listing = Listing {
            nodes: vec![
                NodeServices {
                    node: "rift".into(),
                    services: Ok(vec![Service {
                        name: "web".into(),
                        components: vec![
                            component("api", "running", "running"),
                            component("db", "running", "exited"),
                        ],
                        ..Service::default()
                    }]),
                },
                NodeServices {
                    node: "calypso".into(),
                    services: Err("connection refused".into()),
                },
            ],
            ..Listing::default()
        };
        assert_eq!(
            lines(&ps_table(&listing)),
            [
                "SERVICE  COMPONENT  NODE     STATE                  VERSION  UPTIME",
                "web      api        rift     running                1.2      -",
                "web      db         rift     exited (want running)  1.2      -",
                "-        -          calypso  unreachable            -        -",
            ]
        );
    }

    #[test]
    fn step_rows() {
        let step = |name: &str, success, skipped| Step {
            step: name.into(),
            success,
            skipped,
            detail: format!("{name} done"),
            error: format!("{name} broke"),
            duration_ms: 7,
        };
        let steps = [
            step("ports", true, false),
            step("routes", true, true),
            step("containers", false, false),
        ];
        assert_eq!(
            lines(&steps_table(&steps)),
            [
                "STEP        RESULT   TIME  DETAIL",
                "ports       ok       7ms   ports done",
                "routes      skipped  7ms   routes done",
                "containers  FAILED   7ms   containers broke",
            ]
        );
        let op = |steps: Vec<Step>| Operation {
            steps,
            ..Operation::default()
        };
        assert_eq!(exit_code(&op(steps[..2].to_vec())), 0);
        assert_eq!(exit_code(&op(steps.to_vec())), 1);
        assert_eq!(exit_code(&op(vec![])), 0);
    }

    #[test]
    fn sync_rows() {
        let action = |service: &str, node: &str, changed: &[&str], success| SyncAction {
            service: service.into(),
            action: "redeploy".into(),
            node: node.into(),
            changed: changed.iter().map(|c| c.to_string()).collect(),
            success,
            error: "pull failed".into(),
        };
        let mut report = SyncReport {
            actions: vec![
                action("web", "rift", &["components[api].image", "tier"], true),
                action("old", "", &[], false),
            ],
            dry_run: true,
        };
        assert_eq!(
            lines(&sync_table(&report)),
            [
                "SERVICE  ACTION    NODE  CHANGED                      RESULT",
                "web      redeploy  rift  components[api].image, tier  planned",
                "old      redeploy  -     -                            planned",
            ]
        );
        report.dry_run = false;
        assert_eq!(
            lines(&sync_table(&report))[1..],
            [
                "web      redeploy  rift  components[api].image, tier  ok",
                "old      redeploy  -     -                            FAILED: pull failed",
            ]
        );
    }

    #[test]
    fn json_keys_are_sorted() {
        // Field order does not leak into the output: scripts and tests
        // compare it as text.
        let zone = DnsZone {
            zone: "svc.mcp".into(),
            ..DnsZone::default()
        };
        assert_eq!(
            to_json(&zone),
            "{\n  \"listen\": [],\n  \"records\": [],\n  \"zone\": \"svc.mcp\"\n}"
        );
    }
}
