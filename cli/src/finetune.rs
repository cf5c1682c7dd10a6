//! `lantern finetune --base MODEL[:VERSION] --data FILE.jsonl`: fine-tunes a model Lantern serves,
//! from a terminal.
//!
//! 1. The data files are checked line by line ([`lantern_contract::examples`], the check the
//!    worker runs too) before anything is created; a bad line is named with its file and number.
//! 2. The base's repository (and, without `:VERSION`, its version) is the one of the
//!    InferenceService serving MODEL in the namespace, unless `--repository` names one.
//! 3. The files go into a ConfigMap (`train.jsonl`, `eval.jsonl`; 1 MiB at most, a ConfigMap's
//!    limit), which the TrainingJob reads through `data.jsonl.configMap` and then owns: deleting
//!    the job deletes the data.
//! 4. The job is watched: a progress bar (step, loss, tokens/s, ETA), a line per published
//!    version with its held-out metrics, and the exit code of the outcome (0 succeeded, 1 failed,
//!    3 detached). Ctrl-C detaches and leaves the job running. Without a terminal on stderr the
//!    bar is replaced by a line per step reported.
//!
//! [`job`], [`progress_line`] and [`version_line`] are pure; the rest talks to the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use lantern_contract::examples;
use lantern_operator::crd::training::{Checkpoint, Phase, TrainingJobStatus};
use lantern_operator::crd::{InferenceService, Repository, TrainingJob};

use crate::status::Health;

/// The most data a ConfigMap holds.
const CONFIG_MAP_BYTES: u64 = 1 << 20;
/// The ConfigMap keys the files go under.
const TRAIN_KEY: &str = "train.jsonl";
const EVAL_KEY: &str = "eval.jsonl";

/// How to fine-tune: the command's flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// MODEL or MODEL:VERSION; without a version, the stable version of the InferenceService
    /// that serves MODEL.
    #[arg(long)]
    base: String,
    /// Training examples, one JSON object per line: {"messages": [...]}, {"prompt", "completion"}
    /// or {"text"}.
    #[arg(long)]
    data: PathBuf,
    /// Held-out examples; without it, the last --eval-fraction of --data.
    #[arg(long)]
    eval: Option<PathBuf>,
    #[arg(long, conflicts_with = "eval")]
    eval_fraction: Option<f64>,
    /// The model the versions are published as (MODEL-tuned by default; the base's own name
    /// makes each version a candidate of the service that serves it).
    #[arg(long)]
    output: Option<String>,
    /// The TrainingJob's name; by default the API server draws one after the output's.
    #[arg(long)]
    name: Option<String>,
    /// The repository: a PersistentVolumeClaim's name or an object store URI (s3://…); by
    /// default the one the InferenceService serving the base reads.
    #[arg(long)]
    repository: Option<String>,
    /// Train every weight instead of LoRA adapters.
    #[arg(long)]
    full: bool,
    /// The adapters' rank.
    #[arg(long, default_value_t = 8, conflicts_with = "full")]
    lora_rank: u32,
    /// The adapters' scale numerator (alpha / rank); the rank by default.
    #[arg(long, conflicts_with = "full")]
    lora_alpha: Option<f64>,
    /// The projections that get adapters.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj", conflicts_with = "full")]
    lora_targets: Vec<String>,
    /// Also publish each LoRA checkpoint with the adapters merged into the base.
    #[arg(long, conflicts_with = "full")]
    merge: bool,
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Examples per step across all ranks.
    #[arg(long, default_value_t = 8)]
    batch: u32,
    /// AdamW's peak learning rate; the worker's default when unset.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// The longest example in tokens once templated.
    #[arg(long, default_value_t = 512)]
    sequence_length: u32,
    /// Leave out examples longer than --sequence-length instead of refusing the job.
    #[arg(long)]
    skip_overlong: bool,
    /// A version every this many steps; at the end only when unset.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Ranks (pods) training data-parallel.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Create the job and return without watching it.
    #[arg(long)]
    detach: bool,
}

/// The checked data files, by ConfigMap key.
pub struct Data {
    files: BTreeMap<String, String>,
}

