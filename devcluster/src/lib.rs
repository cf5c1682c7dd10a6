//! `lantern-devcluster`: a single-process subset of the Kubernetes API for one machine, so the
//! operator, real `kubectl` and kube-rs clients run against something real in development, the
//! quickstart and CI. Production is a real cluster.
//!
//! - [`store`]: objects as JSON, one revision counter, watch history.
//! - [`resources`]: the built-in kinds and the CRDs applied, as discovery and routing see them.
//! - [`crd`]: what a CustomResourceDefinition serves, and its accepted status.
//! - [`schema`]: a CRD's structural schema applied to its objects (prune, default, validate),
//!   with its CEL rules ([`cel`]).
//! - [`cluster`]: the state every part shares (store, kinds, state directory, Service range).
//! - [`objects`]: what a write does to an object (server-owned metadata, status split, checks).
//! - [`api`]: the HTTP API (discovery, CRUD, list, watch, patch, delete).
//! - [`selector`], [`status`]: label and field selectors; errors as `Status` objects.
//! - [`kubelet`]: pods run as local processes, each pod on a loopback IP of its own, their
//!   files where [`node`] says.
//! - [`network`]: Services' endpoints and the proxy behind their cluster IPs.
//! - [`deployments`]: Deployments keep their pods (no ReplicaSets), rolling or recreating.
//! - [`controllers`]: the level-triggered sweeps (garbage collection, namespaces, endpoints,
//!   claims, Deployments).
//!
//! [`DevCluster::start`] serves it on a loopback port and writes a kubeconfig; tests take a
//! [`kube::Client`]-ready config from it and stop it when done.

pub mod api;
pub mod cel;
pub mod cluster;
pub mod controllers;
pub mod crd;
pub mod deployments;
pub mod kubelet;
pub mod network;
pub mod node;
pub mod objects;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Holds the kubeconfig, pods' logs and volumes, and claims' directories.
    pub state_dir: PathBuf,
    /// A loopback address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How pods run: processes (the image map) or podman, and CrashLoopBackOff.
    pub kubelet: kubelet::Config,
}

impl Options {
    /// A free loopback port, no images, the kubelet's usual back-off.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubelet: kubelet::Config::default(),
        }
    }

    /// Runs pods with `runtime`.
    pub fn runtime(mut self, runtime: kubelet::Runtime) -> Self {
        self.kubelet.runtime = runtime;
        self
    }

    /// Runs `image` as `executable`.
    pub fn image(mut self, image: &str, executable: impl Into<PathBuf>) -> Self {
        self.kubelet.images.insert(image.to_owned(), executable.into());
        self
    }
}

/// A running devcluster.
pub struct DevCluster {
    address: SocketAddr,
    kubeconfig: PathBuf,
    networks: network::Networks,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    controllers: tokio::task::JoinHandle<()>,
    proxy: tokio::task::JoinHandle<()>,
    kubelet: Option<kubelet::Kubelet>,
}

impl DevCluster {
    /// Serves the API on `options.listen` and writes `kubeconfig` under the state directory.
    pub async fn start(mut options: Options) -> anyhow::Result<Self> {
        // Pods run in their own working directories, so every path handed to them is absolute.
        options.state_dir = std::path::absolute(&options.state_dir)
            .with_context(|| format!("resolving the state directory {}", options.state_dir.display()))?;
        anyhow::ensure!(
            options.listen.ip().is_loopback(),
            "the devcluster serves loopback addresses only, not {}",
            options.listen
        );
        std::fs::create_dir_all(&options.state_dir)
            .with_context(|| format!("creating the state directory {}", options.state_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("binding {}", options.listen))?;
        let address = listener.local_addr().context("reading the bound address")?;
        let networks = network::claim()?;
        let cluster = cluster::Cluster::new(options.state_dir.clone(), networks.services);
        let controllers = tokio::spawn(controllers::run(Arc::downgrade(&cluster)));
        let proxy = tokio::spawn(network::proxy::run(Arc::downgrade(&cluster)));
        let kubelet =
            kubelet::Kubelet::start(cluster.clone(), options.kubelet.clone(), options.state_dir.clone(), networks.pods);
        let router = api::router(cluster.clone());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serving = axum::serve(listener, router).with_graceful_shutdown(async {
                let _ = stop.await;
            });
            if let Err(error) = serving.await {
                tracing::error!(%error, "the devcluster API stopped");
            }
        });
        let kubeconfig = kubeconfig_path(&options.state_dir);
        std::fs::write(&kubeconfig, kubeconfig_yaml(address))
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        Ok(Self {
            address,
            kubeconfig,
            networks,
            shutdown: Some(shutdown),
            server,
            controllers,
            proxy,
            kubelet: Some(kubelet),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Where pod IPs come from (127.1.0.0/16 for the first devcluster on a machine).
    pub fn pod_range(&self) -> network::Range {
        self.networks.pods
    }

    /// Where Services' cluster IPs come from (127.2.0.0/16 for the first).
    pub fn service_range(&self) -> network::Range {
        self.networks.services
    }

    /// The kubeconfig file pointing at this cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs the real `kubectl` against this cluster (with a discovery cache of its own, so that a
    /// later cluster on the same port is not mistaken for this one), feeding it `stdin`.
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Kubectl> {
        use std::io::Write;
        let mut command = std::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.kubeconfig.with_file_name("kubectl-cache"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let input = stdin.unwrap_or_default().to_owned();
        let output = tokio::task::spawn_blocking(move || -> anyhow::Result<std::process::Output> {
            let mut child = command.spawn().context("running kubectl (is it installed?)")?;
            child.stdin.take().context("kubectl's stdin")?.write_all(input.as_bytes())?;
            Ok(child.wait_with_output()?)
        })
        .await??;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        Ok(Kubectl { ok: output.status.success(), stdout: text(&output.stdout), stderr: text(&output.stderr) })
    }

    /// Stops the pods' processes (SIGTERM, then SIGKILL after 2 s) and then serving: open
    /// watches end, and the call returns once the server has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.stop().await;
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
        self.controllers.abort();
        self.proxy.abort();
        let _ = (&mut self.server).await;
        Ok(())
    }
}

/// What a kubectl run printed, and whether it succeeded.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Where the kubeconfig is written in a state directory (pods get it as `KUBECONFIG`).
pub fn kubeconfig_path(state_dir: &Path) -> PathBuf {
    state_dir.join("kubeconfig")
}

/// A kubeconfig with one cluster, user and context, all named `lantern-devcluster`.
pub fn kubeconfig_yaml(address: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lantern-devcluster\n  cluster:\n    server: http://{address}\n\
         users:\n- name: lantern-devcluster\n  user: {{}}\n\
         contexts:\n- name: lantern-devcluster\n  context:\n    cluster: lantern-devcluster\n    user: lantern-devcluster\n    namespace: default\n\
         current-context: lantern-devcluster\n"
    )
}
