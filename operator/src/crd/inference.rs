//! `InferenceService`: worker pods serving a model's versions over gRPC and HTTP. A new version
//! is hot-loaded into the running pods and goes out as a canary, promoted or rolled back by the
//! operator on the workers' per-version metrics.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Device, PodOverrides, Repository};

/// Which model to serve, from where, on how many pods, and how new versions roll out.
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "lantern.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    shortname = "isvc",
    category = "lantern",
    doc = "Worker pods serving a model's versions; new versions are hot-loaded and rolled out as canaries.",
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.replicas", label_selector_path = ".status.selector"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Stable", type_ = "integer", json_path = ".status.stableVersion"),
    printcolumn(name = "Canary", type_ = "integer", json_path = ".status.canaryVersion"),
    printcolumn(name = "Traffic", type_ = "integer", json_path = ".status.canaryPercent", description = "percent of requests on the canary"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.model == oldSelf.spec.model").message("spec.model is immutable")
)]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.replicas >= self.minReplicas").message("replicas must be at least minReplicas"))]
#[x_kube(validation = Rule::new("!has(self.maxReplicas) || self.replicas <= self.maxReplicas").message("replicas must be at most maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.adapters) || self.adapters.all(a, !has(a.model) || (a.model != self.model && self.adapters.filter(b, has(b.model) && b.model == a.model).size() == 1))").message("each adapter model is listed once and differs from spec.model"))]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// The model's name in the repository (and the name clients ask for).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"))]
    pub model: String,
    /// Where its versions come from.
    pub source: Source,
    /// Which versions become candidates: the newest (`latest`, default) or listed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_policy: Option<VersionPolicy>,
    /// Serving pods.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: u32,
    /// Bounds for an autoscaler that writes `replicas` through the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<u32>,
    /// The built-in autoscaler: `replicas` follows the requests in flight per pod (those the
    /// router holds while no pod is ready included), between `minReplicas` (default 1; 0 scales
    /// an idle service to zero) and `maxReplicas` (default 1000). Unset, `replicas` is left to
    /// the user, or to an HPA or KEDA on the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Each pod's resources (`cpu`, `memory`, `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// `cpu` (default), or `cuda`: the pod's NVIDIA GPU, with the CUDA worker image and one
    /// `nvidia.com/gpu` in its limits unless `resources` names a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// The worker image, instead of the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Scheduling settings passed to every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodOverrides>,
    /// Dynamic batching of tensor requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Limits of the LLM engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// How a new version goes out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// API keys that inference calls must carry (`authorization: Bearer <key>`, an HTTP header
    /// or gRPC metadata): a Secret in the service's namespace whose `key` holds one key per
    /// line. Without it inference is open to anyone who reaches the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<SecretKeyRef>,
    /// TLS on the serving port: a `kubernetes.io/tls` Secret in the service's namespace
    /// (`tls.crt`, `tls.key`). Clients then connect with `https://` (HTTP/1.1 or HTTP/2 by ALPN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// LoRA adapter models served in the same pods on versions of `model` (their base): one
    /// engine per base version runs every adapter's requests in shared batches. Each adapter
    /// model rolls out its own versions as canaries, while the others keep serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub adapters: Vec<AdapterModel>,
}

/// How the built-in autoscaler follows the load (Knative's KPA in shape).
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Requests in flight one pod should carry, counted at the router (held ones included).
    /// With no target set, 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_in_flight: Option<u32>,
    /// Language models: generation requests one pod's engine should have waiting to start (its
    /// queue depth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_waiting_sequences: Option<u32>,
    /// Language models: the percentage of one pod's KV cache its sequences should hold (the
    /// tokens in flight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_kv_cache_percent: Option<u32>,
    /// Seconds the load is averaged over for steady decisions (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 3600))]
    pub stable_window_seconds: Option<u32>,
    /// Seconds the load is averaged over to catch a burst (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub panic_window_seconds: Option<u32>,
    /// A burst that asks for this percentage of the current pods scales at once and holds off
    /// scaling down for a stable window (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 110, max = 1000))]
    pub panic_threshold_percent: Option<u32>,
    /// Seconds fewer pods must be wanted before there are fewer (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 3600))]
    pub scale_down_delay_seconds: Option<u32>,
    /// With `minReplicas: 0`: seconds without any request before the service goes to zero
    /// (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_seconds_before_zero: Option<u32>,
}

