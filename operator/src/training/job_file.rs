//! The worker's job file for a TrainingJob: the contract's [`JobConfig`], built as a typed value
//! from the spec's training sections plus where checkpoints and versions go. Each rank's identity
//! (rank, world size, addresses) and the repository's mount come from its environment, not from
//! this file, so all ranks share one ConfigMap; the state directory and `initFrom` are written
//! relative to the repository, which the worker resolves.
//!
//! Every CRD struct is destructured without `..`: a field added to the CRD does not compile until
//! it reaches the job file (or is named here as the operator's own).

use std::collections::BTreeSet;

use lantern_contract::job::{
    self, AdditionSpec, BaseSpec, CheckpointSpec, ClusterSpec, CsvSpec, DATA_MOUNT, DEFAULT_EVAL_FRACTION, DataSpec,
    DistillSpec, FineTuneMethod, FineTuneSpec, GgufType, JobConfig, JsonlSpec, LlamaSpec, LoraSpec, LoraTarget,
    MlpSpec, ModelSpec, OptimizerSpec, OutputSpec, Overlong, QuantizeSpec, ScheduleSpec, StudentSizes, StudentSpec,
    TextSpec,
};

use crate::context::Error;
use crate::crd::training::{self as crd, TrainingJob};
use crate::objects::REPOSITORY_MOUNT;

/// The training state directory, relative to the repository: a dot-directory, which servers of
/// the repository ignore. It outlives the pods, so every gang restart resumes from it.
pub fn state_dir(namespace: &str, job: &str) -> String {
    format!(".lantern-training/{namespace}/{job}")
}

impl TryFrom<&TrainingJob> for JobConfig {
    type Error = Error;

    /// Fails only for a model or data section with none or several of its kinds set, which the
    /// CRD's validation rules refuse before the operator sees the object.
    fn try_from(job: &TrainingJob) -> Result<Self, Error> {
        let crd::TrainingJobSpec {
            model,
            data,
            optimizer,
            schedule,
            seed,
            output,
            checkpoint,
            // The operator's own: pods, their scheduling and their lifecycle.
            replicas: _,
            resources: _,
            device: _,
            image: _,
            template: _,
            run_policy: _,
        } = &job.spec;
        let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let crd::OutputSpec { model: output_model, repository, keep_versions } = output;
        if let Some(uri) = &repository.uri {
            if uri.starts_with("oci://") || uri.starts_with("http://") || uri.starts_with("https://") {
                return Err(Error::Invalid(format!(
                    "spec.output.repository.uri: {uri} can be served from, not trained into: training keeps its \
                     states in an object store (s3://, gs://, az://)"
                )));
            }
            refuse_claim_paths(model, data)?;
        }
        Ok(JobConfig {
            model: model_spec(model)?,
            data: data_spec(data)?,
            optimizer: optimizer.as_ref().map(optimizer_spec).unwrap_or_default(),
            schedule: schedule.as_ref().map(schedule_spec),
            checkpoint: checkpoint.as_ref().map(|crd::CheckpointSpec { every_steps, keep, timeout_seconds }| {
                CheckpointSpec {
                    every_steps: *every_steps,
                    keep: keep.map_or(CheckpointSpec::DEFAULT_KEEP, size),
                    state_dir: state_dir(namespace, name).into(),
                    state_uri: None,
                    timeout_seconds: timeout_seconds.map_or(CheckpointSpec::DEFAULT_TIMEOUT_SECONDS, f64::from),
                }
            }),
            // Each pod's LANTERN_REPOSITORY (and LANTERN_CACHE_DIR, for a URI) say where it is;
            // the held versions are the operator's own account (see `objects::config_map`).
            output: OutputSpec {
                repository: REPOSITORY_MOUNT.into(),
                model: output_model.clone(),
                cache_dir: None,
                keep_versions: keep_versions.map(size),
                held_versions: BTreeSet::new(),
            },
            seed: seed.unwrap_or_default(),
            cluster: ClusterSpec::default(),
        })
    }
}

