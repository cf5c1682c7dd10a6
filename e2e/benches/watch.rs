//! The `lantern` CLI's load on the API server, with the release binaries
//! (`cargo build --release --workspace --bins`, then `cargo bench -p lantern-e2e --bench watch`):
//! `lantern status NAME --watch` follows a rollout held in its first step for a minute, through
//! a proxy that counts the HTTP requests it sends the API (kube-rs speaks HTTP/1.1 to the
//! devcluster, one request line per request).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lantern_e2e::{MODELS_CLAIM, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WATCHED: Duration = Duration::from_secs(60);

const SERVICE: &str = "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {name: watched}
spec:
  model: watched
  source:
    repository: {claimName: models}
  replicas: 1
  rollout:
    steps: [50, 100]
    stepSeconds: 600
    analysis: {minRequests: 5}
";

/// Forwards connections on a loopback port to `upstream`, counting the requests clients send.
async fn counting_proxy(upstream: std::net::SocketAddr, requests: Arc<AtomicUsize>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let upward = async {
                    let mut buffer = vec![0u8; 16 << 10];
                    let mut line_start = true;
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        // Request lines: a method at the start of a line (GET and PATCH bodies
                        // here are JSON, never such a line).
                        let text = String::from_utf8_lossy(&buffer[..n]);
                        for (index, line) in text.split('\n').enumerate() {
                            let at_start = index > 0 || line_start;
                            let method =
                                ["GET ", "POST ", "PUT ", "PATCH ", "DELETE "].iter().any(|m| line.starts_with(m));
                            if at_start && method {
                                requests.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        line_start = text.ends_with('\n');
                    }
                };
                let downward = tokio::io::copy(&mut server_read, &mut client_write);
                tokio::select! { _ = upward => {}, _ = downward => {} }
            });
        }
    });
    Ok(format!("http://{address}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    anyhow::ensure!(stack.apply(MODELS_CLAIM).await?.ok, "applying the claim");
    stack.publish_mlp("models", "watched", "2,8,1", 1, &[]).await?;
    anyhow::ensure!(stack.apply(SERVICE).await?.ok, "applying the service");
    stack.wait_for("isvc/watched", "version 1", Duration::from_secs(90), |s| s["status"]["stableVersion"] == 1).await;
    stack.publish_mlp("models", "watched", "2,8,1", 2, &[]).await?;
    let rolling = |s: &serde_json::Value| s["status"]["rollout"]["phase"] == "Progressing";
    stack.wait_for("isvc/watched", "a canary in its first step", Duration::from_secs(90), rolling).await;

    let requests = Arc::new(AtomicUsize::new(0));
    let url = stack.cluster.url();
    let upstream: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
    let proxy = counting_proxy(upstream, requests.clone()).await?;
    let kubeconfig = tempfile::NamedTempFile::new()?;
    std::fs::write(kubeconfig.path(), std::fs::read_to_string(stack.cluster.kubeconfig())?.replace(&url, &proxy))?;
    let timeout = format!("{}s", WATCHED.as_secs());
    let status = tokio::process::Command::new(lantern_e2e::binary("lantern")?)
        .args(["status", "watched", "--watch", "--timeout", &timeout])
        .env("KUBECONFIG", kubeconfig.path())
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(status.code() == Some(3), "the watch ended before its timeout: {status}");
    let sent = requests.load(Ordering::Relaxed);
    println!(
        "lantern status --watch on a rollout for {} s: {sent} API requests ({:.1} per minute; a poll every 2 s would be 30)",
        WATCHED.as_secs(),
        sent as f64 * 60.0 / WATCHED.as_secs_f64()
    );
    stack.stop().await
}
