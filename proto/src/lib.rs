//! The pdc.v1 gRPC protocol: messages and service stubs generated from `proto/pdc/v1/*.proto`.
//!
//! Domain crates convert these types at their edges; nothing here carries behaviour beyond the generated code
//! and the protocol's size constants.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The pdc.v1 package.
pub mod v1 {
    tonic::include_proto!("pdc.v1");
}

pub use v1 as pb;

/// The largest data payload of one streamed chunk: 1 MiB, well under gRPC's default 4 MiB message limit.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// The largest non-streamed message either side accepts (manifests and validation sets ride in one message).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
