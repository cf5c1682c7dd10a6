//! `lantern-worker`: serve model versions, train a model into versions, publish a version, or
//! create a fresh MLP to publish.

mod launch;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lantern_contract::env;
use lantern_runtime::compute_threads;
use lantern_runtime::device::{self, DeviceSpec};
use lantern_runtime::model::mlp;
use lantern_runtime::repository::{self, CacheSettings, PublishRequest, RemoteSettings, Repository};
use lantern_serve::auth::Credentials;
use lantern_serve::batcher::BatchSettings;
use lantern_serve::config::{ModelPolicy, VersionPolicy};
use lantern_serve::connections::{ConnectionLimits, Tls};
use lantern_serve::engine::EngineSettings;
use lantern_serve::server::{self, ServerOptions};
use lantern_serve::versions::ServeSettings;
use lantern_train::{self as train, config, trainer};

/// mimalloc returns freed pages to the OS promptly; glibc's malloc keeps the memory of unloaded
/// model versions (its mmap threshold grows with every large free), so RSS would climb with
/// each hot reload.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "lantern-worker",
    version,
    about = "Lantern's data plane: train, serve, publish and create model versions"
)]
struct Args {
    #[command(flatten)]
    telemetry: lantern_telemetry::TelemetryArgs,
    /// Threads for model computation; default: the CPUs this process may use (cgroup-aware).
    #[arg(long, env = env::COMPUTE_THREADS, global = true, value_parser = clap::value_parser!(u64).range(1..=1024))]
    compute_threads: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve every model version in a repository over gRPC and HTTP on one port.
    Serve(Box<ServeArgs>),
    /// Publish a directory (model files plus manifest.json) as the next version of a model.
    Publish(PublishArgs),
    /// Write a llama version (HF or GGUF) again as GGUF with its matrices in a smaller type, and
    /// publish that as the next version of `--into` (default: the same model).
    Quantize(QuantizeArgs),
    /// Write a freshly initialised MLP (weights and manifest) into a directory, ready to publish.
    InitMlp(InitMlpArgs),
    /// Train a model as the job file describes, publishing every checkpoint as a version. Exits 0
    /// when done, 75 after saving a state on SIGTERM (retryable), 2 for an invalid job, 1 for a
    /// failure.
    Train(TrainArgs),
    /// Print a training job's progress from rank 0's `TrainingService`; with `--watch`, once a
    /// second until the job ends, waiting through restarts.
    Progress(ProgressArgs),
    /// Fetch a version of a remote repository into the node cache, verified, without loading
    /// it: warms a node (an init container, a DaemonSet) before its pods need the files.
    Prefetch(PrefetchArgs),
}

#[derive(clap::Args, Debug)]
struct PrefetchArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Model name.
    #[arg(long, env = env::MODEL)]
    model: String,
    /// Version number; default: the newest.
    #[arg(long)]
    version: Option<u64>,
}

/// Where the model repository is, and the node cache a remote one is read through.
#[derive(clap::Args, Debug)]
struct RepositoryArgs {
    /// Model repository: a directory, or `s3://BUCKET/PREFIX`, `gs://…`, `az://CONTAINER/PREFIX`
    /// or `http(s)://…` (read-only), holding `<model>/<version>/`. Object stores take their
    /// endpoint and credentials from the standard variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    #[arg(long, env = env::REPOSITORY)]
    repository: String,
    /// The node-local cache a remote repository's files are downloaded into, by digest.
    #[arg(long, env = env::CACHE_DIR, default_value_os_t = std::env::temp_dir().join("lantern-model-cache"))]
    cache_dir: PathBuf,
    /// The cache's size budget in MiB: beyond it, the least recently used files no loaded
    /// version uses are removed.
    #[arg(long, env = env::CACHE_BUDGET_MIB, default_value_t = 20 * 1024)]
    cache_budget_mib: u64,
    /// Seconds a download from a remote repository may go without a byte before it fails (and
    /// is retried from where it stopped).
    #[arg(long, env = env::READ_TIMEOUT_SECONDS, default_value_t = RemoteSettings::DEFAULT_READ_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    read_timeout_seconds: u64,
    /// Ranged reads at once per file downloaded from a remote repository (parts of 16 MiB; one
    /// stream reads each file whole).
    #[arg(long, env = env::DOWNLOAD_STREAMS, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    download_streams: u64,
}

