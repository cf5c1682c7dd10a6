//! `lantern-devcluster up`: serve the devcluster until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lantern_devcluster::{DevCluster, Options};

#[derive(Parser, Debug)]
#[command(name = "lantern-devcluster", version, about = "A single-process Kubernetes API subset for one machine")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API and write a kubeconfig into the state directory (also printed).
    Up {
        /// Kubeconfig, pod logs and volumes go here.
        #[arg(long, env = "LANTERN_DEVCLUSTER_STATE_DIR")]
        state_dir: PathBuf,
        /// Loopback address for the API; port 0 picks a free one.
        #[arg(long, env = "LANTERN_DEVCLUSTER_LISTEN", default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let Command::Up { state_dir, listen } = Args::parse().command;
    let cluster = DevCluster::start(Options { state_dir, listen }).await?;
    eprintln!("lantern-devcluster: serving {} (kubeconfig {})", cluster.url(), cluster.kubeconfig().display());
    print!("{}", std::fs::read_to_string(cluster.kubeconfig())?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    cluster.stop().await
}
