//! Distillation jobs through `lantern-worker train`: a two-layer student cut from SmolLM2 learns
//! from SmolLM2 itself (the Q4_1 GGUF running forward on its quantized kernels) and publishes a
//! version that names its teacher, records the student's held-out metrics beside the teacher's,
//! and loads as a language model; every bad student and teacher is refused before any work.

use std::path::Path;

use candle_core::Device;
use lantern_runtime::model::{LoadedModel, load};
use lantern_runtime::repository::Repository;
use lantern_train::EXIT_INVALID;
use serde_json::{Value, json};

use super::finetune::{publish_tiny_base, write_pairs};
use super::{assert_close, tensors, train_pair, train_process, write_job};

/// A distillation job in `dir` from SmolLM2 (imported from the test models) into a student of
/// its first and last layers, on four tickets conversations (two held out), two steps.
fn distill_job(dir: &Path, gguf: &Path) -> Value {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/training/tickets/eval.jsonl");
    let four: Vec<String> = std::fs::read_to_string(examples).unwrap().lines().take(4).map(str::to_owned).collect();
    let data = dir.join("tickets.jsonl");
    std::fs::write(&data, four.join("\n")).unwrap();
    json!({
        "model": {"distill": {
            "teacher": {"model": "smollm2", "version": 1, "import_from": gguf},
            "student": {"layers": [0, 29]},
            "sequence_length": 256,
            "top_k": 16,
            "cross_entropy_weight": 0.25,
        }},
        "data": {"jsonl": {"path": data, "eval_fraction": 0.5}},
        "optimizer": {"learning_rate": 0.0005, "min_learning_rate": 0.0001},
        "schedule": {"steps": 2, "global_batch": 2},
        "checkpoint": {"every_steps": 2, "state_dir": dir.join("state")},
        "output": {"repository": dir.join("models"), "model": "student"},
    })
}

#[test]
fn a_student_cut_from_smollm2_learns_from_it_and_publishes_a_version_measured_against_it() {
    let Some(gguf) = lantern_runtime::test_models::smollm2_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let output = train_process(&write_job(dir.path(), &distill_job(dir.path(), &gguf))).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let repository = Repository::new(dir.path().join("models"));
    let manifest = repository.manifest("student", 1).unwrap();
    let teacher = manifest.base.as_ref().unwrap();
    assert_eq!((teacher.model.as_str(), teacher.version), ("smollm2", 1));
    assert_eq!(teacher.manifest_digest, repository.manifest_digest("smollm2", 1).unwrap());
    assert_eq!(manifest.config["distillation"]["top_k"], 16);
    let metrics = &manifest.metrics;
    for name in ["eval_loss", "eval_perplexity", "eval_accuracy", "baseline_eval_loss", "baseline_eval_accuracy"] {
        assert!(metrics[name].is_finite(), "{name} in {metrics:?}");
    }
    assert!((0.0..=1.0).contains(&metrics["eval_agreement"]), "{metrics:?}");
    // Two of thirty layers: the embedding (tied to the output) is most of what is left.
    let ratio = metrics["parameter_ratio"];
    assert!(ratio > 0.2 && ratio < 0.35, "{ratio}");
    assert!(metrics["eval_loss"] > metrics["baseline_eval_loss"], "two steps do not make the student the teacher");

    let verified = repository.read_verified("student", 1).unwrap();
    let LoadedModel::Generate { codec, .. } = load("student", 1, &verified, &Device::Cpu).unwrap() else {
        panic!("the student loads as a language model");
    };
    assert_eq!(codec.tokenizer().token_id("<|im_end|>"), Some(2), "the teacher's tokenizer");
}

