//! Router figures (`--sections router`): what `lantern-router` costs and what it buys, with real
//! workers on loopback.
//!
//! 1. Overhead: ModelInfer on the small MLP, closed loop, through the router to one pod against
//!    straight to that pod, alternating rounds: requests/s, p50, p99.
//! 2. Balance: one gRPC channel's requests (16 at a time) through the router over three pods,
//!    counted by each worker.
//! 3. Prefix affinity: 8 chats, each a distinct system prompt asked 3 questions, over three
//!    SmolLM2 pods, through the router against round robin straight to the pods: the share of
//!    prompt tokens that came from a prefix cache (gRPC `Generate` usage).

use std::time::Duration;

use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::lantern::v1::generate_request::Input;
use lantern_proto::lantern::v1::generation_service_client::GenerationServiceClient;
use lantern_proto::lantern::v1::{self as lantern_pb};
use lantern_router::proxy::HoldSettings;
use lantern_router::server::{self as router, Options};
use lantern_runtime::repository::{self, PublishRequest, Repository};
use lantern_serve::server::RunningServer;

use super::{Args, SMALL_MLP, Stats, infer_request, load, micros, publish_mlp, start, wait_available};

const PODS: usize = 3;
/// Requests sent over one channel for the balance figure.
const BALANCE_REQUESTS: usize = 3000;

pub async fn figures(args: &Args) -> anyhow::Result<()> {
    overhead_and_balance(args).await?;
    affinity(&args.gguf).await
}

async fn overhead_and_balance(args: &Args) -> anyhow::Result<()> {
    let repo = tempfile::tempdir()?;
    publish_mlp(repo.path(), "bench", 1, &SMALL_MLP)?;
    let mut pods: Vec<RunningServer> = Vec::new();
    for _ in 0..PODS {
        let pod = start(repo.path(), Duration::from_secs(2)).await?;
        wait_available(&pod, "bench", 1).await?;
        pods.push(pod);
    }
    let options = Options {
        listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        hold: HoldSettings { timeout: Duration::from_secs(5), max_held: 64 },
        ..Options::default()
    };
    let routing = router::start(options).await?;
    let request = infer_request("bench", 1, SMALL_MLP[0]);

    println!(
        "\nlantern-router: ModelInfer, MLP {SMALL_MLP:?}, closed loop; through the router to one pod against straight to it; median of {} rounds of {} s",
        args.rounds, args.seconds
    );
    println!(
        "{:>11} | {:>27} | {:>27} | {:>9} {:>11}",
        "concurrency", "direct: req/s p50 p99", "router: req/s p50 p99", "rps ratio", "p50 added"
    );
    routing.pool().set(vec![pods[0].local_addr()]);
    for &concurrency in &args.concurrency {
        let duration = Duration::from_secs(args.seconds);
        let (mut direct, mut routed) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            direct.push(load(pods[0].local_addr(), &request, concurrency, duration).await?);
            routed.push(load(routing.local_addr(), &request, concurrency, duration).await?);
        }
        let (direct, routed) = (Stats::median(direct), Stats::median(routed));
        println!(
            "{concurrency:>11} | {} | {} | {:>9.2} {:>9.0}µs",
            direct.row(),
            routed.row(),
            routed.rps / direct.rps,
            micros(routed.p50) - micros(direct.p50),
        );
        anyhow::ensure!(
            direct.failed + routed.failed == 0,
            "failed: direct {}, router {}",
            direct.failed,
            routed.failed
        );
    }

    routing.pool().set(pods.iter().map(RunningServer::local_addr).collect());
    let before: Vec<u64> = pods.iter().map(served).collect();
    let client = GrpcInferenceServiceClient::connect(format!("http://{}", routing.local_addr())).await?;
    let per_task = BALANCE_REQUESTS / 16;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (mut client, request) = (client.clone(), request.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    client.model_infer(request.clone()).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let counts: Vec<u64> = pods.iter().map(served).zip(&before).map(|(after, before)| after - before).collect();
    let third = (per_task * 16) as f64 / PODS as f64;
    let worst = counts.iter().map(|&n| (n as f64 - third).abs() / third).fold(0.0, f64::max);
    println!(
        "one gRPC channel, {} requests 16 at a time over {PODS} pods: {counts:?} (worst {:.1}% from a third; goal within 10%)",
        per_task * 16,
        worst * 100.0
    );
    routing.shutdown().await;
    for pod in pods {
        pod.shutdown().await?;
    }
    Ok(())
}

