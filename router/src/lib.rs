//! `lantern-router`: per-request balancing in front of an InferenceService's worker pods.
//!
//! A Kubernetes Service balances connections, and a gRPC client keeps one connection, so without
//! this every request of one client reaches one pod. The router takes each request — gRPC (OIP,
//! `Generate`, `Embed`, health, reflection) and HTTP (OIP REST, the OpenAI API with SSE) on one
//! port, HTTP/1.1 and h2c — and sends it to a pod of its own choosing over one multiplexed
//! HTTP/2 connection per pod:
//!
//! - [`balance`]: least outstanding requests by the power of two choices; for language-model
//!   requests, consistent hashing with bounded loads on an affinity key, so a prompt prefix and
//!   an adapter go back to the pod that cached them while that pod is not overloaded.
//! - [`affinity`]: the key — the model and the first 256 bytes of the prompt.
//! - [`pool`]: the ready pods, their loads and connections.
//! - [`proxy`]: forwarding, retries of requests that never left, holding requests while no pod
//!   is ready (scale from zero), refusals in the caller's protocol.
//! - [`discovery`]: the pods from the Kubernetes API (a label selector) or a fixed list.
//! - [`server`]: the listeners; with [`server::Tls`] the serving port speaks TLS with the
//!   service's certificate and the pods are reached over TLS, trusting that same certificate.
//! - [`metrics`] and [`admin`]: `/metrics`, `/healthz` and `/stats` (what the operator's
//!   autoscaler reads: requests held and in flight) on a port of their own, so no path of the
//!   workers' is shadowed.
//!
//! Decisions: one router Deployment per InferenceService, behind the Service clients already use
//! (the operator points that Service at the router, so no client changes), which keeps one
//! service's load and failures away from another's and lets the router scale with its service.
//! The router answers nothing itself but refusals: the worker owns validation, model names and
//! versions, so the routing key and `model:label` headers reach it unchanged and the in-pod
//! canary split works as before. hyper is used directly (server and HTTP/2 client) rather than a
//! proxy framework: the one client call that matters, `try_send_request`, hands back a request
//! that was never sent, which is what makes retries safe.

pub mod admin;
pub mod affinity;
pub mod balance;
pub mod discovery;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod server;
