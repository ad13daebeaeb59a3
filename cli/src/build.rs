//! `mcp build <svc>`: `podman build` for each `[build.images]` entry, tagged
//! with the image reference the service's components use, then `podman push`
//! to the registry named in that reference.
//!
//! The build context is the definition's `path` (relative to the directory
//! of the definition file), or that directory itself; Dockerfile paths are
//! relative to the context. Registries are reached as podman is configured
//! (`registries.conf`: an `insecure = true` entry allows a plain-HTTP
//! registry such as a local test registry).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use mcp_model::service::ServiceDef;
use serde_json::json;

use crate::ctx::Ctx;
use crate::defs::split_target;
use crate::error::{UsageError, usage};
use crate::output;

/// One image to build.
struct Job {
    key: String,
    reference: String,
    dockerfile: PathBuf,
}

/// Repository part of an image reference (no tag, no digest).
fn repository(reference: &str) -> &str {
    let r = reference.split('@').next().unwrap_or(reference);
    match r.rfind(':') {
        Some(i) if !r[i..].contains('/') => &r[..i],
        _ => r,
    }
}

/// Whether `[build.images]` key `key` names the image `reference`: the full
/// repository, or its last path segments (`myservice`, `team/myservice`).
fn names(key: &str, reference: &str) -> bool {
    let repo = repository(reference);
    repo == key || repo.ends_with(&format!("/{key}"))
}

fn plan(path: &Path, def: &ServiceDef) -> Result<(PathBuf, Vec<Job>)> {
    let shown = path.display();
    let Some(build) = def.build.as_ref().filter(|b| !b.images.is_empty()) else {
        usage!("{shown}: service {} has no [build.images] to build", def.name);
    };
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let context = match &def.path {
        Some(p) => base.join(p),
        None => base.to_path_buf(),
    };
    if !context.is_dir() {
        usage!("{shown}: path: build context {} is not a directory", context.display());
    }
    let mut jobs = Vec::new();
    for (key, dockerfile) in &build.images {
        let mut refs: Vec<&str> = def
            .components
            .iter()
            .map(|c| c.image.as_str())
            .filter(|i| names(key, i))
            .collect();
        refs.sort();
        refs.dedup();
        let reference = match refs.as_slice() {
            [one] => one.to_string(),
            [] => usage!(
                "{shown}: build.images.{key}: no component image is named {key:?} (the tag to build comes from the component's image)"
            ),
            many => usage!(
                "{shown}: build.images.{key}: components use several tags of it ({}); use one",
                many.join(", ")
            ),
        };
        let dockerfile = context.join(dockerfile);
        if !dockerfile.is_file() {
            usage!("{shown}: build.images.{key}: {} does not exist", dockerfile.display());
        }
        jobs.push(Job {
            key: key.clone(),
            reference,
            dockerfile,
        });
    }
    Ok((context, jobs))
}

fn podman(args: &[&str], what: &str) -> Result<()> {
    // podman's own output is the progress; it goes to stderr so stdout
    // stays clean for --json.
    let status = Command::new("podman")
        .args(args)
        .stdout(std::io::stderr())
        .status()
        .context("run podman (is it installed?)")?;
    if !status.success() {
        anyhow::bail!("{what} failed: podman exited with {status}");
    }
    Ok(())
}

/// Runs `mcp build`.
pub fn build(ctx: &Ctx, target: &str, push: bool) -> Result<u8> {
    let path = if target.ends_with(".toml") {
        PathBuf::from(target)
    } else {
        let (name, component) = split_target(target)?;
        if component.is_some() {
            usage!("mcp build takes a service name, not <service>/<component>");
        }
        ctx.cfg.services.dir.join(format!("{name}.toml"))
    };
    if !path.exists() {
        usage!("no definition: {} does not exist", path.display());
    }
    let def = crate::defs::load_file(&path).map_err(|e| UsageError(e.to_string()))?;
    let (context, jobs) = plan(&path, &def)?;
    let color = output::color_stderr();
    let context_s = context.display().to_string();
    let mut done = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let head = format!("[{}/{}] building {} ({})", i + 1, jobs.len(), job.reference, job.key);
        if color {
            eprintln!("\x1b[1m{head}\x1b[0m");
        } else {
            eprintln!("{head}");
        }
        let df = job.dockerfile.display().to_string();
        podman(
            &["build", "--tag", &job.reference, "--file", &df, &context_s],
            &format!("build of {}", job.reference),
        )?;
        if push {
            eprintln!("[{}/{}] pushing {}", i + 1, jobs.len(), job.reference);
            podman(&["push", &job.reference], &format!("push of {}", job.reference))?;
        }
        done.push(json!({"key": job.key, "image": job.reference, "dockerfile": df, "pushed": push}));
    }
    if ctx.out.json {
        output::print_json(&json!({"service": def.name, "context": context_s, "images": done}));
    } else {
        for d in &done {
            let verb = if push { "built and pushed" } else { "built" };
            println!("{verb} {}", d["image"].as_str().unwrap_or_default());
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys_name_repositories() {
        assert!(names("web", "127.0.0.1:5055/mcp-test/web:v1"));
        assert!(names("mcp-test/web", "127.0.0.1:5055/mcp-test/web:v1"));
        assert!(names("127.0.0.1:5055/mcp-test/web", "127.0.0.1:5055/mcp-test/web:v1"));
        assert!(!names("eb", "127.0.0.1:5055/mcp-test/web:v1"));
        assert!(!names("web", "127.0.0.1:5055/mcp-test/webby:v1"));
        assert_eq!(repository("reg:5000/a/b@sha256:00"), "reg:5000/a/b");
        assert_eq!(repository("reg:5000/a/b"), "reg:5000/a/b");
    }
}
