//! LoRA adapter serving figures, through a running worker as a client sees them: SmolLM2 (the
//! GGUF) as the base and 8 rank-8 adapters on q/k/v/o (random weights in PEFT's layout,
//! published as adapter versions naming the base). Aggregate decode tokens/s with 8 streams
//! spread over 1, 4 and 8 adapters, beside 8 streams of the bare base in the same run; the memory
//! one loaded adapter takes (its matrices, and the process's resident growth per adapter); and the
//! time from an adapter's publish to its first served request.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use lantern_proto::lantern::v1::generation_service_client::GenerationServiceClient;
use lantern_runtime::model::llama::Config;
use lantern_runtime::model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, Projection, projection_shape};
use lantern_runtime::repository::{self, BaseVersion, MANIFEST_FILE, Manifest, PublishRequest, Repository};
use serde_json::json;

use super::llm::{MODEL, Prompts, generate};
use super::{resident_bytes, start, wait_available};

const RANK: usize = 8;
const TARGETS: [Projection; 4] = [Projection::Q, Projection::K, Projection::V, Projection::O];
const ADAPTERS: usize = 8;
const STREAMS: usize = 8;
const NEW_TOKENS: u32 = 64;
/// How often the worker rescans the repository (the publish-to-first-request time includes it).
const POLL: Duration = Duration::from_millis(200);

pub async fn figures(gguf: &Path) -> anyhow::Result<()> {
    if !gguf.is_file() {
        println!("\nadapters: {} is missing; run scripts/fetch-test-models.sh", gguf.display());
        return Ok(());
    }
    let prompts = Prompts::new(gguf)?;
    let config = Config::from_gguf(&gguf_file::Content::read(&mut std::fs::File::open(gguf)?)?.metadata)?;
    let repo = tempfile::tempdir()?;
    repository::publish(&PublishRequest {
        repository: &Repository::new(repo.path()),
        model: MODEL,
        source: gguf,
        version: None,
        metrics: &[],
    })?;
    let base = BaseVersion {
        model: MODEL.to_owned(),
        version: 1,
        manifest_digest: Repository::new(repo.path()).manifest_digest(MODEL, 1)?,
    };
    let server = start(repo.path(), POLL).await?;
    wait_available(&server, MODEL, 1).await?;
    let client = GenerationServiceClient::connect(format!("http://{}", server.local_addr())).await?;
    generate(client.clone(), MODEL.into(), prompts.short(0), 4).await?;

    let before = resident_bytes()?;
    let mut matrix_bytes = 0;
    for index in 0..ADAPTERS {
        matrix_bytes = publish_adapter(repo.path(), &adapter_name(index), &config, &base)?;
        wait_available(&server, &adapter_name(index), 1).await?;
    }
    let per_adapter = (resident_bytes()?.saturating_sub(before)) as f64 / ADAPTERS as f64;
    println!(
        "\nLoRA adapters on {} (rank {RANK} on q/k/v/o), gRPC Generate, greedy, {STREAMS} streams x {NEW_TOKENS} tokens",
        gguf.display()
    );
    println!(
        "  memory per loaded adapter: {:.2} MiB of matrices; resident growth {:.2} MiB per adapter over {ADAPTERS}",
        matrix_bytes as f64 / (1 << 20) as f64,
        per_adapter / (1 << 20) as f64
    );

    let mut base_rate = 0.0;
    for adapters in [0, 1, 4, 8] {
        let models: Vec<String> = (0..STREAMS)
            .map(|stream| match adapters {
                0 => MODEL.to_owned(),
                n => adapter_name(stream % n),
            })
            .collect();
        let rate = aggregate(&client, &prompts, &models).await?;
        match adapters {
            0 => {
                base_rate = rate;
                println!("  the bare base: {rate:.1} tokens/s in total");
            }
            n => println!("  {n} adapter(s): {rate:.1} tokens/s in total ({:.2}x the base)", rate / base_rate),
        }
    }

    let name = adapter_name(ADAPTERS);
    let published = Instant::now();
    publish_adapter(repo.path(), &name, &config, &base)?;
    loop {
        if generate(client.clone(), name.clone(), prompts.short(1), 1).await.is_ok() {
            break;
        }
        anyhow::ensure!(published.elapsed() < Duration::from_secs(60), "{name} never answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "  publish to first served request: {:.0} ms (the worker rescans every {} ms)",
        published.elapsed().as_secs_f64() * 1e3,
        POLL.as_millis()
    );
    Ok(())
}

fn adapter_name(index: usize) -> String {
    format!("adapter-{index}")
}

/// Output tokens per second of one greedy stream per entry of `models`, all started together.
async fn aggregate(
    client: &GenerationServiceClient<tonic::transport::Channel>,
    prompts: &Prompts,
    models: &[String],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = models
        .iter()
        .enumerate()
        .map(|(i, model)| tokio::spawn(generate(client.clone(), model.clone(), prompts.short(i), NEW_TOKENS)))
        .collect();
    let mut tokens = 0;
    for task in tasks {
        tokens += task.await??.tokens;
    }
    Ok(tokens as f64 / started.elapsed().as_secs_f64())
}

/// Publishes a rank-`RANK` adapter on q/k/v/o with random weights as `name` version 1; returns
/// the bytes of its matrices.
fn publish_adapter(root: &Path, name: &str, config: &Config, base: &BaseVersion) -> anyhow::Result<usize> {
    let source = tempfile::tempdir()?;
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    for layer in 0..config.layers {
        for projection in TARGETS {
            let (out, input) = projection_shape(config, 0, projection);
            let a = (Tensor::rand(-1f32, 1f32, (RANK, input), &device)? / (input as f64).sqrt())?;
            let b = Tensor::randn(0f32, 0.01f32, (out, RANK), &device)?;
            tensors.insert(projection.tensor_name(layer, "lora_A"), a);
            tensors.insert(projection.tensor_name(layer, "lora_B"), b);
        }
    }
    let bytes = tensors.values().map(|t| t.elem_count() * 4).sum();
    candle_core::safetensors::save(&tensors, source.path().join(ADAPTER_WEIGHTS_FILE))?;
    let peft = json!({
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "target_modules": TARGETS.map(Projection::name),
        "lora_dropout": 0.0,
        "bias": "none",
    });
    std::fs::write(source.path().join(ADAPTER_CONFIG_FILE), peft.to_string())?;
    std::fs::write(source.path().join(MANIFEST_FILE), Manifest::lora_adapter(base.clone()).to_json())?;
    repository::publish(&PublishRequest {
        repository: &Repository::new(root),
        model: name,
        source: source.path(),
        version: Some(1),
        metrics: &[],
    })?;
    Ok(bytes)
}
