//! Every bad request gets the right gRPC code and a message naming the problem, and the server
//! keeps serving afterwards.

use std::time::Duration;

use lantern_proto::inference::model_infer_request::InferRequestedOutputTensor;
use lantern_proto::inference::{InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest};
use lantern_proto::lantern::v1::VersionState;
use lantern_serve::batcher::BatchSettings;
use tonic::Code;

use crate::fixtures::{Harness, IN, fast_settings, infer_request, local_options, publish_mlp};

fn mutated(change: impl FnOnce(&mut ModelInferRequest)) -> ModelInferRequest {
    let mut request = infer_request("m", "", 2);
    change(&mut request);
    request
}

fn raw(request: &mut ModelInferRequest) {
    let values = request.inputs[0].contents.take().unwrap().fp32_contents;
    request.raw_input_contents = vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()];
}

#[tokio::test]
async fn bad_requests_get_precise_codes_and_the_server_keeps_serving() {
    let harness = Harness::serving_one_version().await;
    let mut client = harness.grpc().await;
    let cases: Vec<(&str, ModelInferRequest, Code, &str)> = vec![
        ("unknown model", infer_request("nope", "", 1), Code::NotFound, "nope"),
        ("unknown version", infer_request("m", "9", 1), Code::NotFound, "9"),
        ("unknown label", infer_request("m", "blue", 1), Code::NotFound, "blue"),
        ("wrong input name", mutated(|r| r.inputs[0].name = "pixels".into()), Code::InvalidArgument, "pixels"),
        ("wrong shape", mutated(|r| r.inputs[0].shape = vec![4, 2]), Code::InvalidArgument, "[4, 2]"),
        (
            "element count mismatch",
            mutated(|r| r.inputs[0].shape = vec![3, IN as i64]),
            Code::InvalidArgument,
            "12 elements",
        ),
        (
            "wrong datatype",
            mutated(|r| {
                r.inputs[0].datatype = "BOOL".into();
                r.inputs[0].contents =
                    Some(InferTensorContents { bool_contents: vec![true; 2 * IN], ..Default::default() });
            }),
            Code::InvalidArgument,
            "BOOL",
        ),
        ("unknown datatype", mutated(|r| r.inputs[0].datatype = "FLOAT".into()), Code::InvalidArgument, "FLOAT"),
        (
            "raw byte length",
            mutated(|r| {
                raw(r);
                r.raw_input_contents[0].pop();
            }),
            Code::InvalidArgument,
            "raw bytes",
        ),
        (
            "raw and typed both set",
            mutated(|r| {
                let typed = r.inputs[0].contents.clone();
                raw(r);
                r.inputs[0].contents = typed;
            }),
            Code::InvalidArgument,
            "one or the other",
        ),
        (
            "unknown requested output",
            mutated(|r| {
                r.outputs = vec![InferRequestedOutputTensor { name: "logits".into(), parameters: Default::default() }]
            }),
            Code::InvalidArgument,
            "logits",
        ),
        ("batch over the maximum", infer_request("m", "", 17), Code::InvalidArgument, "maximum batch size 16"),
        (
            "lossy integer conversion",
            mutated(|r| {
                r.inputs[0].datatype = "INT64".into();
                r.inputs[0].contents =
                    Some(InferTensorContents { int64_contents: vec![1 << 40; 2 * IN], ..Default::default() });
            }),
            Code::InvalidArgument,
            "without loss",
        ),
    ];
    for (case, request, code, needle) in cases {
        let err = client.model_infer(request).await.expect_err(case);
        assert_eq!(err.code(), code, "{case}: {}", err.message());
        assert!(err.message().contains(needle), "{case}: {:?} does not mention {needle:?}", err.message());
        // The server is still fine.
        assert_eq!(
            client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner().model_version,
            "1",
            "after {case}"
        );
    }
}

