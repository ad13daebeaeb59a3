//! `mcp snapshot` and `mcp migrate` (SPEC §11), through the master: it
//! stores the archives and moves placements.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{MasterClient, RpcError, request_id};
use crate::ctx::Ctx;
use crate::error::{UsageError, usage};
use crate::output::print_json;
use crate::target::READ_TIMEOUT;
use crate::view::{MoveRequest, Step};

/// Longest a snapshot, restore or migration may take, with the master's
/// own timeouts (600 s for the data, 300 s for a deploy) inside it.
const DATA_TIMEOUT: Duration = Duration::from_secs(1800);

/// `mcp snapshot <svc>` | `mcp snapshot list [svc]` | `mcp snapshot restore <svc> [--at ts]`.
#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  mcp snapshot web\n  mcp snapshot list\n  mcp snapshot list web\n  mcp snapshot restore web --at 20261125T0300"
)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: Option<SnapshotCommand>,
    /// Service to snapshot now.
    pub service: Option<String>,
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Stored snapshots, oldest first.
    #[command(after_help = "Examples:\n  mcp snapshot list\n  mcp snapshot list web --json")]
    List { service: Option<String> },
    /// Stop the service, replace its data with a snapshot, start it again.
    #[command(after_help = "Examples:\n  mcp snapshot restore web\n  mcp snapshot restore web --at 20261125T03")]
    Restore {
        service: String,
        /// Snapshot name or a prefix of it (e.g. 20261125T03); default the latest.
        #[arg(long)]
        at: Option<String>,
    },
}

/// `mcp migrate <svc> --to <node>` | `mcp migrate --all --from A --to B`.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  mcp migrate web --to rift\n  mcp migrate --all --from calypso --to rift\n  mcp migrate web --to rift --force   # source down: use the latest snapshot"
)]
pub struct MigrateArgs {
    /// Service to move.
    pub service: Option<String>,
    /// Target node.
    #[arg(long)]
    pub to: String,
    /// Every migratable service of --from.
    #[arg(long, requires = "from")]
    pub all: bool,
    /// Source node (with --all).
    #[arg(long)]
    pub from: Option<String>,
    /// Proceed when the source is unreachable (its latest snapshot is used)
    /// and overwrite data the target already has.
    #[arg(long)]
    pub force: bool,
}

/// The JSON of a step in snapshot and migration results: without
/// `skipped`, and with the duration only where asked.
fn step_json(s: &Step, with_duration: bool) -> serde_json::Value {
    let mut v = json!({"step": s.step, "success": s.success, "detail": s.detail, "error": s.error});
    if with_duration {
        v["duration_ms"] = json!(s.duration_ms);
    }
    v
}

/// Runs one long call on the master behind a spinner.
async fn long_call<T, F, Fut>(ctx: &Ctx, what: &str, call: F) -> Result<T>
where
    F: FnOnce(MasterClient) -> Fut,
    Fut: Future<Output = Result<T, RpcError>>,
{
    let client = ctx.master(DATA_TIMEOUT).await?;
    let _progress = ctx.out.progress(what);
    Ok(call(client).await?)
}

fn size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn steps_table(steps: &[Step]) {
    for s in steps {
        let (result, text) = if s.success {
            ("ok", &s.detail)
        } else {
            ("FAILED", &s.error)
        };
        println!("  {:<15} {:<6} {:>7}ms  {text}", s.step, result, s.duration_ms);
    }
}

/// Runs `mcp snapshot …`; returns the exit code.
pub async fn snapshot(ctx: &Ctx, direct: bool, args: SnapshotArgs) -> Result<u8> {
    if direct {
        usage!("snapshots are stored by the master: `mcp snapshot` does not work with --direct");
    }
    match (args.command, args.service) {
        (Some(SnapshotCommand::List { service }), _) => list(ctx, service.unwrap_or_default()).await,
        (Some(SnapshotCommand::Restore { service, at }), _) => restore(ctx, service, at.unwrap_or_default()).await,
        (None, Some(service)) => create(ctx, service).await,
        (None, None) => usage!("mcp snapshot needs a service, `list` or `restore` (see mcp snapshot --help)"),
    }
}