impl RepositoryArgs {
    fn open(&self) -> anyhow::Result<Repository> {
        let cache = CacheSettings {
            dir: self.cache_dir.clone(),
            budget_bytes: self.cache_budget_mib.saturating_mul(1 << 20),
            streams: self.download_streams as usize,
        };
        let settings = RemoteSettings { cache, read_timeout: Duration::from_secs(self.read_timeout_seconds) };
        Ok(Repository::open(&self.repository, &settings)?)
    }
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Address for gRPC and HTTP.
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// A second address that alone answers management calls (ModelService, repository
    /// load/unload/index); without it they are answered on --listen.
    #[arg(long, env = env::MANAGEMENT_LISTEN)]
    management_listen: Option<SocketAddr>,
    /// Serve only these models (repeat or comma-separate); default: every model in the repository.
    #[arg(long = "model", env = env::MODELS, value_delimiter = ',')]
    models: Vec<String>,
    /// Version policy until the operator pushes a config: latest[:N], all, specific:V1,V2.
    #[arg(long, env = env::VERSION_POLICY, default_value = "latest:1")]
    version_policy: VersionPolicy,
    /// One model's version policy until the operator pushes its config, `MODEL=POLICY`
    /// (repeat, or space-separate in the variable); other models start with --version-policy.
    #[arg(long = "model-policy", env = env::MODEL_POLICIES, value_delimiter = ' ')]
    model_policies: Vec<ModelPolicy>,
    /// Repository rescan interval, in milliseconds.
    #[arg(long, env = env::POLL_INTERVAL_MS, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    poll_interval_ms: u64,
    /// Most rows per batch; larger requests are refused.
    #[arg(long, env = env::MAX_BATCH_SIZE, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_batch_size: u64,
    /// Longest a batch waits for more rows, in microseconds (0: take what is queued).
    #[arg(long, env = env::BATCH_DELAY_US, default_value_t = 0)]
    batch_delay_us: u64,
    /// Requests that may wait per version before RESOURCE_EXHAUSTED.
    #[arg(long, env = env::QUEUE_CAPACITY, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    queue_capacity: u64,
    /// Largest gRPC message or HTTP body, in bytes.
    #[arg(long, env = env::MAX_MESSAGE_BYTES, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1024..))]
    max_message_bytes: u64,
    /// Largest body of the OpenAI API (`/v1`), in bytes.
    #[arg(long, env = env::MAX_TEXT_BODY_BYTES, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1024..))]
    max_text_body_bytes: u64,
    /// Connections served at once (lowered to half the file-descriptor limit if that is less);
    /// more are answered only on the health endpoints.
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Seconds a client has to send a request's headers (HTTP/1.1).
    #[arg(long, env = env::HEADER_TIMEOUT_S, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_s: u64,
    /// Seconds a client has, after the headers, to send a request's whole body.
    #[arg(long, env = env::BODY_TIMEOUT_S, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_s: u64,
    /// Seconds after which a connection with nothing in flight and no traffic is closed.
    #[arg(long, env = env::IDLE_TIMEOUT_S, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_s: u64,
    /// File holding the token management calls (ModelService, repository load/unload/index)
    /// must carry as `authorization: Bearer <token>`; without it they are open.
    #[arg(long, env = env::MANAGEMENT_TOKEN_FILE)]
    management_token_file: Option<PathBuf>,
    /// File of API keys, one per line, inference calls must carry as
    /// `authorization: Bearer <key>`; without it inference is open.
    #[arg(long, env = env::API_KEYS_FILE)]
    api_keys_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on --listen (a Kubernetes TLS Secret's `tls.crt`).
    #[arg(long, env = env::TLS_CERT_FILE, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS on --listen (`tls.key`).
    #[arg(long, env = env::TLS_KEY_FILE, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = env::SHUTDOWN_GRACE_S, default_value_t = 30)]
    shutdown_grace_s: u64,
    /// KV cache memory per language-model version, in MiB; it bounds the tokens in flight.
    #[arg(long, env = env::KV_CACHE_MIB, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    kv_cache_mib: u64,
    /// Most LoRA adapter versions loaded at once; beyond it the least recently used is unloaded
    /// and loaded again when a request wants it (the request waits). Unlimited when unset.
    #[arg(long, env = env::MAX_ADAPTERS, value_parser = clap::value_parser!(u64).range(1..=1 << 16))]
    max_adapters: Option<u64>,
    /// Tokens per KV cache block.
    #[arg(long, env = env::KV_BLOCK_TOKENS, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    kv_block_tokens: u64,
    /// Most tokens one generation step feeds; longer prompts are prefilled in chunks of this size.
    #[arg(long, env = env::MAX_STEP_TOKENS, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_step_tokens: u64,
    /// Most sequences generated together per language-model version.
    #[arg(long, env = env::MAX_RUNNING_SEQUENCES, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_running_sequences: u64,
    /// Generation requests that may wait per version before RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = env::MAX_WAITING_SEQUENCES, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_waiting_sequences: u64,
    /// First retry delay after a failed load, in milliseconds; doubles per failure up to 60 s.
    #[arg(long, env = env::RETRY_BASE_MS, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    retry_base_ms: u64,
    /// Where models run: `cpu`, `cuda` (the first visible GPU) or `cuda:N`; CUDA needs a build
    /// with the `cuda` feature.
    #[arg(long, env = env::DEVICE, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(clap::Args, Debug)]
struct PublishArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Model name.
    #[arg(long, env = env::MODEL)]
    model: String,
    /// Directory with the model files and a manifest.json, or a single .gguf file (published as
    /// a llama language model).
    #[arg(long)]
    source: PathBuf,
    /// Version number; default: one more than the highest existing.
    #[arg(long)]
    version: Option<u64>,
    /// Eval metric to record, `name=value` (repeatable).
    #[arg(long = "metric", value_parser = parse_metric)]
    metrics: Vec<(String, f64)>,
    /// Publish `--source`, a PEFT adapter directory (`adapter_config.json`,
    /// `adapter_model.safetensors`), as a LoRA adapter over this base version of the same
    /// repository, `MODEL:VERSION`.
    #[arg(long, value_parser = parse_base)]
    base: Option<(String, u64)>,
}

#[derive(clap::Args, Debug)]
struct QuantizeArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// The source model.
    #[arg(long, env = env::MODEL)]
    model: String,
    /// The source version.
    #[arg(long)]
    version: u64,
    /// `sha256:<hex>` the source's manifest must have.
    #[arg(long)]
    digest: Option<String>,
    /// The GGUF type of the matrices: q8_0, q4_0, q4_1, q4_k, q5_k or q6_k.
    #[arg(long = "type")]
    ty: config::GgufType,
    /// The model the quantized version is published as; default: the source model.
    #[arg(long)]
    into: Option<String>,
    /// Held-out examples (JSONL: chat conversations or prompt/completion pairs) to measure the
    /// quantized file and the source on, recorded as `eval_*` and `baseline_eval_*` metrics.
    #[arg(long)]
    eval_data: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct InitMlpArgs {
    /// Directory to write `model.safetensors` and `manifest.json` into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Layer widths including input and output, e.g. 4,16,3.
    #[arg(long, value_delimiter = ',', required = true)]
    layers: Vec<usize>,
    #[arg(long, value_enum, default_value = "relu")]
    activation: mlp::Activation,
    /// Seed for the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// The job file (JSON, or YAML if it ends in .yaml or .yml); `LANTERN_RANK`,
    /// `LANTERN_WORLD_SIZE`, `LANTERN_COORDINATOR`, `LANTERN_ADDRESS`, `LANTERN_PROGRESS_ADDRESS`
    /// and `LANTERN_REPOSITORY` override it.
    #[arg(long, env = env::TRAINING_CONFIG)]
    config: PathBuf,
    /// Run the job as this many rank processes on loopback, sharing the compute threads.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    local_ranks: Option<u64>,
}

#[derive(clap::Args, Debug)]
struct ProgressArgs {
    /// Rank 0's progress address (`cluster.progress_address`, `LANTERN_PROGRESS_ADDRESS`).
    #[arg(long, env = env::PROGRESS_ADDRESS)]
    address: String,
    /// Keep printing every second until the job succeeds or fails.
    #[arg(long)]
    watch: bool,
    /// The job's token file (`cluster.token_file`), for a job that has one.
    #[arg(long, env = env::JOB_TOKEN_FILE)]
    token_file: Option<PathBuf>,
}

/// `MODEL:VERSION`.
fn parse_base(text: &str) -> Result<(String, u64), String> {
    let (model, version) = text.split_once(':').ok_or_else(|| format!("{text:?} is not MODEL:VERSION"))?;
    let version = version.parse().map_err(|e| format!("version {version:?}: {e}"))?;
    Ok((model.to_owned(), version))
}

fn parse_metric(text: &str) -> Result<(String, f64), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("expected name=value, got {text:?}"))?;
    let value: f64 = value.parse().map_err(|_| format!("metric {name:?}: {value:?} is not a number"))?;
    Ok((name.to_owned(), value))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    compute_threads::pin(args.compute_threads.map_or_else(compute_threads::default_threads, |n| n as usize));
    match args.command {
        Command::Serve(serve) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let _telemetry = args.telemetry.init("lantern-worker")?;
                run_serve(*serve).await
            })
        }
        Command::Publish(publish) => {
            let repository = publish.repository.open()?;
            let request = PublishRequest {
                repository: &repository,
                model: &publish.model,
                source: &publish.source,
                version: publish.version,
                metrics: &publish.metrics,
            };
            let version = match &publish.base {
                Some((model, version)) => repository::publish_adapter(&request, model, *version)?,
                None => repository::publish(&request)?,
            };
            println!("published {} version {version} in {}", publish.model, repository.location());
            Ok(())
        }
        Command::Quantize(quantize) => {
            let repository = quantize.repository.open()?;
            let spec = config::BaseSpec {
                repository: None,
                model: quantize.model.clone(),
                version: quantize.version,
                digest: quantize.digest.clone(),
                import_from: None,
            };
            let source = train::quantize::Source::read(&repository, &spec, "--model")?;
            let into = quantize.into.as_deref().unwrap_or(&quantize.model);
            let heldout =
                quantize.eval_data.as_deref().map(|path| train::quantize::Heldout::read(path, &source)).transpose()?;
            let done = source.publish(quantize.ty, &repository, into, heldout.as_ref())?;
            println!(
                "published {into} version {} in {}: {} of {} version {}, {} bytes, {:.2}x the source",
                done.version,
                repository.location(),
                quantize.ty,
                quantize.model,
                quantize.version,
                done.bytes,
                done.size_ratio()
            );
            Ok(())
        }
        Command::InitMlp(init) => init_mlp(&init),
        Command::Train(train) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let threads = args.compute_threads.map_or_else(compute_threads::default_threads, |n| n as usize);
            let code = runtime.block_on(async {
                let _telemetry = args.telemetry.init("lantern-worker")?;
                match train.local_ranks {
                    Some(ranks) => launch::run(&train.config, ranks as usize, threads).await,
                    None => run_train(train).await,
                }
            })?;
            std::process::exit(code)
        }
        Command::Prefetch(prefetch) => {
            let repository = prefetch.repository.open()?;
            let version = match prefetch.version {
                Some(version) => version,
                None => *repository
                    .versions(&prefetch.model)?
                    .last()
                    .with_context(|| format!("{} has no version of {}", repository.location(), prefetch.model))?,
            };
            let report = repository.prefetch(&prefetch.model, version)?;
            println!(
                "prefetched {} version {version}: {} files in the cache, {} downloaded ({} bytes) in {:.3} s",
                prefetch.model, report.files_cached, report.files_downloaded, report.bytes_downloaded, report.seconds
            );
            Ok(())
        }
        Command::Progress(progress) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            std::process::exit(runtime.block_on(show_progress(progress))?)
        }
    }
}

