//! `lantern-e2e`: what the end-to-end suites share. [`Stack::start`] brings up the devcluster
//! (its kubelet running the worker and router images as the built `lantern-worker` and
//! `lantern-router`), applies the CRDs, and
//! starts the built `lantern-operator` as a process against it, the way a user's cluster runs
//! them. The suites then drive it with the real kubectl. [`Stack::bare`] is the devcluster
//! alone (the operator image mapped to the built `lantern-operator`), for installing the Helm
//! chart; [`Operator`] starts more operator processes (leader election).
//!
//! The binaries come from the same target directory as the test (`cargo nextest run
//! --workspace` builds them); a missing one is a clear error.

pub mod azure;
pub mod containers;
pub mod fault;
pub mod oci;
pub mod s3;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lantern_devcluster::kubelet::Runtime;
use lantern_devcluster::{DevCluster, Kubectl, Options};

/// The PersistentVolumeClaim `models` the suites publish into and serve from.
pub const MODELS_CLAIM: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models}
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
";

/// An InferenceService `name` serving the model of the same name from the claim `models` on
/// `replicas` pods, everything else left to the defaults.
pub fn claim_service(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  model: {name}
  source:
    repository: {{claimName: models}}
  replicas: {replicas}
"
    )
}

/// Whether `object`'s `Ready` condition is true.
pub fn ready(object: &serde_json::Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The worker image the operator runs by default, mapped to the built `lantern-worker`.
pub const WORKER_IMAGE: &str = "ghcr.io/lantern-dev/worker:0.1.0";

/// The router image the operator puts in front of every InferenceService, mapped to the built
/// `lantern-router`.
pub const ROUTER_IMAGE: &str = "ghcr.io/lantern-dev/router:0.1.0";

/// A binary built beside this test executable (`target/<profile>/<name>`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let test = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = test.parent().and_then(Path::parent).context("the test executable's target directory")?;
    let path = profile_dir.join(name);
    anyhow::ensure!(path.is_file(), "{} is not built; run `cargo build --workspace --bins` first", path.display());
    Ok(path)
}

/// Runs the lantern-worker CLI with `args` and `env`, as a user would; its stdout.
async fn worker_cli(args: &[String], env: &[(&str, String)]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(binary("lantern-worker")?)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "lantern-worker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Publishes `source` (a model file or directory, `extra` the further `publish` flags) as the
/// next version of `model` in `repository` (a directory or URI, with `env` for its store), with
/// the lantern-worker CLI. Returns the version.
pub async fn publish(
    repository: &str,
    env: &[(&str, String)],
    model: &str,
    source: &Path,
    extra: &[&str],
) -> anyhow::Result<u64> {
    let mut args: Vec<String> =
        ["publish", "--repository", repository, "--model", model, "--source"].map(str::to_owned).into();
    args.push(source.to_string_lossy().into_owned());
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    // "published MODEL version N in REPOSITORY"
    let said = worker_cli(&args, env).await?;
    let version = said.split_whitespace().skip_while(|w| *w != "version").nth(1);
    version.and_then(|v| v.parse().ok()).with_context(|| format!("no version in {said:?}"))
}

/// Publishes a fresh MLP (`layers` wide, weights from `seed`) as the next version of `model`
/// in `repository` (a directory or URI, with `env` for its store), recording `metrics`
/// (`name=value`) in its manifest. Returns the version.
pub async fn publish_mlp(
    repository: &str,
    env: &[(&str, String)],
    model: &str,
    layers: &str,
    seed: u64,
    metrics: &[&str],
) -> anyhow::Result<u64> {
    let source = tempfile::tempdir()?;
    let init = ["init-mlp", "--out", &source.path().to_string_lossy(), "--layers", layers, "--seed", &seed.to_string()]
        .map(str::to_owned);
    worker_cli(&init, env).await?;
    let flags: Vec<&str> = metrics.iter().flat_map(|metric| ["--metric", metric]).collect();
    publish(repository, env, model, source.path(), &flags).await
}

/// Waits up to 30 s for a server (`what`) to accept connections on the loopback `port`.
pub fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Lower-case hex sha256 of `bytes`, as manifests and registries name content.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The workspace's root (for `crds/` and `examples/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e is in the workspace").to_owned()
}

/// The devcluster, with the CRDs applied and the operator running unless started bare.
pub struct Stack {
    pub cluster: DevCluster,
    operator: Option<Operator>,
    pub state: tempfile::TempDir,
}

/// The operator image, mapped to the built `lantern-operator` (the chart's default image).
pub const OPERATOR_IMAGE: &str = "ghcr.io/lantern-dev/operator";