/// Reads and checks `options`' data files, printing what each holds: before any cluster call, so
/// that a bad file creates nothing.
pub fn read_data(options: &Options) -> anyhow::Result<Data> {
    let paths: Vec<(&str, &PathBuf)> =
        std::iter::once((TRAIN_KEY, &options.data)).chain(options.eval.as_ref().map(|e| (EVAL_KEY, e))).collect();
    // Sized before anything is read: a file too big for a ConfigMap is never loaded.
    let mut bytes = 0;
    for (_, path) in &paths {
        bytes += std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.len();
    }
    anyhow::ensure!(
        bytes <= CONFIG_MAP_BYTES,
        "the data is {} KiB, more than the 1024 KiB a ConfigMap holds: copy it into the repository (for example \
         .datasets/NAME/train.jsonl in its claim) and write a TrainingJob with data.jsonl.path",
        bytes.div_ceil(1024)
    );
    let mut files = BTreeMap::new();
    for (key, path) in paths {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let counts = examples::check(&text).map_err(|e| anyhow::anyhow!("{} {e}", path.display()))?;
        println!("{}: {}", path.display(), describe(&counts));
        files.insert(key.to_owned(), text);
    }
    Ok(Data { files })
}

/// `12 examples (10 conversations, 2 prompt/completion pairs)`.
fn describe(counts: &examples::Counts) -> String {
    let kinds: Vec<String> =
        [(counts.conversations, "conversation"), (counts.pairs, "prompt/completion pair"), (counts.texts, "text")]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, kind)| format!("{n} {kind}{}", if n == 1 { "" } else { "s" }))
            .collect();
    let total = counts.total();
    format!("{total} example{} ({})", if total == 1 { "" } else { "s" }, kinds.join(", "))
}

/// Where the base is: its repository and version.
struct Base {
    model: String,
    version: u64,
    repository: Repository,
}

/// A repository named on the command line: a URI, or a claim.
fn repository_flag(text: &str) -> Repository {
    match text.contains("://") {
        true => Repository { uri: Some(text.to_owned()), ..Repository::default() },
        false => Repository::claim(text),
    }
}

/// Finds the base's version and repository: from the flags, else from the InferenceService that
/// serves the model (its source's repository, directly or through its TrainingJob).
async fn locate(client: &kube::Client, namespace: &str, options: &Options) -> anyhow::Result<Base> {
    let (model, version) = crate::chat::split(&options.base);
    let version = version
        .map(|v| {
            v.parse::<u64>().map_err(|_| anyhow::anyhow!("--base {}: {v:?} is not a version number", options.base))
        })
        .transpose()?;
    if let (Some(version), Some(repository)) = (version, &options.repository) {
        return Ok(Base { model: model.to_owned(), version, repository: repository_flag(repository) });
    }
    let services: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    let serving = services.list(&Default::default()).await?.items.into_iter().find(|s| s.spec.model == model);
    let Some(service) = serving else {
        anyhow::bail!(
            "no InferenceService in namespace {namespace:?} serves model {model:?}: name its version and repository \
             (--base {model}:VERSION --repository CLAIM|URI)"
        )
    };
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let stable = service.status.as_ref().and_then(|s| s.served.stable_version);
    let Some(version) = version.or(stable) else {
        anyhow::bail!(
            "inferenceservice {service_name:?} serves no version of {model:?} yet: give --base {model}:VERSION"
        )
    };
    let repository = match (&options.repository, &service.spec.source.repository, &service.spec.source.training_job_ref)
    {
        (Some(flag), _, _) => repository_flag(flag),
        (None, Some(repository), _) => repository.clone(),
        (None, None, Some(reference)) => {
            let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), namespace);
            jobs.get(&reference.name).await?.spec.output.repository
        }
        (None, None, None) => anyhow::bail!("inferenceservice {service_name:?} names no source: give --repository"),
    };
    Ok(Base { model: model.to_owned(), version, repository })
}

/// The TrainingJob `options` ask for, reading its data from the ConfigMap `data`.
fn job(options: &Options, base: &Base, data: &str) -> anyhow::Result<TrainingJob> {
    let method = match options.full {
        true => serde_json::json!({"full": {}}),
        false => serde_json::json!({"lora": {
            "rank": options.lora_rank, "alpha": options.lora_alpha, "targets": options.lora_targets,
        }}),
    };
    let output = options.output.clone().unwrap_or_else(|| format!("{}-tuned", base.model));
    let spec = serde_json::json!({
        "model": {"fineTune": {
            "base": {"model": base.model, "version": base.version},
            "method": method,
            "sequenceLength": options.sequence_length,
            "merge": (!options.full && options.merge).then_some(true),
        }},
        "data": {"jsonl": {
            "configMap": data,
            "path": TRAIN_KEY,
            "evalPath": options.eval.as_ref().map(|_| EVAL_KEY),
            "evalFraction": options.eval_fraction,
            "overlong": options.skip_overlong.then_some("Skip"),
        }},
        "optimizer": {"learningRate": options.learning_rate},
        "schedule": {"steps": options.steps, "globalBatch": options.batch},
        "checkpoint": {"everySteps": options.checkpoint_every.unwrap_or(options.steps)},
        "replicas": options.replicas,
        "output": {"model": output, "repository": base.repository},
    });
    let metadata = match &options.name {
        Some(name) => serde_json::json!({"name": name}),
        None => serde_json::json!({"generateName": format!("{output}-")}),
    };
    let object = serde_json::json!({
        "apiVersion": "lantern.dev/v1alpha1", "kind": "TrainingJob", "metadata": metadata, "spec": without_nulls(spec),
    });
    serde_json::from_value(object).map_err(|e| anyhow::anyhow!("the TrainingJob these flags make: {e}"))
}

