//! `mcp snapshot` and `mcp migrate` (SPEC §11), through the master: it
//! stores the archives and moves placements.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use mcp_proto as proto;
use serde_json::json;

use crate::conn::{Ctx, request_id};
use crate::output::print_json;
use crate::usage;

/// Longest a snapshot, restore or migration may take, with the master's
/// own timeouts (600 s for the data, 300 s for a deploy) inside it.
const DATA_TIMEOUT: Duration = Duration::from_secs(1800);
const READ_TIMEOUT: Duration = Duration::from_secs(15);

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

fn snapshot_json(s: &proto::SnapshotInfo) -> serde_json::Value {
    json!({
        "service": s.service, "name": s.name, "created_at": s.created_at, "node": s.node,
        "size": s.size, "sha256": s.sha256, "path": s.path,
    })
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

fn steps_table(steps: &[proto::StepResult]) {
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
    mcp_model::service::check_name(&service).map_err(|r| crate::UsageError(format!("service {service:?}: {r}")))?;
    let mut client = ctx.master(DATA_TIMEOUT).await?;
    let progress = ctx.out.progress(&format!("snapshotting {service}"));
    let r = client
        .create_snapshot(proto::CreateSnapshotRequest {
            service,
            request_id: request_id(),
        })
        .await;
    drop(progress);
    let r = r.map_err(|s| ctx.rpc_error("master", s))?.into_inner();
    let s = r.snapshot.unwrap_or_default();
    if ctx.out.json {
        print_json(&json!({"snapshot": snapshot_json(&s), "pruned": r.pruned, "warnings": r.warnings}));
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
    let mut client = ctx.master(READ_TIMEOUT).await?;
    let r = client
        .list_snapshots(proto::ListSnapshotsRequest { service })
        .await
        .map_err(|s| ctx.rpc_error("master", s))?
        .into_inner();
    if ctx.out.json {
        print_json(&json!(r.snapshots.iter().map(snapshot_json).collect::<Vec<_>>()));
        return Ok(0);
    }
    println!("{:<20} {:<22} {:<14} {:>10}  SHA256", "SERVICE", "NAME", "NODE", "SIZE");
    for s in &r.snapshots {
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
        mcp_model::snapshot::check_selector(&at).map_err(|r| crate::UsageError(format!("--at: {r}")))?;
    }
    let mut client = ctx.master(DATA_TIMEOUT).await?;
    let progress = ctx.out.progress(&format!("restoring {service}"));
    let r = client
        .restore_snapshot(proto::RestoreSnapshotRequest {
            service,
            at,
            request_id: request_id(),
        })
        .await;
    drop(progress);
    let r = r.map_err(|s| ctx.rpc_error("master", s))?.into_inner();
    let s = r.snapshot.unwrap_or_default();
    if ctx.out.json {
        print_json(&json!({"node": r.node, "snapshot": snapshot_json(&s),
            "steps": r.steps.iter().map(|s| json!({"step": s.step, "success": s.success, "detail": s.detail, "error": s.error})).collect::<Vec<_>>()}));
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
    let mut client = ctx.master(DATA_TIMEOUT).await?;
    let progress = ctx.out.progress("migrating");
    let r = client
        .migrate_service(proto::MigrateServiceRequest {
            service,
            to: args.to,
            force: args.force,
            request_id: request_id(),
            all: args.all,
            from: args.from.unwrap_or_default(),
        })
        .await;
    drop(progress);
    let r = r.map_err(|s| ctx.rpc_error("master", s))?.into_inner();
    // Services `--all` skips (core tier, pinned) are reported, not failures.
    let failed = r.results.iter().any(|m| !m.success && !m.error.starts_with("skipped"));
    if ctx.out.json {
        print_json(&json!(r.results.iter().map(|m| json!({
            "service": m.service, "from": m.from, "to": m.to, "success": m.success, "error": m.error,
            "snapshot": m.snapshot.as_ref().map(snapshot_json),
            "steps": m.steps.iter().map(|s| json!({"step": s.step, "success": s.success, "detail": s.detail, "error": s.error, "duration_ms": s.duration_ms})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()));
    } else {
        if r.results.is_empty() {
            println!("nothing to migrate");
        }
        for m in &r.results {
            println!("{} {} → {}", m.service, m.from, m.to);
            steps_table(&m.steps);
            if m.success {
                println!("migrated {} to {}", m.service, m.to);
            } else {
                eprintln!("error: {}: {}", m.service, m.error);
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}
