//! Language-model building blocks shared by generation and embeddings: [`tokenizer`] (from a
//! `tokenizer.json` or rebuilt from GGUF metadata), [`chat`] (the model's Jinja chat template),
//! [`sampling`] (next-token choice) and [`stop`] (stop strings over a token stream).

pub mod chat;
pub mod kv_cache;
pub mod sampling;
pub mod stop;
pub mod tokenizer;
