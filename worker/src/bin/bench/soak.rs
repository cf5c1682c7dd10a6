//! The soak: `--soak-seconds` (600) of mixed load against one `lantern-worker serve` process (the
//! release binary beside this one, default flags, as a user runs it) serving an MLP, SmolLM2 and
//! MiniLM, with a new MLP version published every 30 s. Valid clients call gRPC `ModelInfer`
//! (the MLP), `Generate` (a short chat) and `Embed` (four texts) in closed loops. The run is done
//! twice from one sitting: clean, then with attackers beside the valid clients —
//! - fuzzed bodies: valid JSON requests with random bytes flipped, cut or inserted, posted to the
//!   OIP REST and OpenAI endpoints, and `ModelInfer` with random shapes, datatypes and bytes;
//! - oversized and out-of-bounds requests: an 8 MiB OpenAI body, BYTES `[2^43]` with no bytes,
//!   `max_tokens` `2^64 − 1`, 1,000 stop strings, 5,000 embedding texts;
//! - slow and idle clients: up to 100 connections sending a request body a byte at a time, and
//!   300 connections that send nothing.
//!
//! It prints, per run: whether the worker died, its peak resident memory (`VmHWM`), the valid
//! requests and how many failed, and their p50 and p99 per kind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::inference::model_infer_request::InferInputTensor;
use lantern_proto::inference::{ModelInferRequest, ModelReadyRequest};
use lantern_proto::lantern::v1::embedding_service_client::EmbeddingServiceClient;
use lantern_proto::lantern::v1::generate_request::Input;
use lantern_proto::lantern::v1::generation_service_client::GenerationServiceClient;
use lantern_proto::lantern::v1::{self as pb};
use lantern_runtime::repository::{self, PublishRequest, Repository};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{infer_request, publish_mlp};

const MLP: &str = "iris";
const LLM: &str = "smollm2";
const EMBED: &str = "minilm";
const MLP_LAYERS: [usize; 3] = [4, 16, 3];
const SWAP_EVERY: Duration = Duration::from_secs(30);

