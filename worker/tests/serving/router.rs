//! The router in front of real workers: one gRPC channel's requests spread over every pod, HTTP
//! and streams pass through unchanged, requests wait for a pod while there is none, a pod that
//! refuses connections is skipped, and with TLS the router serves the service's certificate and
//! reaches the pods over TLS, refusing a pod that presents another.

use std::net::SocketAddr;
use std::time::Duration;

use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::lantern::v1::GenerateRequest;
use lantern_proto::lantern::v1::generate_request::Input;
use lantern_proto::lantern::v1::generation_service_client::GenerationServiceClient;
use lantern_router::proxy::HoldSettings;
use lantern_router::server::{self, Options};
use serde_json::{Value, json};

use super::fixtures::{Harness, IN, infer_request, output_values, serving_with};

/// A router's options on ephemeral loopback ports with a short hold.
fn router_options(hold: Duration) -> Options {
    Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        hold: HoldSettings { timeout: hold, max_held: 8 },
        shutdown_grace: Duration::from_secs(2),
        ..Options::default()
    }
}

/// A router on ephemeral loopback ports with a short hold.
async fn router(hold: Duration) -> server::Running {
    server::start(router_options(hold)).await.unwrap()
}

/// Three workers serving `m` v1, and a router in front of them.
async fn three_pods_behind_a_router() -> ([Harness; 3], server::Running) {
    let pods = [
        Harness::serving_one_version().await,
        Harness::serving_one_version().await,
        Harness::serving_one_version().await,
    ];
    let router = router(Duration::from_secs(1)).await;
    router.pool().set(pods.iter().map(|p| p.server.local_addr()).collect());
    (pods, router)
}

/// `lantern_requests_total` of model `m` v1 answered OK by a worker.
async fn served(harness: &Harness) -> u64 {
    let text = reqwest::get(format!("{}/metrics", harness.url())).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(r#"lantern_requests_total{model="m",version="1",code="OK"}"#));
    line.and_then(|l| l.rsplit(' ').next()).map_or(0, |n| n.parse().unwrap())
}

async fn stats(router: &server::Running) -> Value {
    reqwest::get(format!("http://{}/stats", router.admin_addr())).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_grpc_channel_spreads_its_requests_over_every_pod() {
    let (pods, router) = three_pods_behind_a_router().await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", router.local_addr())).await.unwrap();
    let expected =
        output_values(&pods[0].grpc().await.model_infer(infer_request("m", "", 2)).await.unwrap().into_inner());
    // One at a time, then 60 at once, all on the one channel (one HTTP/2 connection).
    for _ in 0..60 {
        let answer = client.model_infer(infer_request("m", "", 2)).await.unwrap().into_inner();
        assert_eq!(output_values(&answer), expected);
    }
    // One at a time, nothing is in flight when a pod is chosen: the fewest routed decides, so
    // the pods share them evenly.
    let mut one_at_a_time = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        one_at_a_time.push(served(pod).await - u64::from(index == 0));
    }
    assert!(one_at_a_time.iter().all(|&n| (18..=22).contains(&n)), "each pod within 10% of a third: {one_at_a_time:?}");
    let together = (0..60).map(|_| {
        let mut client = client.clone();
        async move { client.model_infer(infer_request("m", "", 2)).await.map(|r| r.into_inner()) }
    });
    for answer in futures::future::join_all(together).await {
        assert_eq!(output_values(&answer.unwrap()), expected);
    }
    let mut counts = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        // The first pod also answered the direct request above.
        counts.push(served(pod).await - u64::from(index == 0));
    }
    assert_eq!(counts.iter().sum::<u64>(), 120, "{counts:?}");
    // At once, the least outstanding requests follow each pod's speed: a fifth of a third.
    assert!(counts.iter().all(|&n| (32..=48).contains(&n)), "each pod within a fifth of a third: {counts:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", router.admin_addr())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lantern_router_ready_pods 3"), "{metrics}");
    assert_eq!(stats(&router).await["in_flight"], 0, "every request counted out at its end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_errors_and_headers_pass_through_unchanged() {
    let pod = Harness::serving_one_version().await;
    let router = router(Duration::from_secs(1)).await;
    router.pool().set(vec![pod.server.local_addr()]);
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", router.local_addr());
    let infer =
        json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.1, 0.2, 0.3]}]});
    let through = http.post(url("/v2/models/m/infer")).json(&infer).send().await.unwrap();
    assert_eq!(through.status(), 200);
    assert_eq!(through.headers()["content-type"], "application/json");
    let direct: Value = post(&pod.url(), "/v2/models/m/infer", &infer).await;
    assert_eq!(through.json::<Value>().await.unwrap()["outputs"], direct["outputs"]);
    // The worker's own refusals, codes and messages, reach the caller as the worker said them.
    let missing = http.post(url("/v2/models/nope/infer")).json(&infer).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let mut grpc = GrpcInferenceServiceClient::connect(url("")).await.unwrap();
    let status = grpc.model_infer(infer_request("nope", "", 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("nope"), "{}", status.message());
    let pinned = grpc.model_infer(infer_request("m", "7", 1)).await.unwrap_err();
    assert_eq!(pinned.code(), tonic::Code::NotFound, "the version reaches the worker unchanged");
}

