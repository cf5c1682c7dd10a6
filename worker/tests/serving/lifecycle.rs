//! Graceful shutdown, the Triton repository extension, and the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::inference::{
    RepositoryIndexRequest, RepositoryModelLoadRequest, RepositoryModelUnloadRequest, ServerReadyRequest,
};
use lantern_proto::lantern::v1::VersionState;
use lantern_serve::batcher::BatchSettings;
use lantern_telemetry::collector::{Collector, Span};
use tonic::Code;

use crate::fixtures::{Harness, IN, OUT, fast_settings, infer_request, local_options, publish_mlp};

#[tokio::test]
async fn graceful_shutdown_completes_in_flight_requests() {
    let mut settings = fast_settings();
    // Each batch waits 300 ms for company, so requests are surely in flight at shutdown.
    settings.batch = BatchSettings { max_batch_size: 64, max_delay: Duration::from_millis(300), queue_capacity: 64 };
    let harness = Harness::start_with(settings, local_options(), |root| {
        publish_mlp(root, "m", 1, &[IN, 8, OUT]);
    })
    .await;
    harness.wait_for("m", 1, VersionState::Available).await;
    let client = harness.grpc().await;
    let in_flight: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.model_infer(infer_request("m", "", 1)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = harness.url();
    harness.server.shutdown().await.unwrap();
    for call in in_flight {
        let response = call.await.unwrap().expect("an in-flight request failed during shutdown");
        assert_eq!(response.into_inner().model_version, "1");
    }
    assert!(GrpcInferenceServiceClient::connect(url).await.is_err(), "the server still accepts connections");
}

#[tokio::test]
async fn repository_extension_indexes_unloads_and_loads_models() {
    let harness = Harness::start().await;
    harness.publish("a", 1);
    harness.publish("b", 1);
    harness.wait_for("a", 1, VersionState::Available).await;
    harness.wait_for("b", 1, VersionState::Available).await;
    let mut client = harness.grpc().await;
    let index = client
        .repository_index(RepositoryIndexRequest { ready: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = index.models.iter().map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str())).collect();
    assert_eq!(names, vec![("a", "1", "READY"), ("b", "1", "READY")]);

    client
        .repository_model_unload(RepositoryModelUnloadRequest { model_name: "a".into(), ..Default::default() })
        .await
        .unwrap();
    let refused = client.model_infer(infer_request("a", "", 1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(client.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready, "b still serves");
    assert!(client.model_infer(infer_request("b", "", 1)).await.is_ok());
    harness.wait_for("a", 1, VersionState::End).await;

    client
        .repository_model_load(RepositoryModelLoadRequest { model_name: "a".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(client.model_infer(infer_request("a", "", 1)).await.unwrap().into_inner().model_version, "1");
    let missing = client
        .repository_model_load(RepositoryModelLoadRequest { model_name: "ghost".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{}", missing.message());
}

#[test]
fn the_binary_publishes_serves_and_exits_cleanly_on_sigterm() {
    let binary = env!("CARGO_BIN_EXE_lantern-worker");
    let repo = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    let status = Command::new(binary)
        .args(["init-mlp", "--layers", "4,8,3", "--seed", "5", "--out"])
        .arg(source.path())
        .status()
        .unwrap();
    assert!(status.success());
    let published = Command::new(binary)
        .args(["publish", "--model", "iris", "--repository"])
        .arg(repo.path())
        .arg("--source")
        .arg(source.path())
        .output()
        .unwrap();
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    assert!(String::from_utf8_lossy(&published.stdout).contains("version 1"));

    let (mut child, addr) = spawn_worker(repo.path(), &[]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match client.model_infer(infer_request("iris", "", 1)).await {
                Ok(response) => break assert_eq!(response.into_inner().model_version, "1"),
                Err(e) if e.code() == Code::Unavailable || e.code() == Code::NotFound => {
                    assert!(tokio::time::Instant::now() < deadline, "never served: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    let exit = terminate(&mut child);
    assert!(exit.success(), "exit status {exit}");
}

/// Starts `lantern-worker serve` on an ephemeral port; returns the process and its address.
fn spawn_worker(repo: &std::path::Path, env: &[(&str, String)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lantern-worker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--poll-interval-ms", "100", "--repository"])
        .arg(repo)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    (child, addr)
}

/// Sends SIGTERM and waits for the exit.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    child.wait().unwrap()
}

#[test]
fn traces_reach_the_otlp_collector_and_continue_the_callers_trace() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (collector, endpoint) = runtime.block_on(Collector::start()).unwrap();
    let repo = tempfile::tempdir().unwrap();
    publish_mlp(repo.path(), "m", 1, &[IN, 8, OUT]);
    let (mut child, addr) = spawn_worker(repo.path(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    runtime.block_on(async {
        let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut request = tonic::Request::new(infer_request("m", "", 1));
            let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
            request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
            match client.model_infer(request).await {
                Ok(_) => break,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "never served: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Shutdown flushes the batch exporter.
    assert!(terminate(&mut child).success());

    let spans = collector.spans();
    let ours: Vec<&Span> = spans.iter().filter(|s| hex::encode(&s.trace_id) == trace_id).collect();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"/inference.GRPCInferenceService/ModelInfer"), "spans in the caller's trace: {names:?}");
    assert!(names.contains(&"model_infer"), "spans in the caller's trace: {names:?}");
}

#[tokio::test]
async fn grpc_health_follows_readiness_and_reflection_lists_the_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let harness = Harness::start().await;
    let channel = tonic::transport::Channel::from_shared(harness.url()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |response: tonic::Response<tonic_health::pb::HealthCheckResponse>| response.into_inner().status;
    let check = || HealthCheckRequest { service: String::new() };
    assert_eq!(status(health.check(check()).await.unwrap()), ServingStatus::NotServing as i32, "nothing to serve yet");

    harness.publish("m", 1);
    harness.wait_for("m", 1, VersionState::Available).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status(health.check(check()).await.unwrap()) != ServingStatus::Serving as i32 {
        assert!(tokio::time::Instant::now() < deadline, "health never turned SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection did not list services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["inference.GRPCInferenceService", "lantern.v1.ModelService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
    }
}