#[tokio::test]
async fn typed_fp64_and_int_inputs_are_accepted_and_raw_answers_raw() {
    let harness = Harness::serving_one_version().await;
    let mut client = harness.grpc().await;
    let typed = client.model_infer(infer_request("m", "", 2)).await.unwrap().into_inner();
    let ints = mutated(|r| {
        r.inputs[0].datatype = "INT32".into();
        r.inputs[0].contents = Some(InferTensorContents { int_contents: vec![0; 2 * IN], ..Default::default() });
    });
    assert_eq!(client.model_infer(ints).await.unwrap().into_inner().outputs[0].shape, vec![2, 3]);
    let doubles = mutated(|r| {
        let values = r.inputs[0].contents.take().unwrap().fp32_contents;
        r.inputs[0].datatype = "FP64".into();
        r.inputs[0].contents = Some(InferTensorContents {
            fp64_contents: values.iter().map(|&v| f64::from(v)).collect(),
            ..Default::default()
        });
    });
    let from_doubles = client.model_infer(doubles).await.unwrap().into_inner();
    assert_eq!(
        from_doubles.outputs[0].contents.as_ref().unwrap().fp32_contents,
        typed.outputs[0].contents.as_ref().unwrap().fp32_contents
    );

    let raw_response = client.model_infer(mutated(raw)).await.unwrap().into_inner();
    assert_eq!(raw_response.id, "test");
    let raw_values: Vec<f32> = raw_response.raw_output_contents[0]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(raw_values, typed.outputs[0].contents.as_ref().unwrap().fp32_contents);
}

#[tokio::test]
async fn messages_over_the_size_limit_are_refused() {
    let harness = Harness::serving_one_version().await;
    let mut client = harness.grpc().await;
    let rows = (1 << 20) / (4 * IN) + 1;
    let err = client.model_infer(infer_request("m", "", rows)).await.unwrap_err();
    // tonic answers an oversized message with OUT_OF_RANGE (grpc-go and C++ say RESOURCE_EXHAUSTED).
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large") && err.message().contains("1048576"), "{}", err.message());
    assert_eq!(client.model_infer(infer_request("m", "", 1)).await.unwrap().into_inner().model_version, "1");
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted() {
    let mut settings = fast_settings();
    // Room for one waiting request, and a model wide enough that a batch takes a while: requests
    // arriving while it runs overflow the queue.
    settings.batch = BatchSettings { max_batch_size: 1, max_delay: Duration::ZERO, queue_capacity: 1 };
    let harness = Harness::start_with(settings, local_options(), |root| {
        publish_mlp(root, "m", 1, &[IN, 2048, 2048, 3]);
    })
    .await;
    harness.wait_for("m", 1, VersionState::Available).await;
    let client = harness.grpc().await;
    let calls = (0..16).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.model_infer(infer_request("m", "", 1)).await })
    });
    let results = futures::future::join_all(calls).await;
    let codes: Vec<Code> = results.into_iter().map(|r| r.unwrap().map_or_else(|e| e.code(), |_| Code::Ok)).collect();
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)), "{codes:?}");
    let mut client = harness.grpc().await;
    assert!(client.model_infer(infer_request("m", "", 1)).await.is_ok());
}

#[tokio::test]
async fn readiness_and_metadata_report_versions() {
    let harness = Harness::serving_one_version().await;
    let mut client = harness.grpc().await;
    let ready = |name: &str, version: &str| ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(client.model_ready(ready("m", "")).await.unwrap().into_inner().ready);
    assert!(client.model_ready(ready("m", "1")).await.unwrap().into_inner().ready);
    assert_eq!(client.model_ready(ready("m", "5")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(client.model_ready(ready("x", "")).await.unwrap_err().code(), Code::NotFound);
    let metadata = client
        .model_metadata(ModelMetadataRequest { name: "m".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.versions, vec!["1".to_string()]);
    assert_eq!(metadata.platform, "lantern_mlp");
    assert_eq!(metadata.inputs[0].shape, vec![-1, IN as i64]);
    assert_eq!(metadata.outputs[0].datatype, "FP32");
}