/// The identity the suites' operator holds the leader Lease under: a restarted operator keeps
/// it, as a restarted container keeps its pod's name.
pub const OPERATOR_IDENTITY: &str = "lantern-operator-e2e";

/// A running `lantern-operator` process, logging to its own file.
pub struct Operator {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Operator {
    /// Starts `lantern-operator` against `cluster` as `identity`, with `env` added, appending
    /// to `{identity}.log` in `state`. Its metrics endpoint takes any free port (see
    /// [`Operator::metrics_address`]).
    pub fn start(cluster: &DevCluster, state: &Path, identity: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let log = state.join(format!("{identity}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = tokio::process::Command::new(binary("lantern-operator")?)
            .args(["--worker-image", WORKER_IMAGE, "--router-image", ROUTER_IMAGE])
            .args(["--metrics-address", "127.0.0.1:0", "--identity", identity])
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("LANTERN_LOG", "lantern_operator=debug,info")
            .envs(env.iter().copied())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting lantern-operator")?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where its latest run serves `/metrics` (from its log; waits up to 10 s for the line).
    pub async fn metrics_address(&self) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let announced = log.lines().rev().find(|l| l.contains("serving /metrics"));
            if let Some(address) =
                announced.and_then(|l| l.split("address=").nth(1)).and_then(|a| a.split_whitespace().next())
            {
                return Ok(address.to_owned());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the operator never served metrics:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            // Already gone is fine.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .context("the operator did not stop within 20 s of SIGTERM")?
            .context("waiting for the operator")
    }

    /// Waits (up to `within`) for it to exit on its own.
    pub async fn exited(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("the operator still runs after {within:?}"))?
            .context("waiting for the operator")
    }

    /// SIGKILL: no chance to tidy up.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing lantern-operator")
    }
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// As [`Stack::start`], with `env` added to the operator's environment.
    pub async fn start_with(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::bare().await?.with_operator(env).await
    }

    /// The devcluster alone, its kubelet running the worker and operator images as the built
    /// binaries: nothing applied, no operator started (for installing the chart).
    pub async fn bare() -> anyhow::Result<Self> {
        let options = Options::new(PathBuf::new())
            .image(WORKER_IMAGE, binary("lantern-worker")?)
            .image(ROUTER_IMAGE, binary("lantern-router")?)
            .image(OPERATOR_IMAGE, binary("lantern-operator")?);
        Self::on(options).await
    }

    /// As [`Stack::start`], with every pod in a container from its image in podman's storage
    /// ([`containers::build_images`] builds them); the operator still runs as a process.
    pub async fn in_containers() -> anyhow::Result<Self> {
        Self::bare_in_containers().await?.with_operator(&[]).await
    }

    /// The devcluster alone, every pod in a container: nothing applied, no operator started.
    pub async fn bare_in_containers() -> anyhow::Result<Self> {
        Self::on(Options::new(PathBuf::new()).runtime(Runtime::Podman)).await
    }

    /// The CRDs applied and the operator started, with `env` added to its environment.
    async fn with_operator(mut self, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let crds = workspace().join("crds");
        let applied = self.kubectl(&["apply", "-f", crds.to_str().context("a UTF-8 path")?]).await?;
        anyhow::ensure!(applied.ok, "applying the CRDs: {}{}", applied.stdout, applied.stderr);
        self.operator = Some(Operator::start(&self.cluster, self.state.path(), OPERATOR_IDENTITY, env)?);
        Ok(self)
    }

    /// The devcluster as `options` say, in a fresh state directory, with a 1 s back-off.
    async fn on(mut options: Options) -> anyhow::Result<Self> {
        let state = tempfile::tempdir().context("creating the state directory")?;
        options.state_dir = state.path().to_owned();
        options.kubelet.back_off = Duration::from_secs(1);
        let cluster = DevCluster::start(options).await?;
        Ok(Self { cluster, operator: None, state })
    }

    /// The operator process [`Stack::start`] runs.
    pub fn operator(&mut self) -> &mut Operator {
        self.operator.as_mut().expect("a Stack started bare has no operator process; this is a bug")
    }

    /// Kills the operator (SIGKILL: no chance to tidy up) and starts a new one, as a crash and a
    /// Deployment's restart would.
    pub async fn restart_operator(&mut self) -> anyhow::Result<()> {
        self.operator().kill().await?;
        self.operator = Some(Operator::start(&self.cluster, self.state.path(), OPERATOR_IDENTITY, &[])?);
        Ok(())
    }

    /// Runs the helm that `scripts/fetch-helm.sh` installs, in the workspace, against this
    /// cluster, with its caches and configuration in the state directory; its stdout.
    pub async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let binary = workspace().join(".cache/tools/helm");
        anyhow::ensure!(binary.is_file(), "{} is missing: run scripts/setup-test-deps.sh", binary.display());
        let home = self.state.path().join("helm");
        let output = tokio::process::Command::new(&binary)
            .args(args)
            .current_dir(workspace())
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .await
            .context("running helm")?;
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        anyhow::ensure!(output.status.success(), "helm {args:?} failed:\n{stdout}\n{stderr}");
        Ok(stdout.into_owned())
    }

    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Kubectl> {
        self.cluster.kubectl(args, None).await
    }

