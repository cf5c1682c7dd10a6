//! Training end to end on small jobs: the real `lantern-worker train` process (SIGTERM, exit
//! codes, resume, a full disk), the versions it publishes served by a real server, held-out
//! accuracy rising as it trains, a non-finite loss, and job files that must be refused before any
//! work; fine-tuning pretrained bases in [`finetune`]; quantizing a version in [`quantize`];
//! distilling a student from a teacher in [`distill`].

mod curves;
mod distill;
mod finetune;
mod quantize;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lantern_proto::lantern::v1::training_service_client::TrainingServiceClient;
use lantern_proto::lantern::v1::{GetProgressRequest, TrainingPhase, TrainingProgress};
use lantern_runtime::repository::{MANIFEST_FILE, Manifest, Repository};
use lantern_serve::server::{self, ServerOptions};
use lantern_serve::versions::ServeSettings;
use lantern_train::config::{self, JobConfig, LlamaSpec, Precision};
use lantern_train::lm::TrainLlama;
use lantern_train::{EXIT_INVALID, EXIT_RETRYABLE, trainer};
use serde_json::{Value, json};

const MODEL: &str = "adder";

/// A tiny llama learning additions, checkpointing every `every` steps, in `dir`.
fn addition_job(dir: &Path, steps: u64, every: u64) -> Value {
    json!({
        "model": {"llama": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 4, "kv_heads": 2, "context": 16}},
        "data": {"addition": {"max_operand": 20, "train_examples": 2000, "eval_examples": 20}},
        "schedule": {"steps": steps, "warmup_steps": 5, "global_batch": 8},
        "checkpoint": {"every_steps": every, "keep": 2, "state_dir": dir.join("state")},
        "output": {"repository": dir.join("models"), "model": MODEL},
        "seed": 5,
    })
}

fn config_of(job: &Value) -> JobConfig {
    let config = config::from_json(job.to_string().as_bytes()).unwrap();
    config::validate(&config).unwrap();
    config
}

fn write_job(dir: &Path, job: &Value) -> PathBuf {
    let path = dir.join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    path
}

fn train_process(job: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lantern-worker"));
    command.args(["--compute-threads", "1", "train", "--config"]).arg(job).env("RUST_LOG", "warn");
    command
}

/// The bytes of a published version's weights.
fn weights(root: &Path, version: u64) -> Vec<u8> {
    std::fs::read(Repository::new(root).version_dir(MODEL, version).unwrap().join("model.safetensors")).unwrap()
}

#[test]
fn sigterm_saves_a_state_and_the_restarted_run_ends_as_an_uninterrupted_one() {
    // Long enough (about 5 s) that the signal, sent once step 100 is published, lands mid-run.
    let (steps, every) = (1000, 100);
    let all_steps: Vec<u64> = (1..=steps / every).map(|i| i * every).collect();
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let whole = trainer::train(&config_of(&addition_job(&reference, steps, every)), &AtomicBool::new(false)).unwrap();
    assert_eq!((whole.step, whole.published.len(), whole.interrupted), (steps, all_steps.len(), false));
    let reference_steps = trainer::published_steps(&Repository::new(reference.join("models")), MODEL).unwrap();
    assert_eq!(reference_steps.keys().copied().collect::<Vec<_>>(), all_steps);

    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let job = write_job(&resumed, &addition_job(&resumed, steps, every));
    let mut child = train_process(&job).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while trainer::published_steps(&Repository::new(resumed.join("models")), MODEL).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no version within two minutes");
        std::thread::sleep(Duration::from_millis(10));
    }
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(EXIT_RETRYABLE), "SIGTERM is retryable after saving the state");
    let interrupted = trainer::published_steps(&Repository::new(resumed.join("models")), MODEL).unwrap();
    let stopped_at = *interrupted.keys().last().unwrap();
    assert!(stopped_at < steps, "stopped early, at step {stopped_at}, with a version of that step");

    let restarted = train_process(&job).output().unwrap();
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    let steps_published = trainer::published_steps(&Repository::new(resumed.join("models")), MODEL).unwrap();
    for step in &all_steps {
        assert!(steps_published.contains_key(step), "no version of step {step}: {steps_published:?}");
    }
    let versions = Repository::new(resumed.join("models")).versions(MODEL).unwrap();
    assert_eq!(steps_published.len(), versions.len(), "one version per step, none twice");
    assert_eq!(
        weights(&resumed.join("models"), steps_published[&steps]),
        weights(&reference.join("models"), reference_steps[&steps]),
        "resuming from the saved state reproduces the uninterrupted run bit for bit"
    );
    // The last version's curves hold every step once: the steps past the saved state that the
    // first run trained are the second run's, not both.
    let last = resumed.join("models").join(MODEL).join(steps_published[&steps].to_string());
    let points = lantern_train::curves::read(&lantern_train::curves::file_in(&last)).unwrap();
    let loss_steps: Vec<u64> = points
        .iter()
        .filter(|p| p.scalars.iter().any(|(tag, _)| tag == lantern_train::curves::LOSS))
        .map(|p| p.step)
        .collect();
    assert_eq!(loss_steps, (1..=steps).collect::<Vec<_>>());
}

