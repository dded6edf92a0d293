//! Code generated from `proto/bankauth/v1/auth_service.proto` by `build.rs`.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("bankauth.v1");
}

/// The encoded descriptor set of bankauth's protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bankauth_descriptor.bin"));
