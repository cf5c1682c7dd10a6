//! Models in object storage, against real servers on loopback (moto for S3, azurite for Azure
//! Blob): the `lantern-worker` binary publishes into a bucket and serves from it through the
//! node cache (a restarted worker downloads nothing; a version whose objects do not match its
//! manifest is refused while the served one answers), and an InferenceService reads its versions
//! from the bucket with the credentials of a Secret, rolls a new one out as a canary, and a
//! replaced pod loads from the node's cache; another serves a version from an OCI registry.
//! Faults: a store that cuts or stalls connections, a full cache disk; registry logins by
//! password, Docker config file and Bearer token.

use std::process::Stdio;
use std::time::{Duration, Instant};

use lantern_e2e::azure::AzureServer;
use lantern_e2e::fault::{CuttingProxy, Fault};
use lantern_e2e::oci::OciRegistry;
use lantern_e2e::s3::S3Server;
use lantern_e2e::{Stack, binary, publish_mlp, sha256_hex};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{LAYERS, SERVICE, condition, request, rollout_ended, settled};
use lantern_e2e::traffic::Traffic;

const REPOSITORY: &str = "s3://models/repo";

/// `lantern-worker serve` from `repository` on a free port with `args`; returns the process and
/// its `http://` address.
async fn serve_from(repository: &str, args: &[&str], env: &[(&str, String)]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(binary("lantern-worker").unwrap())
        .args(["serve", "--listen", "127.0.0.1:0", "--repository", repository])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).await.unwrap();
    let address = line.trim().rsplit(' ').next().unwrap().to_owned();
    (child, format!("http://{address}"))
}

async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().await.unwrap().success());
}

