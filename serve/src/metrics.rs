//! Prometheus metrics of the serving path, labelled by model and version so a canary and its
//! stable version compare directly. Exposed as text at `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use lantern_runtime::repository::FetchReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;

use super::request_stats::RequestStats;
use super::status;
use crate::error::Error;

/// Model name used in labels for requests naming a model this worker does not serve, so callers
/// cannot grow the label set.
pub const UNKNOWN_MODEL: &str = "_unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    model: String,
    /// `cache` (already in the node cache) or `download`.
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    version: String,
    code: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~26 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

fn load_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

fn token_latency_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every serving metric, registered once per process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<VersionLabels>,
    queue_duration: HistogramFamily<VersionLabels>,
    batch_size: HistogramFamily<VersionLabels>,
    load_duration: HistogramFamily<VersionLabels>,
    load_failures: Family<VersionLabels, Counter>,
    loaded_versions: Family<ModelLabels, Gauge>,
    fetched_files: Family<FetchLabels, Counter>,
    downloaded_bytes: Family<ModelLabels, Counter>,
    generation: GenerationFamilies,
    stats: RequestStats,
}

/// The language-model metrics, one series per model version.
struct GenerationFamilies {
    time_to_first_token: HistogramFamily<VersionLabels>,
    inter_token_latency: HistogramFamily<VersionLabels>,
    duration: HistogramFamily<VersionLabels>,
    queue_duration: HistogramFamily<VersionLabels>,
    running: Family<VersionLabels, Gauge>,
    waiting: Family<VersionLabels, Gauge>,
    kv_blocks_used: Family<VersionLabels, Gauge>,
    kv_blocks_free: Family<VersionLabels, Gauge>,
    prompt_tokens: Family<VersionLabels, Counter>,
    generated_tokens: Family<VersionLabels, Counter>,
    preemptions: Family<VersionLabels, Counter>,
    prefix_cache_hits: Family<VersionLabels, Counter>,
}

impl GenerationFamilies {
    fn new(registry: &mut Registry) -> Self {
        let histogram = || HistogramFamily::new_with_constructor(token_latency_histogram as fn() -> Histogram);
        let families = Self {
            time_to_first_token: histogram(),
            inter_token_latency: histogram(),
            duration: histogram(),
            queue_duration: histogram(),
            running: Family::default(),
            waiting: Family::default(),
            kv_blocks_used: Family::default(),
            kv_blocks_free: Family::default(),
            prompt_tokens: Family::default(),
            generated_tokens: Family::default(),
            preemptions: Family::default(),
            prefix_cache_hits: Family::default(),
        };
        let f = &families;
        registry.register(
            "time_to_first_token_seconds",
            "Time from a generation request's arrival to its first token",
            f.time_to_first_token.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Time between consecutive tokens of one sequence",
            f.inter_token_latency.clone(),
        );
        registry.register(
            "generation_duration_seconds",
            "Time from a generation request's arrival to its last token",
            f.duration.clone(),
        );
        registry.register(
            "generation_queue_duration_seconds",
            "Time a generation request waited before its prompt started",
            f.queue_duration.clone(),
        );
        registry.register("running_sequences", "Sequences in the continuous batch", f.running.clone());
        registry.register("waiting_sequences", "Generation requests waiting to start", f.waiting.clone());
        registry.register("kv_cache_blocks_used", "KV cache blocks held by sequences", f.kv_blocks_used.clone());
        registry.register("kv_cache_blocks_free", "KV cache blocks free", f.kv_blocks_free.clone());
        registry.register("prompt_tokens", "Prompt tokens prefilled", f.prompt_tokens.clone());
        registry.register(
            "prefix_cache_hit_tokens",
            "Prompt tokens whose keys and values came from the prefix cache instead of a prefill",
            f.prefix_cache_hits.clone(),
        );
        registry.register("generated_tokens", "Tokens generated", f.generated_tokens.clone());
        registry.register(
            "preemptions",
            "Sequences preempted to free KV blocks (recomputed later)",
            f.preemptions.clone(),
        );
        families
    }
}