/// Runs the soak clean and attacked and prints both.
pub async fn figures(gguf: &Path, minilm: &Path, seconds: u64) -> anyhow::Result<()> {
    if !gguf.is_file() || !minilm.is_dir() {
        println!("\nsoak: the test models are missing; run scripts/fetch-test-models.sh");
        return Ok(());
    }
    let worker = std::env::current_exe()?.with_file_name("lantern-worker");
    anyhow::ensure!(worker.is_file(), "{} is missing: cargo build --release -p lantern-worker", worker.display());
    let duration = Duration::from_secs(seconds);
    println!("\nsoak: {seconds} s per run against one worker; a new {MLP} version every {} s", SWAP_EVERY.as_secs());
    let clean = run(&worker, gguf, minilm, duration, false).await?;
    let attacked = run(&worker, gguf, minilm, duration, true).await?;
    println!("{:<34} | {:>22} | {:>22}", "", "clean", "with attackers");
    let row = |name: &str, a: String, b: String| println!("{name:<34} | {a:>22} | {b:>22}");
    row("worker crashed", clean.crashed.to_string(), attacked.crashed.to_string());
    row("peak resident memory", mib(clean.peak_rss), mib(attacked.peak_rss));
    row("attacking requests sent", clean.attacks.to_string(), attacked.attacks.to_string());
    row("versions published", clean.swaps.to_string(), attacked.swaps.to_string());
    for kind in ["tensor", "chat", "embed"] {
        let (a, b) = (&clean.valid[kind], &attacked.valid[kind]);
        row(&format!("{kind}: requests (failed)"), a.counts(), b.counts());
        row(&format!("{kind}: p50 / p99"), a.quantiles(), b.quantiles());
    }
    let ratio = |f: &dyn Fn(&Report) -> f64| f(&attacked) / f(&clean).max(f64::MIN_POSITIVE);
    println!(
        "goals: crashes 0 (got {}), peak RSS ≤ 1.5× clean (got {:.2}×), p99 ≤ 2× clean (tensor {:.2}×, chat {:.2}×, \
         embed {:.2}×), failed valid requests 0 (got {})",
        u8::from(attacked.crashed),
        ratio(&|r| r.peak_rss as f64),
        ratio(&|r| r.valid["tensor"].quantile(0.99)),
        ratio(&|r| r.valid["chat"].quantile(0.99)),
        ratio(&|r| r.valid["embed"].quantile(0.99)),
        attacked.valid.values().map(|v| v.failed).sum::<u64>(),
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// What one run saw.
struct Report {
    crashed: bool,
    peak_rss: u64,
    attacks: u64,
    swaps: u64,
    valid: BTreeMap<&'static str, Latencies>,
}

#[derive(Default)]
struct Latencies {
    seconds: Vec<f64>,
    failed: u64,
}

impl Latencies {
    fn quantile(&self, q: f64) -> f64 {
        let mut sorted = self.seconds.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0.0)
    }

    fn counts(&self) -> String {
        format!("{} ({})", self.seconds.len() as u64 + self.failed, self.failed)
    }

    fn quantiles(&self) -> String {
        format!("{:.1} / {:.1} ms", self.quantile(0.5) * 1e3, self.quantile(0.99) * 1e3)
    }
}

type Shared = Arc<Mutex<BTreeMap<&'static str, Latencies>>>;

fn record(valid: &Shared, kind: &'static str, started: Instant, ok: bool) {
    let mut valid = valid.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let entry = valid.entry(kind).or_default();
    match ok {
        true => entry.seconds.push(started.elapsed().as_secs_f64()),
        false => entry.failed += 1,
    }
}

struct Worker {
    child: Child,
    address: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    /// `VmHWM` (peak resident memory) and `VmRSS` from `/proc`, or `None` once the process is gone.
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

async fn run(binary: &Path, gguf: &Path, minilm: &Path, duration: Duration, attack: bool) -> anyhow::Result<Report> {
    let repo = tempfile::tempdir()?;
    let root = repo.path().to_owned();
    publish_mlp(&root, MLP, 1, &MLP_LAYERS)?;
    for (model, source) in [(LLM, gguf), (EMBED, minilm)] {
        repository::publish(&PublishRequest {
            repository: &Repository::new(&root),
            model,
            source,
            version: None,
            metrics: &[],
        })?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address = format!("127.0.0.1:{port}");
    let child = Command::new(binary)
        .args(["serve", "--repository"])
        .arg(&root)
        .args(["--listen", &address, "--poll-interval-ms", "500", "--kv-cache-mib", "64"])
        .env("LANTERN_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting lantern-worker serve")?;
    let mut worker = Worker { child, address };
    wait_ready(&worker.address).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let valid: Shared = Arc::default();
    let attacks = Arc::new(AtomicU64::new(0));
    let swaps = Arc::new(AtomicU64::new(0));
    let url = format!("http://{}", worker.address);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(tensor_client(url.clone(), valid.clone(), stop.clone())));
    }
    tasks.push(tokio::spawn(chat_client(url.clone(), valid.clone(), stop.clone())));
    tasks.push(tokio::spawn(embed_client(url.clone(), valid.clone(), stop.clone())));
    tasks.push(tokio::spawn(swapper(root.clone(), swaps.clone(), stop.clone())));
    if attack {
        tasks.push(tokio::spawn(fuzzer(worker.address.clone(), url.clone(), attacks.clone(), stop.clone())));
        tasks.push(tokio::spawn(oversized(worker.address.clone(), url.clone(), attacks.clone(), stop.clone())));
        tasks.push(tokio::spawn(slow_and_idle(worker.address.clone(), attacks.clone(), stop.clone())));
    }
    let deadline = Instant::now() + duration;
    let mut crashed = false;
    let mut peak_rss = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = worker.peak_rss().unwrap_or(peak_rss).max(peak_rss);
        if !worker.alive() {
            crashed = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    crashed |= !worker.alive();
    peak_rss = worker.peak_rss().unwrap_or(peak_rss).max(peak_rss);
    let valid = std::mem::take(&mut *valid.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    Ok(Report {
        crashed,
        peak_rss,
        attacks: attacks.load(Ordering::Relaxed),
        swaps: swaps.load(Ordering::Relaxed),
        valid,
    })
}

async fn wait_ready(address: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the worker on {address} did not load its models in 120 s");
        if let Ok(mut client) = GrpcInferenceServiceClient::connect(format!("http://{address}")).await {
            let mut ready = true;
            for model in [MLP, LLM, EMBED] {
                let request = ModelReadyRequest { name: model.into(), version: String::new() };
                ready &= client.model_ready(request).await.is_ok_and(|r| r.into_inner().ready);
            }
            if ready {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn tensor_client(url: String, valid: Shared, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut client = GrpcInferenceServiceClient::connect(url).await?;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = client.model_infer(infer_request(MLP, 1, MLP_LAYERS[0])).await.is_ok();
        record(&valid, "tensor", started, ok);
    }
    Ok(())
}

async fn chat_client(url: String, valid: Shared, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut client = GenerationServiceClient::connect(url).await?;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let chat = pb::Chat { messages: vec![pb::ChatMessage { role: "user".into(), content: "Say hi.".into() }] };
        let request = pb::GenerateRequest {
            model_name: LLM.into(),
            input: Some(Input::Chat(chat)),
            max_tokens: Some(8),
            temperature: Some(0.0),
            ..Default::default()
        };
        let ok = match client.generate(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut ok = true;
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => {
                            ok = false;
                            break;
                        }
                    }
                }
                ok
            }
            Err(_) => false,
        };
        record(&valid, "chat", started, ok);
    }
    Ok(())
}

async fn embed_client(url: String, valid: Shared, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut client = EmbeddingServiceClient::connect(url).await?;
    let texts: Vec<String> =
        ["A cat sits on the mat.", "Stock prices rose today.", "It rained.", "Hello there."].map(String::from).to_vec();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let request = pb::EmbedRequest { model_name: EMBED.into(), texts: texts.clone(), ..Default::default() };
        let ok = client.embed(request).await.is_ok();
        record(&valid, "embed", started, ok);
    }
    Ok(())
}

