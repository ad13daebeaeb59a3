//! `mcp-master`: the fleet master. This build only reports its version;
//! registration, placement and deploy coordination arrive in a later
//! release (see docs/architecture.md).

fn main() {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        None | Some("--version") | Some("-V") | Some("version") => {
            println!("mcp-master {}", mcp_common::LONG_VERSION);
        }
        Some(other) => {
            eprintln!("mcp-master: unknown argument {other:?}; this build only supports --version");
            std::process::exit(2);
        }
    }
}
