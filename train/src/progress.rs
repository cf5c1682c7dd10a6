//! Rank 0's account of the job, served over gRPC (`lantern.v1.TrainingService/GetProgress`) and as
//! Prometheus text at `/metrics` on the progress address: phase, step, epoch, mean loss,
//! throughput, ETA, every published version with its metrics and digest, and every rank's
//! heartbeat. The final state is also rank 0's termination message.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use lantern_proto::TERMINATION_PREFIX;
use lantern_proto::lantern::v1::training_service_server::{TrainingService, TrainingServiceServer};
use lantern_proto::lantern::v1::{
    GetProgressRequest, PublishedVersion, RankHeartbeat, TrainingPhase, TrainingProgress,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tonic::{Request, Response, Status};

use lantern_proto::auth::Token;

use crate::error::{Error, Result};
use crate::token::require_token;

type FloatGauge = Gauge<f64, AtomicU64>;

/// Kubernetes keeps at most this much of a termination message.
const TERMINATION_LIMIT: usize = 4096;

/// The shared progress of one job.
pub struct Progress {
    /// Examples per step over all ranks.
    examples: usize,
    state: Mutex<State>,
    registry: Registry,
    gauges: Gauges,
}

struct State {
    phase: TrainingPhase,
    step: u64,
    total_steps: u64,
    epoch: u64,
    loss: f64,
    /// When and at which step this run's training began (for throughput and ETA).
    timing: Option<(Instant, u64)>,
    /// When the latest step of this run finished: rates are measured up to it, so that they
    /// hold still between steps and while a checkpoint is evaluated and published.
    last_step_at: Option<Instant>,
    /// Tokens the model read (padding excluded) since then.
    tokens: u64,
    last_version: u64,
    last_metrics: HashMap<String, f64>,
    published: Vec<PublishedVersion>,
    baseline: HashMap<String, f64>,
    failure: String,
    heartbeats: Vec<Option<(Instant, u64)>>,
    /// Versions retention keeps beyond the newest ones: the job file's, then the operator's.
    held: BTreeSet<u64>,
    /// Versions retention removed.
    removed: Vec<u64>,
}

struct Gauges {
    step: Gauge,
    total_steps: Gauge,
    epoch: Gauge,
    loss: FloatGauge,
    learning_rate: FloatGauge,
    examples_per_second: FloatGauge,
    tokens_per_second: FloatGauge,
    published_version: Gauge,
    /// The newest version's held-out metrics, by name (`eval_loss`, `eval_accuracy`, …).
    published_metrics: Family<MetricLabel, FloatGauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabel {
    metric: String,
}

impl Progress {
    /// A job of `total_steps` steps of `examples` examples over `world_size` ranks, for model
    /// `model`.
    pub fn new(model: &str, total_steps: u64, world_size: usize, examples: usize) -> Arc<Self> {
        let labels = [(std::borrow::Cow::Borrowed("model"), std::borrow::Cow::Owned(model.to_owned()))];
        let mut registry = Registry::with_prefix_and_labels("lantern_training", labels.into_iter());
        let gauges = Gauges {
            step: Gauge::default(),
            total_steps: Gauge::default(),
            epoch: Gauge::default(),
            loss: FloatGauge::default(),
            learning_rate: FloatGauge::default(),
            examples_per_second: FloatGauge::default(),
            tokens_per_second: FloatGauge::default(),
            published_version: Gauge::default(),
            published_metrics: Family::default(),
        };
        registry.register("step", "Optimizer steps completed", gauges.step.clone());
        registry.register("total_steps", "Optimizer steps in the job", gauges.total_steps.clone());
        registry.register("epoch", "Passes over the training data begun", gauges.epoch.clone());
        registry.register("loss", "Mean training loss of the last step over all ranks", gauges.loss.clone());
        registry.register("learning_rate", "The learning rate of the last step", gauges.learning_rate.clone());
        registry.register(
            "examples_per_second",
            "Examples per second over all ranks since this run started",
            gauges.examples_per_second.clone(),
        );
        registry.register(
            "tokens_per_second",
            "Tokens per second over all ranks since this run started",
            gauges.tokens_per_second.clone(),
        );
        registry.register(
            "published_version",
            "The newest version this job published",
            gauges.published_version.clone(),
        );
        registry.register(
            "published_metric",
            "The newest version's held-out metrics, by metric",
            gauges.published_metrics.clone(),
        );
        gauges.total_steps.set(total_steps as i64);
        let state = State {
            phase: TrainingPhase::Starting,
            step: 0,
            total_steps,
            epoch: 0,
            loss: f64::NAN,
            timing: None,
            last_step_at: None,
            tokens: 0,
            last_version: 0,
            last_metrics: HashMap::new(),
            published: Vec::new(),
            baseline: HashMap::new(),
            failure: String::new(),
            heartbeats: vec![None; world_size],
            held: BTreeSet::new(),
            removed: Vec::new(),
        };
        Arc::new(Self { examples, state: Mutex::new(state), registry, gauges })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Training begins (or resumes) at `step`.
    pub fn training_from(&self, step: u64) {
        let mut state = self.state();
        state.phase = TrainingPhase::Training;
        state.step = step;
        state.timing = Some((Instant::now(), step));
        state.last_step_at = None;
        state.tokens = 0;
        self.gauges.step.set(step as i64);
    }

    /// Step `step` finished with mean loss `loss` at `learning_rate` in `epoch`, having read
    /// `tokens` tokens over all ranks (padding excluded; 0 for tabular data).
    pub fn step_done(&self, step: u64, loss: f64, learning_rate: f64, epoch: u64, tokens: usize) {
        self.gauges.learning_rate.set(learning_rate);
        let mut state = self.state();
        state.tokens += tokens as u64;
        state.last_step_at = Some(Instant::now());
        (state.step, state.loss, state.epoch) = (step, loss, epoch);
        if let Some(slot) = state.heartbeats.first_mut() {
            *slot = Some((Instant::now(), step));
        }
        self.gauges.step.set(step as i64);
        self.gauges.loss.set(loss);
        self.gauges.epoch.set(epoch as i64);
        let (examples, tokens, _) = rates(&state, self.examples);
        self.gauges.examples_per_second.set(examples);
        self.gauges.tokens_per_second.set(tokens);
    }

    pub fn published(&self, version: u64, metrics: &[(String, f64)], digest: &str) {
        let mut state = self.state();
        state.last_version = version;
        state.last_metrics = metrics.iter().cloned().collect();
        let metrics = state.last_metrics.clone();
        for (name, value) in metrics.iter().filter(|(name, _)| name.starts_with("eval_")) {
            self.gauges.published_metrics.get_or_create(&MetricLabel { metric: name.clone() }).set(*value);
        }
        state.published.push(PublishedVersion { version, metrics, digest: digest.to_owned() });
        self.gauges.published_version.set(version as i64);
    }

    /// The fine-tuned base's own held-out metrics.
    pub fn baseline(&self, metrics: &[(String, f64)]) {
        self.state().baseline = metrics.iter().cloned().collect();
    }

    /// Replaces the versions retention keeps beyond the newest ones.
    pub fn hold(&self, versions: BTreeSet<u64>) {
        self.state().held = versions;
    }

    pub fn held(&self) -> BTreeSet<u64> {
        self.state().held.clone()
    }

    /// Records versions retention removed.
    pub fn removed(&self, versions: &[u64]) {
        self.state().removed.extend_from_slice(versions);
    }

    pub fn set_phase(&self, phase: TrainingPhase) {
        self.state().phase = phase;
    }

    pub fn failed(&self, reason: &str) {
        let mut state = self.state();
        state.phase = TrainingPhase::Failed;
        state.failure = reason.to_owned();
    }

    /// Rank `rank` is alive at `step`.
    pub fn heartbeat(&self, rank: usize, step: u64) {
        if let Some(slot) = self.state().heartbeats.get_mut(rank) {
            *slot = Some((Instant::now(), step));
        }
    }

    pub fn snapshot(&self) -> TrainingProgress {
        let state = self.state();
        let (examples_per_second, tokens_per_second, steps_per_second) = rates(&state, self.examples);
        let remaining = state.total_steps.saturating_sub(state.step) as f64;
        let eta_seconds = if steps_per_second > 0.0 { remaining / steps_per_second } else { -1.0 };
        let ranks = state
            .heartbeats
            .iter()
            .enumerate()
            .map(|(rank, beat)| RankHeartbeat {
                rank: rank as u32,
                step: beat.map_or(0, |(_, step)| step),
                age_seconds: beat.map_or(-1.0, |(at, _)| at.elapsed().as_secs_f64()),
            })
            .collect();
        TrainingProgress {
            phase: state.phase.into(),
            step: state.step,
            total_steps: state.total_steps,
            epoch: state.epoch,
            loss: state.loss,
            examples_per_second,
            tokens_per_second,
            eta_seconds,
            last_published_version: state.last_version,
            last_published_metrics: state.last_metrics.clone(),
            ranks,
            failure: state.failure.clone(),
            published: state.published.clone(),
            baseline: state.baseline.clone(),
            removed: state.removed.clone(),
        }
    }

    /// The final progress as a pod's termination message: `lantern.v1.TrainingProgress:` and the
    /// message in base64 protobuf, within Kubernetes' 4096-byte limit (the oldest published
    /// versions are left out when there are too many; the operator saw those while polling).
    pub fn termination_message(&self) -> String {
        let mut snapshot = self.snapshot();
        snapshot.ranks.clear();
        loop {
            let message = format!(
                "{TERMINATION_PREFIX}{}",
                base64::engine::general_purpose::STANDARD.encode(snapshot.encode_to_vec())
            );
            if message.len() <= TERMINATION_LIMIT || snapshot.published.is_empty() && snapshot.removed.is_empty() {
                return message;
            }
            if snapshot.removed.is_empty() {
                snapshot.published.remove(0);
            } else {
                snapshot.removed.remove(0);
            }
        }
    }

    /// The metrics in Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Examples, tokens and steps per second from the start of this run's training to its latest
/// step, for steps of `examples` examples.
fn rates(state: &State, examples: usize) -> (f64, f64, f64) {
    let (Some((since, first_step)), Some(last)) = (state.timing, state.last_step_at) else { return (0.0, 0.0, 0.0) };
    let elapsed = last.duration_since(since).as_secs_f64();
    if elapsed <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let steps = state.step.saturating_sub(first_step) as f64 / elapsed;
    (steps * examples as f64, state.tokens as f64 / elapsed, steps)
}

/// The progress endpoint: its own small runtime, stopped when dropped.
pub struct ProgressServer {
    _runtime: tokio::runtime::Runtime,
    address: std::net::SocketAddr,
}

impl ProgressServer {
    /// Serves `TrainingService` (with server reflection, for grpcurl) and `/metrics` on `listen`
    /// (port 0 picks a free port).
    /// With a `token`, `TrainingService` answers only calls that carry it.
    pub fn start(progress: Arc<Progress>, listen: &str, token: Option<&str>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("training-progress")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the progress endpoint's runtime", e))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|e| Error::io(format!("binding the progress endpoint {listen}"), e))?;
        let address = listener.local_addr().map_err(|e| Error::io("reading the progress endpoint's address", e))?;
        let metrics = progress.clone();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lantern_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Startup(format!("building the reflection service: {e}")))?;
        let mut router = tonic::service::Routes::new(TrainingServiceServer::new(Service(progress)))
            .add_service(reflection)
            .into_axum_router()
            .route(
                "/metrics",
                axum::routing::get(move |headers: axum::http::HeaderMap| async move {
                    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok());
                    let (content_type, body) =
                        lantern_telemetry::exposition::negotiate(accept, metrics.encode_metrics());
                    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
                }),
            );
        if let Some(token) = token {
            let token = Arc::new(Token::new(token));
            router = router.layer(axum::middleware::from_fn_with_state(token, require_token));
        }
        runtime.spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the progress endpoint stopped");
            }
        });
        Ok(Self { _runtime: runtime, address })
    }

    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }
}

