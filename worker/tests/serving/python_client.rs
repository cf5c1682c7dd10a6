//! Wire compatibility with the stock Open Inference Protocol client users already run:
//! tritonclient's gRPC client, installed by `scripts/setup-test-deps.sh`.

use std::path::PathBuf;
use std::process::Command;

use lantern_proto::lantern::v1::VersionState;

use crate::fixtures::{Harness, infer_request, output_values};

fn python_site() -> Option<PathBuf> {
    let site = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/python/site");
    site.join("tritonclient").is_dir().then_some(site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_talks_to_the_worker_unchanged() {
    let Some(site) = python_site() else {
        eprintln!("SKIPPED: tritonclient is not installed; run scripts/setup-test-deps.sh (the test command does)");
        return;
    };
    let harness = Harness::start().await;
    harness.publish("m", 1);
    harness.wait_for("m", 1, VersionState::Available).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serving/tritonclient_check.py");
    let addr = harness.server.local_addr().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).arg(addr).env("PYTHONPATH", site).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tritonclient check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The Python client saw exactly what a Rust client sees.
    let from_python: Vec<f32> = stdout.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let mut request = infer_request("m", "", 2);
    request.inputs[0].contents.as_mut().unwrap().fp32_contents = (0..8).map(|i| i as f32 / 10.0).collect();
    let from_rust = output_values(&harness.grpc().await.model_infer(request).await.unwrap().into_inner());
    for (p, r) in from_python.iter().zip(&from_rust) {
        assert!((p - r).abs() < 1e-5, "python {from_python:?} vs rust {from_rust:?}");
    }
}