async fn swapper(root: PathBuf, swaps: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut seed = 1;
    loop {
        let next = Instant::now() + SWAP_EVERY;
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seed += 1;
        let root = root.clone();
        tokio::task::spawn_blocking(move || publish_mlp(&root, MLP, seed, &MLP_LAYERS)).await??;
        swaps.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `request` (a whole HTTP/1.1 request) on a fresh connection and reads the answer for at
/// most `wait`; the answer's status code, if one came.
async fn http(address: &str, request: &[u8], wait: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream.write_all(request).await.ok()?;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(wait, stream.read(&mut answer)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Valid bodies for the fuzzer to mutate, with their paths.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "/v2/models/iris/infer",
            br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#.to_vec(),
        ),
        (
            "/v1/chat/completions",
            br#"{"model":"smollm2","max_tokens":4,"messages":[{"role":"user","content":"hi"}],"stop":["x"]}"#.to_vec(),
        ),
        (
            "/v1/completions",
            br#"{"model":"smollm2","prompt":"Once","max_tokens":4,"temperature":0.5,"top_k":4}"#.to_vec(),
        ),
        ("/v1/embeddings", br#"{"model":"minilm","input":["a cat","a dog"],"encoding_format":"base64"}"#.to_vec()),
    ]
}

fn mutate(rng: &mut rand::rngs::StdRng, body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..body.len().max(1));
        match rng.random_range(0..4) {
            0 if !body.is_empty() => {
                let last = body.len() - 1;
                body[at.min(last)] = rng.random();
            }
            1 => body.insert(at.min(body.len()), rng.random()),
            2 => body.truncate(at),
            _ => {
                let digits = ["9", "-1", "1e309", "18446744073709551615", "null", "[]", "{}"];
                let text = digits[rng.random_range(0..digits.len())].as_bytes();
                let at = at.min(body.len());
                body.splice(at..at, text.iter().copied());
            }
        }
    }
    body
}