/// One line for a person watching the job, e.g. `training step 420/1000 epoch 6 loss 1.1421 |
/// 1550 examples/s 24800 tokens/s ETA 12 s | version 4 eval_accuracy=0.05 | rank 1 at 419, 0.3 s
/// ago`.
pub fn describe(progress: &TrainingProgress) -> String {
    let phase = progress.phase().as_str_name().trim_start_matches("TRAINING_PHASE_").to_lowercase();
    let mut line = format!(
        "{phase} step {}/{} epoch {} loss {:.4}",
        progress.step, progress.total_steps, progress.epoch, progress.loss
    );
    if progress.examples_per_second > 0.0 {
        line += &format!(" | {:.0} examples/s", progress.examples_per_second);
        if progress.tokens_per_second > 0.0 {
            line += &format!(" {:.0} tokens/s", progress.tokens_per_second);
        }
        line += &format!(" ETA {:.0} s", progress.eta_seconds);
    }
    if progress.last_published_version > 0 {
        let mut metrics: Vec<_> = progress.last_published_metrics.iter().collect();
        metrics.sort_by(|a, b| a.0.cmp(b.0));
        line += &format!(" | version {}", progress.last_published_version);
        for (name, value) in metrics {
            line += &format!(" {name}={value:.4}");
        }
    }
    for rank in progress.ranks.iter().filter(|r| r.rank > 0) {
        line += &match rank.age_seconds < 0.0 {
            true => format!(" | rank {} not heard from", rank.rank),
            false => format!(" | rank {} at {}, {:.1} s ago", rank.rank, rank.step, rank.age_seconds),
        };
    }
    if !progress.failure.is_empty() {
        line += &format!(" | {}", progress.failure);
    }
    line
}

