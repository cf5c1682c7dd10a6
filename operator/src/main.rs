//! `lantern-operator`: runs the controllers against the cluster in `KUBECONFIG` (or the one it
//! runs in) until SIGTERM or Ctrl-C, as the leader among its replicas (a Lease) unless told
//! otherwise, with its metrics and health endpoints on `--metrics-address`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use futures::FutureExt;
use lantern_operator::context::{Context, RouterSettings, WorkerImages};
use lantern_operator::crd::RepositoryCache;
use lantern_operator::leader::Election;
use lantern_operator::{metrics, serving, training};

#[derive(Parser, Debug)]
#[command(
    name = "lantern-operator",
    version,
    about = "The Lantern operator: TrainingJob and InferenceService controllers"
)]
struct Args {
    /// The worker image for jobs and services that name none.
    #[arg(long, env = "LANTERN_WORKER_IMAGE", default_value = "ghcr.io/lantern-dev/worker:0.1.0")]
    worker_image: String,
    /// The CUDA worker image for jobs and services with `device: cuda` that name no image.
    #[arg(long, env = "LANTERN_WORKER_CUDA_IMAGE", default_value = "ghcr.io/lantern-dev/worker:0.1.0-cuda")]
    worker_cuda_image: String,
    /// The image of the router in front of every InferenceService (`lantern-router`).
    #[arg(long, env = "LANTERN_ROUTER_IMAGE", default_value = "ghcr.io/lantern-dev/router:0.1.0")]
    router_image: String,
    /// The ClusterRole that lets a router watch pods (the chart's), bound per service.
    #[arg(long, env = "LANTERN_ROUTER_CLUSTER_ROLE", default_value = "lantern-router")]
    router_cluster_role: String,
    /// The node directory (hostPath) pods cache a URI repository's files in when the resource's
    /// `repository.cache` names none; unset, each pod gets an emptyDir.
    #[arg(long, env = "LANTERN_MODEL_CACHE_HOST_PATH", value_parser = absolute_path)]
    model_cache_host_path: Option<String>,
    /// The cache budget in MiB when the resource's `repository.cache` gives none (20480 unset).
    #[arg(long, env = "LANTERN_MODEL_CACHE_SIZE_MIB", value_parser = clap::value_parser!(u64).range(64..))]
    model_cache_size_mib: Option<u64>,
    /// Logs, and a trace per reconcile.
    #[command(flatten)]
    telemetry: lantern_telemetry::TelemetryArgs,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (port 0: any free port, logged).
    #[arg(long, env = "LANTERN_METRICS_ADDRESS", default_value = "127.0.0.1:8080")]
    metrics_address: SocketAddr,
    /// Reconcile only while holding the leader Lease (`--leader-elect=false`: always).
    #[arg(long, env = "LANTERN_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    leader_elect: bool,
    /// The Lease's name.
    #[arg(long, env = "LANTERN_LEASE_NAME", default_value = "lantern-operator")]
    lease_name: String,
    /// Watch only this namespace (a namespace-scoped install, with a Role there instead of a
    /// ClusterRole); default: every namespace.
    #[arg(long, env = "LANTERN_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// The Lease's namespace; default: the client's (the pod's namespace in a cluster).
    #[arg(long, env = "LANTERN_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a leader's Lease stays valid without renewal.
    #[arg(long, env = "LANTERN_LEASE_DURATION_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_duration_seconds: u64,
    /// This replica's name in the Lease; default: the host name and process id. Give the pod's
    /// name, so that a restarted container takes its Lease back at once.
    #[arg(long, env = "LANTERN_IDENTITY")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = args.telemetry.init("lantern-operator")?;
    let client = kube::Client::try_default().await?;
    let images = WorkerImages { cpu: args.worker_image.clone(), cuda: args.worker_cuda_image.clone() };
    let cache = RepositoryCache { size_mib: args.model_cache_size_mib, host_path: args.model_cache_host_path.clone() };
    let own_namespace = client.default_namespace().to_owned();
    let router = RouterSettings { image: args.router_image.clone(), cluster_role: args.router_cluster_role.clone() };
    let context =
        Arc::new(Context::new(client.clone(), images, router, cache, own_namespace, args.watch_namespace.clone()));

    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_address))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let shutdown = shutdown().boxed().shared();
    let server = tokio::spawn(metrics::serve(listener, context.metrics.clone(), shutdown.clone()));

    let controllers = {
        let (context, shutdown) = (context.clone(), shutdown.clone());
        async move {
            tracing::info!("reconciling TrainingJobs and InferenceServices");
            tokio::join!(
                training::controller::run(context.clone(), shutdown.clone()),
                serving::controller::run(context, shutdown),
            );
        }
    };
    if args.leader_elect {
        let namespace = args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        let duration = Duration::from_secs(args.lease_duration_seconds);
        let election = Election::new(client, &namespace, &args.lease_name, &identity, duration);
        election.lead(&context.metrics, shutdown.clone(), controllers).await?;
    } else {
        context.metrics.set_ready();
        controllers.await;
    }
    server.await.context("the metrics server task")?.context("serving metrics")?;
    Ok(())
}

/// `host_pid`: unique among the replicas of a Deployment (each pod has its own host name).
fn absolute_path(value: &str) -> Result<String, String> {
    match value.starts_with('/') {
        true => Ok(value.to_owned()),
        false => Err("a node directory is an absolute path".to_owned()),
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "lantern-operator".to_owned());
    format!("{host}_{}", std::process::id())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
