//! Compiles the agent's own protos (mc-proxy's admin API and gRPC health)
//! with protox (pure Rust), so no system `protoc` is needed. The fleet's
//! `mcp.v1` protos are compiled by `common`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(["mc_proxy.proto", "grpc/health/v1/health.proto"], [&root])?;
    // Servers too: the adapter's tests stand up a stand-in mc-proxy.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
