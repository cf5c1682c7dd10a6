//! The training job file: one JSON or YAML document every rank of a TrainingJob reads, then the
//! environment the operator sets for each pod ([`crate::env`]: rank, world size, addresses,
//! device, token, repository) applied over it by [`JobConfig::apply_env`]. The operator writes
//! the file from the CRD as this type; the worker's training crate parses, validates and runs it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ContractError;
use crate::device::DeviceSpec;
use crate::env;

/// The whole job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub model: ModelSpec,
    pub data: DataSpec,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// How long to train; every task but `quantize` needs it, and `quantize` refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// How often to save and publish; as `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
    pub output: OutputSpec,
    /// Seeds the initial weights and the data order.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub cluster: ClusterSpec,
}

/// What is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSpec {
    /// A llama-architecture decoder over bytes.
    Llama(LlamaSpec),
    /// The serving core's MLP, for tabular data.
    Mlp(MlpSpec),
    /// A pretrained llama from the model repository, fine-tuned on JSONL conversations.
    FineTune(FineTuneSpec),
    /// A llama version written as GGUF in a smaller type and published as one version,
    /// measured on the held-out part of JSONL data beside its source. Nothing is trained.
    Quantize(QuantizeSpec),
    /// A smaller llama (the student) trained on JSONL data to match a teacher version's
    /// next-token distributions.
    Distill(DistillSpec),
}

/// Post-training quantization of a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeSpec {
    /// The version quantized: HF safetensors, or a GGUF of a higher precision.
    pub source: BaseSpec,
    /// The GGUF type its matrices are written in.
    #[serde(rename = "type")]
    pub ty: GgufType,
}

/// Knowledge distillation: the student learns the teacher's temperature-softened next-token
/// distribution at every target token of the data (a KL divergence over the teacher's `top_k`
/// most likely tokens, scaled by `temperature²`), optionally mixed with the data's own
/// cross-entropy: `(1 − w) · T² · KL + w · CE` with `w` = `cross_entropy_weight`. The teacher runs
/// forward in every rank, as serving runs it (a quantized GGUF on its quantized kernels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    /// A llama version, HF or GGUF; its tokenizer and chat template are the student's.
    pub teacher: BaseSpec,
    pub student: StudentSpec,
    /// The longest training sequence in tokens, after templating.
    pub sequence_length: usize,
    /// Softens both distributions; above 1 shows the student more than the teacher's top token.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// The teacher's most likely tokens per position that the KL term covers (its distribution
    /// renormalized over them).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// The share of the loss that is the data's cross-entropy, in `[0, 1]`; 0 by default.
    #[serde(default)]
    pub cross_entropy_weight: f64,
    /// The student's matrix products.
    #[serde(default)]
    pub precision: Precision,
}

impl DistillSpec {
    pub const DEFAULT_TEMPERATURE: f64 = 2.0;
    pub const DEFAULT_TOP_K: usize = 32;
}

fn default_temperature() -> f64 {
    DistillSpec::DEFAULT_TEMPERATURE
}

fn default_top_k() -> usize {
    DistillSpec::DEFAULT_TOP_K
}

/// Where a student starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StudentSpec {
    /// The teacher's embeddings, final norm and output layer with these of its layers (0-based,
    /// ascending): a shallower copy to start from.
    Layers(Vec<usize>),
    /// Fresh weights of these sizes; the vocabulary, rotary and norm settings and the context
    /// are the teacher's, the embedding tied to the output.
    Sizes(StudentSizes),
    /// A published llama version (an earlier student, say), which must share the teacher's
    /// tokenizer.
    Base(BaseSpec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSizes {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `heads`.
    #[serde(default)]
    pub kv_heads: Option<usize>,
}

/// A llama decoder's size. The vocabulary is the 256 bytes plus an end-of-text token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaSpec {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `heads`.
    #[serde(default)]
    pub kv_heads: Option<usize>,
    /// Tokens per training sequence, and the served model's context length.
    pub context: usize,
    /// Continue from this HF-layout checkpoint (a version Lantern published) instead of random
    /// weights; its `config.json` must match the sizes above.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// The number format matrix products run in; weights, norms, softmax and the loss stay f32.
    #[serde(default)]
    pub precision: Precision,
}

