//! A training job's configuration: one JSON or YAML file, then the environment the operator sets
//! for each pod (`LANTERN_RANK`, `LANTERN_WORLD_SIZE`, `LANTERN_COORDINATOR`, `LANTERN_ADDRESS`,
//! `LANTERN_PROGRESS_ADDRESS`, `LANTERN_TERMINATION_LOG`, `LANTERN_DEVICE`, `LANTERN_JOB_TOKEN_FILE`,
//! `LANTERN_REPOSITORY`)
//! over it. [`JobConfig::validate`] checks everything that can be checked before any work starts;
//! every error names the field it is about.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::model::mlp::Activation;

/// The whole job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub model: ModelSpec,
    pub data: DataSpec,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    pub schedule: ScheduleSpec,
    pub checkpoint: CheckpointSpec,
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

impl LlamaSpec {
    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
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

fn default_eval_fraction() -> f64 {
    0.1
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
    /// so ranks on different machines need it on shared storage.
    pub state_dir: PathBuf,
    /// The most rank 0 may take to save, evaluate and publish a checkpoint: the other ranks wait
    /// this much longer than `cluster.timeout_seconds` in the step after one.
    #[serde(default = "default_checkpoint_timeout")]
    pub timeout_seconds: f64,
}

fn default_keep() -> usize {
    3
}

fn default_checkpoint_timeout() -> f64 {
    600.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The model repository checkpoints are published to (`LANTERN_REPOSITORY` overrides).
    pub repository: PathBuf,
    /// The model name versions are published under.
    pub model: String,
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
    /// Where rank 0 writes its final progress as it exits (a pod's `terminationMessagePath`),
    /// so that the operator learns of the last checkpoint after the process has gone.
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

impl JobConfig {
    /// Reads `path` (YAML when it ends in `.yaml` or `.yml`, JSON otherwise), applies the
    /// environment and validates.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let yaml = path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
        let mut config = if yaml { Self::from_yaml(&bytes)? } else { Self::from_json(&bytes)? };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.anchor_to_repository();
        config.validate()?;
        Ok(config)
    }

    /// Resolves a relative `checkpoint.state_dir` and `model.llama.init_from` inside
    /// `output.repository`, so one job file works wherever the repository is mounted (the
    /// operator writes them so, and sets the repository per pod).
    pub fn anchor_to_repository(&mut self) {
        let repository = self.output.repository.clone();
        if self.checkpoint.state_dir.is_relative() {
            self.checkpoint.state_dir = repository.join(&self.checkpoint.state_dir);
        }
        if let ModelSpec::Llama(spec) = &mut self.model
            && let Some(init) = spec.init_from.as_mut().filter(|p| p.is_relative())
        {
            *init = repository.join(&*init);
        }
    }

    /// Parses the file's JSON; an unknown or missing field is named with its line and column.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::config("(file)", e.to_string()))
    }

    /// Parses the file's YAML; an unknown or missing field is named with its line and column.
    pub fn from_yaml(bytes: &[u8]) -> Result<Self> {
        serde_saphyr::from_slice(bytes).map_err(|e| Error::config("(file)", e.to_string()))
    }

