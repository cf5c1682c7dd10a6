//! Fine-tuning end to end: a tiny pretrained llama published as a base version, LoRA-tuned on 1
//! and 2 ranks, killed and resumed, its base deleted mid-run; SmolLM2 itself tuned for a few
//! steps and its merged version served; and every job that must be refused before training.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lantern_runtime::repository::{self, Format, MANIFEST_FILE, Manifest, PublishRequest, Repository};
use lantern_serve::server::{self, ServerOptions};
use lantern_serve::versions::ServeSettings;
use lantern_train::config::{LlamaSpec, Precision};
use lantern_train::lm::{ADAPTER_WEIGHTS_FILE, TrainLlama};
use lantern_train::{EXIT_INVALID, trainer};
use serde_json::{Value, json};

use super::{assert_close, config_of, tensors, train_pair, train_process, write_job};

const TUNED: &str = "tuned";

/// A byte-level llama with random weights, published as `base` version 1 of `root`.
fn publish_tiny_base(root: &Path) {
    let spec = LlamaSpec {
        hidden_size: 32,
        intermediate_size: 64,
        layers: 2,
        heads: 4,
        kv_heads: Some(2),
        context: 64,
        init_from: None,
        precision: Precision::F32,
    };
    let source = tempfile::tempdir().unwrap();
    TrainLlama::new(&spec, 3, &candle_core::Device::Cpu).unwrap().write_checkpoint(source.path()).unwrap();
    let request = PublishRequest { root, model: "base", source: source.path(), version: Some(1), metrics: &[] };
    repository::publish(&request).unwrap();
}

