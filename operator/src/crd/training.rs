//! `TrainingJob`: a model trained data-parallel by `replicas` worker pods, each checkpoint
//! published as a numbered version of `output.model` in the model repository.
//!
//! The training sections (`model`, `data`, `optimizer`, `schedule`, `seed`) are the worker's
//! job file in Kubernetes' camelCase; the operator renders them into the file each rank reads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Device, PodOverrides, Repository};

/// What to train, on which data, and where its versions go.
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "lantern.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    namespaced,
    status = "TrainingJobStatus",
    derive = "PartialEq",
    shortname = "tj",
    category = "lantern",
    doc = "A model trained data-parallel by worker pods; every checkpoint is published as a numbered model version.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.progress.step"),
    printcolumn(name = "Percent", type_ = "integer", json_path = ".status.progress.percent", description = "percent of the steps done"),
    printcolumn(name = "Loss", type_ = "number", json_path = ".status.progress.loss"),
    printcolumn(name = "Versions", type_ = "integer", json_path = ".status.publishedVersions"),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(name = "Baseline", type_ = "number", json_path = ".status.baseline.eval_accuracy", description = "the fine-tuned base's held-out accuracy"),
    printcolumn(name = "Accuracy", type_ = "number", json_path = ".status.checkpoints[-1:].metrics.eval_accuracy", description = "the newest version's held-out accuracy"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.output.model == oldSelf.spec.output.model").message("spec.output.model is immutable"),
    validation = Rule::new("(has(self.spec.model.fineTune) || has(self.spec.model.quantize) || has(self.spec.model.distill)) == has(self.spec.data.jsonl)").message("fineTune, quantize and distill read data.jsonl, and only they do"),
    validation = Rule::new("has(self.spec.model.quantize) != has(self.spec.schedule)").message("a quantize job has no schedule; every other job needs one"),
    validation = Rule::new("has(self.spec.model.quantize) != has(self.spec.checkpoint)").message("a quantize job has no checkpoint settings; every other job needs them"),
    validation = Rule::new("!has(self.spec.model.quantize) || (self.spec.replicas == 1 && !has(self.spec.optimizer))").message("a quantize job trains nothing: one replica, no optimizer"),
    validation = Rule::new("self.spec.replicas == oldSelf.spec.replicas || (has(self.spec.runPolicy) && has(self.spec.runPolicy.suspend) && self.spec.runPolicy.suspend)").message("spec.replicas can only change while the job is suspended")
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// The architecture and size of the model.
    pub model: ModelSpec,
    /// The examples it learns from.
    pub data: DataSpec,
    /// AdamW settings; the worker's defaults where unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerSpec>,
    /// How long to train and in what batches (every task but `model.quantize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Seeds the initial weights and the data order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Ranks, one pod each; gradients are averaged across them.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1024))]
    pub replicas: u32,
    /// Each rank's resources (`cpu`, `memory`, `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// `cpu` (default), or `cuda`: the pod's NVIDIA GPU, with the CUDA worker image and one
    /// `nvidia.com/gpu` in its limits unless `resources` names a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// The worker image, instead of the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Scheduling settings passed to every rank's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodOverrides>,
    /// Where the versions are published.
    pub output: OutputSpec,
    /// How often to checkpoint and how many to keep (every task but `model.quantize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
    /// Restarts, deadlines, suspension and clean-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_policy: Option<RunPolicy>,
}

fn one() -> u32 {
    1
}

/// Exactly one task.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.llama), has(self.mlp), has(self.fineTune), has(self.quantize), has(self.distill)].filter(x, x).size() == 1").message("set exactly one of model.llama, model.mlp, model.fineTune, model.quantize and model.distill"))]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama: Option<LlamaSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<MlpSpec>,
    /// A pretrained llama from the repository, fine-tuned on `data.jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTuneSpec>,
    /// A llama version written as one GGUF file in a smaller type and published as one version,
    /// measured beside its source on the held-out part of `data.jsonl`. Nothing is trained: no
    /// schedule, checkpoint or optimizer, one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeSpec>,
    /// A smaller llama (the student) trained on `data.jsonl` to match a teacher version's
    /// next-token distributions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillSpec>,
}

