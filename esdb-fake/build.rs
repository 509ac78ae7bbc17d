//! Compiles the vendored EventStoreDB protos (see protos/README.md) with protox (pure Rust, no
//! system protoc) into tonic server code, the same way the `proto` crate builds Accrual's.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["protos/streams.proto", "protos/serverfeatures.proto"];
    for p in ["streams", "serverfeatures", "shared", "status", "code"] {
        println!("cargo:rerun-if-changed=protos/{p}.proto");
    }
    let fds = protox::compile(protos, ["protos"])?;
    tonic_build::configure().build_client(false).build_server(true).compile_fds(fds)?;
    Ok(())
}
