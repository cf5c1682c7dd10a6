//! The autoscaler's figures on the devcluster, with the release binaries
//! (`cargo build --release --workspace --bins`, then `cargo bench -p lantern-e2e --bench
//! autoscale`): replicas over time under a step load through the router (16 closed-loop
//! clients on one channel for 40 s, then none), down to zero when idle, and the time from the
//! first request at zero to its answer.

use std::time::{Duration, Instant};

use lantern_e2e::traffic::{Traffic, mlp_request};
use lantern_e2e::{MODELS_CLAIM, Stack};
use lantern_proto::inference::ModelInferRequest;
use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

const SERVICE: &str = "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {name: steps}
spec:
  model: steps
  source:
    repository: {claimName: models}
  replicas: 1
  minReplicas: 0
  maxReplicas: 4
  autoscaling: {targetInFlight: 3, stableWindowSeconds: 12, panicWindowSeconds: 3, scaleDownDelaySeconds: 6, idleSecondsBeforeZero: 15}
";

fn request() -> ModelInferRequest {
    mlp_request("steps")
}

/// (seconds since `start`, spec.replicas, ready replicas) whenever either changes, for `seconds`.
async fn timeline(stack: &Stack, start: Instant, seconds: u64, seen: &mut Vec<(f64, u64, u64)>) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let service = stack.json("isvc/steps").await?;
        let now = (
            service["spec"]["replicas"].as_u64().unwrap_or(0),
            service["status"]["readyReplicas"].as_u64().unwrap_or(0),
        );
        if seen.last().is_none_or(|&(_, wanted, ready)| (wanted, ready) != now) {
            seen.push((start.elapsed().as_secs_f64(), now.0, now.1));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    anyhow::ensure!(stack.apply(MODELS_CLAIM).await?.ok, "applying the claim");
    stack.publish_mlp("models", "steps", "2,8,1", 1, &[]).await?;
    anyhow::ensure!(stack.apply(SERVICE).await?.ok, "applying the service");
    let ready = |s: &serde_json::Value| s["status"]["readyReplicas"] == 1 && s["spec"]["replicas"] == 1;
    stack.wait_for("isvc/steps", "one ready pod", Duration::from_secs(90), ready).await;
    let address = stack.service_address("steps").await?;

    println!("autoscaler: targetInFlight 3, maxReplicas 4, windows 12 s / 3 s, delay 6 s, idle 15 s");
    let start = Instant::now();
    let mut seen = Vec::new();
    let traffic = Traffic::start(address.clone(), request(), 16, Duration::ZERO);
    timeline(&stack, start, 40, &mut seen).await?;
    let (sent, failed, _) = traffic.stop().await;
    println!("  0–40 s: 16 clients, {sent} requests, {failed} failed; then none");
    timeline(&stack, start, 60, &mut seen).await?;
    for (at, wanted, ready) in &seen {
        println!("  t = {at:5.1} s: replicas {wanted}, ready {ready}");
    }
    let at_zero = |s: &serde_json::Value| s["spec"]["replicas"] == 0;
    stack.wait_for("isvc/steps", "zero replicas", Duration::from_secs(90), at_zero).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{address}")).await?;
    let sent = Instant::now();
    client.model_infer(request()).await?;
    println!("  scale from zero: first request answered after {:.2} s", sent.elapsed().as_secs_f64());
    stack.stop().await?;
    Ok(())
}