/// `value` without its null members (flags left unset), recursively.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(members) => {
            members.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, without_nulls(v))).collect()
        }
        other => other,
    }
}

/// Creates the data's ConfigMap and the job, and gives the ConfigMap to the job; watches it
/// unless `--detach`.
pub async fn finetune(client: &kube::Client, namespace: &str, options: &Options, data: Data) -> anyhow::Result<Health> {
    let base = locate(client, namespace, options).await?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), namespace);
    let prefix =
        options.name.clone().or_else(|| options.output.clone()).unwrap_or_else(|| format!("{}-tuned", base.model));
    let map = ConfigMap {
        metadata: ObjectMeta { generate_name: Some(format!("{prefix}-data-")), ..ObjectMeta::default() },
        data: Some(data.files),
        ..ConfigMap::default()
    };
    let map = maps
        .create(&PostParams::default(), &map)
        .await
        .map_err(|e| anyhow::anyhow!("creating the data's ConfigMap: {e}"))?;
    let map_name = map.metadata.name.clone().unwrap_or_default();
    let created = match job(options, &base, &map_name) {
        Ok(job) => jobs
            .create(&PostParams::default(), &job)
            .await
            .map_err(|e| anyhow::anyhow!("creating the TrainingJob: {e}")),
        Err(error) => Err(error),
    };
    let created = match created {
        Ok(created) => created,
        Err(error) => {
            // Nothing is left behind: the data goes with the job that was not made.
            let _ = maps.delete(&map_name, &DeleteParams::default()).await;
            return Err(error);
        }
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    let owner = created.controller_owner_ref(&()).map(|owner| OwnerReference { controller: Some(false), ..owner });
    let patch = serde_json::json!({"metadata": {"ownerReferences": owner.into_iter().collect::<Vec<_>>()}});
    maps.patch(&map_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    println!(
        "trainingjob {namespace}/{name} created: fine-tunes {}:{} on configmap {map_name}, publishing versions of {}",
        base.model, base.version, created.spec.output.model
    );
    if options.detach {
        println!("follow it with `lantern curves {name}` or `kubectl get tj {name} -w`");
        return Ok(Health::Progressing);
    }
    watch(jobs, &name).await
}

/// `step 40/100  loss 1.234  1520 tok/s  ETA 42s`, without the parts not known yet.
pub fn progress_line(status: &TrainingJobStatus) -> String {
    let Some(progress) = &status.progress else { return "waiting for the first step".to_owned() };
    let mut parts = vec![format!("step {}/{}", progress.step, progress.total_steps)];
    if let Some(loss) = progress.loss {
        parts.push(format!("loss {loss}"));
    }
    parts.push(format!("{} tok/s", progress.tokens_per_second));
    if let Some(eta) = progress.eta_seconds {
        parts.push(format!("ETA {}", clock(eta)));
    }
    parts.join("  ")
}

/// `42s`, `3m05s`, `1h02m`.
fn clock(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `version 2 at step 40: eval_accuracy 0.5000, eval_loss 1.2345`: its held-out metrics, and
/// beside each the base's (`baseline`) when the job measured it.
pub fn version_line(model: &str, checkpoint: &Checkpoint, baseline: &BTreeMap<String, f64>) -> String {
    let metrics: Vec<String> = checkpoint
        .metrics
        .iter()
        .filter(|(name, _)| name.starts_with("eval_"))
        .map(|(name, value)| match baseline.get(name) {
            Some(base) => format!("{name} {value:.4} (base {base:.4})"),
            None => format!("{name} {value:.4}"),
        })
        .collect();
    let metrics = if metrics.is_empty() { "no held-out metrics".to_owned() } else { metrics.join(", ") };
    format!("published {model} version {} at step {}: {metrics}", checkpoint.version, checkpoint.step)
}

/// What the job's phase means for the command: its exit, once the job has finished.
fn outcome(phase: Option<Phase>) -> Option<Health> {
    match phase? {
        Phase::Succeeded => Some(Health::Healthy),
        Phase::Failed => Some(Health::Degraded),
        _ => None,
    }
}

/// Follows the job until it finishes or Ctrl-C detaches.
async fn watch(jobs: Api<TrainingJob>, name: &str) -> anyhow::Result<Health> {
    let template = |text: &str| {
        ProgressStyle::with_template(text).map_err(|e| anyhow::anyhow!("the progress bar's template {text:?}: {e}"))
    };
    // A spinner until the first step is known, then the bar.
    let bar = ProgressBar::new(0).with_style(template("{spinner} {msg}")?);
    let moving = template("{spinner} [{bar:32}] {percent:>3}%  {msg}")?.progress_chars("=> ");
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    // Lines go to stdout with the bar (on stderr) lifted meanwhile.
    let say = |line: String| bar.suspend(|| println!("{line}"));
    let mut changes = std::pin::pin!(watcher::watch_object(jobs, name).boxed());
    // One listener for the whole watch, so that no Ctrl-C falls between two.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut printed = 0;
    let (mut last_phase, mut last_step) = (None, None);
    let mut baseline_shown = false;
    loop {
        let change = tokio::select! {
            change = changes.next() => change,
            _ = &mut interrupted => {
                bar.abandon();
                say(format!(
                    "detached: trainingjob {name} goes on; follow it with `lantern curves {name}` or \
                     `kubectl get tj {name} -w`, stop it with `kubectl delete tj {name}`"
                ));
                return Ok(Health::Progressing);
            }
        };
        let Some(change) = change else { anyhow::bail!("the watch of trainingjob {name:?} ended") };
        let Some(job) = change? else { anyhow::bail!("trainingjob {name:?} was deleted") };
        let status = job.status.unwrap_or_default();
        if !baseline_shown && !status.baseline.is_empty() {
            let metrics: Vec<String> = status.baseline.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            say(format!("the base on the held-out data: {}", metrics.join(", ")));
            baseline_shown = true;
        }
        for checkpoint in status.checkpoints.iter().skip(printed) {
            say(version_line(&job.spec.output.model, checkpoint, &status.baseline));
        }
        printed = printed.max(status.checkpoints.len());
        if let Some(progress) = &status.progress {
            if bar.length() == Some(0) {
                bar.set_style(moving.clone());
            }
            bar.set_length(progress.total_steps);
            bar.set_position(progress.step);
        }
        // Without a terminal, a line per step reported (not per rate update).
        let step = status.progress.as_ref().map(|p| p.step);
        if bar.is_hidden() && step != last_step {
            say(progress_line(&status));
        }
        bar.set_message(progress_line(&status));
        last_step = step;
        if status.phase != last_phase {
            let phase = status.phase.map_or("Pending", Phase::as_str);
            let why = status.conditions.iter().rev().find(|c| c.type_ == phase).map(|c| c.message.as_str());
            say(format!("{phase}{}", why.filter(|m| !m.is_empty()).map_or(String::new(), |m| format!(": {m}"))));
            last_phase = status.phase;
        }
        if let Some(health) = outcome(status.phase) {
            bar.finish();
            return Ok(health);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        options: Options,
    }

    fn options(args: &[&str]) -> Options {
        Command::try_parse_from(["finetune"].iter().chain(args)).unwrap().options
    }

    fn base() -> Base {
        Base { model: "chat".into(), version: 3, repository: Repository::claim("models") }
    }

    #[test]
    fn lora_flags_make_a_lora_job_on_the_config_map_named_after_its_output() {
        let made = job(
            &options(&["--base", "chat", "--data", "t.jsonl", "--eval", "e.jsonl", "--lora-rank", "4"]),
            &base(),
            "chat-tuned-data-x7",
        )
        .unwrap();
        let made = serde_json::to_value(made).unwrap();
        assert_eq!(made["metadata"], json!({"generateName": "chat-tuned-"}));
        let spec = &made["spec"];
        assert_eq!(
            spec["model"],
            json!({"fineTune": {"base": {"model": "chat", "version": 3}, "sequenceLength": 512,
                   "method": {"lora": {"rank": 4, "targets": ["q_proj", "v_proj"]}}}})
        );
        assert_eq!(
            spec["data"],
            json!({"jsonl": {"configMap": "chat-tuned-data-x7", "path": "train.jsonl", "evalPath": "eval.jsonl"}})
        );
        assert_eq!(spec["schedule"], json!({"steps": 100, "globalBatch": 8}));
        assert_eq!(spec["checkpoint"], json!({"everySteps": 100}), "one version, at the end");
        assert_eq!(spec["output"], json!({"model": "chat-tuned", "repository": {"claimName": "models"}}));
        assert_eq!(spec["optimizer"], json!({}), "the worker's defaults");
    }

    #[test]
    fn full_flags_name_the_job_and_publish_as_the_base() {
        let flags = [
            "--base",
            "chat:3",
            "--data",
            "t.jsonl",
            "--full",
            "--output",
            "chat",
            "--name",
            "tune-1",
            "--steps",
            "8",
            "--checkpoint-every",
            "4",
            "--learning-rate",
            "0.001",
            "--skip-overlong",
            "--eval-fraction",
            "0.2",
            "--replicas",
            "2",
            "--sequence-length",
            "64",
        ];
        let made = serde_json::to_value(job(&options(&flags), &base(), "tune-1-data-ab").unwrap()).unwrap();
        assert_eq!(made["metadata"], json!({"name": "tune-1"}));
        assert_eq!(made["spec"]["model"]["fineTune"]["method"], json!({"full": {}}));
        assert_eq!(made["spec"]["data"]["jsonl"]["evalFraction"], 0.2);
        assert_eq!(made["spec"]["data"]["jsonl"]["overlong"], "Skip");
        assert_eq!(made["spec"]["checkpoint"], json!({"everySteps": 4}));
        assert_eq!(made["spec"]["optimizer"], json!({"learningRate": 0.001}));
        assert_eq!(
            (made["spec"]["replicas"].clone(), made["spec"]["output"]["model"].clone()),
            (json!(2), json!("chat"))
        );
        let refused = Command::try_parse_from(["finetune", "--base", "b", "--data", "d", "--full", "--lora-rank", "4"]);
        assert!(refused.is_err(), "LoRA flags with --full");
        let made =
            job(&options(&["--base", "b", "--data", "d", "--lora-targets", "q_proj,up_proj,sideways"]), &base(), "m");
        assert!(made.unwrap_err().to_string().contains("sideways"), "an unknown projection");
    }

    #[test]
    fn a_repository_flag_is_a_uri_or_a_claim() {
        assert_eq!(repository_flag("s3://bucket/models").uri.as_deref(), Some("s3://bucket/models"));
        assert_eq!(repository_flag("models").claim_name.as_deref(), Some("models"));
    }

    #[test]
    fn progress_and_versions_read_as_lines() {
        let mut status = TrainingJobStatus::default();
        assert_eq!(progress_line(&status), "waiting for the first step");
        status.progress = serde_json::from_value(json!({
            "step": 40, "totalSteps": 100, "percent": 40, "loss": 1.234, "tokensPerSecond": 1520.0, "etaSeconds": 185,
            "updated": "2026-12-07T19:00:00Z",
        }))
        .unwrap();
        assert_eq!(progress_line(&status), "step 40/100  loss 1.234  1520 tok/s  ETA 3m05s");
        assert_eq!((clock(42), clock(3720)), ("42s".to_owned(), "1h02m".to_owned()));
        let checkpoint = Checkpoint {
            version: 2,
            step: 40,
            metrics: BTreeMap::from([
                ("eval_loss".into(), 1.23456),
                ("loss".into(), 1.5),
                ("eval_accuracy".into(), 0.5),
            ]),
            ..Checkpoint::default()
        };
        let baseline = BTreeMap::from([("eval_loss".to_owned(), 2.0)]);
        assert_eq!(
            version_line("chat", &checkpoint, &baseline),
            "published chat version 2 at step 40: eval_accuracy 0.5000, eval_loss 1.2346 (base 2.0000)"
        );
        assert_eq!(outcome(Some(Phase::Failed)), Some(Health::Degraded));
        assert_eq!(outcome(Some(Phase::Restarting)), None);
    }

    #[test]
    fn counts_are_described_in_words() {
        let counts = examples::Counts { conversations: 10, pairs: 1, texts: 0 };
        assert_eq!(describe(&counts), "11 examples (10 conversations, 1 prompt/completion pair)");
    }
}
