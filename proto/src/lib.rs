//! Lantern's wire contract: the protobuf and gRPC code generated from its protos, and the bearer
//! tokens calls carry ([`auth`]).
//!
//! - [`inference`]: the Open Inference Protocol v2 (`inference.GRPCInferenceService`) with Triton's
//!   repository extension, wire-compatible with tritonclient and the KServe SDK.
//! - [`lantern::v1`]: Lantern's `ModelService` (per-version status, serving config, reload),
//!   `GenerationService` (streaming text generation), `EmbeddingService` (sentence embeddings)
//!   `CollectiveService` (a training job's rendezvous, heartbeats and ring all-reduce) and
//!   `TrainingService` (a training job's progress).
//!
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection; [`TERMINATION_PREFIX`] marks a
//! `TrainingProgress` in a pod's termination message.

pub mod auth;

/// Open Inference Protocol v2 messages and the `GRPCInferenceService` client and server.
#[allow(missing_docs, clippy::all)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Lantern's own APIs.
#[allow(missing_docs, clippy::all)]
pub mod lantern {
    /// Version 1 of Lantern's APIs.
    pub mod v1 {
        tonic::include_proto!("lantern.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto in this crate, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

/// How a training rank's termination message starts: the rest is a `lantern.v1.TrainingProgress`
/// in standard base64 protobuf (the worker writes it, the operator reads it from the pod status).
pub const TERMINATION_PREFIX: &str = "lantern.v1.TrainingProgress:";