/// The per-version handles a generation engine records into.
#[derive(Clone, Debug)]
pub struct GenerationMetrics {
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub duration: Histogram,
    pub queue_duration: Histogram,
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_blocks_used: Gauge,
    pub kv_blocks_free: Gauge,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub preemptions: Counter,
    pub prefix_cache_hits: Counter,
}

/// A generation engine's gauges at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Sequences in the continuous batch.
    pub running: u64,
    /// Requests waiting to start.
    pub waiting: u64,
    /// KV cache blocks held by sequences, and in all.
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
}

/// The per-version handles the batching thread records into.
#[derive(Clone, Debug)]
pub struct VersionMetrics {
    pub queue_duration: Histogram,
    pub batch_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `lantern` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lantern");
        let requests = Family::default();
        let request_duration = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let queue_duration = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let batch_size = HistogramFamily::new_with_constructor(batch_histogram as fn() -> Histogram);
        let load_duration = HistogramFamily::new_with_constructor(load_histogram as fn() -> Histogram);
        let load_failures = Family::default();
        let loaded_versions = Family::default();
        registry.register("requests", "Inference requests by model, version and gRPC status code", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Inference request latency inside the worker, from routing to response",
            request_duration.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time a request waited in its version's batch queue",
            queue_duration.clone(),
        );
        registry.register("batch_size_rows", "Rows per executed batch", batch_size.clone());
        registry.register(
            "model_load_duration_seconds",
            "Time to verify and load a model version",
            load_duration.clone(),
        );
        registry.register("model_load_failures", "Failed model version loads", load_failures.clone());
        registry.register("loaded_versions", "Model versions currently available", loaded_versions.clone());
        let fetched_files = Family::default();
        let downloaded_bytes = Family::default();
        registry.register(
            "model_files_fetched",
            "Files of remote versions read for loads, from the node cache or downloaded into it",
            fetched_files.clone(),
        );
        registry.register(
            "model_downloaded_bytes",
            "Bytes of remote versions downloaded into the node cache",
            downloaded_bytes.clone(),
        );
        let generation = GenerationFamilies::new(&mut registry);
        Self {
            registry,
            requests,
            request_duration,
            queue_duration,
            batch_size,
            load_duration,
            load_failures,
            loaded_versions,
            fetched_files,
            downloaded_bytes,
            generation,
            stats: RequestStats::default(),
        }
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail; this is a bug");
        out
    }

    /// Handles for one version's batching thread.
    pub fn version(&self, model: &str, version: u64) -> VersionMetrics {
        let labels = version_labels(model, Some(version));
        VersionMetrics {
            queue_duration: self.queue_duration.get_or_create(&labels).clone(),
            batch_size: self.batch_size.get_or_create(&labels).clone(),
        }
    }

    /// Handles for one version's generation engine.
    pub fn generation(&self, model: &str, version: u64) -> GenerationMetrics {
        let labels = version_labels(model, Some(version));
        let f = &self.generation;
        GenerationMetrics {
            time_to_first_token: f.time_to_first_token.get_or_create(&labels).clone(),
            inter_token_latency: f.inter_token_latency.get_or_create(&labels).clone(),
            duration: f.duration.get_or_create(&labels).clone(),
            queue_duration: f.queue_duration.get_or_create(&labels).clone(),
            running: f.running.get_or_create(&labels).clone(),
            waiting: f.waiting.get_or_create(&labels).clone(),
            kv_blocks_used: f.kv_blocks_used.get_or_create(&labels).clone(),
            kv_blocks_free: f.kv_blocks_free.get_or_create(&labels).clone(),
            prompt_tokens: f.prompt_tokens.get_or_create(&labels).clone(),
            generated_tokens: f.generated_tokens.get_or_create(&labels).clone(),
            preemptions: f.preemptions.get_or_create(&labels).clone(),
            prefix_cache_hits: f.prefix_cache_hits.get_or_create(&labels).clone(),
        }
    }

    /// What one version's generation engine last published, or `None` when the version has
    /// none (not a language model, or not loaded yet). Read without creating a series.
    pub fn engine_load(&self, model: &str, version: u64) -> Option<EngineLoad> {
        let labels = version_labels(model, Some(version));
        let f = &self.generation;
        let gauge = |family: &Family<VersionLabels, Gauge>| family.get(&labels).map(|g| g.get().max(0) as u64);
        let (used, free) = (gauge(&f.kv_blocks_used)?, gauge(&f.kv_blocks_free)?);
        Some(EngineLoad {
            running: gauge(&f.running)?,
            waiting: gauge(&f.waiting)?,
            kv_blocks_used: used,
            kv_blocks_total: used + free,
        })
    }

    /// Records one finished request. `version` is `None` when routing failed. Only
    /// [`Outcome`] calls this, so that every request is counted exactly once.
    fn observe_request(&self, model: &str, version: Option<u64>, code: Code, seconds: f64) {
        let labels = version_labels(model, version);
        let code_label = status::code_name(code);
        self.requests
            .get_or_create(&RequestLabels {
                model: labels.model.clone(),
                version: labels.version.clone(),
                code: code_label,
            })
            .inc();
        if let Some(version) = version {
            self.request_duration.get_or_create(&labels).observe(seconds);
            self.stats.record(model, version, code, seconds);
        }
    }

    /// The per-version counters the operator's canary analysis reads.
    pub fn request_stats(&self) -> &RequestStats {
        &self.stats
    }

    /// Records a load attempt.
    pub fn observe_load(&self, model: &str, version: u64, seconds: f64, ok: bool) {
        let labels = version_labels(model, Some(version));
        self.load_duration.get_or_create(&labels).observe(seconds);
        if !ok {
            self.load_failures.get_or_create(&labels).inc();
        }
    }

    /// Records what reading a remote version fetched.
    pub fn observe_fetch(&self, model: &str, report: &FetchReport) {
        for (source, files) in [("cache", report.files_cached), ("download", report.files_downloaded)] {
            let labels = FetchLabels { model: model.to_owned(), source };
            self.fetched_files.get_or_create(&labels).inc_by(files as u64);
        }
        self.downloaded_bytes.get_or_create(&ModelLabels { model: model.to_owned() }).inc_by(report.bytes_downloaded);
    }

    /// Sets how many versions of `model` are available.
    pub fn set_loaded_versions(&self, model: &str, count: usize) {
        self.loaded_versions.get_or_create(&ModelLabels { model: model.to_owned() }).set(count as i64);
    }
}

