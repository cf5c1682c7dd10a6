//! Labels, weighted splits and sticky routing keys, end to end, and the per-version status the
//! operator routes by.

use std::collections::HashMap;

use lantern_proto::inference::InferParameter;
use lantern_proto::inference::infer_parameter::ParameterChoice;
use lantern_proto::lantern::v1::version_policy::{All, Policy};
use lantern_proto::lantern::v1::{
    GetModelStatusRequest, GetServingConfigRequest, ServingConfig, SetServingConfigRequest, VersionPolicy, VersionState,
};

use crate::fixtures::{Harness, IN, OUT, infer_request, publish_edited};

async fn canary_harness(stable: u32, canary: u32) -> Harness {
    let harness = Harness::start().await;
    harness.publish("m", 1);
    harness.publish("m", 2);
    let config = ServingConfig {
        version_policy: Some(VersionPolicy { policy: Some(Policy::All(All {})) }),
        labels: [("stable".to_string(), 1), ("canary".to_string(), 2)].into(),
        traffic: [(1, stable), (2, canary)].into(),
    };
    harness
        .models()
        .await
        .set_serving_config(SetServingConfigRequest { model: "m".into(), config: Some(config) })
        .await
        .unwrap();
    harness.wait_for("m", 1, VersionState::Available).await;
    harness.wait_for("m", 2, VersionState::Available).await;
    harness
}

#[tokio::test]
async fn weighted_split_routes_in_the_configured_proportions() {
    let harness = canary_harness(80, 20).await;
    let mut client = harness.grpc().await;
    let n = 1000;
    let mut to_canary = 0;
    for _ in 0..n {
        if client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner().model_version == "2" {
            to_canary += 1;
        }
    }
    // Binomial(1000, 0.2): standard deviation 12.6; allow four of them.
    assert!((150..=250).contains(&to_canary), "{to_canary} of {n} went to the canary, expected about 200");
    let status = harness.version_status("m", 2).await.unwrap();
    assert_eq!(status.labels, vec!["canary".to_string()]);
    assert!((status.traffic_percent - 20.0).abs() < 1e-9);
}

#[tokio::test]
async fn labels_route_to_their_versions() {
    let harness = canary_harness(100, 0).await;
    let mut client = harness.grpc().await;
    for (label, version) in [("stable", "1"), ("canary", "2"), ("1", "1"), ("2", "2")] {
        for _ in 0..10 {
            let response = client.model_infer(infer_request("m", label, 1)).await.unwrap().into_inner();
            assert_eq!(response.model_version, version, "label {label}");
        }
    }
    // Weight 0 for the canary: unlabelled traffic all goes to stable.
    for _ in 0..50 {
        assert_eq!(client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner().model_version, "1");
    }
}

#[tokio::test]
async fn sticky_routing_keys_stay_on_one_version() {
    let harness = canary_harness(50, 50).await;
    let mut client = harness.grpc().await;
    let mut seen: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        for user in 0..40 {
            let key = format!("user-{user}");
            let mut request = infer_request("m", "", 1);
            if round % 2 == 0 {
                request.parameters.insert(
                    "routing_key".into(),
                    InferParameter { parameter_choice: Some(ParameterChoice::StringParam(key.clone())) },
                );
            }
            let mut request = tonic::Request::new(request);
            if round % 2 == 1 {
                request.metadata_mut().insert("x-lantern-routing-key", key.parse().unwrap());
            }
            let version = client.model_infer(request).await.unwrap().into_inner().model_version;
            let first = seen.entry(key.clone()).or_insert_with(|| version.clone());
            assert_eq!(*first, version, "{key} moved between versions");
        }
    }
    let on_canary = seen.values().filter(|v| *v == "2").count();
    assert!((5..=35).contains(&on_canary), "{on_canary} of 40 keys on the canary at 50%");
}

#[tokio::test]
async fn a_label_for_an_unpublished_version_routes_once_it_is_published() {
    let harness = Harness::start().await;
    harness.publish("m", 1);
    let config = ServingConfig { labels: [("canary".to_string(), 2)].into(), ..Default::default() };
    let mut models = harness.models().await;
    models
        .set_serving_config(SetServingConfigRequest { model: "m".into(), config: Some(config.clone()) })
        .await
        .unwrap();
    harness.wait_for("m", 1, VersionState::Available).await;
    let mut client = harness.grpc().await;
    let early = client.model_infer(infer_request("m", "canary", 1)).await.unwrap_err();
    assert_eq!(early.code(), tonic::Code::Unavailable);
    assert!(early.message().contains("canary"), "{}", early.message());

    harness.publish("m", 2);
    harness.wait_for("m", 2, VersionState::Available).await;
    assert_eq!(client.model_infer(infer_request("m", "canary", 1)).await.unwrap().into_inner().model_version, "2");
    let stored = models.get_serving_config(GetServingConfigRequest { model: "m".into() }).await.unwrap().into_inner();
    assert_eq!(stored.config.unwrap().labels, config.labels);
}

#[tokio::test]
async fn invalid_serving_configs_are_refused_and_change_nothing() {
    let harness = Harness::start().await;
    harness.publish("m", 1);
    harness.wait_for("m", 1, VersionState::Available).await;
    let mut models = harness.models().await;
    for config in [
        ServingConfig { labels: [("7".to_string(), 1)].into(), ..Default::default() },
        ServingConfig { traffic: [(1, 0)].into(), ..Default::default() },
        ServingConfig { labels: [("stable".to_string(), 0)].into(), ..Default::default() },
    ] {
        let err = models
            .set_serving_config(SetServingConfigRequest { model: "m".into(), config: Some(config) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
    }
    assert_eq!(
        harness.grpc().await.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner().model_version,
        "1"
    );
}

#[tokio::test]
async fn model_status_reports_what_canary_analysis_reads() {
    let harness = Harness::start().await;
    let metrics = [("eval_loss".to_string(), 0.25)];
    harness.publish("m", 1);
    publish_edited(harness.repo.path(), "m", 2, None, &[IN, 8, OUT], &metrics, |_| {});
    harness.server.manager().reconcile_now();
    let loaded = harness.wait_for("m", 2, VersionState::Available).await;
    assert_eq!(loaded.metrics, metrics.into_iter().collect());

    let mut client = harness.grpc().await;
    for _ in 0..5 {
        client.model_infer(infer_request("m", "2", 1)).await.unwrap();
    }
    // A caller error does not count against the version.
    let mut wrong_width = infer_request("m", "2", 1);
    wrong_width.inputs[0].shape = vec![1, 3];
    let err = client.model_infer(wrong_width).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let response = harness.models().await.get_model_status(GetModelStatusRequest { model: "m".into() }).await;
    let model = response.unwrap().into_inner().models.remove(0);
    assert_eq!(model.on_disk, vec![1, 2], "every committed version, served or not");
    let stats = model.versions.iter().find(|v| v.version == 2).unwrap().requests.clone().expect("request stats");
    assert_eq!((stats.total, stats.errors), (5, 0));
    assert_eq!(stats.latency_counts.iter().sum::<u64>(), 5);
    assert_eq!(stats.latency_counts.len(), stats.latency_bounds.len() + 1);
    assert!(stats.latency_bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend: {:?}", stats.latency_bounds);
}
