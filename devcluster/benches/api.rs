//! Figures for the devcluster's API with 1,000 pods and 50 open watches, through kube-rs over
//! loopback HTTP: create, list and watch-event latency (p50/p99) and the process's memory.
//! `cargo bench -p lantern-devcluster` (release build); it prints, it asserts nothing.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use lantern_devcluster::{DevCluster, Options};
use serde_json::json;

const OBJECTS: usize = 1000;
const WATCHES: usize = 50;
const CHANGES: usize = 100;
const LISTS: usize = 20;

/// A pod bound to a node that is not the devcluster's, so that the kubelet leaves it alone and
/// the figures are the API's.
fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "main", "image": "lantern-worker", "args": ["serve"]}]},
    }))
    .expect("a valid pod")
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

/// Resident memory of this process (server and client together), in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let cluster = DevCluster::start(Options::new(state.path())).await?;
    let client = kube::Client::try_from(kube::Config::new(cluster.url().parse()?))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let before = rss_mib();

    let mut creates = Vec::with_capacity(OBJECTS);
    for i in 0..OBJECTS {
        let started = Instant::now();
        pods.create(&PostParams::default(), &pod(&format!("pod-{i:04}"))).await?;
        creates.push(started.elapsed());
    }
    let (p50, p99) = percentiles(creates);
    println!("create, {OBJECTS} pods one by one: p50 {p50:.2} ms, p99 {p99:.2} ms");

    let mut lists = Vec::with_capacity(LISTS);
    for _ in 0..LISTS {
        let started = Instant::now();
        let listed = pods.list(&ListParams::default()).await?;
        lists.push(started.elapsed());
        anyhow::ensure!(listed.items.len() == OBJECTS, "listed {}", listed.items.len());
    }
    let (p50, p99) = percentiles(lists);
    println!("list of {OBJECTS} pods: p50 {p50:.2} ms, p99 {p99:.2} ms (goal: under 50 ms)");

    // Open the watches, then time each change from its write to its arrival on every watch.
    let revision = pods.list(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    for _ in 0..WATCHES {
        let stream = pods.watch(&WatchParams::default().timeout(290), &revision).await?;
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Modified(pod) = event {
                    let _ = arrivals.send((pod.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(CHANGES * WATCHES);
    for i in 0..CHANGES {
        let name = format!("pod-{:04}", i * (OBJECTS / CHANGES));
        let patch = json!({"metadata": {"labels": {"round": i.to_string()}}});
        let sent = Instant::now();
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        for _ in 0..WATCHES {
            let (seen, at) = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("a watch ended"))?;
            anyhow::ensure!(seen == name, "expected {name}, a watch saw {seen}");
            latencies.push(at - sent);
        }
    }
    let (p50, p99) = percentiles(latencies);
    println!(
        "watch event, {WATCHES} watches, {CHANGES} changes (write sent → event received): p50 {p50:.2} ms, p99 {p99:.2} ms (goal: under 10 ms)"
    );
    println!(
        "memory: {:.1} MiB resident with {OBJECTS} pods and {WATCHES} watches ({before:.1} MiB before the pods)",
        rss_mib()
    );
    cluster.stop().await
}
