//! Wire compatibility with the stock clients users already run, installed by
//! `scripts/setup-test-deps.sh`: tritonclient's gRPC client (Open Inference Protocol) and the
//! OpenAI Python library.

use std::path::PathBuf;
use std::process::Command;

use lantern_proto::lantern::v1::VersionState;

use crate::fixtures::{Harness, infer_request, output_values};

/// The Python site holding `package`, or `None` with a loud message when it is not installed.
fn python_site(package: &str) -> Option<PathBuf> {
    let site = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/python/site");
    if site.join(package).is_dir() {
        return Some(site);
    }
    eprintln!("SKIPPED: {package} is not installed; run scripts/setup-test-deps.sh (the test command does)");
    None
}

/// Runs `tests/serving/<script>` with `args` on the installed site and returns its stdout.
async fn run_python(site: PathBuf, script: &str, args: Vec<String>) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serving").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).args(args).env("PYTHONPATH", site).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "python check failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_talks_to_the_worker_unchanged() {
    let Some(site) = python_site("tritonclient") else { return };
    let harness = Harness::start().await;
    harness.publish("m", 1);
    harness.wait_for("m", 1, VersionState::Available).await;
    let stdout = run_python(site, "tritonclient_check.py", vec![harness.server.local_addr().to_string()]).await;

    // The Python client saw exactly what a Rust client sees.
    let from_python: Vec<f32> = stdout.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let mut request = infer_request("m", "", 2);
    request.inputs[0].contents.as_mut().unwrap().fp32_contents = (0..8).map(|i| i as f32 / 10.0).collect();
    let from_rust = output_values(&harness.grpc().await.model_infer(request).await.unwrap().into_inner());
    for (p, r) in from_python.iter().zip(&from_rust) {
        assert!((p - r).abs() < 1e-5, "python {from_python:?} vs rust {from_rust:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_library_chats_with_the_worker_streamed_and_not() {
    let Some(site) = python_site("openai") else { return };
    let Some(harness) = crate::llm::serving_smollm2(|_| {}).await else { return };
    let args = vec![harness.server.local_addr().to_string(), crate::llm::MODEL.to_owned()];
    let report: serde_json::Value = serde_json::from_str(&run_python(site, "openai_check.py", args).await).unwrap();
    assert!(!report["whole"].as_str().unwrap().is_empty(), "{report}");
    assert_eq!(report["streamed"], report["whole"], "greedy: the stream spells the same answer");
    assert_eq!(report["whole_finish"], report["stream_finish"]);
    assert_eq!(report["whole_usage"], report["stream_usage"]);
    assert_eq!(report["completion_tokens"], 4);
    assert_eq!(report["models"], serde_json::json!([crate::llm::MODEL]));
}
