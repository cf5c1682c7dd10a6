//! `lantern-e2e`: what the end-to-end suites share. [`Stack::start`] brings up the devcluster
//! (its kubelet running the worker image as the built `lantern-worker`), applies the CRDs, and
//! starts the built `lantern-operator` as a process against it, the way a user's cluster runs
//! them. The suites then drive it with the real kubectl.
//!
//! The binaries come from the same target directory as the test (`cargo nextest run
//! --workspace` builds them); a missing one is a clear error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lantern_devcluster::{DevCluster, Kubectl, Options};

/// The PersistentVolumeClaim `models` the suites publish into and serve from.
pub const MODELS_CLAIM: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models}
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
";

/// The worker image the operator runs by default, mapped to the built `lantern-worker`.
pub const WORKER_IMAGE: &str = "ghcr.io/lantern-dev/worker:0.1.0";

/// A binary built beside this test executable (`target/<profile>/<name>`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let test = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = test.parent().and_then(Path::parent).context("the test executable's target directory")?;
    let path = profile_dir.join(name);
    anyhow::ensure!(path.is_file(), "{} is not built; run `cargo build --workspace --bins` first", path.display());
    Ok(path)
}

/// The workspace's root (for `crds/` and `examples/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e is in the workspace").to_owned()
}

/// The devcluster with the CRDs applied and the operator running.
pub struct Stack {
    pub cluster: DevCluster,
    operator: tokio::process::Child,
    pub state: tempfile::TempDir,
}

/// Starts `lantern-operator` against `cluster`, appending to `operator.log` in `state`.
fn start_operator(cluster: &DevCluster, state: &Path) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(state.join("operator.log"))?;
    tokio::process::Command::new(binary("lantern-operator")?)
        .arg("--worker-image")
        .arg(WORKER_IMAGE)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("LANTERN_LOG", "lantern_operator=debug,info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting lantern-operator")
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        let state = tempfile::tempdir().context("creating the state directory")?;
        let mut options = Options::new(state.path()).image(WORKER_IMAGE, binary("lantern-worker")?);
        options.kubelet.back_off = Duration::from_secs(1);
        let cluster = DevCluster::start(options).await?;
        let crds = workspace().join("crds");
        let applied = cluster.kubectl(&["apply", "-f", crds.to_str().context("a UTF-8 path")?], None).await?;
        anyhow::ensure!(applied.ok, "applying the CRDs: {}{}", applied.stdout, applied.stderr);
        let operator = start_operator(&cluster, state.path())?;
        Ok(Self { cluster, operator, state })
    }

    /// The operator process's id (for its memory in the benchmark).
    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.id()
    }

    /// Kills the operator (SIGKILL: no chance to tidy up) and starts a new one, as a crash and a
    /// Deployment's restart would.
    pub async fn restart_operator(&mut self) -> anyhow::Result<()> {
        self.operator.kill().await.context("killing lantern-operator")?;
        self.operator = start_operator(&self.cluster, self.state.path())?;
        Ok(())
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
        let source = tempfile::tempdir()?;
        let worker = binary("lantern-worker")?;
        let run = |args: Vec<String>| {
            let worker = worker.clone();
            async move {
                let output = tokio::process::Command::new(&worker).args(&args).output().await?;
                anyhow::ensure!(
                    output.status.success(),
                    "lantern-worker {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                anyhow::Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            }
        };
        let out = source.path().to_string_lossy().into_owned();
        run(vec![
            "init-mlp".into(),
            "--out".into(),
            out.clone(),
            "--layers".into(),
            layers.into(),
            "--seed".into(),
            seed.to_string(),
        ])
        .await?;
        let repository = self.claim_dir(claim);
        std::fs::create_dir_all(&repository)?;
        let mut args = vec![
            "publish".into(),
            "--repository".into(),
            repository.to_string_lossy().into_owned(),
            "--model".into(),
            model.into(),
            "--source".into(),
            out,
        ];
        for metric in metrics {
            args.extend(["--metric".to_owned(), (*metric).to_owned()]);
        }
        run(args).await?;
        let versions = std::fs::read_dir(repository.join(model))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max();
        versions.context("the published version is not in the repository")
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
        std::fs::read_to_string(self.state.path().join("operator.log")).unwrap_or_default()
    }

    /// Stops the operator (SIGTERM) and the devcluster with its pods.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.operator.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            // Already gone is fine.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.operator.wait()).await;
        self.cluster.stop().await
    }
}