/// Post-training quantization of a llama version (HF, or a GGUF of a higher precision).
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct QuantizeSpec {
    pub source: BaseRef,
    /// The GGUF type of its matrices: `q8_0`, `q4_0`, `q4_1`, or a k-quant `q4_k`, `q5_k`, `q6_k`
    /// (a matrix whose rows are not a whole number of 256-value super-blocks in llama.cpp's
    /// fallback type: `q5_0`, `q5_1`, `q8_0`).
    #[serde(rename = "type")]
    pub ty: GgufType,
}

#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum GgufType {
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_1")]
    Q4_1,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

/// Knowledge distillation: the loss is `(1 − w) · T² · KL(teacher ‖ student) + w · CE` over the
/// teacher's `topK` tokens at every target of the data, `T` the temperature and `w` the
/// cross-entropy weight. The teacher runs forward in every rank.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistillSpec {
    /// Any llama version the repository serves (HF or GGUF); its tokenizer is the student's.
    pub teacher: BaseRef,
    pub student: StudentSpec,
    /// The longest training example in tokens once templated.
    #[schemars(range(min = 2, max = 131072))]
    pub sequence_length: u32,
    /// Softens both distributions (2 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub temperature: Option<f64>,
    /// The teacher's most likely tokens per target the KL term covers (32 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub top_k: Option<u32>,
    /// The share of the loss that is the data's cross-entropy (0 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub cross_entropy_weight: Option<f64>,
    /// The number format of the student's matrix products: `f32` (default) or `bf16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

/// Where the student starts: exactly one.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.layers), has(self.sizes), has(self.base)].filter(x, x).size() == 1").message("set exactly one of student.layers, student.sizes and student.base"))]
#[x_kube(validation = Rule::new("!has(self.layers) || self.layers.all(l, self.layers.filter(m, m == l).size() == 1)").message("student.layers names a layer twice"))]
pub struct StudentSpec {
    /// These of the teacher's layers (0-based, ascending) with its embeddings, final norm and
    /// output layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub layers: Option<Vec<u32>>,
    /// Fresh weights of these sizes, with the teacher's vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<StudentSizes>,
    /// A published version (an earlier student), sharing the teacher's tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("self.hiddenSize % self.heads == 0").message("hiddenSize must be a multiple of heads"))]
#[x_kube(validation = Rule::new("!has(self.kvHeads) || self.heads % self.kvHeads == 0").message("heads must be a multiple of kvHeads"))]
#[serde(rename_all = "camelCase")]
pub struct StudentSizes {
    #[schemars(range(min = 1))]
    pub hidden_size: u32,
    #[schemars(range(min = 1))]
    pub intermediate_size: u32,
    #[schemars(range(min = 1))]
    pub layers: u32,
    #[schemars(range(min = 1))]
    pub heads: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub kv_heads: Option<u32>,
}

/// Fine-tuning of a pretrained llama (a GGUF or HF version); its architecture, tokenizer and
/// chat template come from the base.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneSpec {
    /// The base: a published version in the job's repository.
    pub base: BaseRef,
    pub method: FineTuneMethod,
    /// The longest training example in tokens once templated.
    #[schemars(range(min = 2, max = 131072))]
    pub sequence_length: u32,
    /// The number format of the matrix products: `f32` (default) or `bf16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Under LoRA, also publish each checkpoint as a whole checkpoint with the adapters merged
    /// (what an InferenceService serves today). Full fine-tuning always does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<bool>,
}

/// A published version, optionally pinned by its manifest's digest.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct BaseRef {
    pub model: String,
    #[schemars(range(min = 1))]
    pub version: u64,
    /// `sha256:<hex>` of the version's manifest.json; a base that differs is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub digest: Option<String>,
}