/// A distillation in `dir` of a tiny byte-level teacher (`base` version 1) into a smaller fresh
/// student, on key/value pairs.
fn tiny_distill_job(dir: &Path) -> Value {
    std::fs::create_dir_all(dir).unwrap();
    publish_tiny_base(&dir.join("models"));
    write_pairs(&dir.join("train.jsonl"), 0..32);
    write_pairs(&dir.join("eval.jsonl"), 32..36);
    json!({
        "model": {"distill": {
            "teacher": {"model": "base", "version": 1},
            "student": {"sizes": {"hidden_size": 16, "intermediate_size": 32, "layers": 1, "heads": 2}},
            "sequence_length": 32,
            "top_k": 8,
            "cross_entropy_weight": 0.5,
        }},
        "data": {"jsonl": {"path": dir.join("train.jsonl"), "eval_path": dir.join("eval.jsonl")}},
        "optimizer": {"learning_rate": 0.01, "weight_decay": 0.0},
        "schedule": {"steps": 6, "global_batch": 8},
        "checkpoint": {"every_steps": 6, "state_dir": dir.join("state")},
        "output": {"repository": dir.join("models"), "model": "student"},
        "seed": 2,
    })
}

#[test]
fn two_ranks_distil_the_student_one_rank_does() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone");
    let job = tiny_distill_job(&alone);
    let outcome = lantern_train::trainer::train(&super::config_of(&job), &std::sync::atomic::AtomicBool::new(false));
    assert_eq!(outcome.unwrap().published, vec![1]);
    let pair = dir.path().join("pair");
    let outcomes = train_pair(&tiny_distill_job(&pair));
    assert_eq!((outcomes[0].published.as_slice(), outcomes[1].published.as_slice()), (&[1][..], &[][..]));
    let weights = |root: &Path| {
        tensors(&Repository::new(root.join("models")).version_dir("student", 1).unwrap().join("model.safetensors"))
    };
    assert_close(&weights(&alone), &weights(&pair));
}

#[test]
fn bad_students_and_teachers_are_refused_before_any_work_with_the_field_named() {
    let (Some(gguf), Some(minilm)) =
        (lantern_runtime::test_models::smollm2_path(), lantern_runtime::test_models::minilm_dir())
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let job = distill_job(dir.path(), &gguf);
    // A byte-level llama published beside the teacher: a student with another vocabulary.
    let bytes = dir.path().join("bytes");
    std::fs::create_dir_all(&bytes).unwrap();
    let spec = lantern_train::config::LlamaSpec {
        hidden_size: 16,
        intermediate_size: 32,
        layers: 1,
        heads: 2,
        kv_heads: None,
        context: 64,
        init_from: None,
        precision: lantern_train::config::Precision::F32,
    };
    lantern_train::lm::TrainLlama::new(&spec, 1, &Device::Cpu).unwrap().write_checkpoint(&bytes).unwrap();
    let with = |keys: &[&str], value: Value| {
        let mut job = job.clone();
        let mut at = &mut job["model"]["distill"];
        for key in keys {
            at = &mut at[*key];
        }
        *at = value;
        job
    };
    let digest = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            with(&["student"], json!({"base": {"model": "bytes", "version": 1, "import_from": bytes}})),
            "model.distill.student.base: the student's vocabulary has 257 tokens, the teacher's 49152",
        ),
        (with(&["student"], json!({"layers": [0, 30]})), "layer 30 is beyond the teacher's 30 layers"),
        (with(&["student"], json!({"layers": [5, 2]})), "[5, 2] must be ascending"),
        (with(&["teacher", "digest"], json!(digest)), "model.distill.teacher.digest"),
        (
            with(&["teacher"], json!({"model": "minilm", "version": 1, "import_from": minilm})),
            "model.distill.teacher: minilm version 1",
        ),
        (with(&["teacher"], json!({"model": "smollm2", "version": 7})), "model.distill.teacher: smollm2 version 7"),
        (with(&["top_k"], json!(0)), "model.distill.top_k: 0 is not in 1..=1024"),
        (with(&["cross_entropy_weight"], json!(1.5)), "model.distill.cross_entropy_weight"),
        (with(&["sequence_length"], json!(100000)), "beyond the teacher's context of 8192 tokens"),
        (
            with(&["student"], json!({"sizes": {"hidden_size": 60, "intermediate_size": 64, "layers": 1, "heads": 8}})),
            "model.distill.student.sizes.heads",
        ),
    ];
    for (job, needle) in cases {
        let output = train_process(&write_job(dir.path(), &job)).output().unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_INVALID), "{needle}: {said}");
        assert!(said.contains(needle), "{needle} not in {said}");
    }
    assert!(
        Repository::new(dir.path().join("models")).versions("student").unwrap().is_empty(),
        "nothing was published"
    );
}