    pub async fn apply(&self, manifest: &str) -> anyhow::Result<Kubectl> {
        self.cluster.kubectl(&["apply", "-f", "-"], Some(manifest)).await
    }

    /// A field of an object, as `kubectl get -o jsonpath` prints it.
    pub async fn field(&self, object: &str, path: &str) -> anyhow::Result<String> {
        let run = self.kubectl(&["get", object, "-o", &format!("jsonpath={{{path}}}")]).await?;
        anyhow::ensure!(run.ok, "kubectl get {object}: {}", run.stderr);
        Ok(run.stdout)
    }

    /// The object as JSON.
    pub async fn json(&self, object: &str) -> anyhow::Result<serde_json::Value> {
        let run = self.kubectl(&["get", object, "-o", "json"]).await?;
        anyhow::ensure!(run.ok, "kubectl get {object}: {}", run.stderr);
        Ok(serde_json::from_str(&run.stdout)?)
    }

    /// Polls (every 250 ms, up to `limit`) until `done` holds of the object's JSON, and returns
    /// it; fails with the last status seen, the pods and the operator's log.
    pub async fn wait_for(
        &self,
        object: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = std::time::Instant::now();
        let mut last = serde_json::Value::Null;
        while start.elapsed() < limit {
            if let Ok(object) = self.json(object).await {
                if done(&object) {
                    return object;
                }
                last = object;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let pods = self.kubectl(&["get", "pods", "-o", "wide"]).await.map(|k| k.stdout).unwrap_or_default();
        panic!(
            "{object}: {what} did not happen within {limit:?}\nlast seen: {}\npods:\n{pods}\noperator log:\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            self.operator_log()
        );
    }

    /// The directory of PersistentVolumeClaim `claim` in namespace `default`.
    pub fn claim_dir(&self, claim: &str) -> PathBuf {
        self.state.path().join("claims/default").join(claim)
    }

    /// Publishes a fresh MLP (`layers` wide, weights from `seed`) as the next version of `model`
    /// in claim `claim`, with the lantern-worker CLI as a user would, recording `metrics`
    /// (`name=value`) in its manifest. Returns the version.
    pub async fn publish_mlp(
        &self,
        claim: &str,
        model: &str,
        layers: &str,
        seed: u64,
        metrics: &[&str],
    ) -> anyhow::Result<u64> {
        let repository = self.claim_dir(claim);
        std::fs::create_dir_all(&repository)?;
        publish_mlp(&repository.to_string_lossy(), &[], model, layers, seed, metrics).await
    }

    /// Publishes `source` (`extra` the further `publish` flags) as the next version of `model` in
    /// claim `claim`. Returns the version.
    pub async fn publish(&self, claim: &str, model: &str, source: &Path, extra: &[&str]) -> anyhow::Result<u64> {
        let repository = self.claim_dir(claim);
        std::fs::create_dir_all(&repository)?;
        publish(&repository.to_string_lossy(), &[], model, source, extra).await
    }

    /// `host:port` of a Service's first port on its cluster IP (the devcluster proxies it).
    pub async fn service_address(&self, service: &str) -> anyhow::Result<String> {
        let object = self.json(&format!("service/{service}")).await?;
        let ip = object["spec"]["clusterIP"].as_str().context("the Service has no cluster IP")?;
        let port = object["spec"]["ports"][0]["port"].as_u64().context("the Service has no port")?;
        Ok(format!("{ip}:{port}"))
    }

    /// The operator's log so far (for failure messages).
    pub fn operator_log(&self) -> String {
        self.operator.as_ref().map(Operator::log).unwrap_or_default()
    }

    /// Stops the operator (SIGTERM) and the devcluster with its pods.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(operator) = self.operator.as_mut() {
            // An operator that has already exited is fine.
            let _ = operator.terminate().await;
        }
        self.cluster.stop().await
    }
}
