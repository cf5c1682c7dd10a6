//! New versions go live without failed requests; broken versions never disturb serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lantern_proto::lantern::v1::VersionState;

use crate::fixtures::{Harness, IN, OUT, infer_request, output_values, publish_edited};

const LAYERS: [usize; 3] = [IN, 8, OUT];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_version_goes_live_under_concurrent_load_without_failed_requests() {
    let harness = Harness::serving_one_version().await;

    let stop = Arc::new(AtomicBool::new(false));
    let served_by_v2 = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = harness.grpc().await;
        let (stop, served_by_v2) = (stop.clone(), served_by_v2.clone());
        clients.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let response =
                    client.model_infer(infer_request("m", "", 2)).await.expect("a request failed during the swap");
                let response = response.into_inner();
                assert_eq!(output_values(&response).len(), 2 * crate::fixtures::OUT);
                if response.model_version == "2" {
                    served_by_v2.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
            }
            sent
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    harness.publish("m", 2);
    harness.wait_for("m", 1, VersionState::End).await;
    // Keep the load on for a moment after the old version is gone.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        total += client.await.expect("a client panicked: some request failed");
    }
    assert!(total > 100, "only {total} requests were sent");
    assert!(served_by_v2.load(Ordering::Relaxed) > 0, "version 2 never served");
    let status = harness.version_status("m", 2).await.unwrap();
    assert_eq!(status.state, VersionState::Available as i32);
    assert_eq!(status.engine, None, "a tensor model has no generation engine to report");
}

#[tokio::test]
async fn corrupt_new_version_reports_failed_and_the_old_one_keeps_serving() {
    let harness = Harness::serving_one_version().await;

    // Publish v2 with good files, then flip bytes in its weights: the digest no longer matches.
    let weights = harness.version_dir("m", 2).join("model.safetensors");
    let staged = harness.repo.path().join(".hold");
    publish_edited(&staged, "m", 2, Some(2), &LAYERS, &[], |_| {});
    let good = std::fs::read(staged.join("m/2/model.safetensors")).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(staged.join("m/2/model.safetensors"), &bad).unwrap();
    std::fs::rename(staged.join("m/2"), harness.version_dir("m", 2)).unwrap();
    harness.server.manager().reconcile_now();

    let failed = harness.wait_for("m", 2, VersionState::Failed).await;
    assert!(failed.reason.contains("digest mismatch"), "{}", failed.reason);
    let mut client = harness.grpc().await;
    for _ in 0..20 {
        let response = client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner();
        assert_eq!(response.model_version, "1");
    }
    let explicit = client.model_infer(infer_request("m", "2", 1)).await.unwrap_err();
    assert_eq!(explicit.code(), tonic::Code::Unavailable);
    assert!(explicit.message().contains("digest mismatch"), "{}", explicit.message());

    // Repair the file: the retry with backoff picks it up and v2 replaces v1.
    std::fs::write(&weights, &good).unwrap();
    harness.wait_for("m", 2, VersionState::Available).await;
    harness.wait_for("m", 1, VersionState::End).await;
    let response = client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner();
    assert_eq!(response.model_version, "2");
}

#[tokio::test]
async fn weights_that_do_not_parse_fail_the_version_with_a_reason() {
    let harness = Harness::serving_one_version().await;
    publish_edited(harness.repo.path(), "m", 2, None, &LAYERS, &[], |source| {
        std::fs::write(source.join("model.safetensors"), b"this is not safetensors").unwrap();
    });
    harness.server.manager().reconcile_now();
    let failed = harness.wait_for("m", 2, VersionState::Failed).await;
    assert!(failed.reason.contains("not valid safetensors"), "{}", failed.reason);
    let response = harness.grpc().await.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner();
    assert_eq!(response.model_version, "1");
}

#[tokio::test]
async fn malformed_manifest_fails_the_version_and_half_copies_are_ignored() {
    let harness = Harness::serving_one_version().await;

    // A half-copied directory: weights but no manifest yet.
    let half = harness.version_dir("m", 3);
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("model.safetensors"), b"partial").unwrap();
    // A dot-directory publish in progress.
    std::fs::create_dir_all(harness.repo.path().join("m/.publish-in-progress")).unwrap();
    // A malformed manifest.
    let broken = harness.version_dir("m", 2);
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("manifest.json"), b"{\"format\": \"safetensors\",").unwrap();
    harness.server.manager().reconcile_now();

    let failed = harness.wait_for("m", 2, VersionState::Failed).await;
    assert!(failed.reason.contains("malformed manifest"), "{}", failed.reason);
    assert!(harness.version_status("m", 3).await.is_none(), "a version without a manifest was picked up");
    let response = harness.grpc().await.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner();
    assert_eq!(response.model_version, "1");
}

#[tokio::test]
async fn a_deleted_version_directory_is_unloaded_cleanly() {
    let mut settings = crate::fixtures::fast_settings();
    settings.policy = "all".parse().unwrap();
    let harness = Harness::start_with(settings, crate::fixtures::local_options(), |_| {}).await;
    harness.publish("m", 1);
    harness.publish("m", 2);
    harness.wait_for("m", 1, VersionState::Available).await;
    harness.wait_for("m", 2, VersionState::Available).await;
    let mut client = harness.grpc().await;
    client.model_infer(infer_request("m", "1", 1)).await.unwrap();

    std::fs::remove_dir_all(harness.version_dir("m", 1)).unwrap();
    harness.server.manager().reconcile_now();
    harness.wait_gone("m", 1).await;
    let gone = client.model_infer(infer_request("m", "1", 1)).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert_eq!(client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner().model_version, "2");

    // Deleting every version keeps the last one answering.
    std::fs::remove_dir_all(harness.version_dir("m", 2)).unwrap();
    harness.server.manager().reconcile().await;
    harness.server.manager().reconcile().await;
    assert_eq!(client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner().model_version, "2");
}

#[tokio::test]
async fn reload_picks_up_a_new_version_without_waiting_for_the_poll() {
    let mut settings = crate::fixtures::fast_settings();
    settings.poll_interval = std::time::Duration::from_secs(3600);
    let harness = Harness::start_with(settings, crate::fixtures::local_options(), |root| {
        crate::fixtures::publish_mlp(root, "m", 1, &LAYERS);
    })
    .await;
    harness.wait_for("m", 1, VersionState::Available).await;
    // Let the rescan that follows every finished load happen before publishing.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    crate::fixtures::publish_mlp(harness.repo.path(), "m", 2, &LAYERS);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(harness.version_status("m", 2).await.is_none(), "version 2 was found without a poll or reload");

    harness.models().await.reload(lantern_proto::lantern::v1::ReloadRequest {}).await.unwrap();
    harness.wait_for("m", 2, VersionState::Available).await;
}
