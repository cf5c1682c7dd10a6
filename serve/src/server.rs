//! Wires the worker's single port: gRPC (OIP v2, `ModelService`, health, reflection) and HTTP
//! (`/v2` REST, `/metrics`) on one listener, HTTP/1.1 and h2c side by side. Handles graceful
//! shutdown: stop accepting, report NOT_SERVING, let in-flight requests finish within the grace
//! period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use lantern_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use lantern_proto::lantern::v1::embedding_service_server::EmbeddingServiceServer;
use lantern_proto::lantern::v1::generation_service_server::GenerationServiceServer;
use lantern_proto::lantern::v1::model_service_server::ModelServiceServer;
use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::auth::{self, Credentials};
use super::connections::{self, ConnectionLimits, Tls};
use super::embedding_service::EmbeddingServiceImpl;
use super::generation_service::GenerationServiceImpl;
use super::metrics::Metrics;
use super::model_service::ModelServiceImpl;
use super::oip::InferenceService;
use super::versions::{ModelManager, ServeSettings};
use super::{openai, rest};
use crate::error::{Error, Result};
use lantern_runtime::repository::Repository;

/// Where and how to listen.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// A second address for management calls only (`ModelService`, the repository APIs), which
    /// `listen` then no longer answers, so a NetworkPolicy can admit only the operator to it.
    /// `None` serves everything on `listen`.
    pub management_listen: Option<SocketAddr>,
    /// Largest gRPC message, and largest HTTP body outside `/v1`.
    pub max_message_bytes: usize,
    /// Largest body of the OpenAI API (`/v1`, JSON text): smaller than a tensor's, since a
    /// prompt longer than any context is refused anyway.
    pub max_text_body_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Connection cap and timeouts.
    pub connections: ConnectionLimits,
    /// Who may call management and inference.
    pub credentials: Credentials,
    /// TLS on `listen` (the management listener stays plain: only the operator reaches it).
    pub tls: Option<Tls>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8500)),
            management_listen: None,
            max_message_bytes: 64 << 20,
            max_text_body_bytes: 4 << 20,
            shutdown_grace: Duration::from_secs(30),
            connections: ConnectionLimits::default(),
            credentials: Credentials::default(),
            tls: None,
        }
    }
}

/// A running worker server.
pub struct RunningServer {
    addr: SocketAddr,
    management_addr: Option<SocketAddr>,
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
    let grpc = tonic::service::Routes::new(health_service.clone())
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
    let health_only = rest::health_router(manager.clone())
        .merge(tonic::service::Routes::new(health_service.clone()).into_axum_router())
        .fallback(at_capacity);
    let app = rest::router(manager.clone(), metrics)
        .merge(openai::router(manager.clone(), options.max_text_body_bytes))
        .merge(grpc)
        .fallback(unrouted)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(Arc::new(options.credentials.clone()), auth::authorize));
    let confined = |port: Port| {
        app.clone()
            .layer(axum::middleware::from_fn_with_state(port, confine))
            .layer(axum::middleware::from_fn(trace_request))
    };
    if !options.credentials.guards_management() {
        tracing::warn!("management APIs are open to anyone who reaches their port; set --management-token-file");
    }

    let bind = |address: SocketAddr| async move {
        let listener =
            tokio::net::TcpListener::bind(address).await.map_err(|e| Error::io(format!("binding {address}"), e))?;
        let bound = listener.local_addr().map_err(|e| Error::io("reading the bound address", e))?;
        Ok::<_, Error>((listener, bound))
    };
    let (listener, addr) = bind(options.listen).await?;
    let management = match options.management_listen {
        Some(address) => Some(bind(address).await?),
        None => None,
    };
    let management_addr = management.as_ref().map(|(_, bound)| *bound);
    let public = confined(if management.is_some() { Port::Public } else { Port::All });

    manager.reconcile().await;
    let reconciler = manager.spawn_reconciler();
    let health_task = tokio::spawn(follow_readiness(manager.clone(), health.clone()));
    let (stop, stopped) = oneshot::channel::<()>();
    let grace = options.shutdown_grace;
    let limits = options.connections;
    let tls = options.tls.clone();
    tracing::info!(%addr, management = ?management_addr, "serving gRPC and HTTP");
    let management = management.map(|(listener, _)| (listener, confined(Port::Management), health_only.clone()));
    let task = tokio::spawn(async move {
        let (draining_tx, draining_rx) = oneshot::channel::<()>();
        let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            let _ = stopped.await;
            health_task.abort();
            for service in HEALTH_SERVICES {
                health.set_service_status(service, ServingStatus::NotServing).await;
            }
            tracing::info!(grace_seconds = grace.as_secs_f64(), "shutting down: draining in-flight requests");
            let _ = closing_tx.send(true);
            let _ = draining_tx.send(());
        };
        let management_server = async move {
            let Some((listener, router, health_only)) = management else { return };
            let mut closing = closing_rx;
            let signal = async move {
                let _ = closing.wait_for(|closing| *closing).await;
            };
            connections::serve(listener, router, health_only, limits, None, signal).await;
        };
        let server = async move {
            tokio::join!(connections::serve(listener, public, health_only, limits, tls, signal), management_server);
        };
        tokio::pin!(server);
        let outcome = tokio::select! {
            () = &mut server => Ok(()),
            () = async { let _ = draining_rx.await; tokio::time::sleep(grace).await } => {
                tracing::warn!("grace period over with requests still in flight; closing");
                Ok(())
            }
        };
        reconciler.abort();
        outcome
    });
    Ok(RunningServer { addr, management_addr, manager, stop, task })
}

