//! Language-model building blocks shared by generation and embeddings: [`tokenizer`] (from a
//! `tokenizer.json` or rebuilt from GGUF metadata), [`chat`] (the model's Jinja chat template),
//! [`codec`] (the two together: text in, text out), [`sampling`] (next-token choice),
//! [`grammar`] (constrained decoding: JSON schemas as token masks), [`greedy`] (a batch of
//! prompts decoded greedily, for evaluation), [`stop`]
//! (stop strings over a token stream), [`kv_cache`] (paged keys and values, and attention over
//! them) and [`scheduler`] (the continuous-batching decision for one step). The engine that runs
//! them is the serving crate's.

pub mod chat;
pub mod codec;
pub mod grammar;
pub mod greedy;
pub mod kv_cache;
pub mod sampling;
pub mod scheduler;
pub mod stop;
pub mod tokenizer;
