//! Lantern's model runtime: everything that turns a verified model version into a model that
//! runs, with no protocol, server or cluster code (no tonic, axum or kube). The serving crate
//! (`lantern-serve`) and the training crate (`lantern-train`) build on it; neither is known here.
//!
//! - [`repository`]: the layout, manifests, digest verification and atomic `publish`, in a
//!   directory or an object store (S3, GCS, Azure Blob; HTTP read-only) read through a
//!   node-local content-addressed cache.
//! - [`device`]: where models run (`cpu`, or `cuda` with the `cuda` feature), and
//!   [`compute_threads`]: sizing candle's CPU thread pool once per process.
//! - [`model`]: candle model implementations (one module per architecture: MLP, llama from GGUF
//!   or HF checkpoints, BERT sentence embeddings), the Q4_0/Q4_1/Q8_0 kernel, and the loader.
//! - [`tensor`]: protocol-neutral tensors and datatype conversions.
//! - [`llm`]: language-model building blocks: tokenizers (from `tokenizer.json` or GGUF metadata),
//!   chat templates, sampling, constrained decoding, stop strings, the paged KV cache and the
//!   batching scheduler.
//! - [`test_models`]: where the real models the tests and the bench use are fetched to.
//! - [`vector_math`]: element-wise functions (`exp`, `erf`) the compiler vectorizes.
//!
//! Libraries: `sha2` for digests, `tokenizers` and `minijinja` for text, `llguidance` for
//! constrained decoding (JSON schemas as token masks; the engine vLLM and llama.cpp use, and it
//! turns on serde_json's `preserve_order` for the whole workspace: JSON objects keep their keys
//! in the order written), candle for tensors,
//! `object_store` for the object stores (see `repository::remote`), on hyper and rustls (see
//! `repository::transport`).
//!
//! Decisions worth knowing:
//! - A version is loaded only after every file's sha256 matches its manifest, and loading reads
//!   no file through a symbolic link.
//! - A language model's greedy output does not depend on what else runs in the batch or on the
//!   prefix cache: every row of a step is computed independently, the Q4_0/Q4_1/Q8_0 kernel included.
//! - Models run on the CPU, or on an NVIDIA GPU in a build with the `cuda` feature; the paged KV
//!   cache stays in host memory either way.

pub mod compute_threads;
pub mod device;
pub mod error;
pub mod llm;
pub mod model;
pub mod repository;
pub mod tensor;
pub mod test_models;
pub mod vector_math;

pub use error::{Error, Result};
