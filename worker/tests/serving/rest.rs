//! The REST form of the protocol and `/metrics` (including what batching records there), over
//! real HTTP.

use lantern_proto::lantern::v1::VersionState;
use serde_json::{Value, json};

use crate::fixtures::{Harness, IN, infer_request, output_values};

#[tokio::test]
async fn rest_inference_matches_grpc() {
    let harness = Harness::serving_one_version().await;
    let http = reqwest::Client::new();
    let grpc = harness.grpc().await.model_infer(infer_request("m", "", 2)).await.unwrap().into_inner();
    let values: Vec<f32> = (0..2 * IN).map(|i| i as f32 / 10.0).collect();
    let body = json!({"id": "r1", "inputs": [{"name": "input", "shape": [2, IN], "datatype": "FP32", "data": values}]});
    let response = http.post(format!("{}/v2/models/m/infer", harness.url())).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["id"], "r1");
    assert_eq!(answer["model_version"], "1");
    assert_eq!(answer["outputs"][0]["shape"], json!([2, 3]));
    let rest_values: Vec<f32> = serde_json::from_value(answer["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(rest_values, output_values(&grpc));

    let versioned =
        http.post(format!("{}/v2/models/m/versions/1/infer", harness.url())).json(&body).send().await.unwrap();
    assert_eq!(versioned.status(), 200);
}

#[tokio::test]
async fn rest_errors_carry_status_and_message() {
    let harness = Harness::serving_one_version().await;
    let http = reqwest::Client::new();
    let url = harness.url();
    let good_input = json!({"name": "input", "shape": [1, IN], "datatype": "FP32", "data": [0, 0, 0, 0]});
    let cases = [
        (format!("{url}/v2/models/nope/infer"), json!({"inputs": [good_input]}), 404, "nope"),
        (format!("{url}/v2/models/m/versions/7/infer"), json!({"inputs": [good_input]}), 404, "7"),
        (
            format!("{url}/v2/models/m/infer"),
            json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]}),
            400,
            "shape",
        ),
        (format!("{url}/v2/models/m/infer"), json!({"inputs": "nope"}), 400, "invalid request body"),
    ];
    for (endpoint, body, status, needle) in cases {
        let response = http.post(&endpoint).json(&body).send().await.unwrap();
        assert_eq!(response.status(), status, "{endpoint}");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].as_str().unwrap().contains(needle), "{answer}");
    }
    let not_json = http
        .post(format!("{url}/v2/models/m/infer"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let huge = vec![0u8; 2 << 20];
    let too_big = http
        .post(format!("{url}/v2/models/m/infer"))
        .body(huge)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    // Still serving.
    let ok = http.post(format!("{url}/v2/models/m/infer")).json(&json!({"inputs": [good_input]})).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn rest_health_and_metadata() {
    let harness = Harness::serving_one_version().await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", harness.url())).send();
    assert_eq!(get("/v2/health/live").await.unwrap().status(), 200);
    assert_eq!(get("/v2/health/ready").await.unwrap().status(), 200);
    assert_eq!(get("/v2/models/m/ready").await.unwrap().status(), 200);
    assert_eq!(get("/v2/models/m/versions/2/ready").await.unwrap().status(), 404);
    let server: Value = get("/v2").await.unwrap().json().await.unwrap();
    assert_eq!(server["name"], "lantern");
    let metadata: Value = get("/v2/models/m").await.unwrap().json().await.unwrap();
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(metadata["inputs"][0]["datatype"], "FP32");
}

#[tokio::test]
async fn metrics_are_labelled_by_model_version_and_code() {
    let harness = Harness::serving_one_version().await;
    let mut client = harness.grpc().await;
    client.model_infer(infer_request("m", "", 1)).await.unwrap();
    client.model_infer(infer_request("m", "", 1)).await.unwrap();
    client.model_infer(infer_request("m", "8", 1)).await.unwrap_err();
    client.model_infer(infer_request("secret-name", "", 1)).await.unwrap_err();
    let text = reqwest::get(format!("{}/metrics", harness.url())).await.unwrap().text().await.unwrap();
    for needle in [
        r#"lantern_requests_total{model="m",version="1",code="OK"} 2"#,
        r#"lantern_requests_total{model="m",version="",code="NOT_FOUND"} 1"#,
        r#"lantern_requests_total{model="_unknown",version="",code="NOT_FOUND"} 1"#,
        r#"lantern_request_duration_seconds_count{model="m",version="1"} 2"#,
        r#"lantern_queue_duration_seconds_count{model="m",version="1"} 2"#,
        r#"lantern_batch_size_rows_count{model="m",version="1"}"#,
        r#"lantern_model_load_duration_seconds_count{model="m",version="1"} 1"#,
        r#"lantern_loaded_versions{model="m"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("secret-name"), "an unknown model name leaked into labels");
}

#[tokio::test]
async fn rest_repository_extension_indexes_unloads_and_loads() {
    let harness = Harness::serving_one_version().await;
    let http = reqwest::Client::new();
    let url = harness.url();
    let index: Value = http.post(format!("{url}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    assert_eq!(index, json!([{"name": "m", "version": "1", "state": "READY", "reason": ""}]));

    let unloaded = http.post(format!("{url}/v2/repository/models/m/unload")).send().await.unwrap();
    assert_eq!(unloaded.status(), 200);
    let ready: Value = http
        .post(format!("{url}/v2/repository/index"))
        .json(&json!({"ready": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!([]));
    assert_eq!(http.get(format!("{url}/v2/models/m/ready")).send().await.unwrap().status(), 503);

    let loaded = http.post(format!("{url}/v2/repository/models/m/load")).send().await.unwrap();
    assert_eq!(loaded.status(), 200);
    assert_eq!(http.get(format!("{url}/v2/models/m/ready")).send().await.unwrap().status(), 200);
    let missing = http.post(format!("{url}/v2/repository/models/ghost/load")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn concurrent_requests_share_one_batch() {
    use lantern_serve::batcher::BatchSettings;

    let mut settings = crate::fixtures::fast_settings();
    // A generous delay: requests arriving within it are run in one forward pass.
    settings.batch =
        BatchSettings { max_batch_size: 64, max_delay: std::time::Duration::from_millis(500), queue_capacity: 64 };
    let harness = Harness::start_with(settings, crate::fixtures::local_options(), |root| {
        crate::fixtures::publish_mlp(root, "m", 1, &[IN, 8, 3]);
    })
    .await;
    harness.wait_for("m", 1, VersionState::Available).await;
    let client = harness.grpc().await;
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.model_infer(infer_request("m", "", 2)).await.unwrap() })
    });
    for call in futures::future::join_all(calls).await {
        assert_eq!(call.unwrap().into_inner().outputs[0].shape, vec![2, 3]);
    }
    let text = reqwest::get(format!("{}/metrics", harness.url())).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"lantern_batch_size_rows_count{model="m",version="1"} 1"#), "{text}");
    assert!(text.contains(r#"lantern_batch_size_rows_sum{model="m",version="1"} 16.0"#), "{text}");
}