/// An adapter model served on the service's base: named, or fed by a fine-tuning TrainingJob.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("has(self.model) != has(self.trainingJobRef)").message("set exactly one of model and trainingJobRef in each adapter"))]
#[serde(rename_all = "camelCase")]
pub struct AdapterModel {
    /// The adapter model's name in the repository (and the name clients ask for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"))]
    pub model: Option<String>,
    /// A LoRA fine-tuning TrainingJob in the same namespace (`merge` unset or false) publishing
    /// into the service's repository: its output model is the adapter, each checkpoint a
    /// candidate version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job_ref: Option<TrainingJobRef>,
    /// Which of the adapter's versions become candidates (default: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_policy: Option<VersionPolicy>,
    /// How the adapter's new versions go out; the service's `rollout` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// Where a service's serving certificate is.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret of type `kubernetes.io/tls`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

fn one() -> u32 {
    1
}

/// One key of a Secret in the object's namespace.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within it; default `keys`.
    #[serde(default = "default_keys_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_keys_key() -> String {
    "keys".to_owned()
}

/// Exactly one of a repository claim or a TrainingJob whose output is served.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("has(self.repository) != has(self.trainingJobRef)").message("set exactly one of source.repository and source.trainingJobRef"))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    /// A TrainingJob in the same namespace: its repository, and each new checkpoint a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job_ref: Option<TrainingJobRef>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TrainingJobRef {
    pub name: String,
}

/// Exactly one of `latest` and `specific`.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("has(self.latest) != has(self.specific)").message("set exactly one of versionPolicy.latest and versionPolicy.specific"))]
pub struct VersionPolicy {
    /// The newest version is the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
    /// Only these versions, the highest the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub specific: Option<Vec<u64>>,
}

#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_delay_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_capacity: Option<u32>,
}

#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Generation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub kv_cache_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_running_sequences: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_waiting_sequences: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_step_tokens: Option<u32>,
}

/// How a new version replaces the stable one, and the manual overrides.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps.all(s, s >= 1 && s <= 100)").message("every step is a percentage from 1 to 100"))]
#[x_kube(validation = Rule::new("!has(self.steps) || size(self.steps) == 0 || self.steps[size(self.steps) - 1] == 100").message("the last step must be 100"))]
#[x_kube(validation = Rule::new("!has(self.steps) || self.steps.all(s, self.steps.filter(t, t == s).size() == 1)").message("steps must not repeat"))]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `Canary` (default): traffic moves in `steps`, each gated by the analysis; `Immediate`:
    /// the new version takes all traffic once it is loaded everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Percent of requests on the canary at each step, ending at 100 (default 10, 50, 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub steps: Option<Vec<u32>>,
    /// How long each step runs before its analysis decides (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub step_seconds: Option<u64>,
    /// What a step must show to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// Serve exactly this version, with no rollout, until unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pin: Option<u64>,
    /// Promote this canary version now, skipping the remaining steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub promote: Option<u64>,
    /// Roll this canary version back now (it is not tried again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub abort: Option<u64>,
}

#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Strategy {
    Canary,
    Immediate,
}

/// The gates of each canary step, read from the workers' per-version metrics.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// The canary's error rate must stay at or below this (default 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
    /// The canary's p99 latency over the stable version's must stay at or below this (default 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub max_latency_ratio: Option<f64>,
    /// Requests the canary must have served in a step before it is judged (default 20); fewer
    /// and the step waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_requests: Option<u64>,
    /// For versions a TrainingJob published: an evaluation metric of the manifest that must not
    /// be worse than the stable version's by more than its tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_metric: Option<EvalMetric>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvalMetric {
    /// e.g. `eval_accuracy` or `eval_loss`.
    pub name: String,
    /// Whether higher is better (`eval_accuracy`) or lower (`eval_loss`, the default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub higher_is_better: Option<bool>,
    /// How much worse than the stable version's the canary's value may be, in the metric's own
    /// units (0.02: two points of accuracy); 0 when unset. A quantized or distilled version
    /// trades a little quality for size, which this admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub tolerance: Option<f64>,
}