/// Prints rank 0's progress; returns 0 unless the job failed (or, without `--watch`, cannot be
/// reached). Rank 0 stops serving as it exits, so a watch that saw the last step ends when rank 0
/// goes away.
async fn show_progress(args: ProgressArgs) -> anyhow::Result<i32> {
    use lantern_proto::lantern::v1::training_service_client::TrainingServiceClient;
    use lantern_proto::lantern::v1::{GetProgressRequest, TrainingPhase};

    let url = format!("http://{}", args.address);
    let token = args.token_file.as_deref().map(lantern_proto::auth::read_token_file).transpose()?;
    let send_token = lantern_proto::auth::SendToken::new(token.as_deref())?;
    let (mut unreachable_said, mut finished) = (false, false);
    loop {
        let connected = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await;
        let answer = match connected {
            Ok(channel) => TrainingServiceClient::with_interceptor(channel, send_token.clone())
                .get_progress(GetProgressRequest::default())
                .await
                .map_err(|s| s.message().to_owned()),
            Err(error) => Err(error.to_string()),
        };
        match answer {
            Ok(progress) => {
                let progress = progress.into_inner();
                println!("{}", train::progress::describe(&progress));
                unreachable_said = false;
                finished = progress.step == progress.total_steps;
                match progress.phase() {
                    TrainingPhase::Succeeded => return Ok(0),
                    TrainingPhase::Failed => return Ok(1),
                    _ if !args.watch => return Ok(0),
                    _ => {}
                }
            }
            Err(error) if !args.watch => anyhow::bail!("rank 0 at {} cannot be reached: {error}", args.address),
            Err(_) if finished => {
                println!("rank 0 has exited after the last step");
                return Ok(0);
            }
            Err(error) => {
                if !unreachable_said {
                    println!("waiting for rank 0 at {} ({error})", args.address);
                    unreachable_said = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// This process's peak resident memory (`VmHWM`) in MiB; 0 where `/proc` does not say.
fn peak_memory_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib =
        status.lines().find_map(|line| line.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB")?.parse::<u64>().ok());
    kib.unwrap_or(0) / 1024
}

/// Trains on a blocking thread while waiting for SIGTERM, which asks the loop to save a state and
/// stop. Returns the exit code.
async fn run_train(args: TrainArgs) -> anyhow::Result<i32> {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lantern-worker train: {error}");
            return Ok(train::EXIT_INVALID);
        }
    };
    let quantize = matches!(config.model, config::ModelSpec::Quantize(_));
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    let mut training = tokio::task::spawn_blocking(move || trainer::train(&config, &flag));
    let result = tokio::select! {
        result = &mut training => result,
        signal = shutdown_signal() => {
            signal?;
            interrupt.store(true, Ordering::Relaxed);
            training.await
        }
    };
    match result.context("the training thread panicked")? {
        Ok(outcome) if quantize => {
            println!(
                "quantized in {:.2} s; peak memory {} MiB; published versions {:?}",
                outcome.seconds,
                peak_memory_mib(),
                outcome.published
            );
            Ok(0)
        }
        Ok(outcome) => {
            let (steps_per_second, tokens_per_second) = outcome.rates();
            println!(
                "trained to step {} (loss {:.4}): {} steps in {:.2} s, {:.2} s of it checkpoints ({steps_per_second:.3} steps/s, {tokens_per_second:.0} tokens/s between checkpoints); peak memory {} MiB; published versions {:?}{}",
                outcome.step,
                outcome.loss,
                outcome.trained_steps,
                outcome.seconds,
                outcome.checkpoint_seconds,
                peak_memory_mib(),
                outcome.published,
                if outcome.interrupted { "; interrupted, state saved" } else { "" }
            );
            Ok(if outcome.interrupted { train::EXIT_RETRYABLE } else { 0 })
        }
        Err(error @ train::error::Error::Config { .. }) => {
            eprintln!("lantern-worker train: {error}");
            Ok(train::EXIT_INVALID)
        }
        Err(error) => {
            eprintln!("lantern-worker train: {error}");
            Ok(1)
        }
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    for model in &args.models {
        repository::validate_model_name(model)?;
    }
    let device = device::open(args.device)?;
    tracing::info!(device = %args.device, "opened the device models run on");
    let settings = ServeSettings {
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        batch: BatchSettings {
            max_batch_size: args.max_batch_size as usize,
            max_delay: Duration::from_micros(args.batch_delay_us),
            queue_capacity: args.queue_capacity as usize,
        },
        models: args.models.iter().cloned().collect::<BTreeSet<_>>(),
        policy: args.version_policy,
        model_policies: args.model_policies.into_iter().map(|p| (p.model, p.policy)).collect(),
        retry_base: Duration::from_millis(args.retry_base_ms),
        engine: EngineSettings {
            kv_cache_bytes: (args.kv_cache_mib as usize) << 20,
            block_size: args.kv_block_tokens as usize,
            max_step_tokens: args.max_step_tokens as usize,
            max_running: args.max_running_sequences as usize,
            max_waiting: args.max_waiting_sequences as usize,
        },
        device,
        max_adapters: args.max_adapters.map(|n| n as usize),
        ..ServeSettings::default()
    };
    let descriptor_limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let connections = ConnectionLimits {
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        header_timeout: Duration::from_secs(args.header_timeout_s),
        body_timeout: Duration::from_secs(args.body_timeout_s),
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        ..ConnectionLimits::default()
    }
    .within_descriptor_limit(descriptor_limit);
    let options = ServerOptions {
        listen: args.listen,
        management_listen: args.management_listen,
        max_message_bytes: args.max_message_bytes as usize,
        max_text_body_bytes: args.max_text_body_bytes as usize,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_s),
        connections,
        credentials: Credentials::from_files(args.management_token_file.as_deref(), args.api_keys_file.as_deref())?,
        tls: match (&args.tls_cert_file, &args.tls_key_file) {
            (Some(cert), Some(key)) => Some(Tls::from_pem_files(cert, key)?),
            _ => None,
        },
    };
    let server = server::start(args.repository.open()?, settings, options).await?;
    println!("lantern-worker listening on {}", server.local_addr());
    shutdown_signal().await?;
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

fn init_mlp(args: &InitMlpArgs) -> anyhow::Result<()> {
    let config = mlp::Config { layers: args.layers.clone(), activation: args.activation };
    config.write_initialised(&args.out, args.seed)?;
    println!("wrote an MLP {:?} to {}", args.layers, args.out.display());
    Ok(())
}