/// Compute precision of a llama's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16 products over f32 master weights: f32's range, so no loss scaling is needed.
    Bf16,
}

/// The GGUF type a quantization writes a llama's matrices in (its norms stay f32), as llama.cpp
/// defines them: 8-bit blocks with one scale, or 4-bit blocks with a scale (and a minimum for
/// `q4_1`), 32 values a block; or the k-quants `q4_k`, `q5_k`, `q6_k` (llama.cpp's `Q4_K_M` is
/// mostly `q4_k`), which work on super-blocks of 256 values with a scale per 16 or 32 of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

impl GgufType {
    pub const ALL: [Self; 6] = [Self::Q8_0, Self::Q4_0, Self::Q4_1, Self::Q4K, Self::Q5K, Self::Q6K];

    /// As the job file and the command line spell it: `q4_k`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
        }
    }
}

impl FromStr for GgufType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|t| t.name() == text).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|t| t.name()).collect();
            format!("{text:?} is not a GGUF type this writer supports ({})", names.join(", "))
        })
    }
}

/// As GGUF and llama.cpp name it: `Q4_K`.
impl fmt::Display for GgufType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_uppercase())
    }
}

impl LlamaSpec {
    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }
}

/// Fine-tuning of a pretrained llama: the architecture, tokenizer and chat template all come from
/// the base's own files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTuneSpec {
    pub base: BaseSpec,
    pub method: FineTuneMethod,
    /// The longest training sequence in tokens, after templating ([`JsonlSpec::overlong`] says
    /// what happens to a longer one).
    pub sequence_length: usize,
    #[serde(default)]
    pub precision: Precision,
    /// Under LoRA, also fold the adapters into the base and publish a whole HF checkpoint with
    /// them, which serving loads as an ordinary llama. Full fine-tuning always publishes one.
    #[serde(default)]
    pub merge: bool,
}

/// The pretrained model a fine-tuning job starts from: a version in a model repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// The base's repository, a directory or URI; defaults to the job's `output.repository`.
    /// A relative one is inside `output.repository`.
    #[serde(default)]
    pub repository: Option<String>,
    pub model: String,
    pub version: u64,
    /// `sha256:<hex>` of the version's `manifest.json` (which pins every file); a base whose
    /// manifest differs is refused.
    #[serde(default)]
    pub digest: Option<String>,
    /// A GGUF file or HF directory in the job's volume, published as `model`/`version` first
    /// when the repository does not hold that version yet.
    #[serde(default)]
    pub import_from: Option<PathBuf>,
}

impl BaseSpec {
    /// The repository the base is read from.
    pub fn repository<'a>(&'a self, output: &'a OutputSpec) -> &'a str {
        self.repository.as_deref().unwrap_or(&output.repository)
    }
}

/// How a pretrained base is fine-tuned: every weight (`full`), or the base frozen with LoRA
/// adapters trained (`lora`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FineTuneMethod {
    Full,
    Lora(LoraSpec),
}

/// Low-rank adaptation (LoRA): each target projection `W` becomes `W + (alpha / rank) · B · A`
/// with `A` `[rank, in]` and `B` `[out, rank]` trained and `W` frozen. `B` starts at zero, so
/// training starts from the base's own outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub rank: usize,
    /// The update's scale is `alpha / rank`; defaults to `rank` (a scale of 1).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// The projections adapted in every layer, by their HF names.
    pub targets: Vec<LoraTarget>,
    /// The probability that a feature of an adapter's input is zeroed in training (PEFT's
    /// `lora_dropout`; the survivors are scaled by `1 / (1 − dropout)`). 0 by default; never
    /// applied in evaluation.
    #[serde(default)]
    pub dropout: f64,
}

impl LoraSpec {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }
}

/// A llama projection LoRA can adapt, named as HF and PEFT name its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

impl LoraTarget {
    pub const ALL: [Self; 7] =
        [Self::QProj, Self::KProj, Self::VProj, Self::OProj, Self::GateProj, Self::UpProj, Self::DownProj];