/// System prompts per mode, and questions asked under each.
const CHATS: usize = 8;
const QUESTIONS: usize = 3;

async fn affinity(gguf: &std::path::Path) -> anyhow::Result<()> {
    if !gguf.is_file() {
        println!("prefix affinity: {} is missing; run scripts/fetch-test-models.sh", gguf.display());
        return Ok(());
    }
    let repo = tempfile::tempdir()?;
    let request = PublishRequest {
        repository: &Repository::new(repo.path()),
        model: "llm",
        source: gguf,
        version: None,
        metrics: &[],
    };
    repository::publish(&request)?;
    let mut pods: Vec<RunningServer> = Vec::new();
    for _ in 0..PODS {
        let pod = start(repo.path(), Duration::from_secs(2)).await?;
        wait_available(&pod, "llm", 1).await?;
        pods.push(pod);
    }
    let options =
        Options { listen: "127.0.0.1:0".parse()?, admin_listen: "127.0.0.1:0".parse()?, ..Options::default() };
    let routing = router::start(options).await?;
    routing.pool().set(pods.iter().map(RunningServer::local_addr).collect());
    let through_router = GenerationServiceClient::connect(format!("http://{}", routing.local_addr())).await?;
    let mut direct = Vec::new();
    for pod in &pods {
        direct.push(GenerationServiceClient::connect(format!("http://{}", pod.local_addr())).await?);
    }
    println!(
        "prefix affinity: {CHATS} system prompts x {QUESTIONS} questions, asked in turn, over {PODS} SmolLM2 pods (gRPC Generate, 1 token each)"
    );
    for (mode, routed) in [("router", true), ("round robin", false)] {
        let (mut prompt_tokens, mut cached) = (0, 0);
        for question in 0..QUESTIONS {
            for chat in 0..CHATS {
                let index = question * CHATS + chat;
                let mut client = match routed {
                    true => through_router.clone(),
                    false => direct[index % PODS].clone(),
                };
                let mut stream = client.generate(chat_request(mode, chat, question)).await?.into_inner();
                while let Some(message) = stream.message().await? {
                    if let Some(usage) = message.usage {
                        prompt_tokens += usage.prompt_tokens;
                        cached += usage.cached_prompt_tokens;
                    }
                }
            }
        }
        println!(
            "  {mode:>11}: {cached} of {prompt_tokens} prompt tokens from a prefix cache ({:.0}%)",
            100.0 * f64::from(cached) / f64::from(prompt_tokens.max(1))
        );
    }
    routing.shutdown().await;
    for pod in pods {
        pod.shutdown().await?;
    }
    Ok(())
}

/// Chat `chat`'s question `question`: a system prompt of about 200 tokens of its own (and of the
/// mode's own, so one mode's caches do not serve the other), then a short question.
fn chat_request(mode: &str, chat: usize, question: usize) -> lantern_pb::GenerateRequest {
    let system = format!(
        "You are assistant number {chat} of the {mode} team. {}",
        "Answer briefly, politely and only about the topic you are asked about. ".repeat(12)
    );
    let messages = [("system", system), ("user", format!("Question {question}: what is {chat} plus {question}?"))];
    let messages =
        messages.into_iter().map(|(role, content)| lantern_pb::ChatMessage { role: role.into(), content }).collect();
    lantern_pb::GenerateRequest {
        model_name: "llm".into(),
        input: Some(Input::Chat(lantern_pb::Chat { messages })),
        max_tokens: Some(1),
        temperature: Some(0.0),
        ..Default::default()
    }
}

/// Requests a pod's worker has answered for `bench` v1.
fn served(pod: &RunningServer) -> u64 {
    let status = pod.manager().status(Some("bench")).unwrap_or_default();
    let versions = status.first().map(|model| model.versions.as_slice()).unwrap_or_default();
    versions.iter().find(|v| v.version == 1).map_or(0, |v| v.requests.requests)
}