/// One request's outcome, recorded exactly once in `requests_total`, `request_duration_seconds`
/// and the version's [`RequestStats`] (what the canary gate reads), whatever the protocol and
/// the model's kind: by [`Outcome::finish`], or as `CANCELLED` when dropped unfinished (the
/// client went away, mid-stream or while waiting).
pub struct Outcome {
    metrics: Arc<Metrics>,
    model: String,
    version: Option<u64>,
    started: Instant,
    recorded: bool,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

impl Outcome {
    /// A request to `model` has arrived.
    pub fn start(metrics: Arc<Metrics>, model: &str) -> Self {
        Self { metrics, model: model.to_owned(), version: None, started: Instant::now(), recorded: false }
    }

    /// The request was routed to `version`.
    pub fn routed(&mut self, version: u64) {
        self.version = Some(version);
    }

    /// Records how the request ended. A model this worker does not serve is counted under
    /// [`UNKNOWN_MODEL`], so callers cannot grow the label set.
    pub fn finish(mut self, result: Result<(), &Error>) {
        let code = result.map_or_else(status::grpc_code, |()| Code::Ok);
        if matches!(result, Err(Error::ModelNotFound { .. })) {
            self.model = UNKNOWN_MODEL.to_owned();
        }
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        self.recorded = true;
        self.metrics.observe_request(&self.model, self.version, code, self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(Code::Cancelled);
        }
    }
}

fn version_labels(model: &str, version: Option<u64>) -> VersionLabels {
    VersionLabels { model: model.to_owned(), version: version.map(|v| v.to_string()).unwrap_or_default() }
}