    /// The module's name (`q_proj`), as in PEFT's `target_modules`.
    pub fn name(self) -> &'static str {
        match self {
            Self::QProj => "q_proj",
            Self::KProj => "k_proj",
            Self::VProj => "v_proj",
            Self::OProj => "o_proj",
            Self::GateProj => "gate_proj",
            Self::UpProj => "up_proj",
            Self::DownProj => "down_proj",
        }
    }
}

/// An MLP's hidden layers; the input and output widths come from the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    pub hidden: Vec<usize>,
    pub activation: Activation,
}

/// Where the examples come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSpec {
    /// Built in: integer additions written as text (`"17+25=42"`), for the language model. The
    /// held-out problems never appear in training; their exact-answer accuracy shows learning.
    Addition(AdditionSpec),
    /// Text files for the language model, read as bytes.
    Text(TextSpec),
    /// A CSV file with a header for the MLP: every column but `target` is a feature.
    Csv(CsvSpec),
    /// JSON Lines for fine-tuning, quantization and distillation: one example per line, a chat
    /// conversation (`{"messages": [{"role": "user", "content": …}, …]}`, OpenAI's fine-tuning
    /// format), a prompt/completion pair (`{"prompt": …, "completion": …}`), or plain text
    /// (`{"text": …}`, every token a target, no reference answer).
    Jsonl(JsonlSpec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdditionSpec {
    /// Operands are drawn from `0..=max_operand`.
    pub max_operand: u32,
    /// Problems in the training stream.
    pub train_examples: usize,
    /// Held-out problems evaluated at each checkpoint.
    pub eval_examples: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    pub paths: Vec<PathBuf>,
    /// Share of the token windows held out for the eval loss.
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSpec {
    pub path: PathBuf,
    /// The column to predict.
    pub target: String,
    /// Classification into this many classes (the target holds 0..classes); regression when
    /// absent.
    #[serde(default)]
    pub classes: Option<usize>,
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
}

impl DataSpec {
    /// The files the examples are read from (none for built-in data).
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        match self {
            Self::Addition(_) => Vec::new(),
            Self::Text(spec) => spec.paths.iter_mut().collect(),
            Self::Csv(spec) => vec![&mut spec.path],
            Self::Jsonl(spec) => std::iter::once(&mut spec.path).chain(spec.eval_path.as_mut()).collect(),
        }
    }
}

/// Where the operator mounts a job's data ConfigMap (`data.jsonl.configMap`) in every rank; the
/// job file names its files there.
pub const DATA_MOUNT: &str = "/var/lib/lantern/data";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSpec {
    pub path: PathBuf,
    /// Held-out examples; without it, the last `eval_fraction` of `path`'s examples.
    #[serde(default)]
    pub eval_path: Option<PathBuf>,
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// What becomes of an example longer than `sequence_length` once templated.
    #[serde(default)]
    pub overlong: Overlong,
}

/// The fate of an example too long to train on: never truncated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// The job is refused, naming the file and line.
    #[default]
    Refuse,
    /// The example is left out and counted in the log.
    Skip,
}

/// The share of the data held out for evaluation when the file does not say.
pub const DEFAULT_EVAL_FRACTION: f64 = 0.1;

fn default_eval_fraction() -> f64 {
    DEFAULT_EVAL_FRACTION
}

/// AdamW with decoupled weight decay (on matrices only) and global-norm gradient clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSpec {
    /// Peak learning rate, reached after the warm-up.
    pub learning_rate: f64,
    /// Where the cosine decay ends.
    pub min_learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    /// Gradients are scaled down to this global L2 norm when above it; 0 turns clipping off.
    pub grad_clip: f64,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            learning_rate: 3e-3,
            min_learning_rate: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Optimizer steps in the whole job.
    pub steps: u64,
    /// Steps of linear warm-up before the cosine decay.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Examples (sequences or rows) per step across all ranks; each rank takes an equal share.
    pub global_batch: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// A checkpoint every this many steps, and one at the end.
    pub every_steps: u64,
    /// Training states kept (the newest ones); published model versions are never removed.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Where training states go (optimizer moments, step, weights). Every rank reads it on start,
    /// so ranks on different machines need it on shared storage, or a remote repository: a
    /// relative `state_dir` with a URI `output.repository` is kept in `output.cache_dir` and
    /// copied to the same path under the repository's URI ([`CheckpointSpec::state_uri`]).
    pub state_dir: PathBuf,
    /// Where rank 0 copies each saved state and every rank restores from when `state_dir` holds
    /// none. Set by [`JobConfig::anchor_to_repository`], never written in a file.
    #[serde(skip)]
    pub state_uri: Option<String>,
    /// The most rank 0 may take to save, evaluate and publish a checkpoint: the other ranks wait
    /// this much longer than `cluster.timeout_seconds` in the step after one.
    #[serde(default = "default_checkpoint_timeout")]
    pub timeout_seconds: f64,
}

