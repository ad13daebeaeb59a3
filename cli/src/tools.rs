//! Local helper commands: shell completions and man pages, both generated
//! from the clap definition so they cannot drift from the real CLI.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::Cli;

/// `mcp completions <shell>`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "mcp", &mut std::io::stdout());
    Ok(0)
}

/// `mcp man <dir>`: `mcp.1` and one page per subcommand (`mcp-node-list.1`).
pub fn man(dir: &Path) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, "mcp", dir, &mut written)?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(0)
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path, written: &mut usize) -> Result<()> {
    // Subcommand pages are titled with their full name (`mcp-node-list`).
    // A short-lived process: leaking a few page names is fine (clap wants
    // &'static str names without its "string" feature).
    let page = cmd.clone().name(&*Box::leak(name.to_string().into_boxed_str()));
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    std::fs::write(&path, buf).with_context(|| format!("write {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