/// With a repository URI there is no claim for relative paths to be in: `initFrom` (a version
/// directory) and relative JSONL paths are refused; absolute ones are in the worker's image or
/// volumes, keys of a `configMap` in its mount.
fn refuse_claim_paths(model: &crd::ModelSpec, data: &crd::DataSpec) -> Result<(), Error> {
    if model.llama.as_ref().is_some_and(|llama| llama.init_from.is_some()) {
        return Err(Error::Invalid(
            "spec.model.llama.initFrom reads a version from a claim; with output.repository.uri fine-tune it \
             (model.fineTune) instead"
                .into(),
        ));
    }
    let relative =
        data.jsonl.as_ref().filter(|jsonl| jsonl.config_map.is_none()).and_then(|jsonl| {
            std::iter::once(&jsonl.path).chain(jsonl.eval_path.as_ref()).find(|p| !p.starts_with('/'))
        });
    if let Some(path) = relative {
        return Err(Error::Invalid(format!(
            "spec.data.jsonl: {path:?} is relative, which means inside a claim; with output.repository.uri give \
             an absolute path in the worker's image or volumes"
        )));
    }
    Ok(())
}

/// A count from the spec as the job file's size type: lossless on the 64-bit targets Lantern
/// builds for, saturating elsewhere (which the worker's validation then refuses).
fn size(value: impl Into<u64>) -> usize {
    usize::try_from(value.into()).unwrap_or(usize::MAX)
}

fn compute_precision(precision: Option<crd::Precision>) -> job::Precision {
    match precision {
        None | Some(crd::Precision::F32) => job::Precision::F32,
        Some(crd::Precision::Bf16) => job::Precision::Bf16,
    }
}

fn model_spec(model: &crd::ModelSpec) -> Result<ModelSpec, Error> {
    let crd::ModelSpec { llama, mlp, fine_tune, quantize, distill } = model;
    match (llama, mlp, fine_tune, quantize, distill) {
        (Some(llama), None, None, None, None) => {
            let crd::LlamaSpec {
                hidden_size,
                intermediate_size,
                layers,
                heads,
                kv_heads,
                context,
                init_from,
                precision,
            } = llama;
            Ok(ModelSpec::Llama(LlamaSpec {
                hidden_size: size(*hidden_size),
                intermediate_size: size(*intermediate_size),
                layers: size(*layers),
                heads: size(*heads),
                kv_heads: kv_heads.map(size),
                context: size(*context),
                init_from: init_from
                    .as_ref()
                    .map(|crd::VersionRef { model, version }| format!("{model}/{version}").into()),
                precision: compute_precision(*precision),
            }))
        }
        (None, None, Some(tune), None, None) => Ok(ModelSpec::FineTune(fine_tune_spec(tune)?)),
        (None, None, None, Some(crd::QuantizeSpec { source, ty }), None) => Ok(ModelSpec::Quantize(QuantizeSpec {
            source: base_spec(source),
            ty: match ty {
                crd::GgufType::Q8_0 => GgufType::Q8_0,
                crd::GgufType::Q4_0 => GgufType::Q4_0,
                crd::GgufType::Q4_1 => GgufType::Q4_1,
                crd::GgufType::Q4K => GgufType::Q4K,
                crd::GgufType::Q5K => GgufType::Q5K,
                crd::GgufType::Q6K => GgufType::Q6K,
            },
        })),
        (None, None, None, None, Some(distill)) => Ok(ModelSpec::Distill(distill_spec(distill)?)),
        (None, Some(crd::MlpSpec { hidden, activation }), None, None, None) => Ok(ModelSpec::Mlp(MlpSpec {
            hidden: hidden.iter().copied().map(size).collect(),
            activation: match activation {
                crd::Activation::Relu => job::Activation::Relu,
                crd::Activation::Gelu => job::Activation::Gelu,
                crd::Activation::Tanh => job::Activation::Tanh,
                crd::Activation::Sigmoid => job::Activation::Sigmoid,
            },
        })),
        _ => Err(Error::Invalid(
            "spec.model: set exactly one of model.llama, model.mlp, model.fineTune, model.quantize and model.distill"
                .into(),
        )),
    }
}

