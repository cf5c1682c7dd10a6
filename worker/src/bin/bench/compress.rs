//! Compression figures (`--sections compress`, about 10 minutes):
//!
//! - Quantization: SmolLM2-135M-Instruct (the Q4_1 GGUF the serving figures use, llama.cpp's mix
//!   of types) written again by Lantern as Q8_0, Q4_0, pure Q4_1 and Q4_K (with llama.cpp's Q5_0
//!   fallback for rows of 576 values), in one table with the
//!   source: file size, prefill (a 256-token prompt, median of 3) and single-stream decode
//!   (128 tokens) through a running worker's gRPC `Generate`, greedy, and held-out loss and
//!   exact-match accuracy on tickets conversations, each file loaded as serving loads it. The
//!   written files are copied to `target/bench/compress/` for llama.cpp's figures on the very
//!   same files (`scripts/bench-peers.sh`).
//! - Distillation: `lantern-worker train` distilling SmolLM2 into 8 of its 30 layers on the
//!   tickets conversations, the student's tokens/s with the teacher's forward included (rank 0's
//!   summary, checkpoints excluded); then the student's decode speed against the teacher's,
//!   in-process greedy decoding without a stop token so that both decode the same tokens: the
//!   student as trained (f32) and quantized to Q4_1 like its teacher.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lantern_proto::lantern::v1::generation_service_client::GenerationServiceClient;
use lantern_runtime::compute_threads;
use lantern_runtime::llm::greedy::{self, Prompt};
use lantern_runtime::model::{LoadedModel, llama::Llama};
use lantern_runtime::repository::{self, PublishRequest, Repository};
use lantern_train::config::{BaseSpec, GgufType};
use lantern_train::quantize::{GGUF_FILE, Heldout, Source};
use serde_json::json;

use super::finetune::{self, Run};
use super::llm::{self, NEW_TOKENS, Prompts};
use super::{start, wait_available};

/// Held-out tickets conversations each file is measured on.
const HELD_OUT: usize = 8;
/// Where the written GGUF files are kept for the llama.cpp peer.
pub const WRITTEN_DIR: &str = "target/bench/compress";
/// The teacher's layers the student keeps.
const STUDENT_LAYERS: [usize; 8] = [0, 4, 8, 12, 16, 20, 24, 29];

/// One row of the quantization table.
struct Row {
    model: String,
    label: String,
    bytes: u64,
    loss: f64,
    accuracy: f64,
}

pub async fn figures(gguf: &Path) -> anyhow::Result<()> {
    let worker = std::env::current_exe()?.with_file_name("lantern-worker");
    anyhow::ensure!(worker.is_file(), "{} is missing: cargo build --release -p lantern-worker", worker.display());
    anyhow::ensure!(gguf.is_file(), "{} is missing: run scripts/fetch-test-models.sh", gguf.display());
    let repo = tempfile::tempdir()?;
    let repository = Repository::new(repo.path());
    repository::publish(&PublishRequest {
        repository: &repository,
        model: "source",
        source: gguf,
        version: None,
        metrics: &[],
    })?;
    let data = tempfile::tempdir()?;
    let eval = finetune::held_out(data.path(), HELD_OUT)?;
    println!(
        "\nquantization: SmolLM2-135M-Instruct ({}), held-out: {HELD_OUT} tickets conversations; {} threads",
        gguf.display(),
        compute_threads::default_threads()
    );
    let rows = tokio::task::block_in_place(|| quantize(&repository, &eval))?;

    let server = start(repo.path(), Duration::from_secs(2)).await?;
    for row in &rows {
        wait_available(&server, &row.model, 1).await?;
    }
    let client = GenerationServiceClient::connect(format!("http://{}", server.local_addr())).await?;
    let prompts = Prompts::new(gguf)?;
    println!(
        "  {:<24} {:>9} {:>7} {:>14} {:>13} {:>14} {:>9}",
        "file", "size", "ratio", "prefill tok/s", "decode tok/s", "held-out loss", "accuracy"
    );
    for row in &rows {
        llm::generate(client.clone(), row.model.clone(), prompts.short(0), 4).await?;
        let mut prefill = Vec::new();
        for index in 0..3 {
            prefill
                .push(llm::generate(client.clone(), row.model.clone(), prompts.long(index), 1).await?.prefill_rate());
        }
        prefill.sort_by(f64::total_cmp);
        let decode = llm::generate(client.clone(), row.model.clone(), prompts.short(1), NEW_TOKENS).await?;
        println!(
            "  {:<24} {:>6.1} MB {:>6.2}x {:>14.1} {:>13.1} {:>14.3} {:>9.2}",
            row.label,
            row.bytes as f64 / 1e6,
            row.bytes as f64 / rows[0].bytes as f64,
            prefill[1],
            decode.decode_rate(),
            row.loss,
            row.accuracy
        );
    }
    server.shutdown().await?;
    println!("  (the files: {WRITTEN_DIR}/; llama.cpp on them: SECTIONS=compress scripts/bench-peers.sh)");
    tokio::task::block_in_place(|| distillation(&worker, gguf, &repository))
}

