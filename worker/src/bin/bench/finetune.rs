//! Fine-tuning figures: SmolLM2-135M-Instruct (the GGUF the serving figures use, dequantized)
//! fine-tuned on the tickets example's conversations (`examples/training/tickets/train.jsonl`),
//! with LoRA rank 8 on q/k/v/o and in full, 1 rank × 2 threads and 2 ranks × 1 thread, each run
//! as `lantern-worker train` processes as a user runs them. Throughput is tokens read per second
//! (padding excluded) between checkpoints, as rank 0's summary reports it; peak memory is each
//! rank's `VmHWM`.
//!
//! The section also writes the exact token batches of the 1-rank runs to
//! `target/bench/finetune-batches.json`, which the PyTorch + transformers + peft peer
//! (`scripts/peers/finetune_torch_bench.py`, run by `scripts/bench-peers.sh`) trains on with
//! the same step, so both sides read the same tokens.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use lantern_runtime::llm::codec::TextCodec;
use lantern_train::config::{DataSpec, JsonlSpec, Overlong};
use lantern_train::data::{Batch, Dataset, Order};
use serde_json::json;

/// Sequences per step (over all ranks), the longest templated sequence, steps timed.
pub const BATCH: usize = 8;
pub const SEQUENCE_LENGTH: usize = 96;
pub const STEPS: u64 = 8;
const SEED: u64 = 1;
pub const TRAIN_DATA: &str = "examples/training/tickets/train.jsonl";
pub const EVAL_DATA: &str = "examples/training/tickets/eval.jsonl";
/// Held-out conversations each run evaluates (at the start and at its one checkpoint); few, as
/// evaluation is not what is measured.
const EVAL_EXAMPLES: usize = 2;
pub const BATCHES_FILE: &str = "target/bench/finetune-batches.json";

pub fn figures(gguf: &Path) -> anyhow::Result<()> {
    let worker = std::env::current_exe()?.with_file_name("lantern-worker");
    anyhow::ensure!(worker.is_file(), "{} is missing: cargo build --release -p lantern-worker", worker.display());
    anyhow::ensure!(
        Path::new(TRAIN_DATA).is_file(),
        "{TRAIN_DATA} is missing: python3 scripts/make-finetune-data.py tickets"
    );
    let tokens_per_step = write_batches(gguf)?;
    println!(
        "\nfine-tuning: SmolLM2-135M-Instruct ({}), {BATCH} conversations per step (≤ {SEQUENCE_LENGTH} tokens, {tokens_per_step:.0} tokens on average), f32, {STEPS} steps",
        gguf.display()
    );
    let dir = tempfile::tempdir()?;
    let eval_path = held_out(dir.path(), EVAL_EXAMPLES)?;
    let lora = json!({"lora": {"rank": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}});
    let base = json!({"model": "smollm2", "version": 1, "import_from": std::env::current_dir()?.join(gguf)});
    for (name, method) in [("LoRA r8 q/k/v/o", lora), ("full", json!("full"))] {
        let model = json!({"fine_tune": {"base": base, "method": method, "sequence_length": SEQUENCE_LENGTH}});
        for (ranks, threads) in [(1, 2), (2, 1)] {
            let run = Run { worker: &worker, model: &model, eval: &eval_path, ranks, threads };
            let measured = run.measure(None)?;
            println!(
                "  {name}, {ranks} rank(s) x {threads} thread(s): {:.0} tokens/s ({:.3} steps/s), peak memory {} MiB per rank",
                measured.tokens_per_second, measured.steps_per_second, measured.peak_mib
            );
        }
    }
    println!("  (the peer: scripts/bench-peers.sh trains PyTorch + peft on {BATCHES_FILE})");
    Ok(())
}

/// The first `count` held-out conversations, written into `dir`.
pub fn held_out(dir: &Path, count: usize) -> anyhow::Result<std::path::PathBuf> {
    let eval: Vec<String> = std::fs::read_to_string(EVAL_DATA)?.lines().take(count).map(str::to_owned).collect();
    let path = dir.join("eval.jsonl");
    std::fs::write(&path, eval.join("\n") + "\n")?;
    Ok(path)
}