#[test]
fn a_second_job_into_the_same_model_publishes_its_own_versions_of_the_same_steps() {
    let dir = tempfile::tempdir().unwrap();
    let first = addition_job(dir.path(), 10, 10);
    let mut second = first.clone();
    second["checkpoint"]["state_dir"] = json!(dir.path().join("other-state"));
    second["seed"] = json!(6);
    let train = |job: &Value| trainer::train(&config_of(job), &AtomicBool::new(false)).unwrap().published;
    assert_eq!(train(&first), vec![1]);
    assert_eq!(train(&second), vec![2], "step 10 of another job is not this job's step 10");
    assert_eq!(train(&first), Vec::<u64>::new(), "run again, the job finds its own version of step 10");
    let manifest = Repository::new(dir.path().join("models")).manifest(MODEL, 2).unwrap();
    assert_eq!(manifest.job.as_deref(), Some(dir.path().join("other-state").to_str().unwrap()));
}

/// A free loopback port for rank 0.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `job` as rank `rank` of `world` with rank 0 on `port`.
fn as_rank(job: &Value, rank: usize, world: usize, port: u16) -> Value {
    let mut job = job.clone();
    let cluster = json!({
        "rank": rank, "world_size": world, "coordinator": format!("127.0.0.1:{port}"), "timeout_seconds": 10.0,
    });
    match job["cluster"].as_object_mut() {
        Some(existing) => existing.extend(cluster.as_object().unwrap().clone()),
        None => job["cluster"] = cluster,
    }
    job
}

/// Rank 0's progress, read until `done` holds (up to 30 s).
fn watch_progress(address: &str, done: impl Fn(&TrainingProgress) -> bool) -> TrainingProgress {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = TrainingServiceClient::connect(format!("http://{address}")).await
                && let Ok(progress) = client.get_progress(GetProgressRequest::default()).await
            {
                let progress = progress.into_inner();
                if done(&progress) {
                    return progress;
                }
            }
            assert!(Instant::now() < deadline, "the progress never got there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut tensors: Vec<(String, Vec<f32>)> = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

#[test]
fn two_ranks_end_with_the_parameters_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone");
    trainer::train(&config_of(&addition_job(&alone, 40, 40)), &AtomicBool::new(false)).unwrap();
    let pair = dir.path().join("pair");
    let outcomes = train_pair(&addition_job(&pair, 40, 40));
    assert_eq!(outcomes[0].published, vec![1], "rank 0 publishes");
    assert!(outcomes[1].published.is_empty(), "rank 1 does not");
    let one = tensors(&Repository::new(alone.join("models")).version_dir(MODEL, 1).unwrap().join("model.safetensors"));
    let two = tensors(&Repository::new(pair.join("models")).version_dir(MODEL, 1).unwrap().join("model.safetensors"));
    assert_close(&one, &two);
}

/// Trains `job` as 2 ranks in threads; both must see the same mean loss.
fn train_pair(job: &Value) -> Vec<trainer::Outcome> {
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let config = config_of(&as_rank(job, rank, 2, port));
            std::thread::spawn(move || trainer::train(&config, &AtomicBool::new(false)).unwrap())
        })
        .collect();
    let outcomes: Vec<_> = ranks.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(outcomes[0].loss, outcomes[1].loss, "both ranks see the same mean loss");
    outcomes
}

