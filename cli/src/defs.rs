//! Service definitions named on the command line: files, the services
//! dir, `<service>[/<component>]` targets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mcp_model::service::{self, DefinitionError, ServiceDef};

use crate::ctx::Ctx;
use crate::error::{UsageError, usage};
use crate::output::{self, Out};

/// Reads, parses and validates one definition file (its name must be the
/// service's).
pub fn load_file(path: &Path) -> Result<ServiceDef, DefinitionError> {
    let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        path: path.display().to_string(),
        source,
    })?;
    service::parse_file(path, &text)
}

/// `.toml` files named directly or found in the named directories.
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| p.display().to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Loads every definition in `paths`; returns them with every problem found.
pub fn load_all(paths: &[PathBuf]) -> Result<(Vec<ServiceDef>, Vec<String>, usize)> {
    let files = collect(paths)?;
    let mut defs = Vec::new();
    let mut problems = Vec::new();
    let mut names = std::collections::BTreeMap::new();
    for f in &files {
        match load_file(f) {
            Ok(def) => {
                if let Some(other) = names.insert(def.name.clone(), f.clone()) {
                    problems.push(format!(
                        "{}: name: service {:?} is also defined in {}",
                        f.display(),
                        def.name,
                        other.display()
                    ));
                }
                defs.push(def);
            }
            Err(DefinitionError::Invalid(v)) => problems.extend(v.to_string().lines().map(str::to_string)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok((defs, problems, files.len()))
}

/// `mcp validate`: every problem of every file; exit 2 if any.
pub fn validate(paths: &[PathBuf], out: &Out) -> Result<u8> {
    let (_, problems, files) = load_all(paths)?;
    if out.json {
        output::print_json(&serde_json::json!({ "files": files, "problems": problems }));
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        if problems.is_empty() {
            println!("{files} definition(s) valid");
        }
    }
    Ok(if problems.is_empty() { 0 } else { 2 })
}

/// Splits `<service>[/<component>]`, checking both names.
pub fn split_target(target: &str) -> Result<(String, Option<String>)> {
    let (svc, comp) = match target.split_once('/') {
        Some((s, c)) => (s, Some(c.to_string())),
        None => (target, None),
    };
    if let Err(r) = service::check_name(svc) {
        usage!("service name {svc:?}: {r}");
    }
    if let Some(c) = &comp
        && let Err(r) = service::check_name(c)
    {
        usage!("component name {c:?}: {r}");
    }
    Ok((svc.to_string(), comp))
}

/// Loads a definition named on the command line: a `.toml` path, or a
/// service name in the services dir.
pub fn load_definition(ctx: &Ctx, target: &str) -> Result<(ServiceDef, Option<String>)> {
    if target.ends_with(".toml") {
        let def = load_file(Path::new(target)).map_err(|e| UsageError(e.to_string()))?;
        return Ok((def, None));
    }
    let (name, component) = split_target(target)?;
    let path = ctx.cfg.services.dir.join(format!("{name}.toml"));
    if !path.exists() {
        usage!("no definition for service {name}: {} does not exist", path.display());
    }
    let def = load_file(&path).map_err(|e| UsageError(e.to_string()))?;
    if let Some(c) = &component
        && def.component(c).is_none()
    {
        usage!("{}: service {name} has no component {c:?}", path.display());
    }
    Ok((def, component))
}
