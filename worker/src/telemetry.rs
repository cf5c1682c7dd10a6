//! Logging and tracing for the `lantern-worker` binary: `tracing` to stderr (text or JSON), and
//! OpenTelemetry spans over OTLP/gRPC when an endpoint is configured.

use anyhow::Context;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// Installs the global subscriber. `RUST_LOG` style filtering comes from `filter`.
pub fn init(filter: &str, json: bool, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let provider = otlp_endpoint
        .map(|endpoint| {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name("lantern-worker").build();
            anyhow::Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
        })
        .transpose()?;
    // Continue the callers' traces from W3C `traceparent` headers (see `serve::server`).
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("lantern-worker")));
    let (text, json_layer) = if json {
        (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)))
    } else {
        (Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)), None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json_layer)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}
