//! A training job's configuration: the contract's [`JobConfig`] read from one JSON or YAML file,
//! then the environment the operator sets for each pod (`lantern_contract::env`) applied over
//! it. [`validate`] checks everything that can be checked before any work starts (sizes, ranges,
//! files, the token, the model name); every error names the field it is about.

use std::path::Path;

pub use lantern_contract::job::*;
use lantern_runtime::repository::{CacheSettings, RemoteSettings, Repository};

use crate::error::{Error, Result};

/// The node cache's budget for a job's remote repository reads (a fine-tuned base).
const CACHE_BUDGET_BYTES: u64 = 64 << 30;

/// The repository at `location` (a directory or URI), read through the job's node cache
/// (`output.local_root()`) when remote.
pub fn open_repository(location: &str, output: &OutputSpec) -> Result<Repository> {
    let cache = CacheSettings::new(output.local_root(), CACHE_BUDGET_BYTES);
    Ok(Repository::open(location, &RemoteSettings::new(cache))?)
}

/// Reads `path` (YAML when it ends in `.yaml` or `.yml`, JSON otherwise), applies the
/// environment and validates.
pub fn load(path: &Path) -> Result<JobConfig> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let yaml = path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
    let mut config = if yaml { from_yaml(&bytes)? } else { from_json(&bytes)? };
    config.apply_env(|name| std::env::var(name).ok())?;
    config.anchor_to_repository();
    validate(&config)?;
    Ok(config)
}

/// Parses the file's JSON; an unknown or missing field is named with its line and column.
pub fn from_json(bytes: &[u8]) -> Result<JobConfig> {
    serde_json::from_slice(bytes).map_err(|e| Error::config("(file)", e.to_string()))
}

/// Parses the file's YAML; an unknown or missing field is named with its line and column.
pub fn from_yaml(bytes: &[u8]) -> Result<JobConfig> {
    serde_saphyr::from_slice(bytes).map_err(|e| Error::config("(file)", e.to_string()))
}

/// Everything checkable before training: sizes, ranges, files, and that the data fills a batch.
pub fn validate(config: &JobConfig) -> Result<()> {
    match &config.model {
        ModelSpec::Llama(spec) => validate_llama(spec)?,
        ModelSpec::FineTune(spec) => validate_fine_tune(spec)?,
        ModelSpec::Quantize(spec) => validate_base("model.quantize.source", &spec.source)?,
        ModelSpec::Distill(spec) => validate_distill(spec)?,
        ModelSpec::Mlp(spec) => {
            if spec.hidden.contains(&0) {
                return Err(Error::config("model.mlp.hidden", "layer widths must be at least 1"));
            }
        }
    }
    match (&config.model, &config.data) {
        (ModelSpec::Llama(_), DataSpec::Addition(_) | DataSpec::Text(_))
        | (ModelSpec::FineTune(_) | ModelSpec::Quantize(_) | ModelSpec::Distill(_), DataSpec::Jsonl(_))
        | (ModelSpec::Mlp(_), DataSpec::Csv(_)) => {}
        (ModelSpec::Llama(_), DataSpec::Csv(_) | DataSpec::Jsonl(_)) => {
            return Err(Error::config(
                "data",
                "a llama model trains on text or addition data (fine_tune a base on jsonl data)",
            ));
        }
        (ModelSpec::FineTune(_), _) => return Err(Error::config("data", "a fine_tune model trains on jsonl data")),
        (ModelSpec::Distill(_), _) => return Err(Error::config("data", "a distill job trains on jsonl data")),
        (ModelSpec::Quantize(_), _) => {
            return Err(Error::config("data", "a quantize job is measured on jsonl data (its held-out part)"));
        }
        (ModelSpec::Mlp(_), _) => return Err(Error::config("data", "an mlp trains on csv data")),
    }
    validate_data(&config.data)?;
    let cluster = &config.cluster;
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
        lantern_proto::auth::read_token_file(path).map_err(|e| Error::config("cluster.token_file", e.to_string()))?;
    }
    positive("cluster.timeout_seconds", cluster.timeout_seconds)?;
    positive("cluster.rendezvous_timeout_seconds", cluster.rendezvous_timeout_seconds)?;
    non_negative("cluster.progress_linger_seconds", cluster.progress_linger_seconds)?;
    lantern_runtime::repository::validate_model_name(&config.output.model)
        .map_err(|e| Error::config("output.model", e.to_string()))?;
    match (&config.model, &config.schedule, &config.checkpoint) {
        (ModelSpec::Quantize(_), None, None) => {
            // Nothing is trained: a setting for training would be ignored, so it is refused.
            if config.optimizer != OptimizerSpec::default() {
                return Err(Error::config("optimizer", "a quantize job trains nothing"));
            }
            if cluster.world_size != 1 {
                return Err(Error::config("cluster.world_size", "a quantize job runs on one rank"));
            }
            Ok(())
        }
        (ModelSpec::Quantize(_), Some(_), _) => Err(Error::config("schedule", "a quantize job trains nothing")),
        (ModelSpec::Quantize(_), _, Some(_)) => Err(Error::config("checkpoint", "a quantize job trains nothing")),
        (_, Some(schedule), Some(checkpoint)) => validate_training(&config.optimizer, schedule, checkpoint, cluster),
        (_, None, _) => Err(Error::config("schedule", "a training job needs its steps and batch")),
        (_, _, None) => Err(Error::config("checkpoint", "a training job needs its checkpoint settings")),
    }
}

