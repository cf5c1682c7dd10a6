//! Language-model building blocks shared by generation and embeddings: [`tokenizer`] (from a
//! `tokenizer.json` or rebuilt from GGUF metadata) and [`chat`] (the model's Jinja chat template).

pub mod chat;
pub mod tokenizer;
