//! `lantern-worker quantize`: SmolLM2 written again as GGUF in smaller types and published as
//! versions that name their source, load as language models, and are refused for a source that
//! is not a llama, a digest that does not match, or a type the writer does not support; a run
//! killed at any moment leaves no partial version.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use candle_core::Device;
use lantern_runtime::model::{LoadedModel, load};
use lantern_runtime::repository::{self, PublishRequest, Repository};

/// `lantern-worker quantize` on the repository `repo` with `args`.
fn quantize(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lantern-worker"))
        .args(["quantize", "--repository", repo.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

fn publish(repo: &Path, model: &str, source: &Path) -> u64 {
    let request = PublishRequest { repository: &Repository::new(repo), model, source, version: None, metrics: &[] };
    repository::publish(&request).unwrap()
}

#[test]
fn a_version_quantized_by_the_cli_names_its_source_and_loads_as_a_language_model() {
    let Some(gguf) = lantern_runtime::test_models::smollm2_path() else { return };
    let repo = tempfile::tempdir().unwrap();
    publish(repo.path(), "smollm2", &gguf);
    let repository = Repository::new(repo.path());
    let digest = repository.manifest_digest("smollm2", 1).unwrap();
    let source_bytes = std::fs::metadata(&gguf).unwrap().len() as f64;

    // Q4_K: SmolLM2's rows of 576 values are not whole 256-value super-blocks, so those matrices
    // are Q5_0 (llama.cpp's fallback); the down projections' rows of 1536 are Q4_K.
    for (ty, name) in [("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("q4_k", "Q4_K")] {
        let output = quantize(
            repo.path(),
            &["--model", "smollm2", "--version", "1", "--type", ty, "--digest", &digest, "--into", "small"],
        );
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{said}{}", String::from_utf8_lossy(&output.stderr));
        assert!(said.contains(&format!(": {name} of smollm2 version 1,")), "{said}");
        let version = repository.versions("small").unwrap().into_iter().max().unwrap();
        let manifest = repository.manifest("small", version).unwrap();
        let base = manifest.base.as_ref().unwrap();
        assert_eq!((base.model.as_str(), base.version, base.manifest_digest.as_str()), ("smollm2", 1, digest.as_str()));
        assert_eq!(manifest.config["quantization"], name);
        let bytes = manifest.files.iter().map(|f| f.size).sum::<u64>() as f64;
        assert!((manifest.metrics["size_ratio"] - bytes / source_bytes).abs() < 1e-9, "{:?}", manifest.metrics);
        let verified = repository.read_verified("small", version).unwrap();
        let LoadedModel::Generate { codec, .. } = load("small", version, &verified, &Device::Cpu).unwrap() else {
            panic!("{name} loads as a language model");
        };
        assert_eq!(codec.tokenizer().token_id("<|im_end|>"), Some(2));
    }
    // With held-out data, both the quantized file and the source are measured as served.
    let data = repo.path().join("heldout.jsonl");
    let lines = [
        r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "The capital of France is Paris."}]}"#,
        r#"{"prompt": "1, 2, 3, 4,", "completion": " 5, 6"}"#,
    ];
    std::fs::write(&data, lines.join("\n")).unwrap();
    for (version, ty) in [(1, "q8_0"), (2, "q4_k")] {
        let args = ["--model", "smollm2", "--version", "1", "--type", ty, "--into", "measured"];
        let output = quantize(repo.path(), &[&args[..], &["--eval-data", data.to_str().unwrap()]].concat());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let metrics = repository.manifest("measured", version).unwrap().metrics;
        for name in ["eval_loss", "eval_perplexity", "eval_accuracy"] {
            let (ours, source) = (metrics[name], metrics[&format!("baseline_{name}")]);
            assert!(ours.is_finite() && source.is_finite(), "{metrics:?}");
            if name == "eval_loss" {
                assert!(ours > 0.0 && (ours - source).abs() < 0.25 * source, "{ty} {ours} against its source {source}");
            }
        }
    }

    // Q4_0 (4.5 bits a weight) is smaller than its Q4_1 source (5), Q8_0 (8.5) larger.
    let ratio = |version| repository.manifest("small", version).unwrap().metrics["size_ratio"];
    assert!(ratio(1) > 1.0 && ratio(2) < 1.0, "Q8_0 {}, Q4_0 {}", ratio(1), ratio(2));
}

#[test]
fn a_source_that_is_not_a_llama_a_wrong_digest_and_an_unknown_type_are_refused() {
    let Some(minilm) = lantern_runtime::test_models::minilm_dir() else { return };
    let repo = tempfile::tempdir().unwrap();
    publish(repo.path(), "minilm", &minilm);
    let refused = |args: &[&str], needle: &str| {
        let output = quantize(repo.path(), args);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && said.contains(needle), "{args:?}: {said}");
    };
    refused(&["--model", "minilm", "--version", "1", "--type", "q8_0"], "not llama");
    let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    refused(&["--model", "minilm", "--version", "1", "--type", "q8_0", "--digest", digest], "the job pins sha256:0000");
    refused(&["--model", "minilm", "--version", "9", "--type", "q8_0"], "minilm version 9");
    refused(
        &["--model", "minilm", "--version", "1", "--type", "q2_k"],
        "\"q2_k\" is not a GGUF type this writer supports (q8_0, q4_0, q4_1, q4_k, q5_k, q6_k)",
    );
    assert_eq!(Repository::new(repo.path()).versions("minilm").unwrap(), [1].into(), "nothing was published");
}