/// Every tensor of `one` within 1e-5 of its namesake in `two`.
fn assert_close(one: &[(String, Vec<f32>)], two: &[(String, Vec<f32>)]) {
    for ((name, a), (_, b)) in one.iter().zip(two) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{name} differs by {worst}");
    }
}

#[test]
fn with_a_job_token_ranks_train_together_and_callers_without_it_are_refused() {
    use lantern_proto::lantern::v1::HeartbeatRequest;
    use lantern_proto::lantern::v1::collective_service_client::CollectiveServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "job-s3cret\n").unwrap();
    let (port, progress_port) = (free_port(), free_port());
    let mut job = addition_job(dir.path(), 60, 60);
    job["cluster"] = json!({
        "token_file": token_file, "progress_address": format!("127.0.0.1:{progress_port}"), "progress_linger_seconds": 5.0,
    });
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let config = config_of(&as_rank(&job, rank, 2, port));
            std::thread::spawn(move || trainer::train(&config, &AtomicBool::new(false)).unwrap())
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (with_token, without) = loop {
            assert!(Instant::now() < deadline, "rank 0's progress never answered");
            let Ok(mut client) = TrainingServiceClient::connect(format!("http://127.0.0.1:{progress_port}")).await
            else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let mut request = tonic::Request::new(GetProgressRequest::default());
            request.metadata_mut().insert("authorization", "Bearer job-s3cret".parse().unwrap());
            if let Ok(progress) = client.get_progress(request).await {
                break (progress, client.get_progress(GetProgressRequest::default()).await);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(with_token.into_inner().total_steps, 60);
        assert_eq!(without.unwrap_err().code(), tonic::Code::Unauthenticated);
        // Rank 0's collective endpoint refuses a caller without the token.
        if let Ok(mut intruder) = CollectiveServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
            let refused = intruder.heartbeat(HeartbeatRequest { rank: 1, step: 999 }).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
    });
    let outcomes: Vec<_> = ranks.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(outcomes[0].published, vec![1]);
}