/// Which calls a listener answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// The only port: everything.
    All,
    /// The serving port beside a management port: all but management.
    Public,
    /// The management port: management and health.
    Management,
}

/// Answers a call its listener does not serve as a route that does not exist there.
async fn confine(
    axum::extract::State(port): axum::extract::State<Port>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let served = match (port, auth::scope(request.uri().path())) {
        (Port::All, _) | (_, auth::Scope::Open) => true,
        (Port::Public, scope) => scope == auth::Scope::Inference,
        (Port::Management, scope) => scope == auth::Scope::Management,
    };
    match served {
        true => next.run(request).await,
        false => unrouted(request.method().clone(), request.uri().clone(), request.headers().clone()).await,
    }
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound management address, when management has a port of its own.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
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

/// The answer to a request no route serves: `UNIMPLEMENTED` for gRPC, 404 in the shape of the
/// API the path belongs to otherwise.
async fn unrouted(method: http::Method, uri: http::Uri, headers: http::HeaderMap) -> axum::response::Response {
    let path = uri.path();
    if auth::is_grpc(&headers) {
        return tonic::Status::unimplemented(format!("unknown method {path}")).into_http();
    }
    match path == "/v1" || path.starts_with("/v1/") {
        true => openai::not_found(&method, path),
        false => rest::not_found(&method, path),
    }
}

/// The answer to a route called with a method it does not take: 405 in its API's shape.
async fn wrong_method(method: http::Method, uri: http::Uri) -> axum::response::Response {
    match uri.path().starts_with("/v1/") {
        true => openai::method_not_allowed(&method, uri.path()),
        false => rest::method_not_allowed(&method, uri.path()),
    }
}

/// What a connection beyond the cap gets for anything but health.
async fn at_capacity(headers: http::HeaderMap) -> axum::response::Response {
    let message = "the server is at its connection limit; retry shortly";
    match auth::is_grpc(&headers) {
        true => tonic::Status::unavailable(message).into_http(),
        false => rest::error_response(http::StatusCode::SERVICE_UNAVAILABLE, message.into()),
    }
}

/// Opens a server span per request (gRPC and HTTP alike) that continues the caller's trace when
/// the request carries W3C `traceparent`/`tracestate` headers.
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let parent = lantern_telemetry::caller_context(request.headers());
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