fn fine_tune_spec(spec: &crd::FineTuneSpec) -> Result<FineTuneSpec, Error> {
    let crd::FineTuneSpec { base, method, sequence_length, precision, merge } = spec;
    let crd::FineTuneMethod { lora, full } = method;
    let method = match (lora, full) {
        (Some(crd::LoraSpec { rank, alpha, targets, dropout }), None) => FineTuneMethod::Lora(LoraSpec {
            rank: size(*rank),
            alpha: *alpha,
            dropout: dropout.unwrap_or(0.0),
            targets: targets
                .iter()
                .map(|target| match target {
                    crd::LoraTarget::QProj => LoraTarget::QProj,
                    crd::LoraTarget::KProj => LoraTarget::KProj,
                    crd::LoraTarget::VProj => LoraTarget::VProj,
                    crd::LoraTarget::OProj => LoraTarget::OProj,
                    crd::LoraTarget::GateProj => LoraTarget::GateProj,
                    crd::LoraTarget::UpProj => LoraTarget::UpProj,
                    crd::LoraTarget::DownProj => LoraTarget::DownProj,
                })
                .collect(),
        }),
        (None, Some(crd::FullSpec {})) => FineTuneMethod::Full,
        _ => return Err(Error::Invalid("spec.model.fineTune.method: set exactly one of lora and full".into())),
    };
    Ok(FineTuneSpec {
        base: base_spec(base),
        method,
        sequence_length: size(*sequence_length),
        precision: compute_precision(*precision),
        merge: merge.unwrap_or_default(),
    })
}

fn distill_spec(spec: &crd::DistillSpec) -> Result<DistillSpec, Error> {
    let crd::DistillSpec { teacher, student, sequence_length, temperature, top_k, cross_entropy_weight, precision } =
        spec;
    let crd::StudentSpec { layers, sizes, base } = student;
    let student = match (layers, sizes, base) {
        (Some(layers), None, None) => StudentSpec::Layers(layers.iter().copied().map(size).collect()),
        (None, Some(crd::StudentSizes { hidden_size, intermediate_size, layers, heads, kv_heads }), None) => {
            StudentSpec::Sizes(StudentSizes {
                hidden_size: size(*hidden_size),
                intermediate_size: size(*intermediate_size),
                layers: size(*layers),
                heads: size(*heads),
                kv_heads: kv_heads.map(size),
            })
        }
        (None, None, Some(base)) => StudentSpec::Base(base_spec(base)),
        _ => {
            return Err(Error::Invalid("spec.model.distill.student: set exactly one of layers, sizes and base".into()));
        }
    };
    Ok(DistillSpec {
        teacher: base_spec(teacher),
        student,
        sequence_length: size(*sequence_length),
        temperature: temperature.unwrap_or(DistillSpec::DEFAULT_TEMPERATURE),
        top_k: top_k.map_or(DistillSpec::DEFAULT_TOP_K, size),
        cross_entropy_weight: cross_entropy_weight.unwrap_or_default(),
        precision: compute_precision(*precision),
    })
}

/// A version the job reads, in the job's own repository (the worker resolves it there).
fn base_spec(base: &crd::BaseRef) -> BaseSpec {
    let crd::BaseRef { model, version, digest } = base;
    BaseSpec { repository: None, model: model.clone(), version: *version, digest: digest.clone(), import_from: None }
}

fn data_spec(data: &crd::DataSpec) -> Result<DataSpec, Error> {
    let crd::DataSpec { addition, text, csv, jsonl } = data;
    match (addition, text, csv, jsonl) {
        (Some(crd::AdditionSpec { max_operand, train_examples, eval_examples }), None, None, None) => {
            Ok(DataSpec::Addition(AdditionSpec {
                max_operand: *max_operand,
                train_examples: size(*train_examples),
                eval_examples: size(*eval_examples),
            }))
        }
        (None, Some(crd::TextSpec { paths, eval_fraction }), None, None) => Ok(DataSpec::Text(TextSpec {
            paths: paths.iter().map(Into::into).collect(),
            eval_fraction: eval_fraction.unwrap_or(DEFAULT_EVAL_FRACTION),
        })),
        (None, None, Some(crd::CsvSpec { path, target, classes, eval_fraction }), None) => Ok(DataSpec::Csv(CsvSpec {
            path: path.into(),
            target: target.clone(),
            classes: classes.map(size),
            eval_fraction: eval_fraction.unwrap_or(DEFAULT_EVAL_FRACTION),
        })),
        (None, None, None, Some(crd::JsonlSpec { config_map, path, eval_path, eval_fraction, overlong })) => {
            let place = |path: &str| match config_map {
                Some(_) => std::path::Path::new(DATA_MOUNT).join(path),
                None => in_volume(path),
            };
            Ok(DataSpec::Jsonl(JsonlSpec {
                path: place(path),
                eval_path: eval_path.as_deref().map(place),
                eval_fraction: eval_fraction.unwrap_or(DEFAULT_EVAL_FRACTION),
                overlong: match overlong {
                    None | Some(crd::Overlong::Refuse) => Overlong::Refuse,
                    Some(crd::Overlong::Skip) => Overlong::Skip,
                },
            }))
        }
        _ => Err(Error::Invalid(
            "spec.data: set exactly one of data.addition, data.text, data.csv and data.jsonl".into(),
        )),
    }
}

