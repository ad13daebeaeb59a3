//! `mcp agent upgrade` and `mcp agent status`: replace the agent binary on
//! nodes over SSH, safely, and show what every node runs.
//!
//! Per node: check the host key, upload to `<dir>/mcp-agent.new`, check its
//! SHA-256 on the node, run it once (`--version`: right arch, and the version
//! to wait for), hard-link the current binary to `mcp-agent.prev`, rename
//! `.new` over `mcp-agent` (atomic: `mcp-agent` always exists), run the
//! node's restart command, and wait until the agent answers with the new
//! version. If it does not within the wait, `.prev` goes back, the agent is
//! restarted again and the node is reported failed. Containers belong to
//! conmon, not to the agent, so they keep running throughout.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures::StreamExt;
use serde_json::json;

use crate::config::{DEFAULT_INSTALL_DIR, DEFAULT_RESTART, NodeRef};
use crate::ctx::Ctx;
use crate::error::usage;
use crate::output::{print_json, print_table, table};
use crate::release::Binary;
use crate::ssh::{Login, Session, Target, quote_path};
use crate::view::NodeStatus;

/// Options of `mcp agent upgrade`.
#[derive(clap::Args, Debug)]
pub struct UpgradeArgs {
    /// Nodes to upgrade (default: every node in [[nodes]]; version skew
    /// between agents breaks RPCs).
    pub nodes: Vec<String>,
    /// Release directory with <arch>/mcp-agent [default: upgrade.dist, `dist`].
    #[arg(long)]
    pub dist: Option<PathBuf>,
    /// Record the host key of a node known_hosts does not list yet (first
    /// contact). A changed host key is refused regardless.
    #[arg(long)]
    pub accept_new_host_key: bool,
    /// Nodes upgraded at once [default: upgrade.parallel, 8].
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Seconds to wait for the new version to answer before rolling back
    /// [default: upgrade.wait, 60].
    #[arg(long)]
    pub wait: Option<u64>,
}

/// Options of `mcp agent status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Nodes to show (default: every node in [[nodes]]).
    pub nodes: Vec<String>,
}

/// How one node's upgrade ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Upgraded,
    Unchanged,
    Failed {
        stage: &'static str,
        error: String,
        rolled_back: Option<bool>,
    },
}

struct NodeResult {
    node: String,
    arch: String,
    from: String,
    to: String,
    outcome: Outcome,
    seconds: f64,
}

fn arch_of(n: &NodeRef) -> &str {
    n.arch.as_deref().unwrap_or("amd64")
}

/// The nodes named on the command line (all when none), in config order.
fn select<'a>(ctx: &'a Ctx, names: &[String]) -> Result<Vec<&'a NodeRef>> {
    if ctx.cfg.nodes.is_empty() {
        usage!("{}: no [[nodes]] configured", ctx.path.display());
    }
    for n in names {
        ctx.node(n)?;
    }
    Ok(ctx
        .cfg
        .nodes
        .iter()
        .filter(|n| names.is_empty() || names.contains(&n.name))
        .collect())
}

/// "0.1.0 (commit abc)" from `mcp-agent --version` output
/// ("mcp-agent 0.1.0 (commit abc)").
fn parse_version(out: &str) -> Option<String> {
    let line = out.lines().next()?.trim();
    let v = line.strip_prefix("mcp-agent ")?.trim();
    (v.contains("(commit ") && v.ends_with(')')).then(|| v.to_string())
}

/// What the agent answers right now (NodeStatus), or why not.
async fn agent_version(ctx: &Ctx, node: &NodeRef) -> Result<NodeStatus> {
    let mut c = ctx.agent(node, Duration::from_secs(5)).await?;
    c.node_status().await.map_err(|e| anyhow!("{}", e.message))
}

