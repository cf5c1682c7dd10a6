//! The serving side of the worker: the version manager and its pure decisions, dynamic batching,
//! and the protocol adapters (OIP v2 gRPC and REST, Lantern's `ModelService`, health, reflection,
//! metrics) that share one port. Entry point: [`server::start`].
//!
//! Layout:
//! - decisions, pure and unit-tested: [`config`], [`policy`], [`routing`], [`signature`], and the
//!   per-request bounds in [`limits`];
//! - state and work: [`versions`] (lifecycle, routing, loading), [`batcher`] (tensor models) and
//!   [`engine`] (continuous batching for language models), [`request_stats`] (what each version
//!   served, for canary analysis);
//! - adapters, translation only: [`oip`], [`model_service`], [`rest`], one error table in
//!   [`status`];
//! - who may call what: [`auth`]; connection limits and timeouts: [`connections`];
//! - wiring: [`server`].

pub mod auth;
pub mod batcher;
pub mod config;
pub mod connections;
pub mod embedder;
pub mod embedding_service;
pub mod engine;
pub mod generation;
pub mod generation_service;
pub mod limits;
pub mod metrics;
pub mod model_service;
pub mod oip;
pub mod openai;
pub mod policy;
pub mod request_stats;
pub mod rest;
pub mod routing;
pub mod server;
pub mod signature;
pub mod status;
pub mod versions;

use crate::repository::Manifest;

/// Name in server metadata.
pub const SERVER_NAME: &str = "lantern";
/// OIP extensions this server implements.
pub const SERVER_EXTENSIONS: &[&str] = &["model_repository"];
/// Header (gRPC metadata or HTTP) carrying a sticky routing key.
pub const ROUTING_KEY_HEADER: &str = "x-lantern-routing-key";
/// Request parameter carrying a sticky routing key, as an alternative to the header.
pub const ROUTING_KEY_PARAMETER: &str = "routing_key";

/// The `platform` string of model metadata, e.g. `lantern_mlp`.
pub fn platform(manifest: &Manifest) -> String {
    let architecture = serde_json::to_value(manifest.architecture).ok();
    format!("lantern_{}", architecture.as_ref().and_then(|v| v.as_str()).unwrap_or("model"))
}