#[test]
fn a_killed_rank_fails_the_others_and_restarting_all_resumes_without_missing_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (steps, every) = (1000, 100);
    let progress_address = format!("127.0.0.1:{}", free_port());
    let mut job = addition_job(dir.path(), steps, every);
    job["cluster"] = json!({"progress_address": progress_address});
    let start = |port: u16| -> Vec<std::process::Child> {
        (0..2)
            .map(|rank| {
                let path = dir.path().join(format!("rank{rank}.json"));
                std::fs::write(&path, as_rank(&job, rank, 2, port).to_string()).unwrap();
                train_process(&path).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect()
    };
    let mut ranks = start(free_port());
    // Rank 0's progress: training, both ranks beating, a version out.
    let progress =
        watch_progress(&progress_address, |p| p.last_published_version >= 1 && p.ranks[1].age_seconds >= 0.0);
    assert_eq!((progress.phase(), progress.total_steps), (TrainingPhase::Training, steps));
    assert!(progress.examples_per_second > 0.0 && progress.eta_seconds > 0.0, "{progress:?}");
    assert!(progress.last_published_metrics.contains_key("eval_accuracy"), "{progress:?}");
    let metrics = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::get(format!("http://{progress_address}/metrics")).await.unwrap().text().await.unwrap()
    });
    assert!(metrics.contains("lantern_training_step{model=\"adder\"}"), "{metrics}");
    ranks[1].kill().unwrap();
    ranks[1].wait().unwrap();
    let survivor = ranks.remove(0).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&survivor.stderr);
    assert_eq!(survivor.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rank 1") && stderr.contains("training stopped at step"), "{stderr}");

    for rank in start(free_port()) {
        let output = rank.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let published = trainer::published_steps(&Repository::new(dir.path().join("models")), MODEL).unwrap();
    let expected: Vec<u64> = (1..=steps / every).map(|i| i * every).collect();
    assert_eq!(published.keys().copied().collect::<Vec<_>>(), expected, "every checkpoint once");
}

#[test]
fn an_unreachable_coordinator_is_retried_then_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = as_rank(&addition_job(dir.path(), 10, 5), 1, 2, free_port());
    job["cluster"]["rendezvous_timeout_seconds"] = 1.5.into();
    let started = Instant::now();
    let error = trainer::train(&config_of(&job), &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(error.contains("did not complete the rendezvous of 2 ranks") && error.contains("attempts"), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it retried for the rendezvous timeout");
}

#[tokio::test]
async fn a_trained_version_is_served_and_answers_as_the_trainer_computes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_of(&addition_job(dir.path(), 60, 30));
    tokio::task::spawn_blocking(move || trainer::train(&config, &AtomicBool::new(false)).unwrap()).await.unwrap();
    let root = dir.path().join("models");
    let settings = ServeSettings { poll_interval: Duration::from_millis(50), ..ServeSettings::default() };
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_message_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    let server = server::start(Repository::new(&root), settings, options).await.unwrap();
    let url = format!("http://{}/v1/completions", server.local_addr());
    let body = json!({"model": MODEL, "prompt": "7+8=", "max_tokens": 6, "temperature": 0});
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer: Value = loop {
        let response = reqwest::Client::new().post(&url).json(&body).send().await.unwrap();
        if response.status() == 200 && response.headers()["x-lantern-model-version"] == "2" {
            break response.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "version 2 never answered: {}", response.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let served = answer["choices"][0]["text"].as_str().unwrap().to_owned();

    // The trainer's own forward over the published weights, greedy, gives the same text.
    let version_dir = Repository::new(&root).version_dir(MODEL, 2).unwrap();
    let spec = LlamaSpec {
        hidden_size: 32,
        intermediate_size: 64,
        layers: 1,
        heads: 4,
        kv_heads: Some(2),
        context: 16,
        init_from: Some(version_dir),
        precision: Precision::F32,
    };
    let model = TrainLlama::new(&spec, 0, &candle_core::Device::Cpu).unwrap();
    let tokens = model.greedy(&"7+8=".bytes().map(u32::from).collect::<Vec<_>>(), 6).unwrap();
    let expected: String = tokens.iter().map(|&t| char::from(t as u8)).collect();
    assert_eq!(served, expected);
    server.shutdown().await.unwrap();
}

#[test]
fn held_out_accuracy_rises_across_the_published_versions() {
    let dir = tempfile::tempdir().unwrap();
    let job = json!({
        "model": {"llama": {"hidden_size": 48, "intermediate_size": 128, "layers": 2, "heads": 4, "context": 16}},
        "data": {"addition": {"max_operand": 9, "train_examples": 2000, "eval_examples": 20}},
        "optimizer": {"learning_rate": 0.01, "min_learning_rate": 0.001},
        "schedule": {"steps": 600, "warmup_steps": 20, "global_batch": 32},
        "checkpoint": {"every_steps": 100, "state_dir": dir.path().join("state")},
        "output": {"repository": dir.path().join("models"), "model": MODEL},
        "seed": 1,
    });
    trainer::train(&config_of(&job), &AtomicBool::new(false)).unwrap();
    let repository = Repository::new(dir.path().join("models"));
    let accuracy: Vec<f64> = repository
        .versions(MODEL)
        .unwrap()
        .into_iter()
        .map(|version| {
            let path = repository.version_dir(MODEL, version).unwrap().join(MANIFEST_FILE);
            Manifest::from_json(&std::fs::read(&path).unwrap(), &path).unwrap().metrics["eval_accuracy"]
        })
        .collect();
    assert_eq!(accuracy.len(), 6, "a version every 100 steps");
    let (first, last) = (accuracy[0], accuracy[accuracy.len() - 1]);
    // The 20 held-out sums never appear in training: the model has to add, not recall.
    assert!(last >= 0.4 && last >= first + 0.3, "held-out accuracy by version: {accuracy:?}");
}

#[test]
fn a_full_disk_during_a_checkpoint_leaves_the_last_state_and_version_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let first = train_process(&write_job(dir.path(), &addition_job(dir.path(), 10, 10))).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // The optimizer state (about 140 KB) cannot be written under a 100 KiB file-size limit: the
    // write fails with EFBIG, as a full disk fails with ENOSPC, and the job stops at step 20.
    let job = write_job(dir.path(), &addition_job(dir.path(), 20, 10));
    let mut limited = Command::new("bash");
    limited
        .args(["-c", "trap '' XFSZ; ulimit -f 100; exec \"$0\" --compute-threads 1 train --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_lantern-worker"))
        .arg(&job);
    let failed = limited.output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    let listing = |path: PathBuf| -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(listing(dir.path().join("state")), vec!["curves", "step-0000000010"], "no partial state");
    assert_eq!(listing(dir.path().join("models").join(MODEL)), vec!["1"], "no partial version");

    let retried = train_process(&job).output().unwrap();
    assert!(retried.status.success(), "{}", String::from_utf8_lossy(&retried.stderr));
    let steps = trainer::published_steps(&Repository::new(dir.path().join("models")), MODEL).unwrap();
    assert_eq!(steps.into_iter().collect::<Vec<_>>(), vec![(10, 1), (20, 2)], "resumed from step 10");
}

#[test]
fn a_non_finite_loss_stops_the_job_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let job = |steps: u64| {
        json!({
            "model": {"mlp": {"hidden": [8], "activation": "tanh"}},
            "data": {"csv": {"path": csv, "target": "y"}},
            "schedule": {"steps": steps, "global_batch": 8},
            "checkpoint": {"every_steps": 10, "state_dir": dir.path().join("state")},
            "output": {"repository": dir.path().join("models"), "model": "line"},
        })
    };
    let rows =
        |scale: f32| -> String { (0..40).map(|i| format!("{},{}\n", i as f32 / 40.0, scale * i as f32)).collect() };
    std::fs::write(&csv, format!("x,y\n{}", rows(0.05))).unwrap();
    let done = trainer::train(&config_of(&job(10)), &AtomicBool::new(false)).unwrap();
    assert_eq!((done.step, done.published), (10, vec![1]));

    // Targets so large that the squared error overflows: the job stops at the next step.
    std::fs::write(&csv, format!("x,y\n{}", rows(1e30))).unwrap();
    let error = trainer::train(&config_of(&job(20)), &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(error.contains("step 10") && error.contains("the loss is inf"), "{error}");
    let steps = trainer::published_steps(&Repository::new(dir.path().join("models")), "line").unwrap();
    assert_eq!(steps.into_iter().collect::<Vec<_>>(), vec![(10, 1)], "the good version stays, nothing new");
    let state = lantern_train::checkpoint::latest(&dir.path().join("state")).unwrap().unwrap();
    assert_eq!(state.state.step, 10);
}

#[test]
fn bad_job_files_are_refused_before_any_work_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut unknown = addition_job(dir.path(), 10, 5);
    unknown["schedule"]["epochs"] = 3.into();
    let mut missing_data = addition_job(dir.path(), 10, 5);
    missing_data["data"] = json!({"text": {"paths": [dir.path().join("missing.txt")]}});
    let mut too_small = addition_job(dir.path(), 10, 5);
    too_small["data"]["addition"]["train_examples"] = 1.into();
    for (job, field) in [
        (unknown, "unknown field `epochs`"),
        (missing_data, "data.text.paths[0]"),
        (too_small, "fewer than one global batch"),
    ] {
        let output = train_process(&write_job(dir.path(), &job)).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_INVALID), "{stderr}");
        assert!(stderr.contains(field), "{field} not in: {stderr}");
    }
    assert!(!dir.path().join("state").exists() && !dir.path().join("models").exists(), "nothing was written");
}
