//! The operator's figures on the devcluster, with the release binaries
//! (`cargo build --release --workspace --bins`, then `cargo bench -p lantern-e2e`):
//! - `kubectl apply` of an InferenceService (2 replicas) → its pods created, → Ready;
//! - traffic shift: a spec change (`rollout.pin`) → the new serving config on every pod;
//! - 1,000 InferenceServices (scaled to zero; `LANTERN_BENCH_SERVICES` sets another count): time
//!   until each has a status, and the operator's resident memory after.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lantern_e2e::{MODELS_CLAIM, Stack};
use lantern_operator::crd::InferenceService;
use lantern_proto::lantern::v1::GetServingConfigRequest;
use lantern_proto::lantern::v1::model_service_client::ModelServiceClient;
use serde_json::json;

const REPEATS: usize = 5;
/// InferenceServices in the scale run, unless `LANTERN_BENCH_SERVICES` says otherwise.
const MANY: usize = 1000;
/// How often the small measurements look.
const FAST: Duration = Duration::from_millis(2);

fn service(name: &str, replicas: u32, pin: Option<u64>) -> serde_json::Value {
    let mut rollout = json!({});
    if let Some(pin) = pin {
        rollout["pin"] = json!(pin);
    }
    json!({
        "apiVersion": "lantern.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"model": "bench", "source": {"repository": {"claimName": "models"}}, "replicas": replicas, "rollout": rollout},
    })
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, samples: &mut [f64]) {
    println!(
        "{what}: p50 {:.1} ms, max {:.1} ms ({} runs)",
        percentile(samples, 0.5),
        percentile(samples, 1.0),
        samples.len()
    );
}

/// Calls `check` every `every` until it holds.
async fn poll_until<F: std::future::Future<Output = bool>>(
    every: Duration,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    anyhow::bail!("not within {limit:?}")
}

fn ready(service: &InferenceService) -> bool {
    service.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether every pod's worker has `stable` as its stable label.
async fn applied_everywhere(pods: &[String], stable: u64) -> bool {
    for ip in pods {
        let Ok(mut client) = ModelServiceClient::connect(format!("http://{ip}:8500")).await else { return false };
        let Ok(config) = client.get_serving_config(GetServingConfigRequest { model: "bench".into() }).await else {
            return false;
        };
        if config.into_inner().config.and_then(|c| c.labels.get("stable").copied()) != Some(stable) {
            return false;
        }
    }
    true
}

fn resident_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    anyhow::ensure!(stack.apply(MODELS_CLAIM).await?.ok, "applying the claim");
    stack.publish_mlp("models", "bench", "4,16,3", 1, &[]).await?;
    stack.publish_mlp("models", "bench", "4,16,3", 2, &[]).await?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(stack.cluster.kubeconfig())?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let services: Api<InferenceService> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let apply = PatchParams::apply("bench").force();

    let (mut created, mut readied) = (Vec::new(), Vec::new());
    for i in 0..REPEATS {
        let name = format!("bench-{i}");
        let selector = ListParams::default().labels(&format!("lantern.dev/inference-service={name}"));
        let start = Instant::now();
        services.patch(&name, &apply, &Patch::Apply(service(&name, 2, None))).await?;
        poll_until(FAST, Duration::from_secs(30), || async {
            pods.list(&selector).await.is_ok_and(|l| l.items.len() == 2)
        })
        .await
        .context("pods created")?;
        created.push(start.elapsed().as_secs_f64() * 1e3);
        poll_until(FAST, Duration::from_secs(60), || async { services.get(&name).await.is_ok_and(|s| ready(&s)) })
            .await
            .with_context(|| format!("{name} never Ready"))?;
        readied.push(start.elapsed().as_secs_f64() * 1e3);
    }
    report("apply → 2 pods created", &mut created);
    report("apply → Ready (workers loaded the model)", &mut readied);

    let selector = ListParams::default().labels("lantern.dev/inference-service=bench-0");
    let ips: Vec<String> =
        pods.list(&selector).await?.items.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect();
    let mut shifts = Vec::new();
    for round in 0..REPEATS * 2 {
        let stable = 1 + (round as u64 % 2);
        let start = Instant::now();
        services.patch("bench-0", &apply, &Patch::Apply(service("bench-0", 2, Some(stable)))).await?;
        poll_until(FAST, Duration::from_secs(30), || applied_everywhere(&ips, stable)).await.context("the shift")?;
        shifts.push(start.elapsed().as_secs_f64() * 1e3);
    }
    report("spec change → serving config on every pod", &mut shifts);

    let many = std::env::var("LANTERN_BENCH_SERVICES").ok().and_then(|n| n.parse().ok()).unwrap_or(MANY);
    let start = Instant::now();
    let names: Vec<String> = (0..many).map(|i| format!("many-{i}")).collect();
    let creates = futures::stream::iter(&names)
        .map(|name| {
            let services = services.clone();
            let apply = apply.clone();
            async move { services.patch(name, &apply, &Patch::Apply(service(name, 0, None))).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    anyhow::ensure!(creates.iter().all(Result::is_ok), "creating {many} InferenceServices");
    let created_in = start.elapsed();
    poll_until(Duration::from_millis(500), Duration::from_secs(300), || async {
        let listed = services.list(&ListParams::default()).await;
        listed.is_ok_and(|l| {
            l.items
                .iter()
                .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.starts_with("many-")))
                .all(|s| s.status.as_ref().and_then(|st| st.observed_generation).is_some())
                && l.items.len() >= many
        })
    })
    .await
    .context("statuses")?;
    let all = start.elapsed();
    println!(
        "{many} InferenceServices: created in {:.1} s, every status written after {:.1} s ({:.0} reconciles/s)",
        created_in.as_secs_f64(),
        all.as_secs_f64(),
        many as f64 / all.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Some(mib) = stack.operator().pid().and_then(resident_mib) {
        println!("operator resident memory with {} InferenceServices: {mib:.1} MiB", many + REPEATS);
    }
    stack.stop().await
}
