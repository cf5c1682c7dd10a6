//! Integration tests of the serving core against a real server on 127.0.0.1 with real tonic and
//! HTTP clients and real model files.

mod bad_input;
mod embeddings;
mod fixtures;
mod hardening;
mod hot_reload;
mod lifecycle;
mod llm;
mod python_client;
mod rest;
mod router;
mod routing;
