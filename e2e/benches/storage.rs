//! Remote repository figures with the release binaries (`cargo build --release --workspace
//! --bins`, then `cargo bench -p lantern-e2e --bench storage`), against the servers the storage
//! tests use on loopback (moto for S3, Debian's docker-registry for OCI):
//! - the SmolLM2 GGUF version from the end of its publish to its first answered completion, from
//!   a local directory, S3 with a cold node cache, OCI with a cold cache, and S3 with a warm cache
//!   (the same file published again: its digest is in the cache);
//! - download throughput (`lantern-worker prefetch`: store → verified cache file, with one and
//!   with four ranged reads at once) beside `curl`
//!   of the same object from the same server;
//! - peak RSS of `prefetch` on a file 10× the 64 MiB it is allowed, from OCI and from S3.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use lantern_e2e::oci::OciRegistry;
use lantern_e2e::s3::S3Server;
use lantern_e2e::{binary, workspace};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs per case; the median is printed.
const RUNS: usize = 5;
/// The memory `prefetch` is allowed in the RSS figure, and the file it fetches (10×).
const BUDGET_MIB: u64 = 64;

type Env = Vec<(&'static str, String)>;

async fn run(args: &[&str], env: &Env) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(binary("lantern-worker")?)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "lantern-worker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Seconds from the end of publishing `source` as `model` in `repository` to the first answer of
/// a worker serving the repository through the cache `cache`.
async fn publish_to_answer(
    repository: &str,
    model: &str,
    source: &Path,
    cache: &Path,
    env: &Env,
) -> anyhow::Result<f64> {
    let cache = cache.to_str().context("a UTF-8 path")?;
    let mut server = tokio::process::Command::new(binary("lantern-worker")?)
        .args(["serve", "--listen", "127.0.0.1:0", "--poll-interval-ms", "50", "--repository", repository])
        .args(["--cache-dir", cache, "--model", model])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().context("stdout")?).read_line(&mut line).await?;
    let address = line.trim().rsplit(' ').next().context("no address")?.to_owned();
    let source = source.to_str().context("a UTF-8 path")?;
    run(&["publish", "--repository", repository, "--model", model, "--source", source], env).await?;
    let published = Instant::now();
    let http = reqwest::Client::new();
    let body = serde_json::json!({"model": model, "prompt": "Hello", "max_tokens": 1});
    loop {
        let answer = http.post(format!("http://{address}/v1/completions")).json(&body).send().await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            break;
        }
        anyhow::ensure!(published.elapsed() < Duration::from_secs(120), "{model} never answered from {repository}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = published.elapsed().as_secs_f64();
    server.kill().await?;
    Ok(seconds)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The samples as printed beside their median.
fn listed(samples: &[f64]) -> String {
    samples.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(", ")
}

/// `prefetch` of `model` from `repository` into a fresh cache with `streams` ranged reads at
/// once: (MB/s, peak RSS in MiB).
async fn prefetch(repository: &str, model: &str, env: &Env, streams: usize) -> anyhow::Result<(f64, f64)> {
    let cache = tempfile::tempdir()?;
    let cache_dir = cache.path().to_str().context("a UTF-8 path")?;
    let mut child = tokio::process::Command::new(binary("lantern-worker")?)
        .args(["prefetch", "--repository", repository, "--model", model, "--cache-dir", cache_dir])
        .args(["--download-streams", &streams.to_string()])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let mut peak = 0.0f64;
    let status = loop {
        if let Some(hwm) = status_kib(pid, "VmHWM:") {
            peak = peak.max(hwm / 1024.0);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    anyhow::ensure!(status.success(), "prefetch from {repository} failed");
    let mut said = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut said).await?;
    // "prefetched M version V: C files in the cache, D downloaded (B bytes) in S s"
    let bytes: f64 = said.split('(').nth(1).and_then(|r| r.split(' ').next()).context("bytes")?.parse()?;
    let seconds: f64 = said.rsplit(" in ").next().and_then(|r| r.split(' ').next()).context("seconds")?.parse()?;
    Ok((bytes / seconds / 1e6, peak))
}

fn print_throughput(store: &str, one: f64, four: f64, curl: f64) {
    println!(
        "  {store:<4} prefetch, 1 stream {one:7.1} MB/s ({:.2}× curl), 4 streams {four:7.1} MB/s ({:.2}× curl); curl {curl:7.1} MB/s",
        one / curl,
        four / curl
    );
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// `curl` of `url` (with `extra` arguments) to /dev/null: MB/s.
async fn curl(url: &str, extra: &[&str]) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"])
        .args(extra)
        .arg(url)
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "curl {url} failed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    let (bytes, seconds) = (fields.next().context("size")??, fields.next().context("time")??);
    Ok(bytes / seconds / 1e6)
}

/// A version directory holding one file of `bytes` random bytes (an MLP manifest over it).
fn large_version(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let manifest = serde_json::json!({
        "format": "safetensors", "architecture": "mlp", "task": "tensor",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string())?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("blob.bin"))?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("CPU: {}", lantern_runtime::device::cpu_description());
    let gguf = workspace().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(gguf.is_file(), "{} is missing: run scripts/fetch-test-models.sh", gguf.display());
    let (Some(s3), Some(registry)) = (S3Server::start()?, OciRegistry::start()?) else {
        anyhow::bail!("moto and docker-registry are needed: run scripts/setup-test-deps.sh as root");
    };
    s3.bucket(&["create", "bench"])?;
    let s3_env = s3.env();
    let none = Env::new();
    let local = tempfile::tempdir()?;
    let local_root = local.path().to_str().context("a UTF-8 path")?.to_owned();
    let oci = format!("oci://{}/bench", registry.address);
    let size_mb = std::fs::metadata(&gguf)?.len() as f64 / 1e6;
    println!("SmolLM2-135M-Instruct Q4_1 GGUF, {size_mb:.1} MB; {RUNS} runs each, medians");

    let (mut local_s, mut s3_cold, mut oci_cold, mut warm) = (vec![], vec![], vec![], vec![]);
    for run_index in 0..RUNS {
        let model = format!("smollm2-{run_index}");
        let cache = tempfile::tempdir()?;
        local_s.push(publish_to_answer(&local_root, &model, &gguf, cache.path(), &none).await?);
        s3_cold.push(publish_to_answer("s3://bench/repo", &model, &gguf, cache.path(), &s3_env).await?);
        // The same file again: the cache has its digest.
        let again = format!("{model}-again");
        warm.push(publish_to_answer("s3://bench/repo", &again, &gguf, cache.path(), &s3_env).await?);
        let fresh = tempfile::tempdir()?;
        oci_cold.push(publish_to_answer(&oci, &model, &gguf, fresh.path(), &none).await?);
    }
    let local_median = median(local_s.clone());
    println!("publish → first answer:");
    println!("  local directory      {local_median:6.3} s             [{}]", listed(&local_s));
    for (name, samples) in [("S3, cold cache", s3_cold), ("OCI, cold cache", oci_cold), ("S3, warm cache", warm)] {
        let seconds = median(samples.clone());
        println!("  {name:<20} {seconds:6.3} s ({:.2}× local) [{}]", seconds / local_median, listed(&samples));
    }

    println!("download throughput, store → verified cache file (prefetch) vs curl to /dev/null:");
    let file = gguf.file_name().and_then(|f| f.to_str()).context("a file name")?;
    let sigv4 = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "lantern:lantern-secret"];
    let (mut one, mut four, mut theirs) = (vec![], vec![], vec![]);
    for _ in 0..RUNS {
        one.push(prefetch("s3://bench/repo", "smollm2-0", &s3_env, 1).await?.0);
        four.push(prefetch("s3://bench/repo", "smollm2-0", &s3_env, 4).await?.0);
        theirs.push(curl(&format!("{}/bench/repo/smollm2-0/1/{file}", s3.url), &sigv4).await?);
    }
    print_throughput("S3", median(one), median(four), median(theirs));
    let digest = format!("sha256:{}", lantern_e2e::sha256_hex(&std::fs::read(&gguf)?));
    let blob = format!("http://{}/v2/bench/smollm2-0/blobs/{digest}", registry.address);
    let (mut one, mut four, mut theirs) = (vec![], vec![], vec![]);
    for _ in 0..RUNS {
        one.push(prefetch(&oci, "smollm2-0", &none, 1).await?.0);
        four.push(prefetch(&oci, "smollm2-0", &none, 4).await?.0);
        theirs.push(curl(&blob, &[]).await?);
    }
    print_throughput("OCI", median(one), median(four), median(theirs));

    let large = tempfile::tempdir()?;
    let large_bytes = (10 * BUDGET_MIB) << 20;
    large_version(large.path(), large_bytes)?;
    let source = large.path().to_str().context("a UTF-8 path")?;
    println!("peak RSS of prefetch of a {} MiB file (10× a {BUDGET_MIB} MiB budget):", large_bytes >> 20);
    for (name, repository, env) in [("OCI", oci.as_str(), &none), ("S3", "s3://bench/repo", &s3_env)] {
        run(&["publish", "--repository", repository, "--model", "large", "--source", source], env).await?;
        let (rate, peak) = prefetch(repository, "large", env, 4).await?;
        println!("  {name}: {peak:.1} MiB peak RSS ({rate:.1} MB/s)");
    }
    Ok(())
}
