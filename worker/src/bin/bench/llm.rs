//! Language-model figures through a running worker, as a client sees them: gRPC `Generate` on
//! the published GGUF, greedy. Prefill from the time to first token of a 256-token prompt (and
//! of the same prompt again, from the prefix cache);
//! single-stream decode from the gaps between tokens; aggregate output tokens/s and TTFT
//! percentiles with 4, 8 and 16 streams started together; the same at 1 and 8 streams held to a
//! JSON schema, against unconstrained; `n = 4` against four separate requests of one prompt.
//! Embeddings: gRPC `Embed` with batches of 32 sentences.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use lantern_proto::lantern::v1::embedding_service_client::EmbeddingServiceClient;
use lantern_proto::lantern::v1::generate_request::Input;
use lantern_proto::lantern::v1::generation_service_client::GenerationServiceClient;
use lantern_proto::lantern::v1::{self as pb};
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::repository::{self, PublishRequest, Repository};
use tonic::transport::Channel;

use lantern_runtime::compute_threads;

use super::{start, wait_available};

pub const MODEL: &str = "llm";
const PROMPT_TOKENS: usize = 256;
const SHORT_PROMPT_TOKENS: usize = 16;
pub const NEW_TOKENS: u32 = 128;

/// Prints the figures, or says why not when the model is missing.
pub async fn figures(gguf: &Path) -> anyhow::Result<()> {
    if !gguf.is_file() {
        println!("\nlanguage model: {} is missing; run scripts/fetch-test-models.sh", gguf.display());
        return Ok(());
    }
    let prompts = Prompts::new(gguf)?;
    let repo = tempfile::tempdir()?;
    repository::publish(&PublishRequest {
        repository: &Repository::new(repo.path()),
        model: MODEL,
        source: gguf,
        version: None,
        metrics: &[],
    })?;
    let server = start(repo.path(), Duration::from_secs(2)).await?;
    wait_available(&server, MODEL, 1).await?;
    let client = GenerationServiceClient::connect(format!("http://{}", server.local_addr())).await?;
    println!(
        "\nlanguage model {} through gRPC Generate, greedy ({} threads)",
        gguf.display(),
        compute_threads::default_threads()
    );
    generate(client.clone(), MODEL.into(), prompts.short(0), 4).await?;

    // Three different prompts: a repeated one would come from the prefix cache.
    let mut prefill = Vec::new();
    let mut prompt_tokens = 0;
    for index in 0..3 {
        let run = generate(client.clone(), MODEL.into(), prompts.long(index), 1).await?;
        anyhow::ensure!(run.cached_tokens == 0, "a prefill prompt was cached");
        prompt_tokens = run.prompt_tokens;
        prefill.push(run.prefill_rate());
    }
    prefill.sort_by(f64::total_cmp);
    println!("  prefill, {prompt_tokens}-token prompt: {:.1} tokens/s (median of 3)", prefill[1]);
    let cold = generate(client.clone(), MODEL.into(), prompts.long(3), 1).await?;
    let cached = generate(client.clone(), MODEL.into(), prompts.long(3), 1).await?;
    println!(
        "  the same {prompt_tokens}-token prompt again: TTFT {:.0} ms instead of {:.0} ms ({} tokens from the prefix cache)",
        cached.first_token.as_secs_f64() * 1e3,
        cold.first_token.as_secs_f64() * 1e3,
        cached.cached_tokens
    );

    let run = generate(client.clone(), MODEL.into(), prompts.short(0), NEW_TOKENS).await?;
    let single = run.decode_rate();
    println!("  decode, 1 stream: {single:.1} tokens/s ({} tokens)", run.tokens);

    for streams in [4usize, 8, 16] {
        let started = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|i| tokio::spawn(generate(client.clone(), MODEL.into(), prompts.short(i), NEW_TOKENS)))
            .collect();
        let mut runs = Vec::with_capacity(streams);
        for task in tasks {
            runs.push(task.await??);
        }
        let wall = started.elapsed().as_secs_f64();
        let tokens: usize = runs.iter().map(|r| r.tokens).sum();
        let mut first: Vec<Duration> = runs.iter().map(|r| r.first_token).collect();
        first.sort();
        let percentile = |p: f64| first[((first.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
        println!(
            "  decode, {streams:>2} streams x {NEW_TOKENS} tokens: {:.1} tokens/s in total ({:.2}x one stream); \
             TTFT p50 {:.0} ms, p99 {:.0} ms",
            tokens as f64 / wall,
            tokens as f64 / wall / single,
            percentile(0.5),
            percentile(0.99),
        );
    }
    structured_figures(&client, &prompts).await?;
    choices_figures(&client, &prompts).await
}

/// What a JSON-schema constraint costs: 1 and 8 streams held to a schema of one long string (at
/// least 400 characters, so the text runs as long as unconstrained text), against the same
/// streams unconstrained, back to back; after one constrained request, which builds the
/// vocabulary's token trie once for the version. Decode rate: output tokens after the first over
/// the time after the first token.
async fn structured_figures(client: &GenerationServiceClient<Channel>, prompts: &Prompts) -> anyhow::Result<()> {
    let schema = r#"{"type": "string", "minLength": 400}"#;
    let held = |i: usize| {
        let mut request = request(MODEL.into(), prompts.short(i), NEW_TOKENS);
        request.json_schema = Some(schema.to_owned());
        request
    };
    stream_run(client.clone(), held(0)).await?;
    for streams in [1usize, 8] {
        let mut rates = Vec::new();
        for constrained in [false, true] {
            let tasks: Vec<_> = (0..streams)
                .map(|i| {
                    let request =
                        if constrained { held(i) } else { request(MODEL.into(), prompts.short(i), NEW_TOKENS) };
                    tokio::spawn(stream_run(client.clone(), request))
                })
                .collect();
            let mut runs = Vec::with_capacity(streams);
            for task in tasks {
                runs.push(task.await??);
            }
            let tokens: usize = runs.iter().map(|r| r.tokens - 1).sum();
            let first = runs.iter().map(|r| r.first_token).min().unwrap_or_default();
            let last = runs.iter().map(|r| r.total).max().unwrap_or_default();
            rates.push((tokens + runs.len(), tokens as f64 / (last - first).as_secs_f64()));
        }
        let [(_, free), (constrained_tokens, constrained)] = [rates[0], rates[1]];
        println!(
            "  structured output (json_schema), {streams} stream(s): decode {constrained:.1} tokens/s \
             ({constrained_tokens} tokens) against {free:.1} unconstrained ({:.2}x)",
            constrained / free
        );
    }
    Ok(())
}

/// What `n = 4` saves against four separate requests of the same prompt, both sampled
/// (temperature 0.8) for `NEW_TOKENS` tokens per choice on a 256-token prompt no earlier request
/// left in the prefix cache: the tokens prefilled, the time to the last stream's first token
/// and the decode rate after the first.
async fn choices_figures(client: &GenerationServiceClient<Channel>, prompts: &Prompts) -> anyhow::Result<()> {
    const CHOICES: u32 = 4;
    let sampled = |index: usize, n: Option<u32>| pb::GenerateRequest {
        temperature: Some(0.8),
        seed: Some(7),
        n,
        ..request(MODEL.into(), prompts.long(index), NEW_TOKENS)
    };
    // Prompt tokens prefilled, the last first token, output tokens, and the decode rate after
    // the first token, of runs started together.
    let summary = |runs: &[Run]| {
        let prefilled: usize = runs.iter().map(|r| r.prompt_tokens - r.cached_tokens).sum();
        let tokens: usize = runs.iter().map(|r| r.tokens).sum();
        let first = runs.iter().map(|r| r.first_token).min().unwrap_or_default();
        let last_first = runs.iter().map(|r| r.first_token).max().unwrap_or_default();
        let end = runs.iter().map(|r| r.total).max().unwrap_or_default();
        let decode = (tokens - CHOICES as usize) as f64 / (end - first).as_secs_f64();
        format!(
            "{prefilled} prompt tokens prefilled, TTFT {:.0} ms, decode {decode:.1} tokens/s ({tokens} tokens)",
            last_first.as_secs_f64() * 1e3
        )
    };
    let one = stream_run(client.clone(), sampled(10, Some(CHOICES))).await?;
    let tasks: Vec<_> = (0..CHOICES).map(|_| tokio::spawn(stream_run(client.clone(), sampled(11, None)))).collect();
    let mut separate = Vec::with_capacity(tasks.len());
    for task in tasks {
        separate.push(task.await??);
    }
    println!("  n = {CHOICES}: {}", summary(std::slice::from_ref(&one)));
    println!("  {CHOICES} separate requests of one prompt: {}", summary(&separate));
    Ok(())
}

/// Sentences per embedding request.
const EMBED_BATCH: usize = 32;

/// Prints sentences/s for batches of 32 sentences, or says why not when the model is missing.
pub async fn embedding_figures(checkpoint: &Path) -> anyhow::Result<()> {
    if !checkpoint.join("model.safetensors").is_file() {
        println!("\nembeddings: {} is missing; run scripts/fetch-test-models.sh", checkpoint.display());
        return Ok(());
    }
    let repo = tempfile::tempdir()?;
    let request = PublishRequest {
        repository: &Repository::new(repo.path()),
        model: "embed",
        source: checkpoint,
        version: None,
        metrics: &[],
    };
    repository::publish(&request)?;
    let server = start(repo.path(), Duration::from_secs(2)).await?;
    wait_available(&server, "embed", 1).await?;
    let mut client = EmbeddingServiceClient::connect(format!("http://{}", server.local_addr())).await?;
    let subjects = ["The cat", "A young engineer", "Our team", "The old bridge", "Every morning the market"];
    let endings = [
        "sat quietly by the window.",
        "shipped the release before the deadline.",
        "was repaired after the storm.",
        "opens early and closes late.",
    ];
    let sentences: Vec<String> =
        (0..EMBED_BATCH).map(|i| format!("{} {}", subjects[i % subjects.len()], endings[i % endings.len()])).collect();
    let request = pb::EmbedRequest { model_name: "embed".into(), texts: sentences, ..Default::default() };
    client.embed(request.clone()).await?;
    let mut rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let response = client.embed(request.clone()).await?.into_inner();
        anyhow::ensure!(response.embeddings.len() == EMBED_BATCH, "wrong number of embeddings");
        rates.push(EMBED_BATCH as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    // The same sentences as concurrent one-sentence requests, which the server batches together.
    let mut concurrent = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let calls: Vec<_> = request
            .texts
            .iter()
            .map(|text| {
                let mut client = client.clone();
                let one = pb::EmbedRequest { texts: vec![text.clone()], ..request.clone() };
                tokio::spawn(async move { client.embed(one).await })
            })
            .collect();
        for call in calls {
            anyhow::ensure!(call.await??.into_inner().embeddings.len() == 1, "wrong number of embeddings");
        }
        concurrent.push(EMBED_BATCH as f64 / started.elapsed().as_secs_f64());
    }
    concurrent.sort_by(f64::total_cmp);
    println!(
        "\nembeddings {} through gRPC Embed ({} threads), medians of 5\n  one request of {EMBED_BATCH} sentences: {:.1} sentences/s\n  \
         {EMBED_BATCH} concurrent one-sentence requests: {:.1} sentences/s ({:.2}x the one request)",
        checkpoint.display(),
        compute_threads::default_threads(),
        rates[2],
        concurrent[2],
        concurrent[2] / rates[2]
    );
    Ok(())
}

/// The benchmark's prompts, cut to exact token counts with the model's own tokenizer.
pub struct Prompts {
    codec: TextCodec,
    ids: Vec<u32>,
}

impl Prompts {
    pub fn new(gguf: &Path) -> anyhow::Result<Self> {
        let mut file = std::fs::File::open(gguf)?;
        let codec = TextCodec::from_gguf(&gguf_file::Content::read(&mut file)?.metadata)?;
        let text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. ".repeat(40);
        let ids = codec.encode(&text)?;
        anyhow::ensure!(ids.len() >= PROMPT_TOKENS + 16 * SHORT_PROMPT_TOKENS, "the prompt text is too short");
        Ok(Self { codec, ids })
    }

    /// A prompt of about `PROMPT_TOKENS` tokens, different for each `index` and from every short
    /// prompt's start (which the warm-up leaves in the prefix cache).
    pub fn long(&self, index: usize) -> String {
        let start = 1 + index;
        self.codec.tokenizer().decode(&self.ids[start..start + PROMPT_TOKENS], false).unwrap_or_default()
    }

    /// A short prompt, different for each `index`.
    pub fn short(&self, index: usize) -> String {
        self.codec.tokenizer().decode(self.short_ids(index), false).unwrap_or_default()
    }

    /// The tokens of [`Prompts::short`].
    pub fn short_ids(&self, index: usize) -> &[u32] {
        let start = index * SHORT_PROMPT_TOKENS + index % 7;
        &self.ids[start..start + SHORT_PROMPT_TOKENS]
    }
}

/// What one request measured.
pub struct Run {
    pub prompt_tokens: usize,
    cached_tokens: usize,
    pub tokens: usize,
    pub first_token: Duration,
    pub total: Duration,
}

impl Run {
    /// Prompt tokens per second until the first token.
    pub fn prefill_rate(&self) -> f64 {
        self.prompt_tokens as f64 / self.first_token.as_secs_f64()
    }

    /// Output tokens after the first per second after the first.
    pub fn decode_rate(&self) -> f64 {
        (self.tokens - 1) as f64 / (self.total - self.first_token).as_secs_f64()
    }
}

/// Streams a greedy generation of `max_tokens` from `model` and measures it.
pub async fn generate(
    client: GenerationServiceClient<Channel>,
    model: String,
    prompt: String,
    max_tokens: u32,
) -> anyhow::Result<Run> {
    stream_run(client, request(model, prompt, max_tokens)).await
}

/// A greedy generation request.
fn request(model: String, prompt: String, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model_name: model,
        input: Some(Input::Prompt(prompt)),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..Default::default()
    }
}

/// Streams `request` and measures it: tokens of every choice, usage from the last message.
async fn stream_run(mut client: GenerationServiceClient<Channel>, request: pb::GenerateRequest) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut stream = client.generate(request).await?.into_inner();
    let (mut first_token, mut tokens, mut usage) = (None, 0, None);
    while let Some(message) = stream.message().await? {
        if !message.token_ids.is_empty() && first_token.is_none() {
            first_token = Some(started.elapsed());
        }
        tokens += message.token_ids.len();
        usage = message.usage.or(usage);
    }
    let usage = usage.ok_or_else(|| anyhow::anyhow!("the stream ended without usage"))?;
    Ok(Run {
        prompt_tokens: usage.prompt_tokens as usize,
        cached_tokens: usage.cached_prompt_tokens as usize,
        tokens,
        first_token: first_token.ok_or_else(|| anyhow::anyhow!("no token generated"))?,
        total: started.elapsed(),
    })
}
