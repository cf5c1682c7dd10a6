//! Compiles `proto/**/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! tonic clients and servers. The encoded descriptor set is kept for gRPC server reflection.

use prost::Message;

const PROTOS: &[&str] = &[
    "inference/grpc_service.proto",
    "lantern/v1/model_service.proto",
    "lantern/v1/generation_service.proto",
    "lantern/v1/embedding_service.proto",
    "lantern/v1/collective_service.proto",
    "lantern/v1/training_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("descriptor_set.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