impl CheckpointSpec {
    /// Training states kept when the file does not say.
    pub const DEFAULT_KEEP: usize = 3;
    /// Seconds rank 0 may take over a checkpoint when the file does not say.
    pub const DEFAULT_TIMEOUT_SECONDS: f64 = 600.0;
}

fn default_keep() -> usize {
    CheckpointSpec::DEFAULT_KEEP
}

fn default_checkpoint_timeout() -> f64 {
    CheckpointSpec::DEFAULT_TIMEOUT_SECONDS
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The model repository checkpoints are published to: a directory, or a URI (`s3://…`,
    /// `gs://…`, `az://…`) (`LANTERN_REPOSITORY` overrides).
    pub repository: String,
    /// The model name versions are published under.
    pub model: String,
    /// With a URI repository: where its files (a fine-tuned base) and the job's training states
    /// are kept on the node (`LANTERN_CACHE_DIR` overrides; default: under the system's
    /// temporary directory).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Published versions kept: after each publish rank 0 removes the model's versions beyond
    /// the newest `keep_versions`, except `held_versions`. Unset, every version is kept.
    #[serde(default)]
    pub keep_versions: Option<usize>,
    /// Versions retention never removes (served or labelled ones). Under the operator: those
    /// InferenceServices serve or label, kept current while the job runs.
    #[serde(default)]
    pub held_versions: BTreeSet<u64>,
}

impl OutputSpec {
    /// Whether the repository is a URI rather than a directory.
    pub fn is_remote(&self) -> bool {
        is_uri(&self.repository)
    }

    /// The directory relative paths are anchored in: the repository's, or for a URI the node
    /// cache's.
    pub fn local_root(&self) -> PathBuf {
        match self.is_remote() {
            false => PathBuf::from(&self.repository),
            true => self.cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("lantern-model-cache")),
        }
    }
}

/// Whether a repository location is a URI (`SCHEME://…`) rather than a path.
pub fn is_uri(location: &str) -> bool {
    location.contains("://")
}

/// This process's place in the job. The environment overrides the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSpec {
    pub rank: usize,
    pub world_size: usize,
    /// Rank 0's collective address, `host:port`.
    pub coordinator: Option<String>,
    /// The address this rank listens on for its ring neighbour, `host:port` (default
    /// `127.0.0.1:0`, a free loopback port).
    pub address: Option<String>,
    /// Where rank 0 serves `TrainingService` and `/metrics`, `host:port` (default
    /// `127.0.0.1:0`, a free loopback port, logged at start).
    pub progress_address: Option<String>,
    /// The most a rank waits for its neighbour's data in a collective before failing the job.
    pub timeout_seconds: f64,
    /// The most a rank waits for every rank to join, retries included.
    pub rendezvous_timeout_seconds: f64,
    /// How long rank 0 keeps answering progress requests after the job succeeds, so that
    /// pollers see its final state.
    pub progress_linger_seconds: f64,
    /// Where a rank writes its termination message as it exits (a pod's
    /// `terminationMessagePath`): rank 0 its final progress, so that the operator learns of the
    /// last checkpoint after the process has gone; another rank why it failed, if it did.
    pub termination_log: Option<PathBuf>,
    /// Where this rank trains: `cpu` (default), `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// A file holding the job's token: every rank's collective endpoint and rank 0's progress
    /// service then answer only calls that carry it, and every rank sends it. The operator
    /// creates one per job in a Secret.
    pub token_file: Option<PathBuf>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            coordinator: None,
            address: None,
            progress_address: None,
            timeout_seconds: 60.0,
            rendezvous_timeout_seconds: 300.0,
            progress_linger_seconds: 2.0,
            termination_log: None,
            device: DeviceSpec::Cpu,
            token_file: None,
        }
    }
}