/// The most versions a progress request may hold from retention.
const MAX_HELD_VERSIONS: usize = 100_000;

struct Service(Arc<Progress>);

#[tonic::async_trait]
impl TrainingService for Service {
    async fn get_progress(
        &self,
        request: Request<GetProgressRequest>,
    ) -> std::result::Result<Response<TrainingProgress>, Status> {
        if let Some(held) = request.into_inner().held {
            if held.versions.len() > MAX_HELD_VERSIONS {
                return Err(Status::invalid_argument(format!(
                    "{} held versions; at most {MAX_HELD_VERSIONS} can be held",
                    held.versions.len()
                )));
            }
            self.0.hold(held.versions.into_iter().collect());
        }
        Ok(Response::new(self.0.snapshot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_operator_s_held_versions_replace_rank_0_s_and_too_many_are_refused() {
        let progress = Progress::new("adder", 100, 1, 8);
        progress.hold([1].into());
        let service = Service(progress.clone());
        let ask = |versions: Vec<u64>| {
            Request::new(GetProgressRequest { held: Some(lantern_proto::lantern::v1::HeldVersions { versions }) })
        };
        service.get_progress(Request::new(GetProgressRequest::default())).await.unwrap();
        assert_eq!(progress.held(), [1].into(), "a poll without a set leaves it");
        service.get_progress(ask(vec![3, 5, 3])).await.unwrap();
        assert_eq!(progress.held(), [3, 5].into());
        let refused = service.get_progress(ask(vec![7; MAX_HELD_VERSIONS + 1])).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(progress.held(), [3, 5].into(), "a refused set changes nothing");
    }

    #[test]
    fn the_snapshot_follows_the_job_and_counts_heartbeats() {
        let progress = Progress::new("adder", 100, 2, 8);
        assert_eq!(progress.snapshot().phase(), TrainingPhase::Starting);
        progress.training_from(10);
        std::thread::sleep(std::time::Duration::from_millis(20));
        progress.step_done(12, 1.5, 0.01, 0, 2 * 128);
        progress.published(3, &[("eval_accuracy".to_owned(), 0.5)], "sha256:ab");
        let snapshot = progress.snapshot();
        assert_eq!((snapshot.step, snapshot.total_steps, snapshot.loss), (12, 100, 1.5));
        assert!(
            snapshot.examples_per_second > 0.0 && snapshot.tokens_per_second == 16.0 * snapshot.examples_per_second
        );
        assert!(snapshot.eta_seconds > 0.0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = progress.snapshot();
        assert_eq!(
            (later.tokens_per_second, later.eta_seconds),
            (snapshot.tokens_per_second, snapshot.eta_seconds),
            "the rates hold still between steps"
        );
        assert_eq!(snapshot.last_published_version, 3);
        assert_eq!(snapshot.ranks[0].step, 12);
        assert_eq!(snapshot.ranks[1].age_seconds, -1.0, "no heartbeat from rank 1 yet");
        progress.heartbeat(1, 11);
        assert_eq!(progress.snapshot().ranks[1].step, 11);
        let text = progress.encode_metrics();
        assert!(text.contains("lantern_training_step{model=\"adder\"} 12"), "{text}");
        assert!(text.contains("lantern_training_published_version{model=\"adder\"} 3"), "{text}");
        assert!(text.contains("lantern_training_learning_rate{model=\"adder\"} 0.01"), "{text}");
        assert!(
            text.contains("lantern_training_published_metric{model=\"adder\",metric=\"eval_accuracy\"} 0.5"),
            "{text}"
        );
    }

    #[test]
    fn a_progress_line_says_where_the_job_is() {
        let progress = Progress::new("adder", 100, 2, 8);
        assert_eq!(describe(&progress.snapshot()), "starting step 0/100 epoch 0 loss NaN | rank 1 not heard from");
        progress.training_from(0);
        progress.step_done(40, 1.25, 0.01, 2, 40 * 128);
        progress.published(3, &[("step".to_owned(), 40.0), ("eval_accuracy".to_owned(), 0.5)], "sha256:ab");
        progress.heartbeat(1, 39);
        let line = describe(&progress.snapshot());
        assert!(line.starts_with("training step 40/100 epoch 2 loss 1.2500 | "), "{line}");
        assert!(line.contains(" examples/s ") && line.contains(" tokens/s ETA "), "{line}");
        assert!(line.contains(" | version 3 eval_accuracy=0.5000 step=40.0000 | rank 1 at 39, 0.0 s ago"), "{line}");
    }

    #[test]
    fn the_termination_message_carries_every_version_that_fits_in_4096_bytes() {
        let progress = Progress::new("adder", 1000, 1, 8);
        progress.published(1, &[("step".to_owned(), 100.0)], "sha256:01");
        let message = progress.termination_message();
        let encoded = message.strip_prefix(TERMINATION_PREFIX).expect("the prefix");
        let decoded =
            TrainingProgress::decode(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap().as_slice())
                .unwrap();
        assert_eq!(decoded.published.len(), 1);
        assert_eq!((decoded.published[0].version, decoded.published[0].digest.as_str()), (1, "sha256:01"));
        assert_eq!(decoded.published[0].metrics["step"], 100.0);

        for version in 2..=200 {
            progress.published(version, &[("step".to_owned(), 100.0 * version as f64)], &"f".repeat(71));
        }
        let message = progress.termination_message();
        assert!(message.len() <= 4096, "{} bytes", message.len());
        let encoded = message.strip_prefix(TERMINATION_PREFIX).unwrap();
        let decoded =
            TrainingProgress::decode(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap().as_slice())
                .unwrap();
        assert_eq!(decoded.published.last().map(|p| p.version), Some(200), "the newest versions are kept");
        assert!(decoded.published.len() > 10);
    }
}