async fn create(ctx: &Ctx, service: String) -> Result<u8> {
    mcp_model::service::check_name(&service).map_err(|r| UsageError(format!("service {service:?}: {r}")))?;
    let r = long_call(ctx, &format!("snapshotting {service}"), |mut c| async move {
        c.create_snapshot(&service, &request_id()).await
    })
    .await?;
    let s = &r.snapshot;
    if ctx.out.json {
        print_json(&r);
    } else {
        println!(
            "snapshot {} of {} from {}: {} sha256 {}",
            s.name,
            s.service,
            s.node,
            size(s.size),
            s.sha256
        );
        for p in &r.pruned {
            println!("removed old snapshot {p} (retention)");
        }
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

async fn list(ctx: &Ctx, service: String) -> Result<u8> {
    let snapshots = ctx.master(READ_TIMEOUT).await?.snapshots(&service).await?;
    if ctx.out.json {
        print_json(&snapshots);
        return Ok(0);
    }
    println!("{:<20} {:<22} {:<14} {:>10}  SHA256", "SERVICE", "NAME", "NODE", "SIZE");
    for s in &snapshots {
        println!(
            "{:<20} {:<22} {:<14} {:>10}  {}",
            s.service,
            s.name,
            s.node,
            size(s.size),
            &s.sha256[..s.sha256.len().min(16)]
        );
    }
    Ok(0)
}

async fn restore(ctx: &Ctx, service: String, at: String) -> Result<u8> {
    if !at.is_empty() {
        mcp_model::snapshot::check_selector(&at).map_err(|r| UsageError(format!("--at: {r}")))?;
    }
    let r = long_call(ctx, &format!("restoring {service}"), |mut c| async move {
        c.restore_snapshot(&service, &at, &request_id()).await
    })
    .await?;
    let s = &r.snapshot;
    if ctx.out.json {
        let steps: Vec<_> = r.steps.iter().map(|s| step_json(s, false)).collect();
        print_json(&json!({"node": r.node, "snapshot": s, "steps": steps}));
    } else {
        steps_table(&r.steps);
        println!("restored {} on {} from snapshot {}", s.service, r.node, s.name);
    }
    Ok(0)
}

/// Runs `mcp migrate …`; returns the exit code (1 when a service failed).
pub async fn migrate(ctx: &Ctx, direct: bool, args: MigrateArgs) -> Result<u8> {
    if direct {
        usage!("migration moves the master's placement: `mcp migrate` does not work with --direct");
    }
    let service = match (&args.service, args.all) {
        (Some(_), true) => usage!("give a service or --all --from <node>, not both"),
        (None, false) => usage!("mcp migrate needs a service, or --all --from <node>"),
        (Some(s), false) => s.clone(),
        (None, true) => String::new(),
    };
    let request = MoveRequest {
        service,
        to: args.to,
        force: args.force,
        all: args.all,
        from: args.from.unwrap_or_default(),
    };
    let results = long_call(ctx, "migrating", |mut c| async move {
        c.migrate(&request, &request_id()).await
    })
    .await?;
    // Services `--all` skips (core tier, pinned) are reported, not failures.
    let failed = results.iter().any(|m| !m.success && !m.error.starts_with("skipped"));
    if ctx.out.json {
        print_json(&json!(
            results
                .iter()
                .map(|m| json!({
                    "service": m.service, "from": m.from, "to": m.to, "success": m.success, "error": m.error,
                    "snapshot": m.snapshot,
                    "steps": m.steps.iter().map(|s| step_json(s, true)).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>()
        ));
    } else {
        if results.is_empty() {
            println!("nothing to migrate");
        }
        for m in &results {
            println!("{} {} → {}", m.service, m.from, m.to);
            steps_table(&m.steps);
            if m.success {
                println!("migrated {} to {}", m.service, m.to);
            } else {
                eprintln!("error: {}: {}", m.service, m.error);
            }
        }
    }
    Ok(u8::from(failed))
}
