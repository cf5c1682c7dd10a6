//! Requests an attacker or a careless client sends: each gets a precise answer, costs a bounded
//! amount, and leaves the server serving. Management needs its token, inference its API key;
//! unknown routes are 404 in their API's shape; connections are capped and timed out.

use std::time::Duration;

use lantern_proto::inference::model_infer_request::InferInputTensor;
use lantern_proto::inference::{ModelInferRequest, RepositoryModelUnloadRequest};
use lantern_proto::lantern::v1::{GetModelStatusRequest, VersionState};
use lantern_serve::auth::Credentials;
use lantern_serve::connections::ConnectionLimits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::fixtures::{Harness, IN, infer_request, serving_with};

async fn still_serves(harness: &Harness) {
    let mut client = harness.grpc().await;
    let response = client.model_infer(infer_request("m", "", 1)).await.expect("the server still answers");
    assert_eq!(response.into_inner().model_version, "1");
}

#[tokio::test]
async fn raw_bytes_inputs_with_huge_declared_shapes_are_refused_without_allocating() {
    let harness = Harness::serving_one_version().await;
    let mut client = harness.grpc().await;
    for (model, datatype, shape) in [
        ("nope", "BYTES", vec![1i64 << 43]),
        ("nope", "BYTES", vec![1 << 61]),
        ("m", "BYTES", vec![1 << 60, 4]),
        ("m", "FP32", vec![1 << 60, 4]),
        ("m", "FP64", vec![i64::MAX, 2]),
    ] {
        let request = ModelInferRequest {
            model_name: model.into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: datatype.into(),
                shape: shape.clone(),
                ..Default::default()
            }],
            raw_input_contents: vec![Vec::new()],
            ..Default::default()
        };
        let err = client.model_infer(request).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{datatype} {shape:?}: {}", err.message());
    }
    still_serves(&harness).await;
}

