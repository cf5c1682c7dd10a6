//! `bench`: serving and training figures for the README and issue notes. Run in release:
//! `cargo build --release -p lantern-worker && target/release/bench`.
//!
//! 1. ModelInfer on a small MLP at several concurrencies, beside a bare tonic service that answers
//!    the same request with a canned response of the same size (the floor for gRPC on this
//!    machine): requests/s, p50, p99.
//! 2. Version swaps under load: failed requests, time from `publish` to the first request served
//!    by the new version, and resident memory before and after.
//! 3. Language-model generation ([`llm`]): prefill, single-stream and aggregate decode, TTFT.
//! 4. Sentence embeddings ([`llm`]): sentences/s at batch 32.
//! 5. Training ([`train`]): tokens/s with 1 rank × 2 threads and 2 ranks × 1 thread, all-reduce
//!    bandwidth, checkpoint times. Needs the release `lantern-worker` binary beside this one.
//! 6. LoRA adapters ([`adapters`], only when asked for: `--sections adapters`): decode with 8
//!    streams over 1, 4 and 8 adapters beside the bare base, memory per adapter, publish to first
//!    request.
//! 7. Fine-tuning ([`finetune`], only when asked for: `--sections finetune`, about 10 minutes):
//!    SmolLM2 with LoRA and in full, tokens/s and peak memory; writes the batches the PyTorch peer
//!    trains on.
//! 8. The soak ([`soak`], only when asked for: `--sections soak`, 2 × `--soak-seconds`): mixed
//!    valid load with and without attackers, crashes, peak memory and latency side by side.
//! 9. The router ([`router`], only when asked for: `--sections router`): its overhead against
//!    straight to a pod, and one channel's balance over three pods.
//! 10. Compression ([`compress`], only when asked for: `--sections compress`): SmolLM2 quantized
//!     to each type beside its source (size, prefill, decode, held-out loss), and distilled into
//!     a student (training throughput, decode against the teacher's).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use lantern_proto::inference::model_infer_request::InferInputTensor;
use lantern_proto::inference::{self as pb, InferTensorContents};
use lantern_runtime::compute_threads;
use lantern_runtime::model::mlp::{self, Activation};
use lantern_runtime::repository::{self, PublishRequest, Repository};
use lantern_serve::routing::Target;
use lantern_serve::server::{self, RunningServer, ServerOptions};
use lantern_serve::versions::{ServeSettings, VersionState};
use lantern_serve::{dispatch, oip};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

mod adapters;
mod compress;
mod finetune;
mod llm;
mod router;
mod soak;
mod train;

/// mimalloc returns freed pages to the OS promptly; glibc's malloc keeps the memory of unloaded
/// model versions (its mmap threshold grows with every large free), so RSS would climb with
/// each hot reload.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Prints Lantern serving figures")]
struct Args {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Concurrency levels to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Alternating echo/lantern rounds per point; the medians are printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Version swaps under load.
    #[arg(long, default_value_t = 20)]
    swaps: usize,
    /// Hidden width of the MLP used for swaps (bigger shows memory behaviour better).
    #[arg(long, default_value_t = 2048)]
    swap_width: usize,
    /// Which figures to print.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "serving,swaps,llm,embed,train")]
    sections: Vec<Section>,
    /// GGUF model for the language-model figures (fetched by scripts/fetch-test-models.sh).
    #[arg(long, default_value = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
    gguf: std::path::PathBuf,
    /// Sentence-embedding checkpoint for the embedding figures (fetched by the same script).
    #[arg(long, default_value = ".cache/models/all-minilm-l6-v2")]
    minilm: std::path::PathBuf,
    /// Seconds of each of the soak's two runs (clean, then with attackers).
    #[arg(long, default_value_t = 600)]
    soak_seconds: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Serving,
    Swaps,
    Llm,
    Embed,
    Train,
    Finetune,
    Adapters,
    Soak,
    Router,
    Compress,
}

