//! Compiles `mcp/v1/*.proto` with protox (pure Rust), so no system `protoc`
//! is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let files: Vec<_> = std::fs::read_dir(root.join("mcp/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    println!("cargo:rerun-if-changed={}", root.join("mcp").display());
    let fds = protox::compile(&files, [&root])?;
    // The descriptors themselves, so tests can walk every RPC of every service.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("mcp_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
