//! `lantern-operator`: runs the controllers against the cluster in `KUBECONFIG` (or the one it
//! runs in) until SIGTERM or Ctrl-C.

use std::sync::Arc;

use clap::Parser;
use futures::FutureExt;
use lantern_operator::context::Context;
use lantern_operator::{serving, training};

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
    /// Log filter (`info`, `lantern_operator=debug`, …).
    #[arg(long, env = "LANTERN_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let client = kube::Client::try_default().await?;
    let context = Arc::new(Context::new(client, args.worker_image));
    tracing::info!("lantern-operator: reconciling TrainingJobs and InferenceServices");
    let shutdown = shutdown().boxed().shared();
    tokio::join!(
        training::controller::run(context.clone(), shutdown.clone()),
        serving::controller::run(context, shutdown),
    );
    Ok(())
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
