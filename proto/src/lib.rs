//! The `lienthong.v1` contract.
//!
//! Messages are always built; the gRPC client and server stubs only with the
//! `grpc` feature, so the core can use the signed message format without
//! knowing anything of gRPC.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/lienthong.v1.rs"));

    /// The payload type of a `SignedEnvelope` whose payload is an `Envelope`.
    pub const ENVELOPE_PAYLOAD_TYPE: &str = "application/vnd.lienthong.envelope.v1+protobuf";

    /// The payload type of a signed `ReceiptPayload`.
    pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.lienthong.receipt.v1+protobuf";

    /// The payload type of a signed `DirectoryUpdate`.
    pub const DIRECTORY_UPDATE_PAYLOAD_TYPE: &str =
        "application/vnd.lienthong.directory-update.v1+protobuf";

    /// The payload type of a signed `DirectorySnapshot`.
    pub const DIRECTORY_SNAPSHOT_PAYLOAD_TYPE: &str =
        "application/vnd.lienthong.directory-snapshot.v1+protobuf";

    /// Encoded `FileDescriptorSet` for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/lienthong_descriptor.bin"));
}

pub use prost;
pub use prost_types;
