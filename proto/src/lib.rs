//! The `drover.v1` gRPC API shared by the coordinator, the worker and `droverctl`.

pub mod v1 {
    #![allow(clippy::all)]
    tonic::include_proto!("drover.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/drover_descriptor.bin"));
}

pub use prost_types::{Duration, Timestamp};

pub mod codec;

pub mod auth;
pub mod durations;
pub mod json;
pub mod jsonfmt;
pub mod states;
