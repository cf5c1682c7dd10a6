//! Training figures: throughput of a fixed small language model with 1 rank × 2 threads and
//! 2 ranks × 1 thread (each run as `lantern-worker train` processes, as a user runs them), ring
//! all-reduce bandwidth between two ranks for 10 MB and 100 MB buffers, and the time to save a
//! training state and publish a version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use lantern_runtime::repository::{self, PublishRequest, Repository};
use lantern_train::checkpoint;
use lantern_train::collective::{Collective, Placement};
use lantern_train::config::{LlamaSpec, OptimizerSpec, Precision};
use lantern_train::lm::TrainLlama;
use lantern_train::optim::AdamW;
use serde_json::json;

/// The benchmark model: a 4-layer, 128-wide byte-level llama, 64-token sequences, 16 per step.
const HIDDEN: usize = 128;
const LAYERS: usize = 4;
const HEADS: usize = 4;
const INNER: usize = 344;
const CONTEXT: usize = 64;
const BATCH: usize = 16;
const STEPS: u64 = 60;

fn spec() -> LlamaSpec {
    LlamaSpec {
        hidden_size: HIDDEN,
        intermediate_size: INNER,
        layers: LAYERS,
        heads: HEADS,
        kv_heads: None,
        context: CONTEXT,
        init_from: None,
        precision: Precision::F32,
    }
}

pub fn figures() -> anyhow::Result<()> {
    let worker = std::env::current_exe()?.with_file_name("lantern-worker");
    anyhow::ensure!(worker.is_file(), "{} is missing: cargo build --release -p lantern-worker", worker.display());
    let params = TrainLlama::new(&spec(), 0, &candle_core::Device::Cpu)?.params().len();
    println!(
        "\ntraining: llama {LAYERS} layers x {HIDDEN} wide ({:.2} M parameters), {BATCH} sequences x {CONTEXT} tokens per step, {STEPS} steps",
        params as f64 / 1e6
    );
    for (ranks, threads) in [(1, 2), (2, 1)] {
        let (steps_per_second, wall) = throughput(&worker, ranks, threads)?;
        println!(
            "  {ranks} rank(s) x {threads} thread(s): {:.0} tokens/s ({steps_per_second:.2} steps/s; {wall:.1} s with start-up)",
            steps_per_second * (BATCH * CONTEXT) as f64
        );
    }
    for megabytes in [10, 100] {
        let (seconds, gigabytes_per_second) = all_reduce(megabytes)?;
        println!(
            "  ring all-reduce, 2 ranks on loopback, {megabytes} MB: {:.1} ms, {gigabytes_per_second:.2} GB/s (buffer size / time, median of 5)",
            seconds * 1e3
        );
    }
    let (save, publish) = checkpoint_times()?;
    println!(
        "  checkpoint: training state saved in {:.0} ms, version published in {:.0} ms",
        save * 1e3,
        publish * 1e3
    );
    Ok(())
}

/// Runs the benchmark job as `ranks` processes sharing `ranks × threads` compute threads; returns
/// the training steps per second rank 0 reports and the whole wall time.
fn throughput(worker: &Path, ranks: usize, threads: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let job = json!({
        "model": {"llama": {"hidden_size": HIDDEN, "intermediate_size": INNER, "layers": LAYERS, "heads": HEADS, "context": CONTEXT}},
        "data": {"addition": {"max_operand": 999, "train_examples": 20000, "eval_examples": 10}},
        "schedule": {"steps": STEPS, "warmup_steps": 5, "global_batch": BATCH},
        "checkpoint": {"every_steps": STEPS, "state_dir": dir.path().join("state")},
        "output": {"repository": dir.path().join("models"), "model": "bench"},
    });
    let path = dir.path().join("job.json");
    std::fs::write(&path, job.to_string())?;
    let mut command = Command::new(worker);
    command.args(["--compute-threads", &(ranks * threads).to_string(), "train", "--config"]).arg(&path);
    if ranks > 1 {
        command.args(["--local-ranks", &ranks.to_string()]);
    }
    let started = Instant::now();
    let output = command.env("RUST_LOG", "warn").output().context("running lantern-worker train")?;
    let wall = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "training failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    // Rank 0's summary: "... (N steps/s); published versions [1]".
    let rate = stdout
        .lines()
        .filter(|line| line.contains("published versions [1"))
        .find_map(|line| line.split(" steps/s").next()?.rsplit('(').next()?.parse::<f64>().ok())
        .with_context(|| format!("no rank 0 summary in {stdout}"))?;
    Ok((rate, wall))
}

/// Seconds for one all-reduce of `megabytes` between two in-process ranks, and buffer GB/s.
fn all_reduce(megabytes: usize) -> anyhow::Result<(f64, f64)> {
    let values = megabytes * 1_000_000 / 4;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let placement = Placement {
                rank,
                world_size: 2,
                coordinator: format!("127.0.0.1:{port}"),
                address: None,
                job: "bench".to_owned(),
                rendezvous_timeout: Duration::from_secs(30),
                token: None,
            };
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut collective = Collective::join(placement, 0, None)?;
                let mut buffer = vec![rank as f32; values];
                let mut times = Vec::new();
                for step in 0..6 {
                    let started = Instant::now();
                    collective.all_reduce_mean(&mut buffer, step, Duration::from_secs(60))?;
                    times.push(started.elapsed().as_secs_f64());
                }
                collective.finish();
                Ok(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    for rank in ranks {
        times = rank.join().map_err(|_| anyhow::anyhow!("a rank panicked"))??;
    }
    // The first round opens the streams; the median of the other five.
    let mut measured = times[1..].to_vec();
    measured.sort_by(f64::total_cmp);
    let seconds = measured[2];
    Ok((seconds, megabytes as f64 / 1000.0 / seconds))
}

/// Seconds to save the benchmark model's training state, and to write and publish its version.
fn checkpoint_times() -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let model = TrainLlama::new(&spec(), 0, &candle_core::Device::Cpu)?;
    let optimizer = AdamW::new(OptimizerSpec::default(), model.params().decay_mask());
    let started = Instant::now();
    checkpoint::save(&dir.path().join("state"), 1, 0.0, |staging| {
        model.params().save(&staging.join(checkpoint::PARAMS_FILE))?;
        optimizer.save(&staging.join(checkpoint::OPTIMIZER_FILE))
    })?;
    let save = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let source: PathBuf = dir.path().join("source");
    std::fs::create_dir_all(&source)?;
    model.write_checkpoint(&source)?;
    let root = dir.path().join("models");
    repository::publish(&PublishRequest {
        repository: &Repository::new(&root),
        model: "bench",
        source: &source,
        version: None,
        metrics: &[],
    })?;
    let publish = started.elapsed().as_secs_f64();
    Ok((save, publish))
}