const SMALL_MLP: [usize; 3] = [16, 64, 8];
const CONNECTIONS: usize = 4;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    compute_threads::pin(compute_threads::default_threads());
    // Every section's figures are of this CPU.
    println!("CPU: {}", lantern_runtime::device::cpu_description());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if args.sections.contains(&Section::Serving) {
            throughput(&args).await?;
        }
        if args.sections.contains(&Section::Swaps) {
            swaps(&args).await?;
        }
        if args.sections.contains(&Section::Llm) {
            llm::figures(&args.gguf).await?;
        }
        if args.sections.contains(&Section::Embed) {
            llm::embedding_figures(&args.minilm).await?;
        }
        if args.sections.contains(&Section::Train) {
            tokio::task::block_in_place(train::figures)?;
        }
        if args.sections.contains(&Section::Adapters) {
            adapters::figures(&args.gguf).await?;
        }
        if args.sections.contains(&Section::Finetune) {
            tokio::task::block_in_place(|| finetune::figures(&args.gguf))?;
        }
        if args.sections.contains(&Section::Compress) {
            compress::figures(&args.gguf).await?;
        }
        if args.sections.contains(&Section::Router) {
            router::figures(&args).await?;
        }
        if args.sections.contains(&Section::Soak) {
            soak::figures(&args.gguf, &args.minilm, args.soak_seconds).await?;
        }
        anyhow::Ok(())
    })
}

async fn throughput(args: &Args) -> anyhow::Result<()> {
    let repo = tempfile::tempdir()?;
    publish_mlp(repo.path(), "bench", 1, &SMALL_MLP)?;
    let lantern = start(repo.path(), Duration::from_secs(2)).await?;
    wait_available(&lantern, "bench", 1).await?;
    let request = infer_request("bench", 1, SMALL_MLP[0]);
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", lantern.local_addr())).await?;
    let canned = client.model_infer(request.clone()).await?.into_inner();
    let echo = start_echo(canned.clone()).await?;

    println!(
        "ModelInfer, MLP {SMALL_MLP:?}, 1 row FP32 typed: request {} B, response {} B; {CONNECTIONS} connections; median of {} rounds of {} s",
        prost::Message::encoded_len(&request),
        prost::Message::encoded_len(&canned),
        args.rounds,
        args.seconds
    );
    println!(
        "{:>11} | {:>27} | {:>27} | {:>13} {:>11}",
        "concurrency", "tonic echo: req/s p50 p99", "lantern: req/s p50 p99", "rps ratio", "p50 ratio"
    );
    for &concurrency in &args.concurrency {
        let duration = Duration::from_secs(args.seconds);
        let (mut base, mut ours) = (Vec::new(), Vec::new());
        // Alternate the two servers so drift on a shared machine hits both alike.
        for _ in 0..args.rounds.max(1) {
            base.push(load(echo, &request, concurrency, duration).await?);
            ours.push(load(lantern.local_addr(), &request, concurrency, duration).await?);
        }
        let (base, ours) = (Stats::median(base), Stats::median(ours));
        println!(
            "{concurrency:>11} | {} | {} | {:>13.2} {:>11.2}",
            base.row(),
            ours.row(),
            ours.rps / base.rps,
            ours.p50.as_secs_f64() / base.p50.as_secs_f64()
        );
        anyhow::ensure!(
            base.failed + ours.failed == 0,
            "failed requests: echo {} lantern {}",
            base.failed,
            ours.failed
        );
    }
    core_latency(&lantern, &request).await?;
    lantern.shutdown().await?;
    Ok(())
}