#[test]
fn a_quantization_killed_at_any_moment_leaves_no_version_or_a_whole_one() {
    let Some(gguf) = lantern_runtime::test_models::smollm2_path() else { return };
    let repo = tempfile::tempdir().unwrap();
    publish(repo.path(), "smollm2", &gguf);
    let repository = Repository::new(repo.path());
    let mut killed = 0;
    // From mid-read to mid-write to done, depending on the machine.
    for (run, delay_ms) in [100u64, 400, 800, 1500, 3000].into_iter().enumerate() {
        let into = format!("small-{run}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lantern-worker"))
            .args(["quantize", "--repository", repo.path().to_str().unwrap()])
            .args(["--model", "smollm2", "--version", "1", "--type", "q8_0", "--into", &into])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        killed += usize::from(!child.wait().unwrap().success());
        for version in repository.versions(&into).unwrap_or_default() {
            repository.read_verified(&into, version).expect("a visible version is whole");
        }
    }
    assert!(killed > 0, "every run finished before its kill: nothing was interrupted");
}

/// A quantize job file for SmolLM2 (imported from the test models) into `dir`, measured on the
/// last two of four tickets conversations (the held-out half, as a fine-tune would split them).
fn quantize_job(dir: &Path, gguf: &Path) -> serde_json::Value {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/training/tickets/eval.jsonl");
    let four: Vec<String> = std::fs::read_to_string(examples).unwrap().lines().take(4).map(str::to_owned).collect();
    let data = dir.join("tickets.jsonl");
    std::fs::write(&data, four.join("\n")).unwrap();
    serde_json::json!({
        "model": {"quantize": {"source": {"model": "smollm2", "version": 1, "import_from": gguf}, "type": "q4_1"}},
        "data": {"jsonl": {"path": data, "eval_fraction": 0.5}},
        "output": {"repository": dir.join("models"), "model": "smollm2-q4_1"},
    })
}

fn run_job(dir: &Path, job: &serde_json::Value) -> Output {
    let path = dir.join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let termination = dir.join("termination-log");
    Command::new(env!("CARGO_BIN_EXE_lantern-worker"))
        .args(["train", "--config"])
        .arg(&path)
        .env("LANTERN_TERMINATION_LOG", &termination)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn a_quantize_job_publishes_one_measured_version_and_reports_it_as_its_progress() {
    let Some(gguf) = lantern_runtime::test_models::smollm2_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let output = run_job(dir.path(), &quantize_job(dir.path(), &gguf));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let repository = Repository::new(dir.path().join("models"));
    let manifest = repository.manifest("smollm2-q4_1", 1).unwrap();
    assert_eq!(manifest.config["quantization"], "Q4_1");
    assert_eq!(manifest.base.as_ref().unwrap().manifest_digest, repository.manifest_digest("smollm2", 1).unwrap());
    for name in ["size_ratio", "eval_loss", "eval_accuracy", "baseline_eval_loss", "baseline_eval_accuracy"] {
        assert!(manifest.metrics[name].is_finite(), "{name} in {:?}", manifest.metrics);
    }
    // The termination message the operator reads: the published version with its metrics.
    let message = std::fs::read_to_string(dir.path().join("termination-log")).unwrap();
    let encoded = message.strip_prefix(lantern_proto::TERMINATION_PREFIX).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
    let progress = <lantern_proto::lantern::v1::TrainingProgress as prost::Message>::decode(bytes.as_slice()).unwrap();
    assert_eq!(progress.phase(), lantern_proto::lantern::v1::TrainingPhase::Succeeded);
    let published = &progress.published[0];
    assert_eq!(
        (published.version, published.digest.as_str()),
        (1, repository.manifest_digest("smollm2-q4_1", 1).unwrap().as_str())
    );
    assert_eq!(published.metrics["eval_loss"], manifest.metrics["eval_loss"]);
}

#[test]
fn a_quantize_job_refuses_training_settings_other_data_and_several_ranks() {
    let Some(gguf) = lantern_runtime::test_models::smollm2_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let job = quantize_job(dir.path(), &gguf);
    let with = |key: &str, value: serde_json::Value| {
        let mut job = job.clone();
        job[key] = value;
        job
    };
    let mut ranks = job.clone();
    ranks["cluster"] = serde_json::json!({"world_size": 2, "coordinator": "127.0.0.1:1"});
    for (job, needle) in [
        (
            with("schedule", serde_json::json!({"steps": 10, "global_batch": 8})),
            "schedule: a quantize job trains nothing",
        ),
        (with("optimizer", serde_json::json!({"learning_rate": 0.1})), "optimizer: a quantize job trains nothing"),
        (
            with("data", serde_json::json!({"text": {"paths": [gguf]}})),
            "data: a quantize job is measured on jsonl data",
        ),
        (ranks, "cluster.world_size: a quantize job runs on one rank"),
    ] {
        let output = run_job(dir.path(), &job);
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(lantern_train::EXIT_INVALID), "{said}");
        assert!(said.contains(needle), "{needle} not in {said}");
    }
    assert!(!dir.path().join("models").exists(), "nothing was published");
}
