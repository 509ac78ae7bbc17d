//! Compiles `accrual/v1/*.proto` with protox (pure Rust, no system protoc) into tonic code,
//! and writes the descriptor set used by gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "accrual/v1/common.proto",
        "accrual/v1/command.proto",
        "accrual/v1/query.proto",
        "accrual/v1/audit.proto",
        "accrual/v1/feed.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("accrual_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Every service's codec: prost's, with undecodable bytes as INVALID_ARGUMENT (src/codec.rs).
    tonic_build::configure()
        .btree_map(["."])
        .codec_path("crate::codec::WireCodec")
        .compile_fds(fds)?;
    Ok(())
}