#[tokio::test]
async fn json_numbers_beyond_the_datatypes_range_are_refused_not_made_infinite() {
    let harness = Harness::serving_one_version().await;
    let client = reqwest::Client::new();
    for (datatype, value) in [("FP32", json!(1e300)), ("FP32", json!(-4e38)), ("FP16", json!(1e5))] {
        let body =
            json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": datatype, "data": [value, 0, 0, 0]}]});
        let response = client.post(format!("{}/v2/models/m/infer", harness.url())).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{datatype} {value}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains(datatype), "{error}");
    }
    still_serves(&harness).await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_their_apis_shape() {
    let harness = Harness::serving_one_version().await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", harness.url());
    let openai = client.get(url("/v1/no-such-route")).send().await.unwrap();
    assert_eq!(openai.status(), 404);
    let body: Value = openai.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("/v1/no-such-route"), "{body}");
    let oip = client.get(url("/v2/models/m/nothing/here")).send().await.unwrap();
    assert_eq!(oip.status(), 404);
    assert!(oip.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(client.get(url("/")).send().await.unwrap().status(), 404);

    let wrong = client.get(url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(wrong.json::<Value>().await.unwrap()["error"]["message"].is_string());
    let wrong = client.delete(url("/v2/models/m/infer")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(wrong.json::<Value>().await.unwrap()["error"].is_string());

    // A gRPC method nobody serves is UNIMPLEMENTED, as gRPC clients expect.
    let mut channel = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(harness.url()).unwrap().connect().await.unwrap(),
    );
    channel.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/inference.GRPCInferenceService/NoSuchMethod");
    let codec = tonic_prost::ProstCodec::<ModelInferRequest, ModelInferRequest>::default();
    let err = channel.unary(tonic::Request::new(ModelInferRequest::default()), path, codec).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    still_serves(&harness).await;
}

#[tokio::test]
async fn management_calls_need_the_management_token_and_inference_the_api_key() {
    let harness = serving_with(|options| {
        options.credentials = Credentials::new(Some("admin-token"), &["user-key".to_owned()]);
    })
    .await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", harness.url());

    // Management without (or with the wrong) token: 401, and nothing happens.
    for token in [None, Some("user-key"), Some("guess")] {
        let mut request = client.post(url("/v2/repository/models/m/unload"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let mut models = harness.models().await;
    let err = models.get_model_status(GetModelStatusRequest { model: "m".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut grpc = harness.grpc().await;
    let err = grpc
        .repository_model_unload(RepositoryModelUnloadRequest { model_name: "m".into(), ..Default::default() })
        .await;
    assert_eq!(err.unwrap_err().code(), Code::Unauthenticated);

    // With the token it works.
    let mut request = tonic::Request::new(GetModelStatusRequest { model: "m".into() });
    request.metadata_mut().insert("authorization", MetadataValue::from_static("Bearer admin-token"));
    let status = models.get_model_status(request).await.unwrap().into_inner();
    assert_eq!(status.models[0].versions[0].state, VersionState::Available as i32);

    // Inference needs a key; health and metrics do not.
    let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": [0, 0, 0, 0]}]});
    assert_eq!(client.post(url("/v2/models/m/infer")).json(&body).send().await.unwrap().status(), 401);
    let openai = client.get(url("/v1/models")).send().await.unwrap();
    assert_eq!(openai.status(), 401);
    assert_eq!(openai.json::<Value>().await.unwrap()["error"]["type"], "authentication_error");
    assert_eq!(grpc.model_infer(infer_request("m", "", 1)).await.unwrap_err().code(), Code::Unauthenticated);
    let keyed = client.post(url("/v2/models/m/infer")).bearer_auth("user-key").json(&body).send().await.unwrap();
    assert_eq!(keyed.status(), 200);
    let mut request = tonic::Request::new(infer_request("m", "", 1));
    request.metadata_mut().insert("authorization", MetadataValue::from_static("Bearer user-key"));
    assert_eq!(grpc.model_infer(request).await.unwrap().into_inner().model_version, "1");
    for open in ["/v2/health/live", "/v2/health/ready", "/metrics"] {
        assert_eq!(client.get(url(open)).send().await.unwrap().status(), 200, "{open}");
    }
    assert_eq!(client.get(url("/v2/models/m")).send().await.unwrap().status(), 401);
    assert_eq!(client.get(url("/v2/models/m")).bearer_auth("user-key").send().await.unwrap().status(), 200);
}

/// Sends raw bytes on a fresh connection and returns what comes back until the server closes
/// it or `wait` passes.
async fn exchange(harness: &Harness, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(harness.server.local_addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await.is_ok();
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

#[tokio::test]
async fn a_body_that_never_completes_is_answered_and_idle_connections_are_closed() {
    let harness = serving_with(|options| {
        options.connections = ConnectionLimits {
            body_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(600),
            header_timeout: Duration::from_millis(500),
            ..ConnectionLimits::default()
        };
    })
    .await;
    // A body promised at 1,000 bytes, of which 10 arrive.
    let slow = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"inputs\":";
    let (answer, closed) = exchange(&harness, slow, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("not complete within"), "{answer}");
    assert!(closed, "the connection was left open");
    // Headers that never end.
    let (_, closed) = exchange(&harness, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n", Duration::from_secs(10)).await;
    assert!(closed, "a connection with incomplete headers was left open");
    // A connection that sends nothing at all.
    let (_, closed) = exchange(&harness, b"", Duration::from_secs(10)).await;
    assert!(closed, "an idle connection was left open");
    still_serves(&harness).await;
}

#[tokio::test]
async fn beyond_the_connection_cap_only_health_answers() {
    let harness = serving_with(|options| {
        options.connections = ConnectionLimits { max_connections: 4, ..ConnectionLimits::default() };
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(harness.server.local_addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let live = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let (answer, _) = exchange(&harness, live, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metadata = b"GET /v2/models/m HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let (answer, _) = exchange(&harness, metadata, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serves(&harness).await;
}

#[tokio::test]
async fn with_a_management_port_management_is_answered_there_only() {
    let harness = serving_with(|options| {
        options.management_listen = Some("127.0.0.1:0".parse().unwrap());
        options.credentials = Credentials::new(Some("admin-token"), &[]);
    })
    .await;
    let management = harness.server.management_addr().expect("a management port");
    let client = reqwest::Client::new();
    let index = |addr: String| client.post(format!("{addr}/v2/repository/index")).bearer_auth("admin-token").send();
    assert_eq!(index(harness.url()).await.unwrap().status(), 404);
    assert_eq!(index(format!("http://{management}")).await.unwrap().status(), 200);
    let infer = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": [0, 0, 0, 0]}]});
    let on_management = client.post(format!("http://{management}/v2/models/m/infer")).json(&infer).send().await;
    assert_eq!(on_management.unwrap().status(), 404);
    assert_eq!(client.get(format!("http://{management}/v2/health/ready")).send().await.unwrap().status(), 200);

    let mut models = harness.models().await;
    let err = models.get_model_status(GetModelStatusRequest { model: "m".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{}", err.message());
    let mut on_port =
        lantern_proto::lantern::v1::model_service_client::ModelServiceClient::connect(format!("http://{management}"))
            .await
            .unwrap();
    let mut request = tonic::Request::new(GetModelStatusRequest { model: "m".into() });
    request.metadata_mut().insert("authorization", MetadataValue::from_static("Bearer admin-token"));
    assert_eq!(on_port.get_model_status(request).await.unwrap().into_inner().models.len(), 1);
    still_serves(&harness).await;
}

#[tokio::test]
async fn with_tls_the_serving_port_speaks_https_with_alpn_and_refuses_plain_http() {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tls/fixtures");
    let tls =
        lantern_serve::connections::Tls::from_pem_files(&fixtures.join("cert.pem"), &fixtures.join("key.pem")).unwrap();
    let harness = serving_with(|options| options.tls = Some(tls)).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(fixtures.join("ca.pem")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for (alpn, request) in [
        (b"http/1.1".as_slice(), b"GET /v2/models/m/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".as_slice()),
        (b"h2".as_slice(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice()),
    ] {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(harness.server.local_addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut stream = connector.connect(name, tcp).await.expect("the handshake succeeds");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn), "ALPN agreed");
        stream.write_all(request).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = stream.read(&mut answer).await.unwrap();
        if alpn == b"http/1.1" {
            assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"), "{:?}", &answer[..n]);
        } else {
            // The server's first HTTP/2 frame is its SETTINGS (type 4).
            assert_eq!(answer[3], 4, "{:?}", &answer[..n]);
        }
    }
    // Plain HTTP on the TLS port gets no HTTP answer.
    let (answer, _) =
        exchange(&harness, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(10)).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn serving_configs_for_models_with_no_published_version_are_bounded() {
    use lantern_proto::lantern::v1::{ServingConfig, SetServingConfigRequest};
    use lantern_serve::versions::MAX_UNPUBLISHED_CONFIGS;

    let harness = Harness::serving_one_version().await;
    let mut models = harness.models().await;
    let set = |model: String| SetServingConfigRequest { model, config: Some(ServingConfig::default()) };
    for i in 0..MAX_UNPUBLISHED_CONFIGS {
        models.set_serving_config(set(format!("made-up-{i}"))).await.unwrap();
    }
    let refused = models.set_serving_config(set("one-too-many".into())).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    // A model that is published still gets its config.
    models.set_serving_config(set("m".into())).await.unwrap();
    still_serves(&harness).await;
}