/// Runs `lantern-worker ARGS`; returns whether it succeeded and what it printed.
fn worker(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let output = std::process::Command::new(binary("lantern-worker").unwrap())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The value of the metric line that starts with `series`, or 0 when absent.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// `lantern_model_files_fetched_total` of `model`: (downloaded, from the cache).
fn fetched(metrics: &str, model: &str) -> (f64, f64) {
    let series = |source: &str| format!("lantern_model_files_fetched_total{{model=\"{model}\",source=\"{source}\"}}");
    (metric(metrics, &series("download")), metric(metrics, &series("cache")))
}

async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

async fn wait_ready(base: &str, model: &str, version: u64) {
    let url = format!("{base}/v2/models/{model}/versions/{version}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "{model} version {version} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the repository index gives `version` of `model` a failure reason; returns it.
async fn failure_reason(base: &str, model: &str, version: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    loop {
        let index: Value = http.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
        let entry = index.as_array().unwrap().iter().find(|e| e["name"] == model && e["version"] == version);
        if let Some(reason) = entry.and_then(|e| e["reason"].as_str()).filter(|r| !r.is_empty()) {
            return reason.to_owned();
        }
        assert!(Instant::now() < deadline, "{model} version {version} got no failure reason: {index}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version of `iris` that answers an inference through `base`.
async fn answering_version(base: &str) -> String {
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let url = format!("{base}/v2/models/iris/infer");
    let answer: Value = reqwest::Client::new().post(url).json(&body).send().await.unwrap().json().await.unwrap();
    answer["model_version"].as_str().unwrap_or_else(|| panic!("no answer: {answer}")).to_owned()
}

/// A proxy in front of `s3` that faults every connection after 128 KiB, and the environment
/// that sends the store client through it.
async fn through_proxy(s3: &S3Server, fault: Fault) -> (CuttingProxy, Vec<(&'static str, String)>) {
    let upstream = s3.url.trim_start_matches("http://").to_owned();
    let proxy = CuttingProxy::start(&upstream, 128 << 10, fault).await.unwrap();
    let mut env = s3.env();
    env.retain(|(key, _)| *key != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy.url.clone()));
    (proxy, env)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_publishes_to_s3_and_serves_through_the_node_cache_refusing_a_mismatched_version() {
    let Some(s3) = S3Server::start().unwrap() else { return };
    let env = s3.env();
    s3.bucket(&["create", "models"]).unwrap();
    for expected in [1, 2] {
        assert_eq!(publish_mlp(REPOSITORY, &env, "iris", "4,8,3", 5, &[]).await.unwrap(), expected);
    }
    // A number is published once: the claim on it is a conditional create.
    let source = tempfile::tempdir().unwrap();
    let source = source.path().to_str().unwrap();
    assert!(worker(&["init-mlp", "--layers", "4,8,3", "--out", source], &[]).0);
    let publish = ["publish", "--repository", REPOSITORY, "--model", "iris", "--source", source];
    let (ok, said) = worker(&[&publish[..], &["--version", "2"]].concat(), &env);
    assert!(!ok && said.contains("version 2 already exists"), "{said}");
    let keys = s3.bucket(&["keys", "models"]).unwrap();
    for key in
        ["repo/.models.json", "repo/iris/.versions.json", "repo/iris/2/manifest.json", "repo/iris/2/model.safetensors"]
    {
        assert!(keys.lines().any(|k| k == key), "{key} is not in the bucket:\n{keys}");
    }

    // Served from the bucket, the weights are downloaded into the cache once (versions 1 and 2
    // have the same file); a restarted worker downloads nothing.
    let cache = tempfile::tempdir().unwrap();
    let args = ["--cache-dir", cache.path().to_str().unwrap(), "--poll-interval-ms", "600000"];
    let (first, base) = serve_from(REPOSITORY, &args, &env).await;
    wait_ready(&base, "iris", 2).await;
    assert_eq!(fetched(&get(&format!("{base}/metrics")).await, "iris"), (1.0, 0.0));
    stop(first).await;
    let (second, base) = serve_from(REPOSITORY, &args, &env).await;
    wait_ready(&base, "iris", 2).await;
    let metrics = get(&format!("{base}/metrics")).await;
    assert_eq!(fetched(&metrics, "iris"), (0.0, 1.0), "{metrics}");
    assert_eq!(metric(&metrics, "lantern_model_downloaded_bytes_total{model=\"iris\"}"), 0.0, "{metrics}");
    // `prefetch` warms a node's cache without loading: once downloaded, then found.
    let warm = tempfile::tempdir().unwrap();
    let prefetch =
        ["prefetch", "--repository", REPOSITORY, "--model", "iris", "--cache-dir", warm.path().to_str().unwrap()];
    let (ok, said) = worker(&prefetch, &env);
    assert!(ok && said.contains("prefetched iris version 2: 0 files in the cache, 1 downloaded"), "{said}");
    let (ok, said) = worker(&prefetch, &env);
    assert!(ok && said.contains("1 files in the cache, 0 downloaded"), "{said}");

    // Version 3's weights object is replaced after its publish: its size no longer matches the
    // manifest, and it is refused though the cache holds bytes of the manifest's digest.
    assert_eq!(publish_mlp(REPOSITORY, &env, "iris", "4,8,3", 5, &[]).await.unwrap(), 3);
    s3.bucket(&["put", "models", "repo/iris/3/model.safetensors", "not the published bytes"]).unwrap();
    let http = reqwest::Client::new();
    let load = http.post(format!("{base}/v2/repository/models/iris/load")).send().await.unwrap();
    assert!(load.status().is_success(), "{load:?}");
    let reason = failure_reason(&base, "iris", "3").await;
    assert!(reason.contains("iris/3/model.safetensors is 23 bytes in the store, the manifest says"), "{reason}");
    assert_eq!(answering_version(&base).await, "2", "the served version stopped answering");
    stop(second).await;

    // Bad locations get their reason.
    let (ok, said) =
        worker(&["publish", "--repository", "s3://nobucket/repo", "--model", "iris", "--source", source], &env);
    assert!(!ok && said.contains("NoSuchBucket"), "{said}");
    let (ok, said) =
        worker(&["publish", "--repository", "ftp://host/repo", "--model", "iris", "--source", source], &env);
    assert!(!ok && said.contains("unsupported scheme \"ftp\""), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_http_layout_serves_read_only() {
    let Some(s3) = S3Server::start().unwrap() else { return };
    s3.bucket(&["create", "models"]).unwrap();
    // A layout published into a bucket, then read as plain files over HTTP (a public bucket, or
    // any static server holding the same files): its index objects name the versions.
    assert_eq!(publish_mlp(REPOSITORY, &s3.env(), "iris", "4,8,3", 5, &[]).await.unwrap(), 1);
    assert_eq!(publish_mlp(REPOSITORY, &s3.env(), "iris", "4,8,3", 6, &[]).await.unwrap(), 2);
    s3.bucket(&["public", "models"]).unwrap();
    let repository = format!("{}/models/repo", s3.url);
    let cache = tempfile::tempdir().unwrap();
    let (server, base) = serve_from(&repository, &["--cache-dir", cache.path().to_str().unwrap()], &[]).await;
    wait_ready(&base, "iris", 2).await;
    assert_eq!(fetched(&get(&format!("{base}/metrics")).await, "iris"), (1.0, 0.0));
    stop(server).await;
    let source = tempfile::tempdir().unwrap();
    let source = source.path().to_str().unwrap();
    assert!(worker(&["init-mlp", "--layers", "4,8,3", "--out", source], &[]).0);
    let (ok, said) = worker(&["publish", "--repository", &repository, "--model", "iris", "--source", source], &[]);
    assert!(!ok && said.contains("is read-only"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cut_off_again_and_again_resumes_and_the_version_loads() {
    let Some(s3) = S3Server::start().unwrap() else { return };
    s3.bucket(&["create", "models"]).unwrap();
    // About 1 MB of weights; the proxy cuts every connection after 128 KiB: each cut read resumes
    // where it stopped (ranged GETs, in the store client and the cache), and the version loads.
    assert_eq!(publish_mlp(REPOSITORY, &s3.env(), "iris", "4,512,512,3", 5, &[]).await.unwrap(), 1);
    let (proxy, env) = through_proxy(&s3, Fault::Cut).await;
    let cache = tempfile::tempdir().unwrap();
    let args = ["--cache-dir", cache.path().to_str().unwrap(), "--retry-base-ms", "100"];
    let (server, base) = serve_from(REPOSITORY, &args, &env).await;
    wait_ready(&base, "iris", 1).await;
    let metrics = get(&format!("{base}/metrics")).await;
    let downloaded = metric(&metrics, "lantern_model_downloaded_bytes_total{model=\"iris\"}");
    assert!(downloaded > 1e6 && proxy.cuts() >= 8, "{downloaded} bytes downloaded, {} cuts", proxy.cuts());
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_store_fails_the_new_version_after_its_read_timeout_and_the_served_one_answers() {
    let Some(s3) = S3Server::start().unwrap() else { return };
    s3.bucket(&["create", "models"]).unwrap();
    // Version 1 is small; version 2 has about 1 MB of weights, and the proxy stops sending on
    // any connection after 128 KiB, holding it open: each read times out, is retried from where
    // it stopped, and the version fails with the reason while version 1 keeps answering.
    assert_eq!(publish_mlp(REPOSITORY, &s3.env(), "iris", "4,8,3", 5, &[]).await.unwrap(), 1);
    let (_proxy, env) = through_proxy(&s3, Fault::Stall).await;
    let cache = tempfile::tempdir().unwrap();
    // Polls come back on pooled connections, which the proxy stalls too once they carried 128 KiB:
    // slow enough polls stay far below it.
    let args =
        ["--cache-dir", cache.path().to_str().unwrap(), "--read-timeout-seconds", "1", "--poll-interval-ms", "500"];
    let (server, base) = serve_from(REPOSITORY, &args, &env).await;
    wait_ready(&base, "iris", 1).await;
    assert_eq!(publish_mlp(REPOSITORY, &s3.env(), "iris", "4,512,512,3", 5, &[]).await.unwrap(), 2);
    let reason = failure_reason(&base, "iris", "2").await;
    assert!(reason.contains("failed 4 times, last:") && reason.contains("stalled: no bytes for 1s"), "{reason}");
    assert_eq!(answering_version(&base).await, "1", "the served version stopped answering");
    stop(server).await;
}

/// A small tmpfs mounted at a temporary directory, unmounted on drop; `None` where this process
/// may not mount.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.path().to_str().unwrap()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").args(["-l", self.dir.path().to_str().unwrap()]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_cache_disk_is_reported_as_such_and_the_served_version_answers() {
    let Some(s3) = S3Server::start().unwrap() else { return };
    let Some(disk) = SmallDisk::mount("512k") else {
        eprintln!("SKIPPED: this process may not mount a tmpfs for the cache");
        return;
    };
    s3.bucket(&["create", "models"]).unwrap();
    let env = s3.env();
    assert_eq!(publish_mlp(REPOSITORY, &env, "iris", "4,8,3", 5, &[]).await.unwrap(), 1);
    let args = ["--cache-dir", disk.dir.path().to_str().unwrap(), "--poll-interval-ms", "200"];
    let (server, base) = serve_from(REPOSITORY, &args, &env).await;
    wait_ready(&base, "iris", 1).await;
    // About 1 MB of weights on a 512 KiB disk.
    assert_eq!(publish_mlp(REPOSITORY, &env, "iris", "4,512,512,3", 5, &[]).await.unwrap(), 2);
    let reason = failure_reason(&base, "iris", "2").await;
    assert!(reason.contains(&format!("the model cache at {} is full", disk.dir.path().display())), "{reason}");
    assert_eq!(answering_version(&base).await, "1", "the served version stopped answering");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_publishes_to_azure_blob_and_serves_from_it() {
    let Some(azure) = AzureServer::start().unwrap() else { return };
    azure.create_container("models").unwrap();
    let env = azure.env();
    let repository = "az://models/repo";
    assert_eq!(publish_mlp(repository, &env, "iris", "4,8,3", 5, &[]).await.unwrap(), 1);
    assert_eq!(publish_mlp(repository, &env, "iris", "4,8,3", 6, &[]).await.unwrap(), 2);
    let source = tempfile::tempdir().unwrap();
    let source = source.path().to_str().unwrap();
    assert!(worker(&["init-mlp", "--layers", "4,8,3", "--out", source], &[]).0);
    let (ok, said) =
        worker(&["publish", "--repository", repository, "--model", "iris", "--source", source, "--version", "1"], &env);
    assert!(!ok && said.contains("version 1 already exists"), "{said}");
    let cache = tempfile::tempdir().unwrap();
    let (server, base) = serve_from(repository, &["--cache-dir", cache.path().to_str().unwrap()], &env).await;
    wait_ready(&base, "iris", 2).await;
    assert_eq!(fetched(&get(&format!("{base}/metrics")).await, "iris"), (1.0, 0.0));
    stop(server).await;
    // Azurite checks request signatures: a wrong account key is refused with the store's 403.
    let mut wrong = env.clone();
    wrong.push(("AZURE_STORAGE_ACCOUNT_KEY", "d3Jvbmcga2V5IGZvciB0aGUgZW11bGF0b3I=".into()));
    let (ok, said) = worker(
        &["prefetch", "--repository", repository, "--model", "iris", "--cache-dir", cache.path().to_str().unwrap()],
        &wrong,
    );
    assert!(!ok && said.contains("403"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_publishes_to_an_oci_registry_and_serves_from_it() {
    let Some(registry) = OciRegistry::start().unwrap() else { return };
    let repository = format!("oci://{}/lantern", registry.address);
    assert_eq!(publish_mlp(&repository, &[], "iris", "4,8,3", 5, &[]).await.unwrap(), 1);
    assert_eq!(publish_mlp(&repository, &[], "iris", "4,8,3", 6, &[]).await.unwrap(), 2);
    let source = tempfile::tempdir().unwrap();
    let source = source.path().to_str().unwrap();
    assert!(worker(&["init-mlp", "--layers", "4,8,3", "--out", source], &[]).0);
    let (ok, said) =
        worker(&["publish", "--repository", &repository, "--model", "iris", "--source", source, "--version", "2"], &[]);
    assert!(!ok && said.contains("version 2 already exists"), "{said}");
    let cache = tempfile::tempdir().unwrap();
    let (server, base) = serve_from(&repository, &["--cache-dir", cache.path().to_str().unwrap()], &[]).await;
    wait_ready(&base, "iris", 2).await;
    assert_eq!(fetched(&get(&format!("{base}/metrics")).await, "iris"), (1.0, 0.0));
    assert_eq!(answering_version(&base).await, "2");
    let http = reqwest::Client::new();

    // An image (not a Lantern version) tagged 3 is refused for its media types; 2 keeps serving.
    let registry_url = format!("http://{}/v2/lantern/iris", registry.address);
    let config = b"{}";
    let digest = format!("sha256:{}", sha256_hex(config));
    let upload = http.post(format!("{registry_url}/blobs/uploads/")).send().await.unwrap();
    let location = upload.headers()["location"].to_str().unwrap().to_owned();
    let location =
        if location.starts_with("http") { location } else { format!("http://{}{location}", registry.address) };
    let separator = if location.contains('?') { '&' } else { '?' };
    let put = http.put(format!("{location}{separator}digest={digest}")).body(&config[..]).send().await.unwrap();
    assert_eq!(put.status(), 201);
    let image = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len()},
        "layers": [],
    });
    let tagged = http
        .put(format!("{registry_url}/manifests/3"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(image.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.status(), 201);
    assert!(http.post(format!("{base}/v2/repository/models/iris/load")).send().await.unwrap().status().is_success());
    let reason = failure_reason(&base, "iris", "3").await;
    assert!(
        reason.contains("application/vnd.oci.image.config.v1+json") && reason.contains("is not a Lantern version"),
        "{reason}"
    );
    assert_eq!(answering_version(&base).await, "2");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_logs_in_to_a_registry_that_asks_for_credentials() {
    let Some(registry) = OciRegistry::start_with_login("lantern", "registry-secret").unwrap() else { return };
    let repository = format!("oci://{}/lantern", registry.address);
    let source = tempfile::tempdir().unwrap();
    let source = source.path().to_str().unwrap();
    assert!(worker(&["init-mlp", "--layers", "4,8,3", "--out", source], &[]).0);
    let publish = ["publish", "--repository", &repository, "--model", "iris", "--source", source];
    let (ok, said) = worker(&publish, &[]);
    assert!(!ok && said.contains("asks for a username and password: set LANTERN_OCI_USERNAME"), "{said}");
    let wrong = [("LANTERN_OCI_USERNAME", "lantern".to_owned()), ("LANTERN_OCI_PASSWORD", "wrong".to_owned())];
    let (ok, said) = worker(&publish, &wrong);
    assert!(!ok && said.contains("401"), "{said}");
    let login =
        [("LANTERN_OCI_USERNAME", "lantern".to_owned()), ("LANTERN_OCI_PASSWORD", "registry-secret".to_owned())];
    let (ok, said) = worker(&publish, &login);
    assert!(ok && said.contains("version 1"), "{said}");
    // A Docker config file (a dockerconfigjson Secret's key, as the operator mounts it) logs in
    // too; an entry for another registry does not.
    let config = tempfile::NamedTempFile::new().unwrap();
    let auth_file = [("LANTERN_OCI_AUTH_FILE", config.path().to_str().unwrap().to_owned())];
    std::fs::write(
        config.path(),
        r#"{"auths": {"other.example": {"username": "lantern", "password": "registry-secret"}}}"#,
    )
    .unwrap();
    let (ok, said) = worker(&publish, &auth_file);
    assert!(!ok && said.contains("or give LANTERN_OCI_AUTH_FILE a Docker config file"), "{said}");
    let entry = serde_json::json!({"auths": {format!("http://{}", registry.address): {"auth": "bGFudGVybjpyZWdpc3RyeS1zZWNyZXQ="}}});
    std::fs::write(config.path(), entry.to_string()).unwrap();
    let (ok, said) = worker(&publish, &auth_file);
    assert!(ok && said.contains("version 2"), "{said}");
    let cache = tempfile::tempdir().unwrap();
    let (server, base) = serve_from(&repository, &["--cache-dir", cache.path().to_str().unwrap()], &auth_file).await;
    wait_ready(&base, "iris", 2).await;
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_gets_bearer_tokens_from_a_registrys_token_service() {
    let Some(registry) = OciRegistry::start_with_token_service("lantern", "token-secret").unwrap() else { return };
    let repository = format!("oci://{}/lantern", registry.address);
    let source = tempfile::tempdir().unwrap();
    let source = source.path().to_str().unwrap();
    assert!(worker(&["init-mlp", "--layers", "4,8,3", "--out", source], &[]).0);
    let publish = ["publish", "--repository", &repository, "--model", "iris", "--source", source];
    // The registry sends every client to its token service, which refuses unknown callers.
    for env in
        [vec![], vec![("LANTERN_OCI_USERNAME", "lantern".to_owned()), ("LANTERN_OCI_PASSWORD", "wrong".to_owned())]]
    {
        let (ok, said) = worker(&publish, &env);
        assert!(!ok && said.contains("asks for credentials its token service accepts"), "{said}");
    }
    let login = [("LANTERN_OCI_USERNAME", "lantern".to_owned()), ("LANTERN_OCI_PASSWORD", "token-secret".to_owned())];
    let (ok, said) = worker(&publish, &login);
    assert!(ok && said.contains("version 1"), "{said}");
    let cache = tempfile::tempdir().unwrap();
    let (server, base) = serve_from(&repository, &["--cache-dir", cache.path().to_str().unwrap()], &login).await;
    wait_ready(&base, "iris", 1).await;
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_serves_a_version_from_an_oci_registry() {
    let Some(registry) = OciRegistry::start().unwrap() else { return };
    let repository = format!("oci://{}/lantern", registry.address);
    assert_eq!(publish_mlp(&repository, &[], "adder", LAYERS, 1, &["eval_loss=0.5"]).await.unwrap(), 1);
    let stack = Stack::start().await.unwrap();
    let source = format!("repository: {{uri: \"{repository}\"}}");
    let service = SERVICE.replace("repository: {claimName: models}", &source);
    let applied = stack.apply(&service).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    let ready =
        stack.wait_for("isvc/adder", "Ready", Duration::from_secs(90), |s| condition(s, "Ready").0 == "True").await;
    assert_eq!(ready["status"]["stableVersion"], 1);
    let version = ready["status"]["versions"].as_array().unwrap().iter().find(|v| v["version"] == 1).unwrap();
    // Each pod's own emptyDir cache: each downloaded the version.
    assert_eq!(version["fetch"]["downloaded"], version["available"], "{version}");
    let address = stack.service_address("adder").await.unwrap();
    let mut client = lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::connect(
        format!("http://{address}"),
    )
    .await
    .unwrap();
    assert_eq!(client.model_infer(request()).await.unwrap().into_inner().model_version, "1");
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_serves_from_s3_rolls_a_new_version_out_and_a_replaced_pod_loads_from_the_node_cache() {
    let Some(s3) = S3Server::start().unwrap() else { return };
    let env = s3.env();
    s3.bucket(&["create", "models"]).unwrap();
    let stack = Stack::start().await.unwrap();
    let variables: String = env.iter().map(|(k, v)| format!("  {k}: \"{v}\"\n")).collect();
    let secret = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s3}}\nstringData:\n{variables}");
    assert!(stack.apply(&secret).await.unwrap().ok);
    assert_eq!(publish_mlp(REPOSITORY, &env, "adder", LAYERS, 1, &["eval_loss=0.5"]).await.unwrap(), 1);
    let node_cache = stack.state.path().join("node-cache");
    let source = format!(
        "repository: {{uri: \"{REPOSITORY}\", secretRef: {{name: s3}}, cache: {{hostPath: \"{}\"}}}}",
        node_cache.display()
    );
    let applied = stack.apply(&SERVICE.replace("repository: {claimName: models}", &source)).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    let ready = settled(&stack, "adder").await;
    assert_eq!(ready["status"]["stableVersion"], 1);

    // A new version in the bucket goes out as a canary under traffic and is promoted.
    let address = stack.service_address("adder").await.unwrap();
    let traffic = Traffic::start(address.clone(), request(), 1, Duration::from_millis(10));
    assert_eq!(publish_mlp(REPOSITORY, &env, "adder", LAYERS, 2, &["eval_loss=0.4"]).await.unwrap(), 2);
    let promoted =
        stack.wait_for("isvc/adder", "the promotion", Duration::from_secs(90), |s| rollout_ended(s, 2)).await;
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(promoted["status"]["rollout"]["phase"], "Promoted", "{:#}", promoted["status"]);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during the rollout: {errors:?}");
    let stable = promoted["status"]["versions"].as_array().unwrap().iter().find(|v| v["version"] == 2).unwrap();
    assert!(stable["digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{stable}");
    // Two pods on one node: the first downloads, the second finds the files in the cache.
    assert_eq!(stable["fetch"]["fromCache"].as_u64().unwrap() + stable["fetch"]["downloaded"].as_u64().unwrap(), 2);
    assert!(stable["fetch"]["downloaded"].as_u64().unwrap() >= 1, "{stable}");
    // The node cache holds each version's weights once, by digest, for both pods.
    let cached = std::fs::read_dir(node_cache.join("sha256")).unwrap().count();
    assert_eq!(cached, 2, "two versions' weights");

    // A replaced pod loads version 2 from the node's cache: it downloads nothing.
    let pods = stack.json("pods").await.unwrap();
    let is_worker = |p: &&serde_json::Value| p["metadata"]["labels"]["lantern.dev/inference-service"] == "adder";
    let worker = pods["items"].as_array().unwrap().iter().find(is_worker).unwrap();
    let (name, uid) = (worker["metadata"]["name"].clone(), worker["metadata"]["uid"].clone());
    assert!(stack.kubectl(&["delete", "pod", name.as_str().unwrap()]).await.unwrap().ok);
    let deadline = Instant::now() + Duration::from_secs(90);
    let pod_ip = loop {
        let pods = stack.json("pods").await.unwrap();
        let replacement = pods["items"].as_array().unwrap().iter().find(|p| {
            p["metadata"]["name"] == name
                && p["metadata"]["uid"] != uid
                && p["status"]["containerStatuses"][0]["ready"] == true
        });
        if let Some(ip) = replacement.and_then(|p| p["status"]["podIP"].as_str()) {
            break ip.to_owned();
        }
        assert!(Instant::now() < deadline, "no replacement pod became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let metrics = get(&format!("http://{pod_ip}:8500/metrics")).await;
    assert_eq!(fetched(&metrics, "adder"), (0.0, 1.0), "{metrics}");
    let mut client = lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::connect(
        format!("http://{address}"),
    )
    .await
    .unwrap();
    assert_eq!(client.model_infer(request()).await.unwrap().into_inner().model_version, "2");
    // The Secret's key is in no status, Event or worker log.
    let mut seen = vec![stack.json("isvc").await.unwrap().to_string(), stack.json("events").await.unwrap().to_string()];
    for pod in stack.json("pods").await.unwrap()["items"].as_array().unwrap() {
        seen.push(stack.kubectl(&["logs", pod["metadata"]["name"].as_str().unwrap()]).await.unwrap().stdout);
    }
    assert!(seen.iter().all(|text| !text.contains("lantern-secret")), "the Secret's key leaked");
    stack.stop().await.unwrap();
}
