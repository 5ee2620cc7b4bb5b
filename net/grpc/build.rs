//! Compiles `proto/sluice/v1/*.proto` with protox (pure Rust: no protoc
//! binary needed) and generates the prost messages and tonic services,
//! plus the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "proto/sluice/v1/event.proto",
    "proto/sluice/v1/publisher.proto",
    "proto/sluice/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("sluice_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
