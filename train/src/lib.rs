//! Lantern's trainer (`lantern-worker train`): data-parallel training with candle whose
//! checkpoints are published as model versions of the runtime's repository, which the serving
//! side loads unchanged. The job file's types are `lantern-contract`'s, shared with the operator.
//!
//! - [`config`]: the job file plus the environment, validated before any work starts; errors in
//!   [`error`].
//! - [`data`]: token windows (text files, the built-in addition task) and CSV rows, split into
//!   training and held-out parts, read in an order that depends only on the seed and the step.
//! - [`jsonl`]: fine-tuning examples (chat conversations, prompt/completion pairs) from JSON
//!   Lines, templated and tokenized by the base's own codec, the loss masked to the answers.
//! - [`lm`]: the trainable llama decoder: from scratch over bytes (with the byte-level tokenizer
//!   it ships with), or a pretrained base fine-tuned in full or with LoRA adapters.
//! - [`base`]: a pretrained version a job starts from, read and verified from the repository.
//! - [`finetune`]: held-out evaluation of a fine-tune and the versions it publishes.
//! - [`heldout`]: held-out metrics of a language model as serving runs it (loss, perplexity,
//!   exact-match accuracy of greedy answers).
//! - [`quantize`]: a llama version written as GGUF in a smaller type and published as a version.
//! - [`distill`]: a smaller student trained on a teacher version's next-token distributions.
//! - [`params`]: named parameters seen as one flat vector by the optimizer.
//! - [`optim`]: AdamW, the warm-up + cosine schedule and gradient clipping.
//! - [`mlp`]: the serving core's MLP, trained as is.
//! - [`checkpoint`]: training states (weights, moments, step), atomic and verified.
//! - [`curves`]: the loss, learning rate, gradient norm, tokens/s and held-out metrics per step as
//!   TensorBoard event files, kept with the states and carried by every version.
//! - [`collective`]: rendezvous at rank 0 and the ring all-reduce over gRPC.
//! - [`progress`]: rank 0's `TrainingService` and `/metrics`; [`token`]: the job's token on both
//!   endpoints.
//! - [`trainer`]: the loop, checkpoints and publishing.

pub mod base;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod curves;
pub mod data;
pub mod distill;
pub mod error;
pub mod finetune;
pub mod heldout;
pub mod jsonl;
pub mod lm;
pub mod mlp;
pub mod optim;
pub mod params;
pub mod progress;
pub mod quantize;
pub mod token;
pub mod trainer;

pub use lantern_contract::exit::{INVALID as EXIT_INVALID, RETRYABLE as EXIT_RETRYABLE};
