//! `accrual.v1` wire types and gRPC stubs. A compatibility boundary: domain types are converted
//! at the service edge, never derived from these.

#![allow(clippy::all, missing_docs)]

pub mod codec;
pub mod json;

pub mod v1 {
    tonic::include_proto!("accrual.v1");
}

/// Encoded `FileDescriptorSet` of every accrual proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/accrual_descriptor.bin"));
