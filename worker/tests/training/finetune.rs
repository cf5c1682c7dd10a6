//! Fine-tuning end to end: a tiny pretrained llama published as a base version, LoRA-tuned on 1
//! and 2 ranks, killed and resumed, its base deleted mid-run; SmolLM2 itself tuned for a few
//! steps and its merged version served; and every job that must be refused before training.
//! The adapters it publishes, applied on their base by the serving llama, alone and several in
//! one step, give the merged versions' logits; an adapter that does not fit is refused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lantern_proto::lantern::v1::GetModelStatusRequest;
use lantern_proto::lantern::v1::model_service_client::ModelServiceClient;
use lantern_runtime::llm::greedy;
use lantern_runtime::llm::kv_cache::{BlockTable, KvCache};
use lantern_runtime::model::LoadedModel;
use lantern_runtime::model::llama::{Llama, Logits, SequenceStep};
use lantern_runtime::model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LoraAdapter};
use lantern_runtime::repository::{self, Format, MANIFEST_FILE, Manifest, PublishRequest, Repository};
use lantern_serve::config::VersionPolicy;
use lantern_serve::server::{self, ServerOptions};
use lantern_serve::versions::{ServeSettings, VersionState};
use lantern_train::config::{LlamaSpec, Precision};
use lantern_train::lm::TrainLlama;
use lantern_train::{EXIT_INVALID, trainer};
use serde_json::{Value, json};

use super::{assert_close, config_of, tensors, train_pair, train_process, write_job};

const TUNED: &str = "tuned";

/// A byte-level llama with random weights, published as `base` version 1 of `root`.
pub(super) fn publish_tiny_base(root: &Path) {
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
    let request = PublishRequest {
        repository: &Repository::new(root),
        model: "base",
        source: source.path(),
        version: Some(1),
        metrics: &[],
    };
    repository::publish(&request).unwrap();
}

/// Prompt/completion pairs a byte-level model can learn: a key and its fixed answer.
pub(super) fn write_pairs(path: &Path, keys: std::ops::Range<u32>) {
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
    Repository::new(dir.join("models")).version_dir(TUNED, version).unwrap()
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
    let reference_steps = trainer::published_steps(&Repository::new(reference.join("models")), TUNED).unwrap();

    let resumed = dir.path().join("resumed");
    let mut job = tiny_lora_job(&resumed, steps, every);
    job["model"]["fine_tune"]["merge"] = true.into();
    let path = write_job(&resumed, &job);
    let mut child = train_process(&path).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while trainer::published_steps(&Repository::new(resumed.join("models")), TUNED).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no version within two minutes");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The base goes away; the restarted run cannot start without it...
    let base = Repository::new(resumed.join("models")).version_dir("base", 1).unwrap();
    let kept = dir.path().join("kept-base");
    std::fs::rename(&base, &kept).unwrap();
    let refused = train_process(&path).output().unwrap();
    assert_eq!(refused.status.code(), Some(EXIT_INVALID), "{}", String::from_utf8_lossy(&refused.stderr));
    // ...and the version it published is whole, and loads without it.
    let first =
        *trainer::published_steps(&Repository::new(resumed.join("models")), TUNED).unwrap().values().next().unwrap();
    Repository::new(resumed.join("models")).read_verified(TUNED, first).unwrap();

    std::fs::rename(&kept, &base).unwrap();
    let restarted = train_process(&path).output().unwrap();
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    let published = trainer::published_steps(&Repository::new(resumed.join("models")), TUNED).unwrap();
    assert_eq!(
        published.keys().copied().collect::<Vec<_>>(),
        (1..=steps / every).map(|i| i * every).collect::<Vec<_>>()
    );
    // Merged versions carry the adapter too: it must match the uninterrupted run's bit for bit.
    let adapter = |root: &Path, version: u64| {
        std::fs::read(Repository::new(root).version_dir(TUNED, version).unwrap().join(ADAPTER_WEIGHTS_FILE)).unwrap()
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
        let request = PublishRequest {
            repository: &Repository::new(&models),
            model: "minilm",
            source: &minilm,
            version: Some(1),
            metrics: &[],
        };
        repository::publish(&request).unwrap();
    }
    let untokenized = dir.path().join("untokenized");
    std::fs::create_dir_all(&untokenized).unwrap();
    for name in ["config.json", "model.safetensors"] {
        let from = Repository::new(&models).version_dir("base", 1).unwrap().join(name);
        std::fs::copy(from, untokenized.join(name)).unwrap();
    }
    let request = PublishRequest {
        repository: &Repository::new(&models),
        model: "untokenized",
        source: &untokenized,
        version: Some(1),
        metrics: &[],
    };
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

/// The logits after each prompt's last token, all prompts in one step, each with its adapter.
fn prefill(model: &Llama, prompts: &[(&[u32], Option<&LoraAdapter>)]) -> Vec<Vec<f32>> {
    let shape = model.kv_shape();
    let mut cache = KvCache::with_budget(shape, 16, prompts.len() * 64 * shape.bytes_per_token());
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::default()).collect();
    for ((tokens, _), table) in prompts.iter().zip(&mut tables) {
        assert!(cache.reserve(table, tokens.len()));
    }
    let mut steps: Vec<SequenceStep<'_>> = prompts
        .iter()
        .zip(&mut tables)
        .map(|(&(tokens, adapter), table)| SequenceStep { tokens, table, logits: Logits::Last, adapter })
        .collect();
    model.forward(&mut steps, &mut cache).unwrap().to_vec2().unwrap()
}