/// Latency of the serving core alone (routing, validation, batching, the forward pass), without
/// gRPC: the part of the gap to the echo floor that is not protocol.
async fn core_latency(lantern: &RunningServer, request: &pb::ModelInferRequest) -> anyhow::Result<()> {
    let manager = lantern.manager();
    let target = Target::Default;
    let mut latencies = Vec::new();
    for _ in 0..20_000 {
        let infer = oip::request_from_proto(request.clone())?;
        let sent = Instant::now();
        dispatch::infer(manager, "bench", &target, None, infer).await?;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let pick = |q: f64| latencies[(latencies.len() as f64 * q) as usize];
    println!(
        "in-process ModelManager::infer, concurrency 1 (no network): p50 {:.0}µs p99 {:.0}µs",
        micros(pick(0.5)),
        micros(pick(0.99))
    );
    Ok(())
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    failed: u64,
}

impl Stats {
    /// Per-field medians of several runs; failures add up.
    fn median(runs: Vec<Stats>) -> Stats {
        fn mid<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
            values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN in measurements"));
            values[values.len() / 2]
        }
        Stats {
            rps: mid(runs.iter().map(|r| r.rps).collect()),
            p50: mid(runs.iter().map(|r| r.p50).collect()),
            p99: mid(runs.iter().map(|r| r.p99).collect()),
            failed: runs.iter().map(|r| r.failed).sum(),
        }
    }

    fn row(&self) -> String {
        format!("{:>9.0} {:>7.0}µs {:>7.0}µs", self.rps, micros(self.p50), micros(self.p99))
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `concurrency` closed-loop clients over a few shared connections for `duration`.
async fn load(
    addr: SocketAddr,
    request: &pb::ModelInferRequest,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS.min(concurrency) {
        channels.push(Channel::from_shared(format!("http://{addr}"))?.connect().await?);
    }
    // Warm up every connection.
    for channel in &channels {
        GrpcInferenceServiceClient::new(channel.clone()).model_infer(request.clone()).await?;
    }
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone());
            let request = request.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match client.model_infer(request.clone()).await {
                        Ok(_) => latencies.push(sent.elapsed()),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Stats {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        failed: failed.load(Ordering::Relaxed),
    })
}

async fn swaps(args: &Args) -> anyhow::Result<()> {
    let layers = [256, args.swap_width, args.swap_width, 256];
    let repo = tempfile::tempdir()?;
    publish_mlp(repo.path(), "swap", 1, &layers)?;
    let version_bytes = std::fs::metadata(repo.path().join("swap/1").join(mlp::WEIGHTS_FILE))?.len();
    let load_time = time_one_load(repo.path(), "swap", 1)?;
    let poll = Duration::from_millis(500);
    let lantern = start(repo.path(), poll).await?;
    wait_available(&lantern, "swap", 1).await?;

    let addr = lantern.local_addr();
    let request = infer_request("swap", 1, layers[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let first_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut client = GrpcInferenceServiceClient::new(channel.clone());
            let (request, stop, failed, served, first_seen) =
                (request.clone(), stop.clone(), failed.clone(), served.clone(), first_seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.model_infer(request.clone()).await {
                        Ok(response) => {
                            served.fetch_add(1, Ordering::Relaxed);
                            let version = response.into_inner().model_version;
                            first_seen.lock().unwrap().entry(version).or_insert_with(Instant::now);
                        }
                        Err(status) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("request failed: {status}");
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_one_version = resident_bytes()?;

    let mut to_first_served = Vec::new();
    for swap in 0..args.swaps {
        let version = swap as u64 + 2;
        publish_mlp(repo.path(), "swap", version, &layers)?;
        let published = Instant::now();
        let seen = loop {
            if let Some(&at) = first_seen.lock().unwrap().get(&version.to_string()) {
                break at;
            }
            anyhow::ensure!(published.elapsed() < Duration::from_secs(60), "version {version} never served");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        to_first_served.push(seen.saturating_duration_since(published));
        wait_state(&lantern, "swap", version - 1, VersionState::End).await?;
        // Old version directories go away as they would with retention; their memory must too.
        std::fs::remove_dir_all(repo.path().join("swap").join((version - 1).to_string()))?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = resident_bytes()?;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    lantern.shutdown().await?;

    let mean = to_first_served.iter().sum::<Duration>() / to_first_served.len().max(1) as u32;
    let max = to_first_served.iter().max().copied().unwrap_or_default();
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!();
    println!(
        "{} version swaps under load (8 clients), MLP {layers:?} ({:.1} MiB of weights), poll interval {} ms",
        args.swaps,
        mb(version_bytes),
        poll.as_millis()
    );
    println!("  requests served: {}, failed: {}", served.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "  publish → first request served by the new version: mean {:.0} ms, max {:.0} ms (goal: poll interval + load time = {:.0} ms)",
        mean.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        (poll + load_time).as_secs_f64() * 1e3
    );
    println!(
        "  resident memory: {:.1} MiB with one version loaded, {:.1} MiB after the swaps ({:+.1} MiB, {:+.0}% of one version)",
        mb(rss_one_version),
        mb(rss_after),
        (rss_after as f64 - rss_one_version as f64) / (1 << 20) as f64,
        100.0 * (rss_after as f64 - rss_one_version as f64) / version_bytes as f64
    );
    Ok(())
}

/// How long verifying and loading one version takes, measured outside the server.
fn time_one_load(root: &Path, model: &str, version: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let verified = Repository::new(root).read_verified(model, version)?;
    let _model = lantern_runtime::model::load(model, version, &verified, &candle_core::Device::Cpu)?;
    Ok(started.elapsed())
}

async fn start(repo: &Path, poll_interval: Duration) -> anyhow::Result<RunningServer> {
    let settings = ServeSettings { poll_interval, ..ServeSettings::default() };
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse()?,
        shutdown_grace: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    Ok(server::start(Repository::new(repo), settings, options).await?)
}

async fn wait_available(server: &RunningServer, model: &str, version: u64) -> anyhow::Result<()> {
    wait_state(server, model, version, VersionState::Available).await
}

async fn wait_state(server: &RunningServer, model: &str, version: u64, state: VersionState) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A model published a moment ago is unknown until the next repository scan.
        let status = server.manager().status(Some(model)).unwrap_or_default();
        let versions = status.first().map(|model| model.versions.as_slice()).unwrap_or_default();
        let current = versions.iter().find(|v| v.version == version).map(|v| (v.state, v.reason.clone()));
        if current.as_ref().is_some_and(|(s, _)| *s == state) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{model} v{version} did not reach {state:?}: {current:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn publish_mlp(root: &Path, model: &str, seed: u64, layers: &[usize]) -> anyhow::Result<u64> {
    let source = tempfile::tempdir()?;
    let config = mlp::Config { layers: layers.to_vec(), activation: Activation::Relu };
    config.write_initialised(source.path(), seed)?;
    Ok(repository::publish(&PublishRequest {
        repository: &Repository::new(root),
        model,
        source: source.path(),
        version: None,
        metrics: &[],
    })?)
}

fn infer_request(model: &str, rows: usize, width: usize) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        id: "bench".into(),
        inputs: vec![InferInputTensor {
            name: mlp::INPUT.into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, width as i64],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                fp32_contents: (0..rows * width).map(|i| (i % 7) as f32 / 7.0).collect(),
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
}

fn resident_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?;
    Ok(kib * 1024)
}

/// The floor: a tonic server that answers ModelInfer with a canned response of the same size.
struct Echo {
    response: pb::ModelInferResponse,
}

async fn start_echo(response: pb::ModelInferResponse) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(GrpcInferenceServiceServer::new(Echo { response }))
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the echo service only answers ModelInfer"))
}

#[tonic::async_trait]
impl GrpcInferenceService for Echo {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        unimplemented()
    }
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        unimplemented()
    }
    async fn model_ready(&self, _: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        unimplemented()
    }
    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        unimplemented()
    }
    async fn model_metadata(
        &self,
        _: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        unimplemented()
    }
    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(pb::ModelInferResponse { id, ..self.response.clone() }))
    }
    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        unimplemented()
    }
    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        unimplemented()
    }
    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        unimplemented()
    }
}