/// Polls the agent until it reports `want`, or `wait` passes.
async fn wait_for_version(ctx: &Ctx, node: &NodeRef, want: &str, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let last = match agent_version(ctx, node).await {
            Ok(s) if s.long_version() == want => return Ok(()),
            Ok(s) => format!("answers with {}", s.long_version()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn note(node: &str, msg: &str) {
    eprintln!("{node}: {msg}");
}

/// Runs `mcp agent upgrade`.
pub async fn upgrade(ctx: &Ctx, args: UpgradeArgs) -> Result<u8> {
    let nodes = select(ctx, &args.nodes)?;
    for n in &nodes {
        Target::of(n, None)?;
    }
    let dist = args.dist.clone().unwrap_or_else(|| ctx.cfg.upgrade.dist.clone());
    let parallel = args.parallel.unwrap_or(ctx.cfg.upgrade.parallel);
    if parallel == 0 {
        usage!("--parallel must be at least 1");
    }
    let wait = Duration::from_secs(args.wait.unwrap_or(ctx.cfg.upgrade.wait));
    let mut binaries = BTreeMap::new();
    for n in &nodes {
        if let Entry::Vacant(slot) = binaries.entry(arch_of(n).to_string()) {
            let b = Binary::read(&Binary::path(&dist, slot.key()))?.executable()?;
            slot.insert(Arc::new(b));
        }
    }
    let login = Login::new(&ctx.cfg.ssh, args.accept_new_host_key);
    let started = Instant::now();
    let mut results: Vec<NodeResult> = futures::stream::iter(nodes.iter().map(|n| {
        let bin = binaries[arch_of(n)].clone();
        let login = &login;
        async move {
            let t0 = Instant::now();
            let mut from = String::from("-");
            let mut to = String::from("-");
            let outcome = upgrade_node(ctx, n, &bin, login, wait, &mut from, &mut to).await;
            match &outcome {
                Outcome::Upgraded => note(&n.name, &format!("upgraded to {to}")),
                Outcome::Unchanged => note(&n.name, &format!("already runs {to}: unchanged")),
                Outcome::Failed { stage, error, .. } => note(&n.name, &format!("FAILED at {stage}: {error}")),
            }
            NodeResult {
                node: n.name.clone(),
                arch: arch_of(n).to_string(),
                from,
                to,
                outcome,
                seconds: t0.elapsed().as_secs_f64(),
            }
        }
    }))
    .buffer_unordered(parallel)
    .collect()
    .await;
    let order: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    results.sort_by_key(|r| order.iter().position(|n| *n == r.node));
    print_summary(ctx, &results, started.elapsed().as_secs_f64());
    let failed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
        .count();
    if failed > 0 {
        eprintln!("error: {failed} of {} node(s) failed", results.len());
        return Ok(1);
    }
    Ok(0)
}

/// One node, start to end; `from`/`to` are filled in as they become known.
async fn upgrade_node(
    ctx: &Ctx,
    node: &NodeRef,
    bin: &Binary,
    login: &Login,
    wait: Duration,
    from: &mut String,
    to: &mut String,
) -> Outcome {
    let fail = |stage: &'static str, e: anyhow::Error| Outcome::Failed {
        stage,
        error: format!("{e:#}"),
        rolled_back: None,
    };
    let name = node.name.as_str();
    let target = match Target::of(node, None) {
        Ok(t) => t,
        Err(e) => return fail("config", e),
    };
    note(
        name,
        &format!("connecting to {}@{}", target.user, target.known_hosts_name()),
    );
    let s = match Session::connect(&target, login).await {
        Ok(s) => s,
        Err(e) => return fail("connect", e),
    };
    if s.learned_host_key {
        note(
            name,
            &format!(
                "recorded the host key of {} in {}",
                target.known_hosts_name(),
                login.host_keys.known_hosts.display()
            ),
        );
    }
    let before = agent_version(ctx, node).await;
    if let Ok(st) = &before {
        *from = st.long_version();
        let reported = match st.arch.as_str() {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        if reported != arch_of(node) {
            s.close().await;
            return Outcome::Failed {
                stage: "config",
                error: format!(
                    "the agent reports arch {} but [[nodes]] says {}; fix `arch` for this node",
                    st.arch,
                    arch_of(node)
                ),
                rolled_back: None,
            };
        }
    }
    let outcome = install(ctx, node, &s, bin, wait, before.ok(), to).await;
    s.close().await;
    outcome
}

async fn install(
    ctx: &Ctx,
    node: &NodeRef,
    s: &Session,
    bin: &Binary,
    wait: Duration,
    before: Option<NodeStatus>,
    to: &mut String,
) -> Outcome {
    let name = node.name.as_str();
    let dir = node
        .install_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_DIR));
    let cur = quote_path(&dir.join("mcp-agent"));
    let new = quote_path(&dir.join("mcp-agent.new"));
    let prev = quote_path(&dir.join("mcp-agent.prev"));
    let back = quote_path(&dir.join("mcp-agent.rollback"));
    let restart_cmd = node.restart.clone().unwrap_or_else(|| DEFAULT_RESTART.to_string());
    let failed = |stage: &'static str, error: String, rolled_back: Option<bool>| Outcome::Failed {
        stage,
        error,
        rolled_back,
    };

    // Upload. An interrupted upload leaves only a partial `.new` behind,
    // which the checksum below would refuse; `mcp-agent` is untouched.
    let mib = bin.bytes.len() as f64 / 1048576.0;
    note(
        name,
        &format!("uploading {} ({mib:.1} MiB) to {new}", bin.path.display()),
    );
    let total = bin.bytes.len().max(1);
    let mut shown = 0;
    let t0 = Instant::now();
    let up = s
        .exec_with_input(&format!("umask 022 && cat > {new}"), &bin.bytes, |done| {
            let pct = done * 100 / total;
            if pct >= shown + 25 {
                shown = pct - pct % 25;
                note(name, &format!("upload {shown}%"));
            }
        })
        .await;
    match up {
        Ok(o) if o.success() => {}
        Ok(o) => return failed("upload", format!("writing {new}: {}", o.stderr.trim()), None),
        Err(e) => return failed("upload", format!("{e:#}"), None),
    }
    note(name, &format!("uploaded in {:.1} s", t0.elapsed().as_secs_f64()));

    // Checksum on the node, then one run of the new binary: it must execute
    // on this node's arch and tells the version to wait for.
    let sum = match s.run(&format!("sha256sum {new}")).await {
        Ok(o) => o.split_whitespace().next().unwrap_or_default().to_string(),
        Err(e) => return failed("verify", format!("{e:#}"), None),
    };
    if sum != bin.sha256 {
        let _ = s.exec(&format!("rm -f {new}")).await;
        return failed(
            "verify",
            format!(
                "SHA-256 on the node is {sum}, expected {}; upload corrupted, nothing changed",
                bin.sha256
            ),
            None,
        );
    }
    note(name, &format!("sha256 {} verified on the node", &sum[..16]));
    let version = match s.run(&format!("chmod 0755 {new} && {new} --version")).await {
        Ok(o) => match parse_version(&o) {
            Some(v) => v,
            None => {
                let _ = s.exec(&format!("rm -f {new}")).await;
                return failed(
                    "verify",
                    format!("{new} --version printed {:?}, not an mcp-agent version", o.trim()),
                    None,
                );
            }
        },
        Err(e) => {
            let _ = s.exec(&format!("rm -f {new}")).await;
            return failed(
                "verify",
                format!("the new binary does not run on the node: {e:#}"),
                None,
            );
        }
    };
    *to = version.clone();
    // Already running exactly this binary: nothing to do.
    if let Some(b) = &before
        && b.long_version() == version
        && let Ok(cur_sum) = s.run(&format!("sha256sum {cur}")).await
        && cur_sum.split_whitespace().next() == Some(bin.sha256.as_str())
    {
        let _ = s.exec(&format!("rm -f {new}")).await;
        return Outcome::Unchanged;
    }

    // Swap: `.prev` is a hard link to the current binary, then `.new` is
    // renamed over `mcp-agent` (atomic).
    if let Err(e) = s
        .run(&format!(
            "if [ -e {cur} ]; then ln -f {cur} {prev}; fi && mv -f {new} {cur}"
        ))
        .await
    {
        return failed("install", format!("{e:#}"), None);
    }
    note(name, &format!("installed {version}; previous binary kept as {prev}"));

    let problem = match restart(s, &restart_cmd).await {
        Err(e) => Some(("restart", e)),
        Ok(()) => {
            note(
                name,
                &format!("restarted; waiting up to {} s for {version}", wait.as_secs()),
            );
            match wait_for_version(ctx, node, &version, wait).await {
                Ok(()) => None,
                Err(last) => Some((
                    "wait",
                    format!(
                        "the agent did not answer with {version} within {} s (last: {last})",
                        wait.as_secs()
                    ),
                )),
            }
        }
    };
    let Some((stage, error)) = problem else {
        return Outcome::Upgraded;
    };

    // Roll back: `.prev` over `mcp-agent` (keeping `.prev`), restart, and
    // wait for the old version.
    note(name, &format!("{error}; rolling back to {prev}"));
    let restored = s
        .run(&format!("ln -f {prev} {back} && mv -f {back} {cur}"))
        .await
        .map_err(|e| format!("{e:#}"));
    let rolled_back = match restored {
        Err(e) => Err(format!("restoring {prev}: {e}")),
        Ok(_) => match restart(s, &restart_cmd).await {
            Err(e) => Err(e),
            Ok(()) => match &before {
                Some(b) => wait_for_version(ctx, node, &b.long_version(), wait)
                    .await
                    .map_err(|last| format!("the old agent did not come back (last: {last})")),
                None => Ok(()),
            },
        },
    };
    match rolled_back {
        Ok(()) => {
            note(name, "rolled back: the previous binary runs again");
            failed(stage, format!("{error}; rolled back"), Some(true))
        }
        Err(e) => failed(stage, format!("{error}; ROLLBACK FAILED: {e}"), Some(false)),
    }
}

