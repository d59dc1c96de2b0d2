//! The mesh's protobuf contracts: tonic servers and clients for every service, the event
//! envelope and payloads, and the encoded descriptor set they were generated from.
//!
//! Packages follow `proto/`: `product.v1` is [`product::v1`], `events.v1` is [`events::v1`], and
//! so on. Every service depends on this crate (and the runtime), never on another service's crate.

include!(concat!(env!("OUT_DIR"), "/packages.rs"));

/// The encoded `google.protobuf.FileDescriptorSet` of every file under `proto/` (imports
/// included), with extension options such as `google.api.http` kept. Server reflection, the REST
/// edge and OpenAPI generation read this one source of truth.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));