/// Non-linearity applied after every MLP layer but the last (also recorded in MLP manifests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
}

impl Activation {
    pub const ALL: [Self; 4] = [Self::Relu, Self::Gelu, Self::Tanh, Self::Sigmoid];

    pub fn name(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Gelu => "gelu",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
        }
    }
}

impl FromStr for Activation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|a| a.name() == text).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
            format!("unknown activation {text:?}: expected one of {}", names.join(", "))
        })
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl JobConfig {
    /// Overrides the cluster placement and the repository from the environment variables read
    /// by `var` (the operator's per-pod settings win over the shared file).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ContractError> {
        let number = |name: &str| -> Result<Option<usize>, ContractError> {
            var(name)
                .map(|value| {
                    value.trim().parse().map_err(|_| ContractError::new(name, format!("{value:?} is not a number")))
                })
                .transpose()
        };
        if let Some(rank) = number(env::RANK)? {
            self.cluster.rank = rank;
        }
        if let Some(world_size) = number(env::WORLD_SIZE)? {
            self.cluster.world_size = world_size;
        }
        if let Some(coordinator) = var(env::COORDINATOR) {
            self.cluster.coordinator = Some(coordinator);
        }
        if let Some(address) = var(env::ADDRESS) {
            self.cluster.address = Some(address);
        }
        if let Some(address) = var(env::PROGRESS_ADDRESS) {
            self.cluster.progress_address = Some(address);
        }
        if let Some(path) = var(env::TERMINATION_LOG) {
            self.cluster.termination_log = Some(path.into());
        }
        if let Some(device) = var(env::DEVICE) {
            self.cluster.device = device.parse().map_err(|reason| ContractError::new(env::DEVICE, reason))?;
        }
        if let Some(path) = var(env::JOB_TOKEN_FILE) {
            self.cluster.token_file = Some(path.into());
        }
        if let Some(repository) = var(env::REPOSITORY) {
            let original = std::mem::replace(&mut self.output.repository, repository.clone());
            if !is_uri(&original) && !is_uri(&repository) {
                self.rebase_data(Path::new(&original), Path::new(&repository));
            }
        }
        if let Some(dir) = var(env::CACHE_DIR) {
            self.output.cache_dir = Some(dir.into());
        }
        if let Some(dir) = var(env::DATA_DIR) {
            self.rebase_data(Path::new(DATA_MOUNT), Path::new(&dir));
        }
        Ok(())
    }

    /// Moves every data file the file places under the volume `from` to the same place under
    /// `to`: data kept in the repository's volume or in the job's data ConfigMap follows the
    /// volume wherever a pod sees it mounted (the operator writes such paths under its mount
    /// point).
    fn rebase_data(&mut self, from: &Path, to: &Path) {
        for path in self.data.paths_mut() {
            if let Ok(inside) = path.strip_prefix(from) {
                *path = to.join(inside);
            }
        }
    }

    /// Resolves a relative `checkpoint.state_dir`, `model.llama.init_from` and the repository of
    /// every version the task reads (`model.fine_tune.base`, `model.quantize.source`,
    /// `model.distill.teacher` and `student.base`) inside `output.repository`, so one job file
    /// works wherever the repository is mounted (the operator writes them so, and sets the repository
    /// per pod). With a URI repository a relative state directory is kept under the node cache
    /// and copied to the same path under the URI ([`CheckpointSpec::state_uri`]).
    pub fn anchor_to_repository(&mut self) {
        let root = self.output.local_root();
        let uri = self.output.is_remote().then(|| self.output.repository.trim_end_matches('/').to_owned());
        if let Some(checkpoint) = self.checkpoint.as_mut().filter(|c| c.state_dir.is_relative()) {
            if let Some(uri) = &uri {
                checkpoint.state_uri = Some(format!("{uri}/{}", checkpoint.state_dir.display()));
            }
            checkpoint.state_dir = root.join(&checkpoint.state_dir);
        }
        if let ModelSpec::Llama(spec) = &mut self.model
            && let Some(path) = spec.init_from.as_mut().filter(|p| p.is_relative())
        {
            *path = root.join(&*path);
        }
        for base in self.model.bases_mut() {
            if let Some(repository) = base.repository.as_mut().filter(|r| !is_uri(r) && Path::new(r).is_relative()) {
                *repository = match &uri {
                    Some(uri) => format!("{uri}/{repository}"),
                    None => root.join(&*repository).to_string_lossy().into_owned(),
                };
            }
        }
    }
}

