//! The images `scripts/build-images.sh` builds, run with podman under the pod security the
//! operator writes (non-root, read-only root, no capabilities, the default seccomp profile, a
//! memory limit; only the volumes a pod would have are writable): the worker image serves a
//! mounted repository over OIP and the OpenAI API and trains on two ranks in two containers; the
//! operator image answers `/healthz` and `/readyz` against the devcluster. SKIPPED where podman,
//! buildah or mmdebstrap is missing (scripts/install-containers.sh installs them).

use std::path::Path;
use std::time::Duration;

use lantern_e2e::containers::{Container, IMAGE_USER, Mount, build_images, give_to_image_user};
use lantern_e2e::{
    MODELS_CLAIM, OPERATOR_IMAGE, Stack, WORKER_IMAGE, claim_service, publish, publish_mlp, ready, workspace,
};
use serde_json::json;

/// Where the operator mounts the model repository in worker pods.
const REPOSITORY: &str = "/var/lib/lantern/models";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits up to `within` for `url` to answer 200; the container's logs on failure.
async fn answered(url: &str, container: &Container, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if reqwest::get(url).await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never answered 200:\n{}", container.logs().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The emptyDir the operator gives every worker pod at `/tmp`.
fn tmp_mount(dir: &Path) -> Mount<'_> {
    Mount { host: dir, container: "/tmp", read_only: false }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_image_serves_oip_and_openai_under_restricted_pod_security() {
    if !build_images().await.unwrap() {
        return;
    }
    let repository = tempfile::tempdir().unwrap();
    let root = repository.path().to_str().unwrap();
    publish_mlp(root, &[], "adder", "2,8,1", 1, &[]).await.unwrap();
    let gguf = workspace().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "{} is not fetched: run scripts/setup-test-deps.sh", gguf.display());
    publish(root, &[], "chat", &gguf, &[]).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    give_to_image_user(repository.path()).unwrap();
    give_to_image_user(tmp.path()).unwrap();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mounts = [Mount { host: repository.path(), container: REPOSITORY, read_only: true }, tmp_mount(tmp.path())];
    let args = ["serve", "--repository", REPOSITORY, "--listen", &listen];
    let worker = Container::run("serve", WORKER_IMAGE, &args, &[], &mounts, 1024).await.unwrap();

    // It runs as the pod security says, not merely as asked.
    let inspected = worker.inspect().await.unwrap();
    assert_eq!(inspected["Config"]["User"], format!("{IMAGE_USER}:{IMAGE_USER}"));
    let host = &inspected["HostConfig"];
    assert_eq!((host["ReadonlyRootfs"].as_bool(), host["Memory"].as_u64()), (Some(true), Some(1 << 30)), "{host:#}");
    assert!(host["SecurityOpt"].as_array().unwrap().iter().any(|o| o == "no-new-privileges"), "{host:#}");
    assert_eq!(inspected["EffectiveCaps"], json!(null), "no capability is left");
    let labels = &inspected["Config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert!(labels["org.opencontainers.image.revision"].as_str().is_some_and(|r| !r.is_empty()), "{labels:#}");

    for model in ["adder", "chat"] {
        answered(&format!("http://{listen}/v2/models/{model}/ready"), &worker, Duration::from_secs(60)).await;
    }
    let client = reqwest::Client::new();
    let body = json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let oip = client.post(format!("http://{listen}/v2/models/adder/infer")).json(&body).send().await.unwrap();
    assert_eq!(oip.status(), 200);
    assert_eq!(oip.json::<serde_json::Value>().await.unwrap()["model_version"], "1");
    let body = json!({"model": "chat", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 4, "temperature": 0});
    let openai = client.post(format!("http://{listen}/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(openai.status(), 200);
    let text = openai.json::<serde_json::Value>().await.unwrap()["choices"][0]["text"].as_str().unwrap().to_owned();
    assert!(text.contains('7'), "{text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_worker_containers_train_together_and_publish_every_checkpoint() {
    if !build_images().await.unwrap() {
        return;
    }
    let repository = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let job = json!({
        "model": {"llama": {"hidden_size": 16, "intermediate_size": 32, "layers": 1, "heads": 2, "context": 16}},
        "data": {"addition": {"max_operand": 9, "train_examples": 200, "eval_examples": 10}},
        "schedule": {"steps": 20, "global_batch": 8},
        "checkpoint": {"every_steps": 10, "state_dir": format!("{REPOSITORY}/.lantern-training/default/adder")},
        "output": {"repository": REPOSITORY, "model": "adder"},
        "seed": 1,
    });
    std::fs::write(config.path().join("job.json"), job.to_string()).unwrap();
    give_to_image_user(repository.path()).unwrap();

    let (coordinator, progress) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut ranks = Vec::new();
    let mut tmps = Vec::new();
    for rank in 0..2 {
        let tmp = tempfile::tempdir().unwrap();
        give_to_image_user(tmp.path()).unwrap();
        let address = match rank {
            0 => coordinator.clone(),
            _ => format!("127.0.0.1:{}", free_port()),
        };
        let rank_text = rank.to_string();
        let mut env = vec![
            ("LANTERN_RANK", rank_text.as_str()),
            ("LANTERN_WORLD_SIZE", "2"),
            ("LANTERN_COORDINATOR", coordinator.as_str()),
            ("LANTERN_ADDRESS", address.as_str()),
        ];
        if rank == 0 {
            env.push(("LANTERN_PROGRESS_ADDRESS", progress.as_str()));
        }
        let mounts = [
            Mount { host: repository.path(), container: REPOSITORY, read_only: false },
            Mount { host: config.path(), container: "/etc/lantern/job", read_only: true },
            tmp_mount(tmp.path()),
        ];
        let args = ["--compute-threads", "1", "train", "--config", "/etc/lantern/job/job.json"];
        ranks.push(Container::run(&format!("rank-{rank}"), WORKER_IMAGE, &args, &env, &mounts, 512).await.unwrap());
        tmps.push(tmp);
    }
    for (rank, container) in ranks.iter().enumerate() {
        let code = container.exit_code(Duration::from_secs(180)).await.unwrap();
        assert_eq!(code, 0, "rank {rank}:\n{}", container.logs().await);
    }
    let model = repository.path().join("adder");
    for version in ["1", "2"] {
        assert!(model.join(version).join("manifest.json").is_file(), "version {version} in {}", model.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_image_is_healthy_and_ready_against_the_devcluster() {
    if !build_images().await.unwrap() {
        return;
    }
    let stack = Stack::bare().await.unwrap();
    let crds = workspace().join("crds");
    assert!(stack.kubectl(&["apply", "-f", crds.to_str().unwrap()]).await.unwrap().ok);
    let config = tempfile::tempdir().unwrap();
    std::fs::copy(stack.cluster.kubeconfig(), config.path().join("kubeconfig")).unwrap();
    give_to_image_user(config.path()).unwrap();

    let metrics = format!("127.0.0.1:{}", free_port());
    let image = format!("{OPERATOR_IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    let mounts = [Mount { host: config.path(), container: "/etc/lantern", read_only: true }];
    let env = [("KUBECONFIG", "/etc/lantern/kubeconfig")];
    let args = ["--metrics-address", &metrics, "--identity", "lantern-operator-in-a-container"];
    let operator = Container::run("operator", &image, &args, &env, &mounts, 256).await.unwrap();
    for path in ["healthz", "readyz"] {
        answered(&format!("http://{metrics}/{path}"), &operator, Duration::from_secs(60)).await;
    }
    drop(operator);
    stack.stop().await.unwrap();
}

/// The quickstart's story with every pod in a container (`devcluster --runtime podman`): the
/// ranks of a two-rank TrainingJob, then the InferenceService's workers and router, run from
/// their images under the pod security the operator writes; each checkpoint is served, canaried
/// under traffic and promoted or rolled back by its held-out accuracy.
#[tokio::test(flavor = "multi_thread")]
async fn in_containers_a_job_trains_and_its_versions_are_served_and_rolled_out() {
    if !build_images().await.unwrap() {
        return;
    }
    let stack = Stack::in_containers().await.unwrap();
    let example = |path: &str| std::fs::read_to_string(workspace().join(path)).unwrap();
    let job = example("examples/training/adder-job.yaml")
        .replace("steps: 1000", "steps: 300")
        .replace("trainExamples: 2000", "trainExamples: 400");
    let service = example("examples/serving/adder.yaml")
        .replace("stepSeconds: 20", "stepSeconds: 2")
        .replace("minRequests: 10", "minRequests: 2");
    let applied = stack.apply(&format!("{job}\n---\n{service}")).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);

    let done = stack
        .wait_for("tj/adder", "finished", Duration::from_secs(400), |j| {
            matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
        .await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{:#}\n{}", done["status"], stack.operator_log());
    assert_eq!(done["status"]["checkpoints"].as_array().map(Vec::len), Some(3), "{:#}", done["status"]);
    let pods = stack.json("pods").await.unwrap();
    let ids: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["status"]["containerStatuses"][0]["containerID"].as_str())
        .collect();
    assert!(!ids.is_empty() && ids.iter().all(|id| id.starts_with("podman://")), "{ids:?}");

    // Completions through the Service the whole time, as the quickstart sends them.
    let address = stack.service_address("adder").await.unwrap();
    let traffic = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let body = json!({"model": "adder", "prompt": "3+4=", "max_tokens": 3, "temperature": 0});
        loop {
            let _ = client.post(format!("http://{address}/v1/completions")).json(&body).send().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let settled = stack
        .wait_for("isvc/adder", "the last version promoted or rolled back", Duration::from_secs(240), |s| {
            let status = &s["status"];
            let last = |v: &serde_json::Value| v == 3;
            status["canaryVersion"].is_null()
                && (last(&status["stableVersion"])
                    || status["rejectedVersions"].as_array().is_some_and(|r| r.iter().any(last)))
        })
        .await;
    traffic.abort();
    let status = &settled["status"];
    // An earlier version was served first; a later one went out as a canary under the traffic
    // (one the eval gate rejects at once leaves the last rollout's record as it was).
    let rollout = &status["rollout"];
    assert!(rollout["version"].as_u64().is_some_and(|v| v >= 2), "{status:#}");
    assert!(matches!(rollout["phase"].as_str(), Some("Promoted" | "RolledBack")), "{status:#}");
    let workers = stack.json("pods").await.unwrap();
    let serving: Vec<&serde_json::Value> = workers["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["labels"]["lantern.dev/inference-service"] == "adder")
        .collect();
    assert!(!serving.is_empty());
    for pod in serving {
        let id = pod["status"]["containerStatuses"][0]["containerID"].as_str().unwrap_or_default();
        assert!(id.starts_with("podman://"), "{pod:#}");
    }
    stack.stop().await.unwrap();
}

/// The pods the container kubelet is checked with: a shell reporting what its container sees
/// (`seen`), one probed by `exec` (`probed`), and one of each way a container cannot run.
const POD_CASES: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: token}
stringData: {key: from-a-secret}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {key: from-a-config-map}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared}
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: seen}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}
  containers:
  - name: shell
    image: localhost/lantern/test-busybox:bookworm
    command: [sh, -c]
    args:
    - |
      echo "user $(id -u) groups $(id -G)"
      echo "env $FROM_SECRET $FROM_CONFIG $MY_NAME"
      [ "$MY_IP" = "$(echo $MY_IP | grep '^127\.')" ] && echo "ip is the pod's"
      echo "files $(cat /secret/key) $(cat /config/key) $(cat /host/marker)"
      touch /scratch/a && touch /claim/b && echo "volumes writable"
      touch /not-a-volume 2>/dev/null || echo "root read-only"
      grep CapEff /proc/self/status
      echo "written into the container" > /dev/termination-log
    env:
    - {name: FROM_SECRET, valueFrom: {secretKeyRef: {name: token, key: key}}}
    - {name: FROM_CONFIG, valueFrom: {configMapKeyRef: {name: settings, key: key}}}
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    volumeMounts:
    - {name: secret, mountPath: /secret, readOnly: true}
    - {name: config, mountPath: /config, readOnly: true}
    - {name: host, mountPath: /host, readOnly: true}
    - {name: scratch, mountPath: /scratch}
    - {name: claim, mountPath: /claim}
  volumes:
  - {name: secret, secret: {secretName: token}}
  - {name: config, configMap: {name: settings}}
  - {name: host, hostPath: {path: HOST_DIR, type: Directory}}
  - {name: scratch, emptyDir: {}}
  - {name: claim, persistentVolumeClaim: {claimName: shared}}
---
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: shell
    image: localhost/lantern/test-busybox:bookworm
    command: [sh, -c, "touch /tmp/ready && exec sleep 600"]
    readinessProbe:
      exec: {command: [cat, /tmp/ready]}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: never-pulled}
spec:
  containers:
  - {name: c, image: "localhost/lantern/not-built:1", imagePullPolicy: Never}
---
apiVersion: v1
kind: Pod
metadata: {name: not-pulled}
spec:
  containers:
  - {name: c, image: "localhost/lantern/not-built:1"}
---
apiVersion: v1
kind: Pod
metadata: {name: rooted}
spec:
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: c, image: "localhost/lantern/test-busybox:bookworm", command: [sh, -c, "sleep 600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: crashing}
spec:
  containers:
  - {name: c, image: "localhost/lantern/test-busybox:bookworm", command: [sh, -c, "exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: localhost/lantern/test-busybox:bookworm
    command: [sh, -c, "dd if=/dev/zero of=/dev/null bs=256M count=1"]
    resources: {limits: {memory: 64Mi}}
"#;

/// The first container's status of pod `name` once `done` holds for it.
async fn container_status(
    stack: &Stack,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let pod = stack
        .wait_for(&format!("pod/{name}"), what, Duration::from_secs(60), |p| done(&p["status"]["containerStatuses"][0]))
        .await;
    pod["status"]["containerStatuses"][0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_container_kubelet_runs_pods_under_their_security_and_reports_what_cannot_run() {
    if !build_images().await.unwrap() {
        return;
    }
    let stack = Stack::bare_in_containers().await.unwrap();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("marker"), "from-the-host").unwrap();
    let applied = stack.apply(&POD_CASES.replace("HOST_DIR", host.path().to_str().unwrap())).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);

    // What the container saw: its user and fsGroup, its environment and volumes, a read-only
    // root, no capabilities; its termination message is the file it wrote.
    let seen = container_status(&stack, "seen", "terminated", |c| c["state"]["terminated"].is_object()).await;
    let logs = stack.kubectl(&["logs", "seen"]).await.unwrap().stdout;
    assert_eq!(seen["state"]["terminated"]["exitCode"], 0, "{seen:#}\n{logs}");
    for line in [
        "user 1000 groups 1000 2000",
        "env from-a-secret from-a-config-map seen",
        "ip is the pod's",
        "files from-a-secret from-a-config-map from-the-host",
        "volumes writable",
        "root read-only",
        "CapEff:\t0000000000000000",
    ] {
        assert!(logs.contains(line), "{line:?} in:\n{logs}");
    }
    assert_eq!(seen["state"]["terminated"]["message"], "written into the container\n");
    assert!(seen["containerID"].as_str().unwrap().starts_with("podman://"), "{seen:#}");

    // An exec probe runs in the container; a deleted pod's container is stopped and removed.
    stack
        .wait_for("pod/probed", "Ready", Duration::from_secs(60), |p| {
            p["status"]["containerStatuses"][0]["ready"] == true
        })
        .await;
    let probed = stack.json("pod/probed").await.unwrap();
    let container = probed["status"]["containerStatuses"][0]["containerID"].as_str().unwrap().replace("podman://", "");
    assert!(stack.kubectl(&["delete", "pod", "probed", "--wait=true"]).await.unwrap().ok);
    let exists = std::process::Command::new("podman").args(["container", "exists", &container]).status().unwrap();
    assert!(!exists.success(), "{container} is still in podman");

    // What cannot run says why, as a kubelet says it.
    let never = container_status(&stack, "never-pulled", "ErrImageNeverPull", |c| {
        c["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    })
    .await;
    assert_eq!(
        never["state"]["waiting"]["message"],
        "Container image \"localhost/lantern/not-built:1\" is not present with pull policy of Never"
    );
    let back_off = container_status(&stack, "not-pulled", "ImagePullBackOff", |c| {
        c["state"]["waiting"]["reason"] == "ImagePullBackOff"
    })
    .await;
    assert!(back_off["state"]["waiting"]["message"].as_str().unwrap().contains("local storage"), "{back_off:#}");
    let rooted = container_status(&stack, "rooted", "CreateContainerConfigError", |c| {
        c["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    let message = rooted["state"]["waiting"]["message"].as_str().unwrap();
    assert!(message.starts_with("container has runAsNonRoot and image will run as root"), "{message}");
    let crashing = container_status(&stack, "crashing", "CrashLoopBackOff", |c| {
        c["state"]["waiting"]["reason"] == "CrashLoopBackOff" && c["restartCount"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(crashing["lastState"]["terminated"]["exitCode"], 3, "{crashing:#}");
    let hog = container_status(&stack, "hog", "OOMKilled", |c| c["state"]["terminated"].is_object()).await;
    let terminated = &hog["state"]["terminated"];
    assert_eq!(
        (terminated["reason"].as_str(), terminated["exitCode"].as_i64()),
        (Some("OOMKilled"), Some(137)),
        "{hog:#}"
    );
    stack.stop().await.unwrap();
}

/// The Helm chart on a container devcluster: the images it names are the ones
/// `scripts/build-images.sh` tags; its operator pods run from their image under the chart's pod
/// security and, from inside their containers, serve an InferenceService whose worker and
/// router pods run in containers too.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_in_containers_under_its_pod_security_and_serves_a_model() {
    if !build_images().await.unwrap() {
        return;
    }
    let stack = Stack::bare_in_containers().await.unwrap();
    let rendered = stack.helm(&["template", "lantern", "charts/lantern"]).await.unwrap();
    let images: Vec<&str> = rendered
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("- ");
            l.strip_prefix("image: ")
                .map(|i| i.trim_matches('"'))
                .or_else(|| ["--worker-image=", "--router-image="].iter().find_map(|flag| l.strip_prefix(flag)))
        })
        .collect();
    assert_eq!(images.len(), 3, "{images:?}");
    for image in images {
        let exists = std::process::Command::new("podman").args(["image", "exists", image]).status().unwrap();
        assert!(exists.success(), "the chart names {image}, which scripts/build-images.sh did not build");
    }
    let install = ["install", "lantern", "charts/lantern", "-n", "lantern-system", "--create-namespace"];
    stack.helm(&[&install[..], &["--wait", "--timeout", "2m"]].concat()).await.unwrap();
    let operators = stack.kubectl(&["get", "pods", "-n", "lantern-system", "-o", "json"]).await.unwrap();
    let operators: serde_json::Value = serde_json::from_str(&operators.stdout).unwrap();
    for pod in operators["items"].as_array().unwrap() {
        let status = &pod["status"]["containerStatuses"][0];
        assert!(status["ready"] == true && status["containerID"].as_str().unwrap().starts_with("podman://"), "{pod:#}");
    }

    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    stack.publish_mlp("models", "charted", "2,8,1", 1, &[]).await.unwrap();
    assert!(stack.apply(&claim_service("charted", 1)).await.unwrap().ok);
    stack.wait_for("inferenceservice/charted", "Ready", Duration::from_secs(120), ready).await;
    let address = stack.service_address("charted").await.unwrap();
    let body = json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let url = format!("http://{address}/v2/models/charted/infer");
    let answer = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    stack.stop().await.unwrap();
}
