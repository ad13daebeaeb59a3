//! Embeds the git commit of the build (`MCP_GIT_COMMIT` overrides it).
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=MCP_GIT_COMMIT={}",
        std::env::var("MCP_GIT_COMMIT").unwrap_or(commit)
    );
    println!("cargo:rerun-if-env-changed=MCP_GIT_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
}