impl ModelSpec {
    /// The repository versions the task reads: a fine-tune's base, a quantization's source, a
    /// distillation's teacher (and its student's start).
    fn bases_mut(&mut self) -> Vec<&mut BaseSpec> {
        match self {
            Self::Llama(_) | Self::Mlp(_) => Vec::new(),
            Self::FineTune(spec) => vec![&mut spec.base],
            Self::Quantize(spec) => vec![&mut spec.source],
            Self::Distill(DistillSpec { teacher, student, .. }) => match student {
                StudentSpec::Base(student) => vec![teacher, student],
                StudentSpec::Layers(_) | StudentSpec::Sizes(_) => vec![teacher],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn addition_job() -> JobConfig {
        serde_json::from_value(serde_json::json!({
            "model": {"llama": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "context": 16}},
            "data": {"addition": {"max_operand": 9, "train_examples": 100, "eval_examples": 10}},
            "schedule": {"steps": 10, "global_batch": 4},
            "checkpoint": {"every_steps": 5, "state_dir": "/tmp/state"},
            "output": {"repository": "/tmp/models", "model": "adder"},
        }))
        .unwrap()
    }

    #[test]
    fn a_minimal_job_gets_the_defaults_and_the_environment_wins() {
        let mut config = addition_job();
        assert_eq!(config.optimizer, OptimizerSpec::default());
        assert_eq!((config.cluster.rank, config.cluster.world_size), (0, 1));
        let vars = |name: &str| match name {
            env::RANK => Some("1".to_owned()),
            env::WORLD_SIZE => Some("2".to_owned()),
            env::COORDINATOR => Some("10.0.0.1:7070".to_owned()),
            env::DEVICE => Some("cuda:1".to_owned()),
            _ => None,
        };
        config.apply_env(vars).unwrap();
        assert_eq!((config.cluster.rank, config.cluster.world_size), (1, 2));
        assert_eq!(config.cluster.device, DeviceSpec::Cuda(1));
        assert_eq!(config.cluster.coordinator.as_deref(), Some("10.0.0.1:7070"));
        let bad = config.apply_env(|name| (name == env::RANK).then(|| "one".to_owned()));
        assert_eq!(bad.unwrap_err().to_string(), "LANTERN_RANK: \"one\" is not a number");
        let bad = config.apply_env(|name| (name == env::DEVICE).then(|| "tpu".to_owned()));
        assert_eq!(
            bad.unwrap_err().to_string(),
            "LANTERN_DEVICE: unknown device \"tpu\": expected cpu, cuda or cuda:N"
        );
    }

    #[test]
    fn relative_state_and_init_paths_are_inside_the_repository() {
        let mut config = addition_job();
        config.checkpoint.as_mut().unwrap().state_dir = ".lantern-training/ml/adder".into();
        let ModelSpec::Llama(spec) = &mut config.model else { panic!("a llama job") };
        spec.init_from = Some("base/3".into());
        config.apply_env(|name| (name == env::REPOSITORY).then(|| "/mnt/models".to_owned())).unwrap();
        config.anchor_to_repository();
        assert_eq!(config.checkpoint.as_ref().unwrap().state_dir, Path::new("/mnt/models/.lantern-training/ml/adder"));
        let ModelSpec::Llama(spec) = &config.model else { panic!("a llama job") };
        assert_eq!(spec.init_from.as_deref(), Some(Path::new("/mnt/models/base/3")));
    }

    #[test]
    fn with_a_uri_repository_states_are_kept_in_the_cache_and_copied_under_the_uri() {
        let mut config = addition_job();
        config.checkpoint.as_mut().unwrap().state_dir = ".lantern-training/ml/adder".into();
        let env = |name: &str| match name {
            env::REPOSITORY => Some("s3://models/repo/".to_owned()),
            env::CACHE_DIR => Some("/var/cache/lantern/models".to_owned()),
            _ => None,
        };
        config.apply_env(env).unwrap();
        config.anchor_to_repository();
        assert!(config.output.is_remote());
        assert_eq!(
            config.checkpoint.as_ref().unwrap().state_dir,
            Path::new("/var/cache/lantern/models/.lantern-training/ml/adder")
        );
        assert_eq!(
            config.checkpoint.as_ref().unwrap().state_uri.as_deref(),
            Some("s3://models/repo/.lantern-training/ml/adder")
        );
        // A directory repository keeps its states in place, copied nowhere.
        let mut local = addition_job();
        local.checkpoint.as_mut().unwrap().state_dir = "states".into();
        local.anchor_to_repository();
        let checkpoint = local.checkpoint.unwrap();
        assert_eq!((checkpoint.state_dir, checkpoint.state_uri), (Path::new("/tmp/models/states").to_owned(), None));
    }

    #[test]
    fn data_inside_the_repository_follows_it_where_the_environment_mounts_it() {
        let mut config = addition_job();
        config.output.repository = "/var/lib/lantern/models".into();
        config.data = DataSpec::Jsonl(JsonlSpec {
            path: "/var/lib/lantern/models/.datasets/tickets/train.jsonl".into(),
            eval_path: Some("/data/eval.jsonl".into()),
            eval_fraction: DEFAULT_EVAL_FRACTION,
            overlong: Overlong::Refuse,
        });
        config.apply_env(|name| (name == env::REPOSITORY).then(|| "/srv/claims/models".to_owned())).unwrap();
        let DataSpec::Jsonl(spec) = &config.data else { panic!("jsonl data") };
        assert_eq!(spec.path, Path::new("/srv/claims/models/.datasets/tickets/train.jsonl"));
        assert_eq!(spec.eval_path.as_deref(), Some(Path::new("/data/eval.jsonl")), "outside it: as written");

        // A data ConfigMap's files follow its mount the same way.
        config.data = DataSpec::Jsonl(JsonlSpec {
            path: Path::new(DATA_MOUNT).join("train.jsonl"),
            eval_path: Some(Path::new(DATA_MOUNT).join("eval.jsonl")),
            eval_fraction: DEFAULT_EVAL_FRACTION,
            overlong: Overlong::Refuse,
        });
        config.apply_env(|name| (name == env::DATA_DIR).then(|| "/pods/p/volumes/data".to_owned())).unwrap();
        let DataSpec::Jsonl(spec) = &config.data else { panic!("jsonl data") };
        assert_eq!(spec.path, Path::new("/pods/p/volumes/data/train.jsonl"));
        assert_eq!(spec.eval_path.as_deref(), Some(Path::new("/pods/p/volumes/data/eval.jsonl")));
    }

    #[test]
    fn activations_parse_by_their_serialized_names() {
        for activation in Activation::ALL {
            assert_eq!(activation.name().parse::<Activation>(), Ok(activation));
            assert_eq!(serde_json::to_value(activation).unwrap(), activation.name());
        }
        assert!("swish".parse::<Activation>().unwrap_err().contains("relu, gelu, tanh, sigmoid"));
    }

    #[test]
    fn gguf_types_parse_by_their_serialized_names_and_display_as_gguf_names_them() {
        for ty in GgufType::ALL {
            assert_eq!(ty.name().parse::<GgufType>(), Ok(ty));
            assert_eq!(serde_json::to_value(ty).unwrap(), ty.name());
        }
        assert_eq!(GgufType::Q4K.to_string(), "Q4_K");
        assert!("q2_k".parse::<GgufType>().unwrap_err().contains("q8_0, q4_0, q4_1, q4_k, q5_k, q6_k"));
    }
}