async fn fuzzer(address: String, url: String, attacks: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut grpc = GrpcInferenceServiceClient::connect(url).await?;
    let seeds = seeds();
    let datatypes = ["FP32", "FP16", "BF16", "FP64", "INT8", "INT64", "UINT64", "BOOL", "BYTES", "NOPE"];
    while !stop.load(Ordering::Relaxed) {
        let (path, body) = &seeds[rng.random_range(0..seeds.len())];
        let _ = http(&address, &post(path, &mutate(&mut rng, body)), Duration::from_secs(10)).await;
        let shape: Vec<i64> = (0..rng.random_range(0..4))
            .map(|_| {
                let bits = rng.random_range(0..62);
                rng.random_range(-2..1i64 << bits)
            })
            .collect();
        let raw: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let request = ModelInferRequest {
            model_name: [MLP, LLM, EMBED, "nope"][rng.random_range(0..4)].into(),
            inputs: vec![InferInputTensor {
                name: ["input", "text_input", "x"][rng.random_range(0..3)].into(),
                datatype: datatypes[rng.random_range(0..datatypes.len())].into(),
                shape,
                ..Default::default()
            }],
            raw_input_contents: vec![raw],
            ..Default::default()
        };
        let _ = grpc.model_infer(request).await;
        attacks.fetch_add(2, Ordering::Relaxed);
    }
    Ok(())
}

async fn oversized(address: String, url: String, attacks: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut grpc = GrpcInferenceServiceClient::connect(url.clone()).await?;
    let mut generate = GenerationServiceClient::connect(url).await?;
    let big_prompt = format!(r#"{{"model":"smollm2","prompt":"{}","max_tokens":4}}"#, "x".repeat(8 << 20));
    let stops = serde_json::json!({"model": LLM, "prompt": "Hi", "stop": vec!["x"; 1000]}).to_string();
    let texts = serde_json::json!({"model": EMBED, "input": vec!["x"; 5000]}).to_string();
    let max_tokens = r#"{"model":"smollm2","prompt":"Once","max_tokens":18446744073709551615}"#;
    while !stop.load(Ordering::Relaxed) {
        let _ = http(&address, &post("/v1/completions", big_prompt.as_bytes()), Duration::from_secs(10)).await;
        let _ = http(&address, &post("/v1/completions", stops.as_bytes()), Duration::from_secs(10)).await;
        let _ = http(&address, &post("/v1/embeddings", texts.as_bytes()), Duration::from_secs(10)).await;
        let _ = http(&address, &post("/v1/completions", max_tokens.as_bytes()), Duration::from_secs(10)).await;
        let huge = ModelInferRequest {
            model_name: MLP.into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "BYTES".into(),
                shape: vec![1 << 43],
                ..Default::default()
            }],
            raw_input_contents: vec![Vec::new()],
            ..Default::default()
        };
        let _ = grpc.model_infer(huge).await;
        let request = pb::GenerateRequest {
            model_name: LLM.into(),
            input: Some(Input::Prompt("Once".into())),
            max_tokens: Some(u32::MAX),
            ..Default::default()
        };
        let _ = generate.generate(request).await;
        attacks.fetch_add(6, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Keeps up to 100 slow-body and 300 idle connections open, reopening what the server closes.
async fn slow_and_idle(address: String, attacks: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut slow: Vec<TcpStream> = Vec::new();
    let mut idle: Vec<TcpStream> = Vec::new();
    let head = b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{";
    while !stop.load(Ordering::Relaxed) {
        while slow.len() < 100 {
            let Ok(mut stream) = TcpStream::connect(&address).await else { break };
            if stream.write_all(head).await.is_err() {
                break;
            }
            slow.push(stream);
            attacks.fetch_add(1, Ordering::Relaxed);
        }
        while idle.len() < 300 {
            let Ok(stream) = TcpStream::connect(&address).await else { break };
            idle.push(stream);
            attacks.fetch_add(1, Ordering::Relaxed);
        }
        // A byte each for the slow ones; the ones the server closed are dropped and replaced.
        let mut open = Vec::new();
        for mut stream in slow.drain(..) {
            if stream.write_all(b" ").await.is_ok() {
                open.push(stream);
            }
        }
        slow = open;
        let mut probe = [0u8; 1];
        idle.retain(|stream| !matches!(stream.try_read(&mut probe), Ok(0)));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}
