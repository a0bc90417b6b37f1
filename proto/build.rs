//! Compiles `pdc/v1/*.proto` with protox, a pure-Rust protobuf compiler, so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "pdc/v1/common.proto",
        "pdc/v1/study.proto",
        "pdc/v1/federation.proto",
        "pdc/v1/audit.proto",
        "pdc/v1/witness.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