/// The tokens of every step's global batch, as the trainer reads them: written for the peer.
/// Returns the mean tokens read per step (each sequence's but the last).
fn write_batches(gguf: &Path) -> anyhow::Result<f64> {
    let mut file = std::fs::File::open(gguf).with_context(|| format!("opening {}", gguf.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let codec = TextCodec::from_gguf(&content.metadata)?;
    let spec = DataSpec::Jsonl(JsonlSpec {
        path: TRAIN_DATA.into(),
        eval_path: Some(EVAL_DATA.into()),
        eval_fraction: 0.0,
        overlong: Overlong::Refuse,
    });
    let dataset = Dataset::load(&spec, SEQUENCE_LENGTH, BATCH, SEED, Some(&codec))?;
    let mut order = Order::new(SEED, dataset.len());
    let mut steps = Vec::new();
    for step in 0..STEPS {
        let Batch::Tokens(sequences) = dataset.gather(&order.global_batch(step, BATCH)) else {
            anyhow::bail!("conversations load as token sequences");
        };
        steps.push(sequences.iter().map(|s| json!({"tokens": s.tokens, "targets": s.targets})).collect::<Vec<_>>());
    }
    let read: usize = (0..STEPS).map(|step| dataset.token_count(&order.global_batch(step, BATCH))).sum::<usize>();
    let path = Path::new(BATCHES_FILE);
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    std::fs::write(path, json!({"steps": steps}).to_string())?;
    Ok(read as f64 / STEPS as f64)
}

/// One `lantern-worker train` run of `STEPS` steps of `BATCH` tickets conversations, one
/// checkpoint at the end: the job file's `model` section, the held-out file, the ranks and each
/// one's threads.
pub struct Run<'a> {
    pub worker: &'a Path,
    pub model: &'a serde_json::Value,
    pub eval: &'a Path,
    pub ranks: usize,
    pub threads: usize,
}

pub struct Measured {
    pub tokens_per_second: f64,
    pub steps_per_second: f64,
    pub peak_mib: u64,
}

impl Run<'_> {
    /// Runs the job and reads rank 0's summary; with `keep`, its repository stays there.
    pub fn measure(&self, keep: Option<&Path>) -> anyhow::Result<Measured> {
        let dir = tempfile::tempdir()?;
        let cwd = std::env::current_dir()?;
        let repository = keep.map_or_else(|| dir.path().join("models"), Path::to_owned);
        let job = json!({
            "model": self.model,
            "data": {"jsonl": {"path": cwd.join(TRAIN_DATA), "eval_path": self.eval}},
            "optimizer": {"learning_rate": 0.002, "weight_decay": 0.0},
            "schedule": {"steps": STEPS, "warmup_steps": 2, "global_batch": BATCH},
            "checkpoint": {"every_steps": STEPS, "state_dir": dir.path().join("state")},
            "output": {"repository": repository, "model": "bench"},
            "seed": SEED,
        });
        let path = dir.path().join("job.json");
        std::fs::write(&path, job.to_string())?;
        let mut command = Command::new(self.worker);
        command.args(["--compute-threads", &(self.ranks * self.threads).to_string(), "train", "--config"]).arg(&path);
        if self.ranks > 1 {
            command.args(["--local-ranks", &self.ranks.to_string()]);
        }
        let started = Instant::now();
        let output = command.env("RUST_LOG", "warn").output().context("running lantern-worker train")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "training failed after {:.0} s: {stdout}{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&output.stderr)
        );
        let summaries: Vec<&str> = stdout.lines().filter(|line| line.contains("trained to step")).collect();
        // Rank 0's summary: "... (N steps/s, M tokens/s between checkpoints); published versions [1]".
        let rank_0 = summaries
            .iter()
            .find(|line| line.contains("published versions [1"))
            .with_context(|| format!("no rank 0 summary in {stdout}"))?;
        let number_before = |unit: &str| -> anyhow::Result<f64> {
            let before = rank_0.split(unit).next().context(unit.to_owned())?;
            let number = before.rsplit([' ', '(']).next().context(unit.to_owned())?;
            number.parse().with_context(|| format!("{unit} in {rank_0}"))
        };
        let peak_mib = summaries
            .iter()
            .filter_map(|line| line.split("peak memory ").nth(1)?.split(" MiB").next()?.parse::<u64>().ok())
            .max()
            .with_context(|| format!("no peak memory in {stdout}"))?;
        Ok(Measured {
            tokens_per_second: number_before(" tokens/s")?,
            steps_per_second: number_before(" steps/s")?,
            peak_mib,
        })
    }
}
