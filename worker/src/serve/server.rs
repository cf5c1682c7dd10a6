//! Wires the worker's single port: gRPC (OIP v2, `ModelService`, health, reflection) and HTTP
//! (`/v2` REST, `/metrics`) on one listener, HTTP/1.1 and h2c side by side. Handles graceful
//! shutdown: stop accepting, report NOT_SERVING, let in-flight requests finish within the grace
//! period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use lantern_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use lantern_proto::lantern::v1::embedding_service_server::EmbeddingServiceServer;
use lantern_proto::lantern::v1::generation_service_server::GenerationServiceServer;
use lantern_proto::lantern::v1::model_service_server::ModelServiceServer;
use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::embedding_service::EmbeddingServiceImpl;
use super::generation_service::GenerationServiceImpl;
use super::metrics::Metrics;
use super::model_service::ModelServiceImpl;
use super::oip::InferenceService;
use super::versions::{ModelManager, ServeSettings};
use super::{openai, rest};
use crate::error::{Error, Result};
use crate::repository::Repository;

/// Where and how to listen.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Largest request or response message, for gRPC and HTTP bodies alike.
    pub max_message_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

/// A running worker server.
pub struct RunningServer {
    addr: SocketAddr,
    manager: ModelManager,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// gRPC health service names whose status follows readiness.
const HEALTH_SERVICES: [&str; 2] = ["", "inference.GRPCInferenceService"];

/// Starts serving `repository`: binds, runs a first repository scan, and returns while versions
/// load in the background.
pub async fn start(repository: Repository, settings: ServeSettings, options: ServerOptions) -> Result<RunningServer> {
    let metrics = Arc::new(Metrics::new());
    let manager = ModelManager::new(repository, settings, metrics.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lantern_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| Error::Startup(format!("building the reflection service: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let limit = options.max_message_bytes;
    let grpc = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            GrpcInferenceServiceServer::new(InferenceService::new(manager.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            ModelServiceServer::new(ModelServiceImpl::new(manager.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            GenerationServiceServer::new(GenerationServiceImpl::new(manager.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            EmbeddingServiceServer::new(EmbeddingServiceImpl::new(manager.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .into_axum_router();
    let app = rest::router(manager.clone(), metrics)
        .merge(openai::router(manager.clone()))
        .merge(grpc)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(trace_request));

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::io(format!("binding {}", options.listen), e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("reading the bound address", e))?;
    let listener = listener.tap_io(|tcp| {
        // Small request/response messages: Nagle's algorithm would add tens of milliseconds.
        let _ = tcp.set_nodelay(true);
    });

    manager.reconcile().await;
    let reconciler = manager.spawn_reconciler();
    let health_task = tokio::spawn(follow_readiness(manager.clone(), health.clone()));
    let (stop, stopped) = oneshot::channel::<()>();
    let grace = options.shutdown_grace;
    tracing::info!(%addr, "serving gRPC and HTTP");
    let task = tokio::spawn(async move {
        let (draining_tx, draining_rx) = oneshot::channel::<()>();
        let signal = async move {
            let _ = stopped.await;
            health_task.abort();
            for service in HEALTH_SERVICES {
                health.set_service_status(service, ServingStatus::NotServing).await;
            }
            tracing::info!(grace_seconds = grace.as_secs_f64(), "shutting down: draining in-flight requests");
            let _ = draining_tx.send(());
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(signal);
        let server = async move { server.await.map_err(|e| Error::io("serving", e)) };
        tokio::pin!(server);
        let outcome = tokio::select! {
            result = &mut server => result,
            () = async { let _ = draining_rx.await; tokio::time::sleep(grace).await } => {
                tracing::warn!("grace period over with requests still in flight; closing");
                Ok(())
            }
        };
        reconciler.abort();
        outcome
    });
    Ok(RunningServer { addr, manager, stop, task })
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The version manager behind the server.
    pub fn manager(&self) -> &ModelManager {
        &self.manager
    }

    /// Stops accepting, lets in-flight requests finish (within the grace period) and returns.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| Error::Shutdown(format!("server task failed: {e}")))?
    }
}

/// Opens a server span per request (gRPC and HTTP alike) that continues the caller's trace when
/// the request carries W3C `traceparent`/`tracestate` headers.
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let span = tracing::info_span!(
        "request",
        otel.name = %request.uri().path(),
        otel.kind = "server",
        http.request.method = %request.method(),
    );
    if let Err(error) = span.set_parent(parent) {
        tracing::debug!(%error, "cannot continue the caller's trace");
    }
    next.run(request).instrument(span).await
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Keeps the gRPC health status in step with readiness, so Kubernetes gRPC probes see it.
async fn follow_readiness(manager: ModelManager, health: HealthReporter) {
    let mut changes = manager.subscribe();
    loop {
        let status = if manager.server_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in HEALTH_SERVICES {
            health.set_service_status(service, status).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