async fn restart(s: &Session, cmd: &str) -> Result<(), String> {
    match s.exec(cmd).await {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(format!(
            "restart command `{cmd}` failed ({}): {}",
            o.code.map_or("no exit status".to_string(), |c| format!("exit {c}")),
            o.stderr.trim()
        )),
        Err(e) => Err(format!("{e:#}")),
    }
}

fn print_summary(ctx: &Ctx, results: &[NodeResult], total: f64) {
    if ctx.out.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| {
                let (result, stage, error, rolled_back) = match &r.outcome {
                    Outcome::Upgraded => ("upgraded", None, None, None),
                    Outcome::Unchanged => ("unchanged", None, None, None),
                    Outcome::Failed {
                        stage,
                        error,
                        rolled_back,
                    } => ("failed", Some(*stage), Some(error.clone()), *rolled_back),
                };
                json!({
                    "node": r.node, "arch": r.arch, "from": r.from, "to": r.to, "result": result,
                    "stage": stage, "error": error, "rolled_back": rolled_back, "seconds": r.seconds,
                })
            })
            .collect();
        print_json(&json!({ "nodes": rows, "seconds": total }));
        return;
    }
    let mut t = table(&["NODE", "ARCH", "FROM", "TO", "RESULT", "TIME"]);
    for r in results {
        let result = match &r.outcome {
            Outcome::Upgraded => "upgraded".to_string(),
            Outcome::Unchanged => "unchanged".to_string(),
            Outcome::Failed { stage, rolled_back, .. } => match rolled_back {
                Some(true) => format!("FAILED ({stage}), rolled back"),
                Some(false) => format!("FAILED ({stage}), ROLLBACK FAILED"),
                None => format!("FAILED ({stage}), unchanged"),
            },
        };
        t.add_row(vec![
            r.node.clone(),
            r.arch.clone(),
            r.from.clone(),
            r.to.clone(),
            result,
            format!("{:.1}s", r.seconds),
        ]);
    }
    print_table(&t);
    println!("{} node(s) in {total:.1} s", results.len());
}

