//! `lantern-devcluster up`: serve the devcluster until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lantern_devcluster::{DevCluster, Options, kubelet};

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
        /// IMAGE=EXECUTABLE: containers of this image run this executable (repeatable). An image
        /// matches exactly or by its repository, tag left off.
        #[arg(long = "image", value_parser = kubelet::parse_image)]
        images: Vec<(String, PathBuf)>,
        /// What runs pods: `processes` (images mapped to executables with --image) or `podman`
        /// (images from podman's local storage, under their pod security).
        #[arg(long, value_enum, default_value = "processes", env = "LANTERN_DEVCLUSTER_RUNTIME")]
        runtime: kubelet::Runtime,
        /// The first CrashLoopBackOff delay, doubling to 300 s.
        #[arg(long, default_value_t = 10.0)]
        back_off_seconds: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Command::Up { state_dir, listen, images, runtime, back_off_seconds } = Args::parse().command;
    let mut options = Options { listen, ..Options::new(state_dir) };
    options.kubelet.runtime = runtime;
    options.kubelet.images.extend(images);
    options.kubelet.back_off = std::time::Duration::try_from_secs_f64(back_off_seconds)?;
    let cluster = DevCluster::start(options).await?;
    eprintln!(
        "lantern-devcluster: serving {} (kubeconfig {}); pods on {}, services on {}",
        cluster.url(),
        cluster.kubeconfig().display(),
        cluster.pod_range(),
        cluster.service_range()
    );
    print!("{}", std::fs::read_to_string(cluster.kubeconfig())?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    cluster.stop().await
}