/// What the operator last saw of the service.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// Where clients connect: gRPC and HTTP on one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `Ready`, `ModelsReady`, `AdaptersReady`, `RolloutProgressing`, with reasons such as
    /// `ModelLoadFailed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods, and pods whose worker serves the stable version.
    #[serde(default)]
    pub replicas: u32,
    #[serde(default)]
    pub ready_replicas: u32,
    /// The pods' label selector, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The base model's versions and rollout.
    #[serde(flatten)]
    pub served: ServedVersions,
    /// Each adapter model's versions and rollout, in the order of `spec.adapters`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterStatus>,
    /// The largest version the pods have reported loading, in bytes, which sizes the default
    /// memory limit. It only grows: a pass in which no pod answers changes no pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_bytes: Option<u64>,
    /// What the built-in autoscaler saw and wanted at its last look (with `spec.autoscaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// The built-in autoscaler's last look.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// Requests in flight at the routers (held ones included), averaged over the stable window.
    pub average_in_flight: f64,
    /// With `targetWaitingSequences`: requests waiting in the engines, averaged likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_waiting_sequences: Option<f64>,
    /// With `targetKvCachePercent`: the KV cache held, in pods' worth (1.5: one and a half pods'
    /// caches), averaged likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_kv_cache_pods: Option<f64>,
    /// The replicas the load asks for.
    pub desired_replicas: u32,
    /// `Stable`, or `Panic` while a burst is being caught.
    pub mode: String,
}

/// One model's stable and canary versions, its rollout and its versions across the pods.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServedVersions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_version: Option<u64>,
    /// Percent of requests on the canary.
    #[serde(default)]
    pub canary_percent: u32,
    /// The rollout in progress or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Versions rolled back; they are not tried again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_versions: Vec<u64>,
    /// Each version's state across the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionStatus>,
}

/// An adapter model of the service.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterStatus {
    /// The adapter model (empty while its TrainingJob is not found).
    #[serde(default)]
    pub model: String,
    /// The base its stable version was trained on, as `model:version`, from the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(flatten)]
    pub served: ServedVersions,
    /// Why the adapter is not served, when its source cannot be used.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where a rollout is.
#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum RolloutPhase {
    /// The canary is loading on the pods; no traffic yet.
    Loading,
    /// A step runs.
    Progressing,
    Promoted,
    RolledBack,
    /// Superseded by a pin or a newer rollout.
    Aborted,
}

impl RolloutPhase {
    /// Whether the rollout still runs.
    pub fn running(self) -> bool {
        matches!(self, Self::Loading | Self::Progressing)
    }
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub version: u64,
    /// `Loading` (the canary is loading on the pods, no traffic yet), `Progressing` (a step
    /// runs), then `Promoted`, `RolledBack` or `Aborted` (superseded by a pin or a newer rollout).
    pub phase: RolloutPhase,
    /// The step running (an index into the steps).
    pub step: u32,
    pub step_started: Time,
    /// The canary's request and error counts, summed over the pods, when the step started; the
    /// step's analysis counts what came after.
    #[serde(default)]
    pub step_start_requests: u64,
    #[serde(default)]
    pub step_start_errors: u64,
    /// Why it ended, in one word: `Promoted`, `ModelLoadFailed`, `EvalMetricRegressed`,
    /// `AnalysisFailed`, `Aborted`, `Pinned`, `Superseded`, `NoLongerCandidate`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Why the rollout is where it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Each judged step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analyses: Vec<AnalysisResult>,
}

#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    pub step: u32,
    pub requests: u64,
    pub error_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio: Option<f64>,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    pub version: u64,
    /// Pods where it is loaded and serving, loading, or failed.
    pub available: u32,
    pub loading: u32,
    pub failed: u32,
    /// The last load error a pod reported.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `sha256:<hex>` of its manifest, as the pods that loaded it resolved the number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// How its files reached the pods, from a remote repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchStatus>,
}

/// How a version's files reached the pods that loaded it from a remote repository.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FetchStatus {
    /// Pods that found every file in their node cache.
    pub from_cache: u32,
    /// Pods that downloaded some of them.
    pub downloaded: u32,
    /// Bytes those pods downloaded.
    pub downloaded_bytes: u64,
    /// The longest fetch, in seconds.
    pub seconds: f64,
}