/// Runs `mcp agent status`: version, arch and uptime of every node, with
/// version skew flagged.
pub async fn status(ctx: &Ctx, args: StatusArgs) -> Result<u8> {
    let nodes = select(ctx, &args.nodes)?;
    let answers = futures::future::join_all(nodes.iter().map(|n| async move {
        let r = agent_version(ctx, n).await.map_err(|e| format!("{e:#}"));
        (*n, r)
    }))
    .await;
    let versions: Vec<Option<String>> = answers
        .iter()
        .map(|(_, r)| r.as_ref().ok().map(NodeStatus::long_version))
        .collect();
    let (reference, flags) = skew(&versions);
    let skew = flags.iter().any(|f| *f);
    let kinds = versions
        .iter()
        .flatten()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let unreachable = answers.iter().filter(|(_, r)| r.is_err()).count();
    if ctx.out.json {
        let rows: Vec<_> = answers
            .iter()
            .enumerate()
            .map(|(i, (n, r))| match r {
                Ok(s) => json!({
                    "node": n.name, "status": "reachable", "version": s.version, "commit": s.git_commit,
                    "arch": s.arch, "uptime_seconds": s.uptime_seconds,
                    "skew": flags[i],
                }),
                Err(e) => json!({"node": n.name, "status": "unreachable", "error": e}),
            })
            .collect();
        print_json(&json!({ "nodes": rows, "skew": skew, "reference": reference }));
    } else {
        let mut t = table(&["NODE", "VERSION", "COMMIT", "ARCH", "UPTIME", "STATUS"]);
        for (i, (n, r)) in answers.iter().enumerate() {
            match r {
                Ok(s) => t.add_row(vec![
                    n.name.clone(),
                    s.version.clone(),
                    s.git_commit.clone(),
                    s.arch.clone(),
                    crate::output::duration(s.uptime_seconds),
                    if flags[i] { "SKEW".to_string() } else { "ok".to_string() },
                ]),
                Err(_) => t.add_row(vec![
                    n.name.clone(),
                    "-".into(),
                    "-".into(),
                    arch_of(n).to_string(),
                    "-".into(),
                    "unreachable".into(),
                ]),
            };
        }
        print_table(&t);
        for (n, r) in &answers {
            if let Err(e) = r {
                eprintln!("warning: node {} unreachable: {e}", n.name);
            }
        }
        if skew {
            eprintln!(
                "warning: version skew: nodes run {} different agent versions (most run {}); run `mcp agent upgrade`",
                kinds,
                reference.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(if unreachable > 0 { 1 } else { 0 })
}

/// Version skew among the answering nodes: the reference version (the one
/// most nodes run; ties go to the highest version string) and, per node,
/// whether it runs something else. Unreachable nodes (None) are not flagged.
fn skew(versions: &[Option<String>]) -> (Option<String>, Vec<bool>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in versions.iter().flatten() {
        *counts.entry(v.as_str()).or_default() += 1;
    }
    let reference = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
        .map(|(v, _)| v.to_string());
    let flags = versions
        .iter()
        .map(|v| counts.len() > 1 && v.is_some() && v.as_deref() != reference.as_deref())
        .collect();
    (reference, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_flags() {
        let v = |s: &str| Some(s.to_string());
        for (input, reference, flags) in [
            (vec![v("a"), v("a")], Some("a"), vec![false, false]),
            (vec![v("a"), v("b"), v("a")], Some("a"), vec![false, true, false]),
            (vec![v("a"), None, v("a")], Some("a"), vec![false, false, false]),
            (
                vec![v("0.1 (commit x)"), v("0.2 (commit y)")],
                Some("0.2 (commit y)"),
                vec![true, false],
            ),
            (vec![None], None, vec![false]),
        ] {
            let (r, f) = skew(&input);
            assert_eq!(r.as_deref(), reference, "{input:?}");
            assert_eq!(f, flags, "{input:?}");
        }
    }

    #[test]
    fn versions() {
        for (out, want) in [
            (
                "mcp-agent 0.1.0 (commit 0123456789ab)\n",
                Some("0.1.0 (commit 0123456789ab)"),
            ),
            ("mcp-agent 0.1.0 (commit unknown)", Some("0.1.0 (commit unknown)")),
            ("mcp-master 0.1.0 (commit x)", None),
            ("", None),
            ("mcp-agent 0.1.0", None),
        ] {
            assert_eq!(parse_version(out).as_deref(), want, "{out:?}");
        }
    }
}