/// Quantizes the source into each type, keeping a copy of each file; the rows, source first.
fn quantize(repository: &Repository, eval: &Path) -> anyhow::Result<Vec<Row>> {
    let spec = BaseSpec { repository: None, model: "source".into(), version: 1, digest: None, import_from: None };
    let source = Source::read(repository, &spec, "source")?;
    let heldout = Heldout::read(eval, &source)?;
    std::fs::create_dir_all(WRITTEN_DIR)?;
    let mut rows = Vec::new();
    for ty in [GgufType::Q8_0, GgufType::Q4_0, GgufType::Q4_1, GgufType::Q4K] {
        let model = ty.to_string().to_lowercase();
        let done = source.publish(ty, repository, &model, Some(&heldout))?;
        let metric = |name: &str| done.metrics.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, v)| *v);
        if rows.is_empty() {
            let label = "source (llama.cpp Q4_1)".to_owned();
            let (loss, accuracy) = (metric("baseline_eval_loss"), metric("baseline_eval_accuracy"));
            rows.push(Row { model: "source".into(), label, bytes: done.source_bytes, loss, accuracy });
        }
        let dir =
            repository.version_dir(&model, done.version).ok_or_else(|| anyhow::anyhow!("{model} is not local"))?;
        let written = dir.join(GGUF_FILE);
        std::fs::copy(&written, PathBuf::from(WRITTEN_DIR).join(format!("smollm2-{model}.gguf")))?;
        let label = format!("Lantern {ty}");
        rows.push(Row {
            model,
            label,
            bytes: done.bytes,
            loss: metric("eval_loss"),
            accuracy: metric("eval_accuracy"),
        });
    }
    Ok(rows)
}

/// Distils SmolLM2 into `STUDENT_LAYERS` and compares the student's decoding with the teacher's.
fn distillation(worker: &Path, gguf: &Path, repository: &Repository) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let eval = finetune::held_out(data.path(), 2)?;
    let students = data.path().join("models");
    let teacher = json!({"model": "smollm2", "version": 1, "import_from": std::env::current_dir()?.join(gguf)});
    let model = json!({"distill": {"teacher": teacher, "student": {"layers": STUDENT_LAYERS},
        "sequence_length": finetune::SEQUENCE_LENGTH, "top_k": 32, "cross_entropy_weight": 0.5}});
    println!(
        "\ndistillation: SmolLM2-135M-Instruct (Q4_1 GGUF) into {} of its 30 layers, {} conversations per step, {} steps",
        STUDENT_LAYERS.len(),
        finetune::BATCH,
        finetune::STEPS
    );
    for (ranks, threads) in [(1, 2), (2, 1)] {
        let run = Run { worker, model: &model, eval: &eval, ranks, threads };
        let keep = (ranks == 1).then_some(students.as_path());
        let measured = run.measure(keep)?;
        println!(
            "  {ranks} rank(s) x {threads} thread(s): {:.0} student tokens/s with the teacher's forward ({:.3} steps/s), peak memory {} MiB per rank",
            measured.tokens_per_second, measured.steps_per_second, measured.peak_mib
        );
    }
    let students = Repository::new(&students);
    let load = |repository: &Repository, model: &str| -> anyhow::Result<Llama> {
        let verified = repository.read_verified(model, 1)?;
        match lantern_runtime::model::load(model, 1, &verified, &candle_core::Device::Cpu)? {
            LoadedModel::Generate { model, .. } => Ok(*model),
            _ => anyhow::bail!("{model} is not a language model"),
        }
    };
    let spec = BaseSpec { repository: None, model: "bench".into(), version: 1, digest: None, import_from: None };
    Source::read(&students, &spec, "student")?.publish(GgufType::Q4_1, &students, "bench-q4_1", None)?;
    let prompts = Prompts::new(gguf)?;
    let prompt = prompts.short_ids(0);
    let teacher = decode_rate(&load(repository, "source")?, prompt)?;
    let student = decode_rate(&load(&students, "bench")?, prompt)?;
    let quantized = decode_rate(&load(&students, "bench-q4_1")?, prompt)?;
    println!(
        "  decode, 1 stream, {NEW_TOKENS} tokens in-process: teacher (30 layers, Q4_1) {teacher:.1} tokens/s; \
         student (f32) {student:.1} tokens/s ({:.2}x); student as Q4_1 {quantized:.1} tokens/s ({:.2}x)",
        student / teacher,
        quantized / teacher
    );
    Ok(())
}

/// Greedy tokens per second after the first, decoding `NEW_TOKENS` after `prompt` with no stop.
fn decode_rate(model: &Llama, prompt: &[u32]) -> anyhow::Result<f64> {
    let timed = |max_tokens: usize| -> anyhow::Result<Duration> {
        let started = Instant::now();
        greedy::generate(model, &[Prompt { tokens: prompt.to_vec(), max_tokens, adapter: None }], &[])?;
        Ok(started.elapsed())
    };
    timed(4)?;
    let first = timed(1)?;
    let all = timed(NEW_TOKENS as usize)?;
    Ok(f64::from(NEW_TOKENS - 1) / (all - first).as_secs_f64())
}