/// Exactly one method.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("has(self.lora) != has(self.full)").message("set exactly one of method.lora and method.full"))]
pub struct FineTuneMethod {
    /// The base frozen, low-rank adapters trained on the target projections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    /// Every weight trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<FullSpec>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("self.targets.all(t, self.targets.filter(u, u == t).size() == 1)").message("lora.targets names a projection twice"))]
pub struct LoraSpec {
    #[schemars(range(min = 1, max = 4096))]
    pub rank: u32,
    /// The update is scaled by `alpha / rank`; `rank` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub alpha: Option<f64>,
    #[schemars(length(min = 1, max = 7))]
    pub targets: Vec<LoraTarget>,
    /// The probability that a feature of an adapter's input is zeroed in training (PEFT's
    /// `lora_dropout`); 0 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.99))]
    pub dropout: Option<f64>,
}

/// Full fine-tuning has no settings of its own.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FullSpec {}

/// A llama projection, as HF and PEFT name it.
#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

/// A llama-architecture decoder over bytes (vocabulary: the 256 bytes and an end-of-text token).
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("self.hiddenSize % self.heads == 0").message("hiddenSize must be a multiple of heads"))]
#[x_kube(validation = Rule::new("!has(self.kvHeads) || self.heads % self.kvHeads == 0").message("heads must be a multiple of kvHeads"))]
#[serde(rename_all = "camelCase")]
pub struct LlamaSpec {
    #[schemars(range(min = 1))]
    pub hidden_size: u32,
    #[schemars(range(min = 1))]
    pub intermediate_size: u32,
    #[schemars(range(min = 1))]
    pub layers: u32,
    #[schemars(range(min = 1))]
    pub heads: u32,
    /// Key/value heads (grouped-query attention); `heads` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub kv_heads: Option<u32>,
    /// Tokens per training sequence, and the served model's context length.
    #[schemars(range(min = 2))]
    pub context: u32,
    /// Start from a published version of a model in the same repository (its sizes must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<VersionRef>,
    /// The number format of the matrix products: `f32` (default) or `bf16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

/// A published version of a model.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct VersionRef {
    pub model: String,
    #[schemars(range(min = 1))]
    pub version: u64,
}

#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

/// A multi-layer perceptron for tabular data; input and output widths come from the data.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct MlpSpec {
    #[schemars(length(min = 1))]
    pub hidden: Vec<u32>,
    pub activation: Activation,
}

#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
}

/// Exactly one source of examples.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.addition), has(self.text), has(self.csv), has(self.jsonl)].filter(x, x).size() == 1").message("set exactly one of data.addition, data.text, data.csv and data.jsonl"))]
pub struct DataSpec {
    /// Built in: integer additions written as text (`17+25=42`), for the language model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addition: Option<AdditionSpec>,
    /// Text files for the language model, read as bytes (paths inside the worker's pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// A CSV file with a header for the MLP: every column but the target is a feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSpec>,
    /// JSON Lines for fine-tuning: chat conversations (`{"messages": [...]}`),
    /// prompt/completion pairs or texts. A relative path is inside the model repository's volume
    /// (`.datasets/tickets/train.jsonl`), an absolute one inside the worker's pod; with
    /// `configMap`, the paths are keys of that ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<JsonlSpec>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.configMap) || (!self.path.contains('/') && (!has(self.evalPath) || !self.evalPath.contains('/')))").message("with data.jsonl.configMap, path and evalPath are keys of the ConfigMap"))]
#[serde(rename_all = "camelCase")]
pub struct JsonlSpec {
    /// A ConfigMap in the job's namespace holding the files (at most 1 MiB in all), mounted
    /// read-only in every rank: what `lantern finetune` creates for a small data set. Its keys
    /// are `path` and `evalPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map: Option<String>,
    pub path: String,
    /// Held-out examples; the last `evalFraction` of `path`'s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub eval_fraction: Option<f64>,
    /// An example longer than `sequenceLength`: `Refuse` the job (default) or `Skip` it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlong: Option<Overlong>,
}

#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Overlong {
    Refuse,
    Skip,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdditionSpec {
    /// Operands are drawn from 0 to this.
    #[schemars(range(min = 1))]
    pub max_operand: u32,
    #[schemars(range(min = 1))]
    pub train_examples: u64,
    /// Held-out problems evaluated at each checkpoint (their accuracy is `eval_accuracy`).
    #[schemars(range(min = 1))]
    pub eval_examples: u64,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TextSpec {
    #[schemars(length(min = 1))]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub eval_fraction: Option<f64>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CsvSpec {
    pub path: String,
    pub target: String,
    /// Classes of the target (classification); unset for regression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub eval_fraction: Option<f64>,
}

#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.learningRate) || !has(self.minLearningRate) || self.minLearningRate <= self.learningRate").message("minLearningRate must not exceed learningRate"))]
#[serde(rename_all = "camelCase")]
pub struct OptimizerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.warmupSteps) || self.warmupSteps < self.steps").message("warmupSteps must be fewer than steps"))]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    #[schemars(range(min = 1))]
    pub steps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// Examples per step across all ranks (a multiple of `replicas`).
    #[schemars(range(min = 1))]
    pub global_batch: u32,
}

