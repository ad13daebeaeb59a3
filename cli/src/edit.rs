//! `mcp edit <svc>`: edit a definition in `$VISUAL`/`$EDITOR` on a temporary
//! copy; validate on save, reopen with the problems on error, and write the
//! real file only when the copy is valid.

use std::path::Path;

use anyhow::{Context, Result};
use mcp_model::service::DefinitionError;

use crate::ctx::Ctx;
use crate::defs::split_target;
use crate::error::usage;

/// Lines `mcp edit` puts at the top of the copy to show the problems; they
/// are removed again before the copy is validated and saved.
const MARK: &str = "# mcp edit: ";

/// Runs the editor loop for service `name`.
pub fn edit(ctx: &Ctx, name: &str) -> Result<u8> {
    let (name, component) = split_target(name)?;
    if component.is_some() {
        usage!("mcp edit takes a service name, not <service>/<component>");
    }
    let path = ctx.cfg.services.dir.join(format!("{name}.toml"));
    let original = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("name = \"{name}\"\n\n[[components]]\nname = \"{name}\"\nimage = \"\"\n")
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let dir = tempfile::Builder::new().prefix("mcp-edit-").tempdir()?;
    // Named like the real file: the file name must equal the service name.
    let copy = dir.path().join(format!("{name}.toml"));
    let editor = std::env::var("VISUAL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| std::env::var("EDITOR").ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_string());
    let mut text = original.clone();
    let mut problems: Vec<String> = Vec::new();
    loop {
        let mut shown = String::new();
        for p in &problems {
            shown.push_str(MARK);
            shown.push_str(p);
            shown.push('\n');
        }
        if !problems.is_empty() {
            shown.push_str(MARK);
            shown.push_str("fix the problems above and save, or quit without saving to give up\n");
        }
        shown.push_str(&text);
        std::fs::write(&copy, &shown).with_context(|| format!("write {}", copy.display()))?;
        run_editor(&editor, &copy)?;
        let edited: String = std::fs::read_to_string(&copy)
            .with_context(|| format!("read {}", copy.display()))?
            .split_inclusive('\n')
            .filter(|l| !l.starts_with(MARK))
            .collect();
        if !problems.is_empty() && edited == text {
            for p in &problems {
                eprintln!("{}: {p}", path.display());
            }
            usage!(
                "{} not saved: still invalid and unchanged since the last edit",
                path.display()
            );
        }
        if edited == original {
            println!("{}: no changes", path.display());
            return Ok(0);
        }
        match crate::defs::load_file(&copy) {
            Ok(_) => {
                if let Some(d) = path.parent() {
                    std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
                }
                mcp_infra::fsutil::write_atomic(&path, edited.as_bytes(), 0o644)?;
                println!("saved {}", path.display());
                return Ok(0);
            }
            Err(e) => {
                let copy_shown = copy.display().to_string();
                let real = path.display().to_string();
                problems = match e {
                    DefinitionError::Invalid(v) => {
                        v.errors.iter().map(|f| format!("{}: {}", f.field, f.reason)).collect()
                    }
                    other => vec![other.to_string().replace(&copy_shown, &real)],
                };
                // Strip the file prefix for the header lines; the terminal
                // gets the full message.
                for p in &problems {
                    eprintln!("{real}: {p}");
                }
                eprintln!("reopening the editor");
                text = edited;
            }
        }
    }
}

/// Runs `editor` on `file` through the shell (so `EDITOR="code --wait"` works).
fn run_editor(editor: &str, file: &Path) -> Result<()> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("mcp-edit")
        .arg(file)
        .status()
        .with_context(|| format!("run editor {editor:?}"))?;
    if !status.success() {
        anyhow::bail!("editor {editor:?} exited with {status}; nothing saved");
    }
    Ok(())
}