async fn post(base: &str, path: &str, body: &Value) -> Value {
    reqwest::Client::new().post(format!("{base}{path}")).json(body).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_waits_for_a_pod_and_a_pod_that_refuses_connections_is_skipped() {
    let pod = Harness::serving_one_version().await;
    let router = router(Duration::from_secs(10)).await;
    let url = format!("http://{}", router.local_addr());
    // No pod yet: the request is held until one is ready, then answered.
    let waiting = tokio::spawn(async move {
        let mut client = GrpcInferenceServiceClient::connect(url).await.unwrap();
        client.model_infer(infer_request("m", "", 1)).await.map(|r| r.into_inner())
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats(&router).await["held"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the request was not held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A closed port beside the real pod: its requests are retried on the real one.
    let closed: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    router.pool().set(vec![closed, pod.server.local_addr()]);
    assert!(!output_values(&waiting.await.unwrap().unwrap()).is_empty());
    assert_eq!(stats(&router).await["held"], 0);
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", router.local_addr())).await.unwrap();
    for _ in 0..10 {
        client.model_infer(infer_request("m", "", 1)).await.unwrap();
    }
    let metrics = reqwest::get(format!("http://{}/metrics", router.admin_addr())).await.unwrap().text().await.unwrap();
    // Once it failed, the closed port is passed over: one retry, not one per request.
    let retries = metrics.lines().find(|l| l.starts_with(r#"lantern_router_retries_total{reason="connect"}"#));
    assert!(retries.is_some_and(|l| l.ends_with(" 1") || l.ends_with(" 2")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_pod_a_request_gets_unavailable_after_the_hold_in_its_own_protocol() {
    let router = router(Duration::from_millis(300)).await;
    let url = format!("http://{}", router.local_addr());
    let mut client = GrpcInferenceServiceClient::connect(url.clone()).await.unwrap();
    let status = client.model_infer(infer_request("m", "", 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("no pod became ready"), "{}", status.message());
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("no pod"), "{body}");
    let metrics = reqwest::get(format!("http://{}/metrics", router.admin_addr())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lantern_router_hold_timeouts_total 2"), "{metrics}");
    assert!(metrics.contains("lantern_router_held 0"), "{metrics}");
}

/// `lantern_router_routed_total` of each pod that was sent a request, from the router's metrics.
async fn routed(router: &server::Running) -> std::collections::BTreeMap<String, u64> {
    let text = reqwest::get(format!("http://{}/metrics", router.admin_addr())).await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("lantern_router_routed_total{pod=\""))
        .filter_map(|l| l.split_once("\"} ").map(|(pod, n)| (pod.to_owned(), n.parse().unwrap())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_sharing_a_prompt_prefix_go_to_one_pod_and_others_spread() {
    let (_pods, router) = three_pods_behind_a_router().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", router.local_addr());
    let system = "You answer questions about the weather in one short sentence. ".repeat(5);
    // The worker refuses these (m is no language model), but they are routed all the same.
    for question in 0..30 {
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": format!("Question {question}?")}]});
        let answer = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 400, "the worker's own answer comes back");
    }
    let shared = routed(&router).await;
    assert_eq!(shared.values().copied().collect::<Vec<_>>(), [30], "one shared prefix, one pod: {shared:?}");
    for prompt in 0..60 {
        let body = json!({"model": "m", "prompt": format!("{prompt} is a different prompt")});
        http.post(format!("http://{}/v1/completions", router.local_addr())).json(&body).send().await.unwrap();
    }
    let after = routed(&router).await;
    let spread: Vec<u64> = after.iter().map(|(pod, n)| n - shared.get(pod).copied().unwrap_or(0)).collect();
    assert!(spread.len() == 3 && spread.iter().all(|&n| n >= 8), "different prefixes spread over the pods: {spread:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_that_leaves_while_held_is_dropped_from_the_wait() {
    let router = router(Duration::from_secs(30)).await;
    let url = format!("http://{}", router.local_addr());
    let waiting = tokio::spawn(async move {
        let mut client = GrpcInferenceServiceClient::connect(url).await.unwrap();
        client.model_infer(infer_request("m", "", 1)).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats(&router).await["held"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the request was not held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waiting.abort();
    while stats(&router).await["held"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the caller left but its request is still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_the_service_does_not_serve_is_refused_as_the_worker_would_without_a_pod() {
    let pod = Harness::serving_one_version().await;
    let options = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        hold: HoldSettings { timeout: Duration::from_millis(200), max_held: 8 },
        models: Some(["m".to_owned()].into()),
        ..Options::default()
    };
    // No pod at all: an unknown model is refused at once, not held.
    let router = server::start(options).await.unwrap();
    let url = |path: &str| format!("http://{}{path}", router.local_addr());
    let infer =
        json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.1, 0.2, 0.3]}]});
    let from_router = reqwest::Client::new().post(url("/v2/models/nope/infer")).json(&infer).send().await.unwrap();
    assert_eq!(from_router.status(), 404);
    let from_router: Value = from_router.json().await.unwrap();
    let from_worker: Value = post(&pod.url(), "/v2/models/nope/infer", &infer).await;
    assert_eq!(from_router, from_worker, "the worker's own answer");
    let chat = json!({"model": "nope:canary", "messages": [{"role": "user", "content": "Hi"}]});
    let openai = reqwest::Client::new().post(url("/v1/chat/completions")).json(&chat).send().await.unwrap();
    assert_eq!(openai.status(), 404);
    let openai: Value = openai.json().await.unwrap();
    assert_eq!(openai["error"]["type"], "not_found_error", "{openai}");
    let mut generate = GenerationServiceClient::connect(url("")).await.unwrap();
    let request =
        GenerateRequest { model_name: "nope".into(), input: Some(Input::Prompt("Hi".into())), ..Default::default() };
    assert_eq!(generate.generate(request).await.unwrap_err().code(), tonic::Code::NotFound);
    // The served model goes on to a pod (here: held, then refused for want of one).
    let served = reqwest::Client::new().post(url("/v2/models/m/infer")).json(&infer).send().await.unwrap();
    assert_eq!(served.status(), 503);
    assert_eq!(stats(&router).await["held"], 0);
}

/// A file of the test certificates (`tls/fixtures`).
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tls/fixtures").join(name)
}

/// A worker serving `m` v1 over TLS with the certificate `cert` and its `key`.
async fn tls_pod(cert: &str, key: &str) -> Harness {
    let tls = lantern_serve::connections::Tls::from_pem_files(&fixture(cert), &fixture(key)).unwrap();
    serving_with(|options| options.tls = Some(tls)).await
}

/// One REST inference over HTTP/1.1 and TLS to `addr`, trusting only the test CA, for the name
/// `localhost`: the whole answer.
async fn infer_over_tls(addr: SocketAddr) -> String {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let body = json!({"inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    let body = body.to_string();
    let request = format!(
        "POST /v2/models/m/infer HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tls_the_router_serves_the_certificate_and_reaches_the_pods_over_tls() {
    let pods = [tls_pod("cert.pem", "key.pem").await, tls_pod("cert.pem", "key.pem").await];
    let tls = server::Tls::from_pem_files(&fixture("cert.pem"), &fixture("key.pem")).unwrap();
    let router = server::start(Options { tls: Some(tls), ..router_options(Duration::from_secs(1)) }).await.unwrap();
    router.pool().set(pods.iter().map(|p| p.server.local_addr()).collect());
    for _ in 0..20 {
        let answer = infer_over_tls(router.local_addr()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let routed = routed(&router).await;
    assert_eq!(routed.values().sum::<u64>(), 20, "{routed:?}");
    assert_eq!(routed.len(), 2, "both pods answered over TLS: {routed:?}");
    // Plain HTTP on the router's TLS port gets no HTTP answer.
    let plain = reqwest::get(format!("http://{}/v2/health/live", router.local_addr())).await;
    assert!(plain.is_err(), "{plain:?}");

    // A pod that presents another certificate is not trusted: nothing is sent to it, and the
    // request is refused as when no pod can be reached.
    let impostor = tls_pod("other.pem", "other-key.pem").await;
    router.pool().set(vec![impostor.server.local_addr()]);
    let answer = infer_over_tls(router.local_addr()).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after"), "{answer}");
}
