//! `lantern-router`: balances one InferenceService's requests over its ready pods. The pods come
//! from the Kubernetes API (`--selector`, in the router's namespace) or a fixed `--backend` list.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use lantern_router::discovery;
use lantern_router::proxy::HoldSettings;
use lantern_router::server::{self, Options};

#[derive(Parser, Debug)]
#[command(name = "lantern-router", version, about = "Per-request balancing in front of an InferenceService's pods")]
struct Args {
    /// The serving address: gRPC and HTTP (1.1 and h2c) on one port.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// `/metrics`, `/healthz` and `/stats`.
    #[arg(long, default_value = "127.0.0.1:8502")]
    admin_listen: SocketAddr,
    /// Pods from the Kubernetes API: this label selector, in `--namespace`.
    #[arg(long, conflicts_with = "backend")]
    selector: Option<String>,
    /// The pods' namespace (in a pod, the downward API's `metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The pods' serving port.
    #[arg(long, default_value_t = 8500)]
    pod_port: u16,
    /// A fixed pod address instead of discovery; repeat for several.
    #[arg(long, required_unless_present = "selector")]
    backend: Vec<SocketAddr>,
    /// The models the pods serve, comma-separated: a request naming another gets 404 /
    /// NOT_FOUND from the router where it can read the name. Unset: every name goes to a pod.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Longest a request waits for a ready pod while there is none, in seconds.
    #[arg(long, default_value_t = 60)]
    hold_seconds: u64,
    /// Most requests waiting for a ready pod at once.
    #[arg(long, default_value_t = 1024)]
    max_held: usize,
    /// PEM certificate chain for TLS on --listen (a Kubernetes TLS Secret's `tls.crt`); the pods
    /// are then reached over TLS and must present the same certificate.
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key for TLS on --listen (`tls.key`).
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<std::path::PathBuf>,
    /// How long shutdown waits for requests in flight, in seconds.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_seconds: u64,
    #[command(flatten)]
    telemetry: lantern_telemetry::TelemetryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = args.telemetry.init("lantern-router")?;
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(server::Tls::from_pem_files(cert, key).context("setting up TLS")?),
        _ => None,
    };
    let options = Options {
        listen: args.listen,
        admin_listen: args.admin_listen,
        hold: HoldSettings { timeout: Duration::from_secs(args.hold_seconds), max_held: args.max_held },
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        models: args.models.clone().map(|models| models.into_iter().collect()),
        tls,
        ..Options::default()
    };
    let running = server::start(options).await.context("binding the router's ports")?;
    match &args.selector {
        Some(selector) => {
            let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
            let (namespace, selector, pool) = (args.namespace.clone(), selector.clone(), running.pool().clone());
            tokio::spawn(
                async move { discovery::watch_pods(client, &namespace, &selector, args.pod_port, pool).await },
            );
        }
        None => running.pool().set(args.backend.clone()),
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
