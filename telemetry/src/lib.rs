//! Logging and tracing for Lantern's binaries (`lantern-worker`, `lantern-operator`): `tracing`
//! to stderr as text or JSON lines, and OpenTelemetry spans over OTLP/gRPC when an endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`), with W3C trace context carried on gRPC calls in
//! both directions.
//!
//! - [`TelemetryArgs`]: the `--log`, `--log-json` and `--otlp-endpoint` flags every binary
//!   flattens into its own; [`TelemetryArgs::init`] installs the subscriber, and the returned
//!   [`Telemetry`] flushes spans when dropped.
//! - [`with_trace_context`] writes the current span's context into an outgoing gRPC request, so the callee's
//!   spans join the caller's trace; [`inject_context`] does the same for any HTTP request's
//!   headers, and [`caller_context`] reads the context a caller's headers carry.
//! - [`exposition`]: `/metrics` in OpenMetrics or the Prometheus text format, as the scraper
//!   asks.
//! - `collector` (feature `collector`): a real OTLP collector on loopback, for tests.

#[cfg(feature = "collector")]
pub mod collector;
pub mod exposition;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("installing the log subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The logging and tracing flags of every Lantern binary (`#[command(flatten)]` them).
#[derive(clap::Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log filter, `tracing_subscriber::EnvFilter` syntax (`info`, `lantern_operator=debug`, …).
    #[arg(long, env = lantern_contract::env::LOG, default_value = "info", global = true)]
    pub log: String,
    /// Log as JSON lines.
    #[arg(long, env = lantern_contract::env::LOG_JSON, global = true)]
    pub log_json: bool,
    /// Export traces over OTLP/gRPC to this endpoint.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

impl TelemetryArgs {
    /// Installs the global subscriber for the binary `service`.
    pub fn init(&self, service: &'static str) -> Result<Telemetry> {
        init(service, &self.log, self.log_json, self.otlp_endpoint.as_deref())
    }
}

/// Flushes pending spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Installs the global subscriber for the binary `service`: `filter` in `RUST_LOG` syntax, JSON
/// lines when `json`, and span export to `otlp_endpoint` when given.
fn init(service: &'static str, filter: &str, json: bool, otlp_endpoint: Option<&str>) -> Result<Telemetry> {
    let filter = EnvFilter::try_new(filter).map_err(|source| Error::Filter { filter: filter.to_owned(), source })?;
    let provider = otlp_endpoint
        .map(|endpoint| {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|source| Error::Exporter { endpoint: endpoint.to_owned(), source })?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
            Ok::<_, Error>(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
        })
        .transpose()?;
    // Callers' traces are continued from, and callees' joined through, W3C `traceparent`.
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let (text, json_layer) = if json {
        (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)))
    } else {
        // Colours only for a terminal: a log file or a pod's log keeps plain text.
        let ansi = std::io::stderr().is_terminal();
        (Some(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)), None)
    };
    tracing_subscriber::registry().with(filter).with(text).with(json_layer).with(otel).try_init()?;
    Ok(Telemetry { provider })
}

/// `request` carrying the current span's trace context (`traceparent`, `tracestate`), so the
/// server's spans continue this trace.
pub fn with_trace_context<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    });
    request
}

/// The trace context W3C `traceparent`/`tracestate` headers carry (an empty one without them).
pub fn caller_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's trace context into `headers`, replacing what was there.
pub fn inject_context(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
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

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = http::HeaderName::from_bytes(key.as_bytes());
        if let (Ok(name), Ok(value)) = (name, http::HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, value.parse()) {
            self.0.insert(key, value);
        }
    }
}