fn llama(root: &Path, model: &str, version: u64) -> Llama {
    let verified = Repository::new(root).read_verified(model, version).unwrap();
    match lantern_runtime::model::load(model, version, &verified, &candle_core::Device::Cpu).unwrap() {
        LoadedModel::Generate { model, .. } => *model,
        _ => panic!("{model} {version} is not a language model"),
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn adapters_on_their_base_give_the_merged_logits_alone_and_mixed_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = tiny_lora_job(dir.path(), 8, 4);
    job["model"]["fine_tune"]["merge"] = true.into();
    trainer::train(&config_of(&job), &AtomicBool::new(false)).unwrap();
    let models = dir.path().join("models");
    let base = llama(&models, "base", 1);
    let adapters: Vec<LoraAdapter> = [1, 2]
        .iter()
        .map(|&v| base.read_adapter(&Repository::new(&models).read_verified(TUNED, v).unwrap().files).unwrap())
        .collect();
    assert_eq!((adapters[0].rank(), adapters[0].targets().len()), (4, 3));
    let merged: Vec<Llama> = [1, 2].iter().map(|&v| llama(&models, TUNED, v)).collect();

    let prompts: [&[u32]; 3] = [&[107, 101, 121, 32, 55, 58], &[107, 101, 121, 32, 49, 50, 58], &[1, 2, 3]];
    // Alone: base + adapter is the merged checkpoint.
    for (adapter, merged) in adapters.iter().zip(&merged) {
        let with = prefill(&base, &[(prompts[0], Some(adapter))]);
        let expected = prefill(merged, &[(prompts[0], None)]);
        assert!(max_difference(&with[0], &expected[0]) < 1e-4, "{}", max_difference(&with[0], &expected[0]));
    }
    assert!(
        max_difference(&prefill(&merged[0], &[(prompts[0], None)])[0], &prefill(&base, &[(prompts[0], None)])[0])
            > 1e-3
    );
    // Mixed: two adapters and the bare base in one step, each row as if alone.
    let mixed =
        prefill(&base, &[(prompts[0], Some(&adapters[0])), (prompts[1], Some(&adapters[1])), (prompts[2], None)]);
    let alone = [
        prefill(&merged[0], &[(prompts[0], None)]),
        prefill(&merged[1], &[(prompts[1], None)]),
        prefill(&base, &[(prompts[2], None)]),
    ];
    for (row, expected) in mixed.iter().zip(&alone) {
        assert!(max_difference(row, &expected[0]) < 1e-4, "{}", max_difference(row, &expected[0]));
    }
    // Greedy decoding agrees too.
    let prompt = |adapter| greedy::Prompt { tokens: prompts[0].to_vec(), max_tokens: 6, adapter };
    let answers = greedy::generate(&base, &[prompt(Some(&adapters[1])), prompt(None)], &[]).unwrap();
    let merged_answer = greedy::generate(&merged[1], &[prompt(None)], &[]).unwrap();
    assert_eq!(answers[0], merged_answer[0]);
}

#[test]
fn an_adapter_that_does_not_fit_its_base_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    trainer::train(&config_of(&tiny_lora_job(dir.path(), 4, 4)), &AtomicBool::new(false)).unwrap();
    let base = llama(&dir.path().join("models"), "base", 1);
    let adapter = version_dir(dir.path(), 1);
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for file in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
            std::fs::copy(adapter.join(file), to.join(file)).unwrap();
        }
        to
    };
    let edit_config = |dir: &Path, edit: &dyn Fn(&mut Value)| {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&path, config.to_string()).unwrap();
    };
    let truncated = copy("truncated");
    let weights = std::fs::read(truncated.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    std::fs::write(truncated.join(ADAPTER_WEIGHTS_FILE), &weights[..weights.len() / 2]).unwrap();
    let dora = copy("dora");
    edit_config(&dora, &|c| c["use_dora"] = true.into());
    let lm_head = copy("lm_head");
    edit_config(&lm_head, &|c| c["target_modules"] = json!(["q_proj", "lm_head"]));
    let missing = copy("missing");
    edit_config(&missing, &|c| c["target_modules"] = json!(["q_proj", "v_proj", "down_proj", "up_proj"]));
    let rank = copy("rank");
    edit_config(&rank, &|c| c["r"] = 8.into());
    let unlisted = copy("unlisted");
    edit_config(&unlisted, &|c| c["target_modules"] = json!(["q_proj", "v_proj"]));
    let cases = [
        (truncated, "adapter_model.safetensors"),
        (dora, "use_dora is not supported"),
        (lm_head, "target module \"lm_head\" is not a llama projection"),
        (missing, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight is missing"),
        (rank, "is [4, 32]; the base needs (8, 32)"),
        (unlisted, "down_proj.lora_A.weight has no place in the base"),
    ];
    for (dir, expected) in cases {
        let files =
            [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE].map(|f| (f.to_owned(), std::fs::read(dir.join(f)).unwrap()));
        let error = base.read_adapter(&files.into_iter().collect()).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} not in {error}");
    }
}

