//! Container figures, with the release binaries (`cargo build --release --workspace --bins`,
//! then `cargo bench -p lantern-e2e --bench containers`): the images `scripts/build-images.sh`
//! makes from them and their sizes, and how long a worker pod takes from its creation to Ready
//! (the worker serving a model from a claim, its readiness probe passing) as a process and in a
//! container, on the same devcluster code.

use std::time::{Duration, Instant};

use lantern_e2e::containers::build_images;
use lantern_e2e::{MODELS_CLAIM, Stack};

const RUNS: usize = 5;

/// A worker pod serving the claim `models`, under the operator's pod security, ready once its
/// model is.
fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}}
  containers:
  - name: worker
    image: ghcr.io/lantern-dev/worker:{version}
    args: [serve, --repository, /var/lib/lantern/models, --listen, $(POD_IP):8500]
    env:
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    readinessProbe:
      httpGet: {{path: /v2/models/timed/ready, port: 8500}}
      periodSeconds: 1
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
    volumeMounts:
    - {{name: models, mountPath: /var/lib/lantern/models, readOnly: true}}
  volumes:
  - {{name: models, persistentVolumeClaim: {{claimName: models}}}}
",
        version = env!("CARGO_PKG_VERSION")
    )
}

/// Seconds from `kubectl apply` to Ready, for `RUNS` pods one after another; the median.
async fn start_times(stack: &Stack) -> anyhow::Result<f64> {
    anyhow::ensure!(stack.apply(MODELS_CLAIM).await?.ok, "applying the claim");
    stack.publish_mlp("models", "timed", "2,8,1", 1, &[]).await?;
    let mut seconds = Vec::new();
    for run in 0..RUNS {
        let name = format!("timed-{run}");
        let started = Instant::now();
        anyhow::ensure!(stack.apply(&pod(&name)).await?.ok, "creating {name}");
        let ready = |p: &serde_json::Value| p["status"]["containerStatuses"][0]["ready"] == true;
        stack.wait_for(&format!("pod/{name}"), "Ready", Duration::from_secs(60), ready).await;
        seconds.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(stack.kubectl(&["delete", "pod", &name, "--wait=true"]).await?.ok, "deleting {name}");
    }
    seconds.sort_by(f64::total_cmp);
    Ok(seconds[RUNS / 2])
}

/// The CPU's model and the vector extensions it has.
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).unwrap_or(": unknown");
    let model = field("model name").trim_start_matches([' ', '\t', ':']);
    let flags: Vec<&str> = field("flags").split_whitespace().collect();
    let vector: Vec<&str> =
        ["avx2", "avx512f", "avx512_vnni", "amx_tile"].into_iter().filter(|f| flags.contains(f)).collect();
    format!("{model} ({})", vector.join(" "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(build_images().await?, "podman, buildah or mmdebstrap is missing");
    println!("{}, {} cores", cpu(), std::thread::available_parallelism()?);
    let sizes = std::process::Command::new("podman")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"])
        .output()?;
    println!("images:");
    for line in String::from_utf8_lossy(&sizes.stdout).lines().filter(|l| l.contains("lantern")) {
        println!("  {line}");
    }

    let processes = Stack::bare().await?;
    let process_seconds = start_times(&processes).await?;
    processes.stop().await?;
    let containers = Stack::bare_in_containers().await?;
    let container_seconds = start_times(&containers).await?;
    containers.stop().await?;
    println!(
        "worker pod, apply → Ready, median of {RUNS}: process {process_seconds:.2} s, container {container_seconds:.2} s"
    );
    Ok(())
}
