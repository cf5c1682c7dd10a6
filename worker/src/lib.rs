//! Lantern's worker: the data plane that serves numbered model versions over gRPC and HTTP from
//! a model repository, hot-loads new versions without restarts, and routes each request by
//! version, label or weighted split.
//!
//! - [`repository`]: the on-disk layout, manifests, digest verification, atomic `publish`.
//! - [`credentials`]: bearer tokens, checked by serving's management and inference APIs and by
//!   training's collective and progress endpoints, and sent by training's clients.
//! - [`device`]: where models run (`cpu`, or `cuda` with the `cuda` feature).
//! - [`model`]: candle model implementations (one module per architecture: MLP, llama from GGUF
//!   or HF checkpoints, BERT sentence embeddings) and the Q4_1 kernel.
//! - [`serve`]: version manager, batching, the generation engine (continuous batching over a
//!   paged KV cache), protocols (OIP v2, OpenAI-compatible HTTP, Lantern's gRPC services);
//!   [`serve::server::start`] runs it all.
//! - [`tensor`]: protocol-neutral tensors and datatype conversions.
//! - [`train`]: `lantern-worker train`: data-parallel training whose checkpoints are published
//!   as versions of the same repository.
//! - [`llm`]: language-model building blocks: tokenizers (from `tokenizer.json` or GGUF metadata),
//!   chat templates, sampling, stop strings, the paged KV cache and the batching scheduler.
//!
//! Libraries: `sha2` for digests (tokens included), `base64` for base64, `tokenizers` and
//! `minijinja` for text; tonic/axum/hyper for the protocols.
//!
//! Decisions worth knowing:
//! - A version is loaded only after every file's sha256 matches its manifest; a failed load is
//!   retried with exponential backoff while the previous version keeps serving.
//! - Versions named by labels or traffic weights stay loaded even outside the version policy, so
//!   a rollout's stable version cannot be unloaded under it.
//! - When every version directory of a model disappears, the newest loaded version keeps serving
//!   (TF Serving's "never unload the last available version").
//! - A language model's greedy output does not depend on what else runs in the batch or on the
//!   prefix cache: every row of a step is computed independently, the Q4_1 kernel included.
//! - Models run on the CPU, or on an NVIDIA GPU (`--device cuda`) in a build with the `cuda`
//!   feature; the paged KV cache and gradient averaging stay in host memory either way.

pub mod credentials;
pub mod device;
pub mod error;
pub mod llm;
pub mod model;
pub mod repository;
pub mod serve;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