/// A data path as the pod sees it: a relative one is inside the repository's volume, which the
/// worker follows to wherever its pod has it mounted.
fn in_volume(path: &str) -> std::path::PathBuf {
    std::path::Path::new(REPOSITORY_MOUNT).join(path)
}

fn optimizer_spec(optimizer: &crd::OptimizerSpec) -> OptimizerSpec {
    let crd::OptimizerSpec { learning_rate, min_learning_rate, beta1, beta2, epsilon, weight_decay, grad_clip } =
        optimizer;
    let defaults = OptimizerSpec::default();
    OptimizerSpec {
        learning_rate: learning_rate.unwrap_or(defaults.learning_rate),
        min_learning_rate: min_learning_rate.unwrap_or(defaults.min_learning_rate),
        beta1: beta1.unwrap_or(defaults.beta1),
        beta2: beta2.unwrap_or(defaults.beta2),
        epsilon: epsilon.unwrap_or(defaults.epsilon),
        weight_decay: weight_decay.unwrap_or(defaults.weight_decay),
        grad_clip: grad_clip.unwrap_or(defaults.grad_clip),
    }
}

fn schedule_spec(schedule: &crd::ScheduleSpec) -> ScheduleSpec {
    let crd::ScheduleSpec { steps, warmup_steps, global_batch } = schedule;
    ScheduleSpec { steps: *steps, warmup_steps: warmup_steps.unwrap_or_default(), global_batch: size(*global_batch) }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::{Value, json};

    use super::*;

    /// A spec with every training field set, none to its default.
    fn every_field() -> Value {
        json!({
            "model": {"llama": {"hiddenSize": 48, "intermediateSize": 128, "layers": 2, "heads": 4, "kvHeads": 2,
                                "context": 16, "initFrom": {"model": "base", "version": 3}, "precision": "bf16"}},
            "data": {"text": {"paths": ["/data/a.txt", "/data/b.txt"], "evalFraction": 0.2}},
            "optimizer": {"learningRate": 0.01, "minLearningRate": 0.001, "beta1": 0.8, "beta2": 0.9,
                          "epsilon": 1e-6, "weightDecay": 0.05, "gradClip": 2.0},
            "schedule": {"steps": 1000, "warmupSteps": 20, "globalBatch": 32},
            "seed": 7,
            "replicas": 2,
            "checkpoint": {"everySteps": 100, "keep": 2, "timeoutSeconds": 30},
            "output": {"model": "adder", "repository": {"claimName": "models"}},
        })
    }

    #[test]
    fn every_crd_field_reaches_the_workers_config() {
        let config = JobConfig::try_from(&crate::training::test_job(every_field())).unwrap();
        let expected = JobConfig {
            model: ModelSpec::Llama(LlamaSpec {
                hidden_size: 48,
                intermediate_size: 128,
                layers: 2,
                heads: 4,
                kv_heads: Some(2),
                context: 16,
                init_from: Some(PathBuf::from("base/3")),
                precision: job::Precision::Bf16,
            }),
            data: DataSpec::Text(TextSpec {
                paths: vec!["/data/a.txt".into(), "/data/b.txt".into()],
                eval_fraction: 0.2,
            }),
            optimizer: OptimizerSpec {
                learning_rate: 0.01,
                min_learning_rate: 0.001,
                beta1: 0.8,
                beta2: 0.9,
                epsilon: 1e-6,
                weight_decay: 0.05,
                grad_clip: 2.0,
            },
            schedule: Some(ScheduleSpec { steps: 1000, warmup_steps: 20, global_batch: 32 }),
            checkpoint: Some(CheckpointSpec {
                every_steps: 100,
                keep: 2,
                state_dir: ".lantern-training/ml/adder".into(),
                state_uri: None,
                timeout_seconds: 30.0,
            }),
            output: OutputSpec {
                repository: "/var/lib/lantern/models".into(),
                model: "adder".into(),
                cache_dir: None,
                keep_versions: None,
                held_versions: BTreeSet::new(),
            },
            seed: 7,
            cluster: ClusterSpec::default(),
        };
        assert_eq!(config, expected);
        let mut mlp = every_field();
        mlp["model"] = json!({"mlp": {"hidden": [16, 8], "activation": "gelu"}});
        mlp["data"] =
            json!({"csv": {"path": "/data/iris.csv", "target": "species", "classes": 3, "evalFraction": 0.25}});
        let config = JobConfig::try_from(&crate::training::test_job(mlp)).unwrap();
        assert_eq!(config.model, ModelSpec::Mlp(MlpSpec { hidden: vec![16, 8], activation: job::Activation::Gelu }));
        assert_eq!(
            config.data,
            DataSpec::Csv(CsvSpec {
                path: "/data/iris.csv".into(),
                target: "species".into(),
                classes: Some(3),
                eval_fraction: 0.25
            })
        );
        let mut addition = every_field();
        addition["data"] = json!({"addition": {"maxOperand": 9, "trainExamples": 2000, "evalExamples": 20}});
        let config = JobConfig::try_from(&crate::training::test_job(addition)).unwrap();
        let expected = AdditionSpec { max_operand: 9, train_examples: 2000, eval_examples: 20 };
        assert_eq!(config.data, DataSpec::Addition(expected));
    }

    #[test]
    fn unset_fields_get_the_workers_defaults() {
        let config = JobConfig::try_from(&crate::training::test_job(json!({}))).unwrap();
        assert_eq!(config.optimizer, OptimizerSpec::default());
        assert_eq!((config.seed, config.schedule.as_ref().unwrap().warmup_steps), (0, 0));
        let checkpoint = config.checkpoint.as_ref().unwrap();
        assert_eq!(
            (checkpoint.keep, checkpoint.timeout_seconds),
            (CheckpointSpec::DEFAULT_KEEP, CheckpointSpec::DEFAULT_TIMEOUT_SECONDS)
        );
        let ModelSpec::Llama(llama) = &config.model else { panic!("a llama job") };
        assert_eq!((llama.kv_heads, llama.init_from.as_ref(), llama.precision), (None, None, job::Precision::F32));
        // The file the ConfigMap holds parses back to the same value.
        let file = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<JobConfig>(&file).unwrap(), config);
    }

    #[test]
    fn a_spec_with_two_models_is_refused_with_the_field() {
        let mut both = every_field();
        both["model"]["mlp"] = json!({"hidden": [4], "activation": "relu"});
        let error = JobConfig::try_from(&crate::training::test_job(both)).unwrap_err().to_string();
        assert_eq!(
            error,
            "spec.model: set exactly one of model.llama, model.mlp, model.fineTune, model.quantize and model.distill"
        );
    }

    #[test]
    fn quantize_and_distill_tasks_reach_the_job_file_with_the_workers_defaults() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let source = json!({"model": "tickets", "version": 3, "digest": digest});
        let base = BaseSpec {
            repository: None,
            model: "tickets".into(),
            version: 3,
            digest: Some(digest.clone()),
            import_from: None,
        };
        let quantize = JobConfig::try_from(&crate::training::test_job(json!({
            "model": {"quantize": {"source": source, "type": "q8_0"}},
            "data": {"jsonl": {"path": ".datasets/t.jsonl"}},
            "schedule": null, "checkpoint": null, "replicas": 1,
        })))
        .unwrap();
        assert_eq!(quantize.model, ModelSpec::Quantize(QuantizeSpec { source: base.clone(), ty: GgufType::Q8_0 }));
        assert_eq!((&quantize.schedule, &quantize.checkpoint), (&None, &None));

        let distill = JobConfig::try_from(&crate::training::test_job(json!({
            "model": {"distill": {"teacher": source, "student": {"sizes":
                {"hiddenSize": 64, "intermediateSize": 128, "layers": 2, "heads": 4}}, "sequenceLength": 96, "topK": 8}},
            "data": {"jsonl": {"path": ".datasets/t.jsonl"}},
        })))
        .unwrap();
        let expected = DistillSpec {
            teacher: base,
            student: StudentSpec::Sizes(StudentSizes {
                hidden_size: 64,
                intermediate_size: 128,
                layers: 2,
                heads: 4,
                kv_heads: None,
            }),
            sequence_length: 96,
            temperature: DistillSpec::DEFAULT_TEMPERATURE,
            top_k: 8,
            cross_entropy_weight: 0.0,
            precision: job::Precision::F32,
        };
        assert_eq!(distill.model, ModelSpec::Distill(expected));
        assert!(distill.schedule.is_some() && distill.checkpoint.is_some());
    }

    #[test]
    fn with_a_repository_uri_paths_that_mean_a_claim_are_refused() {
        let remote = |spec: &mut Value| spec["output"]["repository"] = json!({"uri": "s3://models/repo"});
        let mut init = every_field();
        remote(&mut init);
        let error = JobConfig::try_from(&crate::training::test_job(init.clone())).unwrap_err().to_string();
        assert!(error.starts_with("spec.model.llama.initFrom reads a version from a claim"), "{error}");
        init["model"]["llama"].as_object_mut().unwrap().remove("initFrom");
        assert!(JobConfig::try_from(&crate::training::test_job(init.clone())).is_ok());
        init["data"] = json!({"jsonl": {"path": "/data/train.jsonl", "evalPath": "eval.jsonl"}});
        let error = JobConfig::try_from(&crate::training::test_job(init.clone())).unwrap_err().to_string();
        assert!(error.starts_with("spec.data.jsonl: \"eval.jsonl\" is relative"), "{error}");
        init["data"]["jsonl"]["evalPath"] = json!("/data/eval.jsonl");
        assert!(JobConfig::try_from(&crate::training::test_job(init.clone())).is_ok());
        // Keys of a ConfigMap are in its mount, not in a claim.
        init["data"] = json!({"jsonl": {"configMap": "tickets-data", "path": "train.jsonl"}});
        assert!(JobConfig::try_from(&crate::training::test_job(init.clone())).is_ok());
        init["output"]["repository"] = json!({"uri": "oci://registry.example/lantern"});
        let error = JobConfig::try_from(&crate::training::test_job(init)).unwrap_err().to_string();
        assert!(error.contains("can be served from, not trained into"), "{error}");
    }

    #[test]
    fn a_fine_tuning_spec_reaches_the_workers_config() {
        let mut tune = every_field();
        tune["model"] = json!({"fineTune": {
            "base": {"model": "smollm2", "version": 1, "digest": format!("sha256:{}", "a".repeat(64))},
            "method": {"lora": {"rank": 8, "alpha": 16.0, "targets": ["q_proj", "down_proj"], "dropout": 0.05}},
            "sequenceLength": 96, "precision": "bf16", "merge": true,
        }});
        tune["data"] =
            json!({"jsonl": {"path": ".datasets/train.jsonl", "evalPath": "/data/eval.jsonl", "overlong": "Skip"}});
        let config = JobConfig::try_from(&crate::training::test_job(tune.clone())).unwrap();
        let expected = FineTuneSpec {
            base: BaseSpec {
                repository: None,
                model: "smollm2".into(),
                version: 1,
                digest: Some(format!("sha256:{}", "a".repeat(64))),
                import_from: None,
            },
            method: FineTuneMethod::Lora(LoraSpec {
                rank: 8,
                alpha: Some(16.0),
                targets: vec![LoraTarget::QProj, LoraTarget::DownProj],
                dropout: 0.05,
            }),
            sequence_length: 96,
            precision: job::Precision::Bf16,
            merge: true,
        };
        assert_eq!(config.model, ModelSpec::FineTune(expected));
        let expected = JsonlSpec {
            path: "/var/lib/lantern/models/.datasets/train.jsonl".into(),
            eval_path: Some("/data/eval.jsonl".into()),
            eval_fraction: DEFAULT_EVAL_FRACTION,
            overlong: Overlong::Skip,
        };
        assert_eq!(config.data, DataSpec::Jsonl(expected));
        tune["data"] = json!({"jsonl": {"configMap": "tickets-data", "path": "train.jsonl", "evalPath": "eval.jsonl"}});
        let DataSpec::Jsonl(placed) = JobConfig::try_from(&crate::training::test_job(tune.clone())).unwrap().data
        else {
            panic!("jsonl data")
        };
        assert_eq!(placed.path, std::path::Path::new("/var/lib/lantern/data/train.jsonl"));
        assert_eq!(placed.eval_path.as_deref(), Some(std::path::Path::new("/var/lib/lantern/data/eval.jsonl")));
        tune["model"]["fineTune"]["method"] = json!({"full": {}});
        let config = JobConfig::try_from(&crate::training::test_job(tune)).unwrap();
        let ModelSpec::FineTune(spec) = &config.model else { panic!("a fine-tuning job") };
        assert_eq!(spec.method, FineTuneMethod::Full);
    }
}
