//! Lantern's serving core: the version manager and its pure decisions, dynamic batching, the
//! generation engine (continuous batching over the runtime's paged KV cache), the embedder, and
//! the protocol adapters (OIP v2 gRPC and REST, the OpenAI-compatible HTTP API, Lantern's
//! `ModelService`, `GenerationService` and `EmbeddingService`, health, reflection, metrics) that
//! share one port. Entry point: [`server::start`]. Models come from `lantern-runtime`; nothing
//! here trains.
//!
//! Layout:
//! - decisions, pure and unit-tested: [`config`], [`policy`], [`routing`], [`signature`],
//!   [`tools`] (OpenAI tool calling: checked, instructed, constrained, read back), and the
//!   per-request bounds in [`limits`];
//! - state and work: [`versions`] (lifecycle, routing, loading), [`dispatch`] (every request
//!   routed, run and counted once), [`batcher`] (tensor models), [`engine`] (continuous batching
//!   for language models) and [`generation`], [`embedder`], [`metrics`] and [`request_stats`]
//!   (what each version served, for canary analysis);
//! - adapters, translation only: [`oip`], [`model_service`], [`rest`], one error table in
//!   [`status`] from the errors of [`error`];
//! - who may call what: [`auth`]; connection limits and timeouts: [`connections`];
//! - wiring: [`server`].
//!
//! Libraries: tonic, axum and hyper for the protocols (the accept loop on hyper-util, for its
//! connection limits and timeouts), rustls for TLS, `base64` for base64, prometheus-client for
//! metrics.
//!
//! Decisions worth knowing:
//! - A failed load is retried with exponential backoff while the previous version keeps serving.
//! - Versions named by labels or traffic weights stay loaded even outside the version policy, so
//!   a rollout's stable version cannot be unloaded under it.
//! - When every version directory of a model disappears, the newest loaded version keeps serving
//!   (TF Serving's "never unload the last available version").

pub mod auth;
pub mod batcher;
pub mod config;
pub mod connections;
pub mod dispatch;
pub mod embedder;
pub mod embedding_service;
pub mod engine;
pub mod error;
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
pub mod tools;
pub mod versions;

use lantern_runtime::repository::Manifest;

/// Name in server metadata.
pub const SERVER_NAME: &str = "lantern";
/// OIP extensions this server implements.
pub const SERVER_EXTENSIONS: &[&str] = &["model_repository", "binary_tensor_data"];
/// Header (gRPC metadata or HTTP) carrying a sticky routing key.
pub const ROUTING_KEY_HEADER: &str = "x-lantern-routing-key";
/// Request parameter carrying a sticky routing key, as an alternative to the header.
pub const ROUTING_KEY_PARAMETER: &str = "routing_key";

/// The `platform` string of model metadata, e.g. `lantern_mlp`.
pub fn platform(manifest: &Manifest) -> String {
    let architecture = serde_json::to_value(manifest.architecture).ok();
    format!("lantern_{}", architecture.as_ref().and_then(|v| v.as_str()).unwrap_or("model"))
}
