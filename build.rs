//! Compiles the gRPC contract with protox (pure Rust, so no system `protoc` is needed)
//! and keeps the encoded descriptor set for server reflection.

use std::{env, path::PathBuf};

use prost::Message;

const PROTO: &str = "proto/bankauth/v1/auth_service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("bankauth_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