    /// Overrides the cluster placement and the repository from environment variables read by
    /// `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|value| {
                    value.trim().parse().map_err(|_| Error::config(name, format!("{value:?} is not a number")))
                })
                .transpose()
        };
        if let Some(rank) = number("LANTERN_RANK")? {
            self.cluster.rank = rank;
        }
        if let Some(world_size) = number("LANTERN_WORLD_SIZE")? {
            self.cluster.world_size = world_size;
        }
        if let Some(coordinator) = var("LANTERN_COORDINATOR") {
            self.cluster.coordinator = Some(coordinator);
        }
        if let Some(address) = var("LANTERN_ADDRESS") {
            self.cluster.address = Some(address);
        }
        if let Some(address) = var("LANTERN_PROGRESS_ADDRESS") {
            self.cluster.progress_address = Some(address);
        }
        if let Some(path) = var("LANTERN_TERMINATION_LOG") {
            self.cluster.termination_log = Some(path.into());
        }
        if let Some(device) = var("LANTERN_DEVICE") {
            self.cluster.device = device.parse().map_err(|reason| Error::config("LANTERN_DEVICE", reason))?;
        }
        if let Some(path) = var("LANTERN_JOB_TOKEN_FILE") {
            self.cluster.token_file = Some(path.into());
        }
        if let Some(repository) = var("LANTERN_REPOSITORY") {
            self.output.repository = repository.into();
        }
        Ok(())
    }

    /// Everything checkable before training: sizes, ranges, files, and that the data fills a batch.
    pub fn validate(&self) -> Result<()> {
        match &self.model {
            ModelSpec::Llama(spec) => validate_llama(spec)?,
            ModelSpec::Mlp(spec) => {
                if spec.hidden.contains(&0) {
                    return Err(Error::config("model.mlp.hidden", "layer widths must be at least 1"));
                }
            }
        }
        match (&self.model, &self.data) {
            (ModelSpec::Llama(_), DataSpec::Addition(_) | DataSpec::Text(_))
            | (ModelSpec::Mlp(_), DataSpec::Csv(_)) => {}
            (ModelSpec::Llama(_), DataSpec::Csv(_)) => {
                return Err(Error::config("data", "a llama model trains on text or addition data, not csv"));
            }
            (ModelSpec::Mlp(_), _) => return Err(Error::config("data", "an mlp trains on csv data")),
        }
        self.validate_data()?;
        let optimizer = &self.optimizer;
        positive("optimizer.learning_rate", optimizer.learning_rate)?;
        if !(0.0..=optimizer.learning_rate).contains(&optimizer.min_learning_rate) {
            return Err(Error::config("optimizer.min_learning_rate", "must be between 0 and learning_rate"));
        }
        for (field, beta) in [("optimizer.beta1", optimizer.beta1), ("optimizer.beta2", optimizer.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::config(field, format!("{beta} is not in [0, 1)")));
            }
        }
        positive("optimizer.epsilon", optimizer.epsilon)?;
        non_negative("optimizer.weight_decay", optimizer.weight_decay)?;
        non_negative("optimizer.grad_clip", optimizer.grad_clip)?;
        let schedule = &self.schedule;
        if schedule.steps == 0 {
            return Err(Error::config("schedule.steps", "must be at least 1"));
        }
        if schedule.warmup_steps >= schedule.steps {
            return Err(Error::config("schedule.warmup_steps", "must be fewer than schedule.steps"));
        }
        let cluster = &self.cluster;
        if cluster.world_size == 0 {
            return Err(Error::config("cluster.world_size", "must be at least 1"));
        }
        if cluster.rank >= cluster.world_size {
            return Err(Error::config(
                "cluster.rank",
                format!("rank {} is outside a world of {}", cluster.rank, cluster.world_size),
            ));
        }
        if cluster.world_size > 1 && cluster.coordinator.is_none() {
            return Err(Error::config("cluster.coordinator", "a job of several ranks needs rank 0's address"));
        }
        if let Some(path) = &cluster.token_file {
            crate::credentials::read_token_file(path)
                .map_err(|e| Error::config("cluster.token_file", e.to_string()))?;
        }
        positive("cluster.timeout_seconds", cluster.timeout_seconds)?;
        positive("cluster.rendezvous_timeout_seconds", cluster.rendezvous_timeout_seconds)?;
        non_negative("cluster.progress_linger_seconds", cluster.progress_linger_seconds)?;
        non_negative("checkpoint.timeout_seconds", self.checkpoint.timeout_seconds)?;
        if schedule.global_batch == 0 || !schedule.global_batch.is_multiple_of(cluster.world_size) {
            return Err(Error::config(
                "schedule.global_batch",
                format!(
                    "{} must be a positive multiple of the world size {}",
                    schedule.global_batch, cluster.world_size
                ),
            ));
        }
        if self.checkpoint.every_steps == 0 {
            return Err(Error::config("checkpoint.every_steps", "must be at least 1"));
        }
        if self.checkpoint.keep == 0 {
            return Err(Error::config("checkpoint.keep", "must keep at least 1 training state"));
        }
        crate::repository::validate_model_name(&self.output.model)
            .map_err(|e| Error::config("output.model", e.to_string()))?;
        Ok(())
    }

    fn validate_data(&self) -> Result<()> {
        match &self.data {
            DataSpec::Addition(spec) => {
                if spec.max_operand == 0 {
                    return Err(Error::config("data.addition.max_operand", "must be at least 1"));
                }
                let problems = (u64::from(spec.max_operand) + 1).pow(2);
                if spec.eval_examples as u64 * 2 > problems {
                    return Err(Error::config(
                        "data.addition.eval_examples",
                        format!(
                            "{} held-out problems leave too few of the {problems} for training",
                            spec.eval_examples
                        ),
                    ));
                }
                if spec.train_examples == 0 {
                    return Err(Error::config("data.addition.train_examples", "must be at least 1"));
                }
            }
            DataSpec::Text(spec) => {
                if spec.paths.is_empty() {
                    return Err(Error::config("data.text.paths", "names no file"));
                }
                for (index, path) in spec.paths.iter().enumerate() {
                    exists(&format!("data.text.paths[{index}]"), path)?;
                }
                fraction("data.text.eval_fraction", spec.eval_fraction)?;
            }
            DataSpec::Csv(spec) => {
                exists("data.csv.path", &spec.path)?;
                fraction("data.csv.eval_fraction", spec.eval_fraction)?;
                if spec.classes.is_some_and(|classes| classes < 2) {
                    return Err(Error::config("data.csv.classes", "classification needs at least 2 classes"));
                }
            }
        }
        Ok(())
    }
}

