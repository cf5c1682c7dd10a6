//! The images `scripts/build-images.sh` builds, run with podman under the pod security the
//! operator writes (non-root, read-only root, no capabilities, the default seccomp profile, a
//! memory limit; only the volumes a pod would have are writable): the worker image serves a
//! mounted repository over OIP and the OpenAI API and trains on two ranks in two containers; the
//! operator image answers `/healthz` and `/readyz` against the devcluster. SKIPPED where podman,
//! buildah or mmdebstrap is missing (scripts/install-containers.sh installs them).

use std::path::Path;
use std::time::Duration;

use lantern_e2e::containers::{Container, IMAGE_USER, Mount, build_images, give_to_image_user};
use lantern_e2e::{OPERATOR_IMAGE, Stack, WORKER_IMAGE, publish, publish_mlp, workspace};
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