/// The model repository and the model's name in it.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// The name versions are published under.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"))]
    pub model: String,
    pub repository: Repository,
    /// Published versions kept: after each publish, the model's versions beyond the newest
    /// `keepVersions` are removed from the repository, except every version an InferenceService
    /// in the namespace serves, labels (stable, canary) or lists in its version policy. Unset,
    /// every version is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_versions: Option<u32>,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// A checkpoint (and a published version) every this many steps, and at the end.
    #[schemars(range(min = 1))]
    pub every_steps: u64,
    /// Training states kept for resuming (published versions go by `output.keepVersions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep: Option<u32>,
    /// How long the other ranks wait for rank 0 to save, evaluate and publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u32>,
}

/// Restarts, deadlines, suspension and clean-up, as the Kubeflow training operator's runPolicy.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Gang restarts allowed before the job fails (3 when unset); every restart counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_restarts: Option<u32>,
    /// The job fails once it has run this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<u64>,
    /// The job fails if its ranks are not all running this long after their pods were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub startup_deadline_seconds: Option<u64>,
    /// The job is deleted this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<u64>,
    /// Which pods are deleted once the job finished: `Running` (default), `All` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,
    /// Stops the ranks (deleting their pods); unsetting it resumes from the last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum CleanPodPolicy {
    None,
    Running,
    All,
}

/// What the operator last saw of the job.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// `Created`, `Running`, `Restarting`, `Succeeded`, `Failed` or `Suspended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The same, as conditions with stable reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Each rank's pod and its state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<RankStatus>,
    /// Gang restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// The gang attempt running (0 first; one more per restart and per resume); its pods carry
    /// it in the `lantern.dev/attempt` label.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Rank 0's latest progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Versions published so far.
    #[serde(default)]
    pub published_versions: u32,
    /// Every published checkpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
    /// A fine-tuning job's base measured on the held-out data before the first step
    /// (`eval_loss`, `eval_accuracy`, …), to compare each checkpoint's metrics with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baseline: BTreeMap<String, f64>,
    /// A short history of the progress as the operator saw it, oldest first: at most
    /// [`HISTORY_POINTS`], spread over the whole run (the versions carry every step's curves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryPoint>,
}

/// The most points `status.history` keeps.
pub const HISTORY_POINTS: usize = 64;

/// One point of `status.history`.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    pub tokens_per_second: f64,
}

/// The job's phase, as `status.phase` and the condition of the same name say it.
#[derive(JsonSchema, Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Restarting,
    Succeeded,
    Failed,
    Suspended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Running => "Running",
            Self::Restarting => "Restarting",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Suspended => "Suspended",
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RankStatus {
    pub rank: u32,
    pub pod: String,
    /// The pod's phase, or why its container waits.
    pub state: String,
}

#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    /// Percent of the steps done (rounded down).
    #[serde(default)]
    pub percent: u32,
    /// The last step's mean training loss, once there is one, to 4 significant digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Training tokens per second, to 4 significant digits.
    pub tokens_per_second: f64,
    /// Seconds to the last step at the current rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// When the step last moved.
    pub updated: Time,
}

#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u64,
    pub step: u64,
    /// The manifest's evaluation metrics (`eval_loss`, `eval_accuracy`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// The manifest's sha256, when rank 0 reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Removed from the repository by the job's retention (`output.keepVersions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}