fn validate_llama(spec: &LlamaSpec) -> Result<()> {
    for (field, value) in [
        ("model.llama.hidden_size", spec.hidden_size),
        ("model.llama.intermediate_size", spec.intermediate_size),
        ("model.llama.layers", spec.layers),
        ("model.llama.heads", spec.heads),
        ("model.llama.kv_heads", spec.kv_heads()),
    ] {
        if value == 0 {
            return Err(Error::config(field, "must be at least 1"));
        }
    }
    if !spec.hidden_size.is_multiple_of(spec.heads) || !(spec.hidden_size / spec.heads).is_multiple_of(2) {
        return Err(Error::config(
            "model.llama.heads",
            format!("hidden_size {} must split into {} heads of an even width", spec.hidden_size, spec.heads),
        ));
    }
    if !spec.heads.is_multiple_of(spec.kv_heads()) {
        return Err(Error::config(
            "model.llama.kv_heads",
            format!("{} heads do not group evenly over {} key/value heads", spec.heads, spec.kv_heads()),
        ));
    }
    if spec.context < 2 {
        return Err(Error::config("model.llama.context", "must be at least 2 tokens"));
    }
    if let Some(path) = &spec.init_from {
        exists("model.llama.init_from", &path.join("config.json"))?;
    }
    Ok(())
}

fn positive(field: &str, value: f64) -> Result<()> {
    match value > 0.0 && value.is_finite() {
        true => Ok(()),
        false => Err(Error::config(field, format!("{value} must be positive"))),
    }
}

fn non_negative(field: &str, value: f64) -> Result<()> {
    match value >= 0.0 && value.is_finite() {
        true => Ok(()),
        false => Err(Error::config(field, format!("{value} must not be negative"))),
    }
}

fn fraction(field: &str, value: f64) -> Result<()> {
    match value > 0.0 && value < 1.0 {
        true => Ok(()),
        false => Err(Error::config(field, format!("{value} is not strictly between 0 and 1"))),
    }
}