/// What `serve` answers `prompt` with from `model` (greedy, 6 tokens).
async fn complete(address: std::net::SocketAddr, model: &str, prompt: &str) -> (u16, Value) {
    let body = json!({"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0});
    let response =
        reqwest::Client::new().post(format!("http://{address}/v1/completions")).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_from_adapter_versions_on_their_shared_base_as_the_merged_model_would() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = tiny_lora_job(dir.path(), 8, 4);
    // Fast enough that eight steps change greedy answers.
    job["optimizer"] = json!({"learning_rate": 0.05, "min_learning_rate": 0.05, "weight_decay": 0.0});
    let config = config_of(&job);
    tokio::task::spawn_blocking(move || trainer::train(&config, &AtomicBool::new(false)).unwrap()).await.unwrap();
    let models = dir.path().join("models");
    assert_eq!(manifest(dir.path(), 2).format, Format::Lora);

    // What each should answer: the runtime's greedy decoding with the adapter on the base.
    let verified = Repository::new(&models).read_verified("base", 1).unwrap();
    let LoadedModel::Generate { model: base, codec } =
        lantern_runtime::model::load("base", 1, &verified, &candle_core::Device::Cpu).unwrap()
    else {
        panic!("the base is a language model")
    };
    let prompts = ["key 3:", "key 41:", "key 12:"];
    let expected = |adapter: Option<u64>, prompt: &str| {
        let files = adapter.map(|v| Repository::new(&models).read_verified(TUNED, v).unwrap().files);
        let adapter = files.map(|files| base.read_adapter(&files).unwrap());
        let prompt = greedy::Prompt { tokens: codec.encode(prompt).unwrap(), max_tokens: 6, adapter: adapter.as_ref() };
        let tokens = greedy::generate(&base, &[prompt], codec.tokenizer().eos()).unwrap();
        codec.tokenizer().decode(&tokens[0], true).unwrap()
    };

    let settings = ServeSettings {
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(50),
        policy: VersionPolicy::All,
        ..ServeSettings::default()
    };
    let options = ServerOptions { listen: "127.0.0.1:0".parse().unwrap(), ..ServerOptions::default() };
    let server = server::start(Repository::new(&models), settings, options).await.unwrap();
    let address = server.local_addr();
    let deadline = Instant::now() + Duration::from_secs(60);
    for version in [1, 2] {
        while complete(address, &format!("{TUNED}:{version}"), "key 1:").await.0 != 200 {
            assert!(Instant::now() < deadline, "adapter version {version} never became available");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A PEFT adapter from elsewhere (its two files, no manifest) publishes with its base named.
    let peft = dir.path().join("peft");
    std::fs::create_dir_all(&peft).unwrap();
    for file in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        std::fs::copy(version_dir(dir.path(), 1).join(file), peft.join(file)).unwrap();
    }
    let request = PublishRequest {
        repository: &Repository::new(&models),
        model: "peft",
        source: &peft,
        version: None,
        metrics: &[],
    };
    let refused = repository::publish(&request).unwrap_err().to_string();
    assert!(refused.contains("is a PEFT adapter: publish it with the base it adapts"), "{refused}");
    let missing = repository::publish_adapter(&request, "nope", 1).unwrap_err().to_string();
    assert!(missing.contains("the base nope version 1"), "{missing}");
    assert_eq!(repository::publish_adapter(&request, "base", 1).unwrap(), 1);
    while complete(address, "peft", "key 1:").await.0 != 200 {
        assert!(Instant::now() < deadline, "the PEFT adapter never became available");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The adapter versions and the bare base, all at once: one engine, mixed steps.
    let targets = [
        (format!("{TUNED}:1"), Some(1)),
        (format!("{TUNED}:2"), Some(2)),
        ("peft".to_owned(), Some(1)),
        ("base".to_owned(), None),
    ];
    let mut calls = Vec::new();
    for (model, version) in &targets {
        for prompt in prompts {
            calls.push(async move { (complete(address, model, prompt).await, *version, prompt) });
        }
    }
    let mut differs = false;
    for ((status, answer), version, prompt) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "{answer}");
        let text = answer["choices"][0]["text"].as_str().unwrap().to_owned();
        assert_eq!(text, expected(version, prompt), "{TUNED} version {version:?} on {prompt:?}");
        differs |= version.is_some() && text != expected(None, prompt);
    }
    assert!(differs, "the adapters change some answer");
    // Each adapter version's tokens are counted under its own labels.
    let text = reqwest::get(format!("http://{address}/metrics")).await.unwrap().text().await.unwrap();
    let generated = |model: &str, version: u64| -> f64 {
        let prefix = format!("lantern_generated_tokens_total{{model=\"{model}\",version=\"{version}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap())
    };
    for (model, version) in [(TUNED, 1), (TUNED, 2), ("peft", 1), ("base", 1)] {
        assert!(generated(model, version) >= 3.0, "{model} {version}: {}", generated(model, version));
    }
    let listed: Value = reqwest::get(format!("http://{address}/v1/models")).await.unwrap().json().await.unwrap();
    let parent =
        |id: &str| listed["data"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap()["parent"].clone();
    assert_eq!((parent(TUNED), parent("base")), (json!("base"), Value::Null), "{listed}");
    let mut status = ModelServiceClient::connect(format!("http://{address}")).await.unwrap();
    let request = GetModelStatusRequest { model: TUNED.into() };
    let tuned = status.get_model_status(request).await.unwrap().into_inner().models.remove(0);
    let base_digest = Repository::new(&models).manifest_digest("base", 1).unwrap();
    for version in &tuned.versions {
        let base = version.base.as_ref().expect("an adapter version reports its base");
        assert_eq!((base.model.as_str(), base.version, &base.manifest_digest), ("base", 1, &base_digest));
    }

    // An adapter trained on another base digest fails with the reason; the others keep serving.
    let source = dir.path().join("other-base");
    std::fs::create_dir_all(&source).unwrap();
    for file in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MANIFEST_FILE] {
        std::fs::copy(version_dir(dir.path(), 2).join(file), source.join(file)).unwrap();
    }
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(source.join(MANIFEST_FILE)).unwrap()).unwrap();
    manifest["base"]["manifest_digest"] = format!("sha256:{}", "0".repeat(64)).into();
    std::fs::write(source.join(MANIFEST_FILE), manifest.to_string()).unwrap();
    let request = PublishRequest {
        repository: &Repository::new(&models),
        model: TUNED,
        source: &source,
        version: Some(3),
        metrics: &[],
    };
    repository::publish(&request).unwrap();
    let reason = loop {
        let index: Value = reqwest::Client::new()
            .post(format!("http://{address}/v2/repository/index"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entry = index.as_array().unwrap().iter().find(|e| e["name"] == TUNED && e["version"] == "3").cloned();
        if let Some(entry) = entry.filter(|e| e["state"] == "UNAVAILABLE") {
            break entry["reason"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "version 3 never failed: {index}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("the adapter was trained on sha256:0000"), "{reason}");
    assert_eq!(complete(address, &format!("{TUNED}:3"), "key 1:").await.0, 503);
    assert_eq!(complete(address, &format!("{TUNED}:1"), "key 1:").await.0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn adapters_load_their_base_and_beyond_max_adapters_the_least_recently_used_unloads_until_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_of(&tiny_lora_job(dir.path(), 8, 4));
    tokio::task::spawn_blocking(move || trainer::train(&config, &AtomicBool::new(false)).unwrap()).await.unwrap();
    let settings = ServeSettings {
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(50),
        policy: VersionPolicy::All,
        max_adapters: Some(1),
        // Only the adapters are served: their base loads for them alone.
        models: [TUNED.to_owned()].into(),
        ..ServeSettings::default()
    };
    let options = ServerOptions { listen: "127.0.0.1:0".parse().unwrap(), ..ServerOptions::default() };
    let server = server::start(Repository::new(dir.path().join("models")), settings, options).await.unwrap();
    let address = server.local_addr();
    let loaded = || {
        let status = server.manager().status(Some(TUNED)).unwrap().remove(0);
        status
            .versions
            .into_iter()
            .filter(|v| v.state == VersionState::Available)
            .map(|v| v.version)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while loaded().is_empty() {
        assert!(Instant::now() < deadline, "no adapter version became available");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each request gets its version, loading it again if it was evicted; one stays loaded.
    for version in [1, 2, 1, 2] {
        let (status, answer) = complete(address, &format!("{TUNED}:{version}"), "key 5:").await;
        assert_eq!(status, 200, "version {version}: {answer}");
        assert_eq!(loaded(), vec![version]);
    }
    let status = server.manager().status(Some(TUNED)).unwrap().remove(0);
    let evicted = status.versions.iter().find(|v| v.version == 1).unwrap();
    assert!(evicted.reason.contains("least recently used adapter beyond --max-adapters"), "{evicted:?}");
    // Both at once: neither fails.
    let (first, second) = (format!("{TUNED}:1"), format!("{TUNED}:2"));
    let (one, two) = tokio::join!(complete(address, &first, "key 6:"), complete(address, &second, "key 7:"));
    assert_eq!((one.0, two.0), (200, 200), "{one:?} {two:?}");
    assert_eq!(loaded().len(), 1);
    assert_eq!(complete(address, "base", "key 7:").await.0, 404, "the base is not served as a model");
    server.shutdown().await.unwrap();
}