/// Prompt/completion pairs a byte-level model can learn: a key and its fixed answer.
fn write_pairs(path: &Path, keys: std::ops::Range<u32>) {
    let lines: Vec<String> = keys
        .map(|k| json!({"prompt": format!("key {k}:"), "completion": format!(" v{}", k * 7 % 100)}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// A LoRA job over the tiny base in `dir` (which it creates, with the base and the data).
fn tiny_lora_job(dir: &Path, steps: u64, every: u64) -> Value {
    std::fs::create_dir_all(dir).unwrap();
    publish_tiny_base(&dir.join("models"));
    write_pairs(&dir.join("train.jsonl"), 0..64);
    write_pairs(&dir.join("eval.jsonl"), 64..72);
    json!({
        "model": {"fine_tune": {
            "base": {"model": "base", "version": 1},
            "method": {"lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "down_proj"], "dropout": 0.1}},
            "sequence_length": 32,
        }},
        "data": {"jsonl": {"path": dir.join("train.jsonl"), "eval_path": dir.join("eval.jsonl")}},
        "optimizer": {"learning_rate": 0.01, "min_learning_rate": 0.001, "weight_decay": 0.0},
        "schedule": {"steps": steps, "warmup_steps": 2, "global_batch": 8},
        "checkpoint": {"every_steps": every, "keep": 2, "state_dir": dir.join("state")},
        "output": {"repository": dir.join("models"), "model": TUNED},
        "seed": 9,
    })
}

fn version_dir(dir: &Path, version: u64) -> PathBuf {
    Repository::new(dir.join("models")).version_dir(TUNED, version)
}

fn manifest(dir: &Path, version: u64) -> Manifest {
    let path = version_dir(dir, version).join(MANIFEST_FILE);
    Manifest::from_json(&std::fs::read(&path).unwrap(), &path).unwrap()
}

/// Dropout included: a sequence's masks follow its place in the reading order, not its rank.
#[test]
fn one_and_two_ranks_end_with_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone");
    trainer::train(&config_of(&tiny_lora_job(&alone, 12, 12)), &AtomicBool::new(false)).unwrap();
    let pair = dir.path().join("pair");
    train_pair(&tiny_lora_job(&pair, 12, 12));

    let adapter = manifest(&alone, 1);
    assert_eq!(adapter.format, Format::Lora);
    let base = adapter.base.expect("an adapter names its base");
    assert_eq!((base.model.as_str(), base.version), ("base", 1));
    assert_eq!(base.manifest_digest, Repository::new(alone.join("models")).manifest_digest("base", 1).unwrap());
    let peft: Value =
        serde_json::from_slice(&std::fs::read(version_dir(&alone, 1).join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((peft["peft_type"].as_str(), peft["r"].as_u64()), (Some("LORA"), Some(4)));
    assert_eq!(peft["target_modules"], json!(["q_proj", "v_proj", "down_proj"]));
    assert_eq!(peft["lora_dropout"].as_f64(), Some(0.1));

    let one = tensors(&version_dir(&alone, 1).join(ADAPTER_WEIGHTS_FILE));
    let two = tensors(&version_dir(&pair, 1).join(ADAPTER_WEIGHTS_FILE));
    assert_eq!(one.len(), 2 * 2 * 3, "A and B for 3 targets in 2 layers");
    assert_eq!(one[0].0, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
    assert_close(&one, &two);
    let metrics = &manifest(&alone, 1).metrics;
    for name in ["eval_loss", "eval_perplexity", "eval_accuracy", "baseline_eval_loss", "baseline_eval_accuracy"] {
        assert!(metrics.contains_key(name), "{name} missing from {metrics:?}");
    }
    assert!(metrics["eval_loss"] < metrics["baseline_eval_loss"], "{metrics:?}");
}

#[test]
fn a_killed_fine_tune_resumes_bit_exact_and_a_deleted_base_spoils_no_version() {
    let (steps, every) = (300, 50);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    trainer::train(&config_of(&tiny_lora_job(&reference, steps, every)), &AtomicBool::new(false)).unwrap();
    let reference_steps = trainer::published_steps(&reference.join("models"), TUNED).unwrap();

    let resumed = dir.path().join("resumed");
    let mut job = tiny_lora_job(&resumed, steps, every);
    job["model"]["fine_tune"]["merge"] = true.into();
    let path = write_job(&resumed, &job);
    let mut child = train_process(&path).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while trainer::published_steps(&resumed.join("models"), TUNED).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no version within two minutes");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The base goes away; the restarted run cannot start without it...
    let base = Repository::new(resumed.join("models")).version_dir("base", 1);
    let kept = dir.path().join("kept-base");
    std::fs::rename(&base, &kept).unwrap();
    let refused = train_process(&path).output().unwrap();
    assert_eq!(refused.status.code(), Some(EXIT_INVALID), "{}", String::from_utf8_lossy(&refused.stderr));
    // ...and the version it published is whole, and loads without it.
    let first = *trainer::published_steps(&resumed.join("models"), TUNED).unwrap().values().next().unwrap();
    Repository::new(resumed.join("models")).read_verified(TUNED, first).unwrap();

    std::fs::rename(&kept, &base).unwrap();
    let restarted = train_process(&path).output().unwrap();
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    let published = trainer::published_steps(&resumed.join("models"), TUNED).unwrap();
    assert_eq!(
        published.keys().copied().collect::<Vec<_>>(),
        (1..=steps / every).map(|i| i * every).collect::<Vec<_>>()
    );
    // Merged versions carry the adapter too: it must match the uninterrupted run's bit for bit.
    let adapter = |root: &Path, version: u64| {
        std::fs::read(Repository::new(root).version_dir(TUNED, version).join(ADAPTER_WEIGHTS_FILE)).unwrap()
    };
    assert_eq!(
        adapter(&resumed.join("models"), published[&steps]),
        adapter(&reference.join("models"), reference_steps[&steps]),
        "resuming from the saved state reproduces the uninterrupted run bit for bit"
    );
    let last = manifest(&resumed, published[&steps]);
    assert_eq!(last.format, Format::Safetensors, "a merged version is a whole checkpoint");
    assert_eq!(last.base.unwrap().model, "base");
}

#[test]
fn bad_fine_tuning_jobs_are_refused_before_any_training() {
    let dir = tempfile::tempdir().unwrap();
    let job = tiny_lora_job(dir.path(), 4, 4);
    let models = dir.path().join("models");
    // A BERT encoder as the base, and a llama without its tokenizer.
    if let Some(minilm) = lantern_runtime::test_models::minilm_dir() {
        let request =
            PublishRequest { root: &models, model: "minilm", source: &minilm, version: Some(1), metrics: &[] };
        repository::publish(&request).unwrap();
    }
    let untokenized = dir.path().join("untokenized");
    std::fs::create_dir_all(&untokenized).unwrap();
    for name in ["config.json", "model.safetensors"] {
        let from = Repository::new(&models).version_dir("base", 1).join(name);
        std::fs::copy(from, untokenized.join(name)).unwrap();
    }
    let request =
        PublishRequest { root: &models, model: "untokenized", source: &untokenized, version: Some(1), metrics: &[] };
    repository::publish(&request).unwrap();
    let empty_eval = dir.path().join("empty.jsonl");
    std::fs::write(&empty_eval, "\n").unwrap();

    let with = |pointer: &str, value: Value| {
        let mut job = job.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        job.pointer_mut(parent).unwrap()[key] = value;
        job
    };
    let mut cases = vec![
        (with("/model/fine_tune/base/model", "untokenized".into()), "tokenizer.json"),
        (with("/model/fine_tune/base/version", 7.into()), "model.fine_tune.base: base version 7"),
        (with("/model/fine_tune/base/digest", format!("sha256:{}", "0".repeat(64)).into()), "the job pins sha256:0000"),
        (with("/model/fine_tune/method/lora/targets", json!(["qkv_proj"])), "unknown variant `qkv_proj`"),
        (with("/model/fine_tune/method/lora/targets", json!([])), "model.fine_tune.method.lora.targets"),
        (with("/model/fine_tune/method/lora/rank", 0.into()), "model.fine_tune.method.lora.rank: must be at least 1"),
        (with("/model/fine_tune/method/lora/dropout", 1.0.into()), "model.fine_tune.method.lora.dropout: 1 is not"),
        (with("/model/fine_tune/method/lora/rank", 40.into()), "model.fine_tune.method.lora.rank: 40 does not fit"),
        (with("/model/fine_tune/sequence_length", 1000.into()), "beyond the base's context of 64"),
        (with("/data/jsonl/eval_path", json!(empty_eval)), "data.jsonl.eval_path"),
        (
            with("/data", json!({"text": {"paths": [dir.path().join("train.jsonl")]}})),
            "a fine_tune model trains on jsonl",
        ),
    ];
    if lantern_runtime::test_models::minilm_dir().is_some() {
        cases.push((with("/model/fine_tune/base/model", "minilm".into()), "not llama"));
    }
    for (job, expected) in cases {
        let output = train_process(&write_job(dir.path(), &job)).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_INVALID), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected} not in: {stderr}");
    }
    assert!(!dir.path().join("state").exists(), "no training state was written");
    assert!(Repository::new(&models).versions(TUNED).unwrap().is_empty(), "no version was published");
}

#[tokio::test]
async fn a_short_smollm2_lora_run_lowers_held_out_loss_and_its_merged_version_answers() {
    let Some(gguf) = lantern_runtime::test_models::smollm2_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/training/tickets");
    let eval: Vec<String> =
        std::fs::read_to_string(data.join("eval.jsonl")).unwrap().lines().take(4).map(str::to_owned).collect();
    std::fs::write(dir.path().join("eval.jsonl"), eval.join("\n")).unwrap();
    let job = json!({
        "model": {"fine_tune": {
            "base": {"model": "smollm2", "version": 1, "import_from": gguf},
            "method": {"lora": {"rank": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
            "sequence_length": 96,
            "merge": true,
        }},
        "data": {"jsonl": {"path": data.join("train.jsonl"), "eval_path": dir.path().join("eval.jsonl")}},
        "optimizer": {"learning_rate": 0.002, "weight_decay": 0.0, "min_learning_rate": 0.002},
        "schedule": {"steps": 4, "global_batch": 4},
        "checkpoint": {"every_steps": 4, "state_dir": dir.path().join("state")},
        "output": {"repository": dir.path().join("models"), "model": TUNED},
        "seed": 1,
    });
    let config = config_of(&job);
    tokio::task::spawn_blocking(move || trainer::train(&config, &AtomicBool::new(false)).unwrap()).await.unwrap();
    let metrics = manifest(dir.path(), 1).metrics;
    assert!(metrics["eval_loss"] < metrics["baseline_eval_loss"], "{metrics:?}");

    let settings = ServeSettings { poll_interval: Duration::from_millis(50), ..ServeSettings::default() };
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_message_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    let server = server::start(Repository::new(dir.path().join("models")), settings, options).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", server.local_addr());
    let body = json!({"model": TUNED, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": "My order 5150 arrived damaged."}]});
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer: Value = loop {
        let response = reqwest::Client::new().post(&url).json(&body).send().await.unwrap();
        if response.status() == 200 {
            break response.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the merged version never answered: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty(), "{answer}");
    server.shutdown().await.unwrap();
}