fn exists(field: &str, path: &Path) -> Result<()> {
    match path.is_file() {
        true => Ok(()),
        false => Err(Error::config(field, format!("{} is not a readable file", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addition_job() -> serde_json::Value {
        serde_json::json!({
            "model": {"llama": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "context": 16}},
            "data": {"addition": {"max_operand": 9, "train_examples": 100, "eval_examples": 10}},
            "schedule": {"steps": 10, "global_batch": 4},
            "checkpoint": {"every_steps": 5, "state_dir": "/tmp/state"},
            "output": {"repository": "/tmp/models", "model": "adder"},
        })
    }

    fn error_of(json: serde_json::Value) -> String {
        let config = JobConfig::from_json(json.to_string().as_bytes());
        config.and_then(|c| c.validate()).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_job_gets_the_defaults_and_the_environment_wins() {
        let mut config = JobConfig::from_json(addition_job().to_string().as_bytes()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.optimizer, OptimizerSpec::default());
        assert_eq!((config.cluster.rank, config.cluster.world_size), (0, 1));
        let env = |name: &str| match name {
            "LANTERN_RANK" => Some("1".to_owned()),
            "LANTERN_WORLD_SIZE" => Some("2".to_owned()),
            "LANTERN_COORDINATOR" => Some("10.0.0.1:7070".to_owned()),
            "LANTERN_DEVICE" => Some("cuda:1".to_owned()),
            _ => None,
        };
        config.apply_env(env).unwrap();
        assert_eq!((config.cluster.rank, config.cluster.world_size), (1, 2));
        assert_eq!(config.cluster.device, DeviceSpec::Cuda(1));
        assert_eq!(config.cluster.coordinator.as_deref(), Some("10.0.0.1:7070"));
        config.validate().unwrap();
        config.cluster.coordinator = None;
        assert!(config.validate().unwrap_err().to_string().contains("cluster.coordinator"));
        let bad = config.apply_env(|name| (name == "LANTERN_RANK").then(|| "one".to_owned()));
        assert!(bad.unwrap_err().to_string().contains("LANTERN_RANK"));
        let bad = config.apply_env(|name| (name == "LANTERN_DEVICE").then(|| "tpu".to_owned()));
        assert_eq!(
            bad.unwrap_err().to_string(),
            "training config: LANTERN_DEVICE: unknown device \"tpu\": expected cpu, cuda or cuda:N"
        );
    }

    #[test]
    fn relative_state_and_init_paths_are_inside_the_repository() {
        let mut job = addition_job();
        job["checkpoint"]["state_dir"] = ".lantern-training/ml/adder".into();
        job["model"]["llama"]["init_from"] = "base/3".into();
        let mut config = JobConfig::from_json(job.to_string().as_bytes()).unwrap();
        config.apply_env(|name| (name == "LANTERN_REPOSITORY").then(|| "/mnt/models".to_owned())).unwrap();
        config.anchor_to_repository();
        assert_eq!(config.checkpoint.state_dir, Path::new("/mnt/models/.lantern-training/ml/adder"));
        let ModelSpec::Llama(spec) = &config.model else { panic!("a llama job") };
        assert_eq!(spec.init_from.as_deref(), Some(Path::new("/mnt/models/base/3")));
    }

    #[test]
    fn yaml_reads_as_json_does_and_its_errors_say_where() {
        let yaml = "model:\n  llama: {hidden_size: 32, intermediate_size: 64, layers: 1, heads: 2, context: 16}\n\
                    data:\n  addition: {max_operand: 9, train_examples: 100, eval_examples: 10}\n\
                    schedule: {steps: 10, global_batch: 4}\n\
                    checkpoint: {every_steps: 5, state_dir: /tmp/state}\n\
                    output: {repository: /tmp/models, model: adder}\n";
        let from_yaml = JobConfig::from_yaml(yaml.as_bytes()).unwrap();
        assert_eq!(from_yaml, JobConfig::from_json(addition_job().to_string().as_bytes()).unwrap());
        let unknown = yaml.replace("steps: 10,", "steps: 10, epochs: 2,");
        let error = JobConfig::from_yaml(unknown.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("unknown field `epochs`") && error.contains("line 5 column 23"), "{error}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut unknown = addition_job();
        unknown["schedule"]["stepz"] = 3.into();
        assert!(error_of(unknown).contains("unknown field `stepz`"));
        let mut heads = addition_job();
        heads["model"]["llama"]["heads"] = 3.into();
        assert!(error_of(heads).contains("model.llama.heads"));
        let mut batch = addition_job();
        batch["schedule"]["global_batch"] = 3.into();
        batch["cluster"] = serde_json::json!({"world_size": 2, "coordinator": "127.0.0.1:7070"});
        assert!(error_of(batch).contains("schedule.global_batch: 3 must be a positive multiple of the world size 2"));
        let mut text = addition_job();
        text["data"] = serde_json::json!({"text": {"paths": ["/no/such/corpus.txt"]}});
        assert!(error_of(text).contains("data.text.paths[0]: /no/such/corpus.txt is not a readable file"));
        let mut mismatch = addition_job();
        mismatch["data"] = serde_json::json!({"csv": {"path": "/x.csv", "target": "y"}});
        assert!(error_of(mismatch).contains("data: a llama model trains on text or addition data"));
        let mut rate = addition_job();
        rate["optimizer"] = serde_json::json!({"learning_rate": -1.0});
        assert!(error_of(rate).contains("optimizer.learning_rate"));
        let mut name = addition_job();
        name["output"]["model"] = "../escape".into();
        assert!(error_of(name).contains("output.model"));
    }
}
