//! Lantern's worker: the data plane that serves numbered model versions over gRPC and HTTP from
//! a model repository, hot-loads new versions without restarts, and routes each request by
//! version, label or weighted split.
//!
//! - [`repository`]: the on-disk layout, manifests, digest verification, atomic `publish`.
//! - [`model`]: candle model implementations (one module per architecture).
//! - [`serve`]: version manager, batching, protocols; [`serve::server::start`] runs it all.
//! - [`tensor`]: protocol-neutral tensors and datatype conversions.
//! - [`llm`]: language-model building blocks: tokenizers (from `tokenizer.json` or GGUF metadata),
//!   chat templates, sampling and stop strings. The llama forward pass is [`model::llama`]; the
//!   generation engine and its serving are still to come.
//!
//! Decisions worth knowing:
//! - A version is loaded only after every file's sha256 matches its manifest; a failed load is
//!   retried with exponential backoff while the previous version keeps serving.
//! - Versions named by labels or traffic weights stay loaded even outside the version policy, so
//!   a rollout's stable version cannot be unloaded under it.
//! - When every version directory of a model disappears, the newest loaded version keeps serving
//!   (TF Serving's "never unload the last available version").
//! - Models run on CPU; the `cuda` path comes with the LLM runtime.

pub mod error;
pub mod llm;
pub mod model;
pub mod repository;
pub mod serve;
pub mod tensor;

pub use error::{Error, Result};