/// The settings of a job that trains.
fn validate_training(
    optimizer: &OptimizerSpec,
    schedule: &ScheduleSpec,
    checkpoint: &CheckpointSpec,
    cluster: &ClusterSpec,
) -> Result<()> {
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
    if schedule.steps == 0 {
        return Err(Error::config("schedule.steps", "must be at least 1"));
    }
    if schedule.warmup_steps >= schedule.steps {
        return Err(Error::config("schedule.warmup_steps", "must be fewer than schedule.steps"));
    }
    non_negative("checkpoint.timeout_seconds", checkpoint.timeout_seconds)?;
    if schedule.global_batch == 0 || !schedule.global_batch.is_multiple_of(cluster.world_size) {
        return Err(Error::config(
            "schedule.global_batch",
            format!("{} must be a positive multiple of the world size {}", schedule.global_batch, cluster.world_size),
        ));
    }
    if checkpoint.every_steps == 0 {
        return Err(Error::config("checkpoint.every_steps", "must be at least 1"));
    }
    if checkpoint.keep == 0 {
        return Err(Error::config("checkpoint.keep", "must keep at least 1 training state"));
    }
    Ok(())
}

fn validate_data(data: &DataSpec) -> Result<()> {
    match data {
        DataSpec::Addition(spec) => {
            if spec.max_operand == 0 {
                return Err(Error::config("data.addition.max_operand", "must be at least 1"));
            }
            let problems = (u64::from(spec.max_operand) + 1).pow(2);
            if spec.eval_examples as u64 * 2 > problems {
                return Err(Error::config(
                    "data.addition.eval_examples",
                    format!("{} held-out problems leave too few of the {problems} for training", spec.eval_examples),
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
        DataSpec::Jsonl(spec) => {
            exists("data.jsonl.path", &spec.path)?;
            if let Some(path) = &spec.eval_path {
                exists("data.jsonl.eval_path", path)?;
            }
            fraction("data.jsonl.eval_fraction", spec.eval_fraction)?;
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

fn validate_llama(spec: &LlamaSpec) -> Result<()> {
    let sizes = [spec.hidden_size, spec.intermediate_size, spec.layers, spec.heads, spec.kv_heads()];
    validate_sizes("model.llama", sizes)?;
    if spec.context < 2 {
        return Err(Error::config("model.llama.context", "must be at least 2 tokens"));
    }
    if let Some(path) = &spec.init_from {
        exists("model.llama.init_from", &path.join("config.json"))?;
    }
    Ok(())
}

/// A llama's `[hidden_size, intermediate_size, layers, heads, kv_heads]` under `prefix`: all
/// positive, heads of an even width, key/value heads grouping the heads evenly.
fn validate_sizes(prefix: &str, [hidden, inner, layers, heads, kv_heads]: [usize; 5]) -> Result<()> {
    let names = ["hidden_size", "intermediate_size", "layers", "heads", "kv_heads"];
    for (name, value) in names.into_iter().zip([hidden, inner, layers, heads, kv_heads]) {
        if value == 0 {
            return Err(Error::config(format!("{prefix}.{name}"), "must be at least 1"));
        }
    }
    if !hidden.is_multiple_of(heads) || !(hidden / heads).is_multiple_of(2) {
        return Err(Error::config(
            format!("{prefix}.heads"),
            format!("hidden_size {hidden} must split into {heads} heads of an even width"),
        ));
    }
    if !heads.is_multiple_of(kv_heads) {
        return Err(Error::config(
            format!("{prefix}.kv_heads"),
            format!("{heads} heads do not group evenly over {kv_heads} key/value heads"),
        ));
    }
    Ok(())
}

/// The most teacher tokens a distillation's KL term may cover per target.
pub const MAX_TOP_K: usize = 1024;

fn validate_distill(spec: &DistillSpec) -> Result<()> {
    validate_base("model.distill.teacher", &spec.teacher)?;
    match &spec.student {
        StudentSpec::Layers(layers) if layers.is_empty() => {
            return Err(Error::config("model.distill.student.layers", "names no layer"));
        }
        StudentSpec::Layers(_) => {}
        StudentSpec::Sizes(s) => {
            let sizes = [s.hidden_size, s.intermediate_size, s.layers, s.heads, s.kv_heads.unwrap_or(s.heads)];
            validate_sizes("model.distill.student.sizes", sizes)?;
        }
        StudentSpec::Base(base) => validate_base("model.distill.student.base", base)?,
    }
    if spec.sequence_length < 2 {
        return Err(Error::config("model.distill.sequence_length", "must be at least 2 tokens"));
    }
    positive("model.distill.temperature", spec.temperature)?;
    if !(1..=MAX_TOP_K).contains(&spec.top_k) {
        return Err(Error::config("model.distill.top_k", format!("{} is not in 1..={MAX_TOP_K}", spec.top_k)));
    }
    if !(0.0..=1.0).contains(&spec.cross_entropy_weight) {
        return Err(Error::config(
            "model.distill.cross_entropy_weight",
            format!("{} is not in [0, 1]", spec.cross_entropy_weight),
        ));
    }
    Ok(())
}

/// A version a job reads (`field`: where the job names it).
fn validate_base(field: &str, base: &BaseSpec) -> Result<()> {
    lantern_runtime::repository::validate_model_name(&base.model)
        .map_err(|e| Error::config(format!("{field}.model"), e.to_string()))?;
    if base.version == 0 {
        return Err(Error::config(format!("{field}.version"), "versions start at 1"));
    }
    if let Some(digest) = &base.digest {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::config(format!("{field}.digest"), format!("{digest:?} is not sha256:<64 hex digits>")));
        }
    }
    if let Some(path) = &base.import_from
        && !path.exists()
    {
        return Err(Error::config(format!("{field}.import_from"), format!("{} does not exist", path.display())));
    }
    Ok(())
}

fn validate_fine_tune(spec: &FineTuneSpec) -> Result<()> {
    validate_base("model.fine_tune.base", &spec.base)?;
    if spec.sequence_length < 2 {
        return Err(Error::config("model.fine_tune.sequence_length", "must be at least 2 tokens"));
    }
    if let FineTuneMethod::Lora(lora) = &spec.method {
        if lora.rank == 0 {
            return Err(Error::config("model.fine_tune.method.lora.rank", "must be at least 1"));
        }
        if let Some(alpha) = lora.alpha {
            positive("model.fine_tune.method.lora.alpha", alpha)?;
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return Err(Error::config(
                "model.fine_tune.method.lora.dropout",
                format!("{} is not a probability below 1", lora.dropout),
            ));
        }
        if lora.targets.is_empty() {
            return Err(Error::config("model.fine_tune.method.lora.targets", "names no projection to adapt"));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = lora.targets.iter().find(|target| !seen.insert(**target)) {
            return Err(Error::config(
                "model.fine_tune.method.lora.targets",
                format!("{} is named twice", twice.name()),
            ));
        }
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
        from_json(json.to_string().as_bytes()).and_then(|c| validate(&c)).unwrap_err().to_string()
    }

    #[test]
    fn a_job_of_several_ranks_needs_the_coordinator() {
        let mut config = from_json(addition_job().to_string().as_bytes()).unwrap();
        validate(&config).unwrap();
        let vars = |name: &str| match name {
            lantern_contract::env::RANK => Some("1".to_owned()),
            lantern_contract::env::WORLD_SIZE => Some("2".to_owned()),
            _ => None,
        };
        config.apply_env(vars).unwrap();
        assert!(validate(&config).unwrap_err().to_string().contains("cluster.coordinator"));
        config.cluster.coordinator = Some("10.0.0.1:7070".into());
        validate(&config).unwrap();
        let bad = config.apply_env(|name| (name == lantern_contract::env::RANK).then(|| "one".to_owned()));
        assert_eq!(Error::from(bad.unwrap_err()).to_string(), "training config: LANTERN_RANK: \"one\" is not a number");
    }

    #[test]
    fn yaml_reads_as_json_does_and_its_errors_say_where() {
        let yaml = "model:\n  llama: {hidden_size: 32, intermediate_size: 64, layers: 1, heads: 2, context: 16}\n\
                    data:\n  addition: {max_operand: 9, train_examples: 100, eval_examples: 10}\n\
                    schedule: {steps: 10, global_batch: 4}\n\
                    checkpoint: {every_steps: 5, state_dir: /tmp/state}\n\
                    output: {repository: /tmp/models, model: adder}\n";
        let from_yaml = from_yaml(yaml.as_bytes()).unwrap();
        assert_eq!(from_yaml, from_json(addition_job().to_string().as_bytes()).unwrap());
        let unknown = yaml.replace("steps: 10,", "steps: 10, epochs: 2,");
        let error = super::from_yaml(unknown.as_bytes()).unwrap_err().to_string();
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
