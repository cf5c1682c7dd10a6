//! InferenceServices end to end: the operator runs worker pods on the devcluster behind a
//! Service; clients reach them over gRPC and HTTP; new versions go out as canaries under live
//! traffic and are promoted (across an operator crash), or rolled back when they fail their
//! gates or cannot load. Two LoRA adapters fine-tuned in the cluster on one base are served by
//! the same pods, each adapter's versions rolled out on their own under live OpenAI traffic. The
//! router balances one gRPC channel over the pods; the autoscaler follows a burst up and down
//! and a service at zero holds its first request; a stream in flight outlives its pod's deletion.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lantern_e2e::traffic::{Traffic, mlp_request};
use lantern_e2e::{MODELS_CLAIM, Stack};
use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::inference::{ModelInferRequest, ModelReadyRequest, RepositoryModelUnloadRequest};
use lantern_proto::lantern::v1::GetModelStatusRequest;
use lantern_proto::lantern::v1::model_service_client::ModelServiceClient;

#[path = "serving/cli.rs"]
mod cli;
#[path = "serving/storage.rs"]
mod storage;

const SERVICE: &str = "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {name: adder}
spec:
  model: adder
  source:
    repository: {claimName: models}
  replicas: 2
  rollout:
    steps: [50, 100]
    stepSeconds: 2
    analysis:
      minRequests: 5
      maxLatencyRatio: 100
      evalMetric: {name: eval_loss}
";

const LAYERS: &str = "2,8,1";

fn request() -> ModelInferRequest {
    mlp_request("adder")
}

/// Waits until the service is Ready on the pods that stay: the first pods start without a
/// memory limit and are replaced once a loaded version sizes it, so Ready alone may still be
/// on pods about to go (and traffic through the Service would meet them going).
async fn settled(stack: &Stack, service: &str) -> serde_json::Value {
    let limit = Duration::from_secs(90);
    let wanted =
        |s: &serde_json::Value| condition(s, "Ready").0 == "True" && s["status"]["replicas"] == s["spec"]["replicas"];
    let ready = stack.wait_for(&format!("isvc/{service}"), "Ready on the wanted revision", limit, &wanted).await;
    let replicas = ready["spec"]["replicas"].as_u64().unwrap() as usize;
    let staying = |pod: &serde_json::Value| {
        pod["spec"]["containers"][0]["resources"]["limits"]["memory"].is_string()
            && pod["status"]["containerStatuses"][0]["ready"] == true
    };
    let only_staying = |pods: &serde_json::Value| {
        let items = pods["items"].as_array().into_iter().flatten();
        let serving: Vec<_> =
            items.filter(|p| p["metadata"]["labels"]["lantern.dev/inference-service"] == service).collect();
        serving.len() == replicas && serving.into_iter().all(staying)
    };
    stack.wait_for("pods", "only the pods with a memory limit, ready", limit, only_staying).await;
    // The status read above may still count pods that were on their way out.
    let counted = |s: &serde_json::Value| wanted(s) && s["status"]["readyReplicas"] == replicas;
    stack.wait_for(&format!("isvc/{service}"), "ready replicas counting only the staying pods", limit, counted).await
}

fn condition<'a>(service: &'a serde_json::Value, type_: &str) -> (&'a str, &'a str, &'a str) {
    let found = service["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_));
    let field = |name: &str| found.and_then(|c| c[name].as_str()).unwrap_or_default();
    (field("status"), field("reason"), field("message"))
}

fn rollout_ended(service: &serde_json::Value, version: u64) -> bool {
    let rollout = &service["status"]["rollout"];
    rollout["version"] == version && matches!(rollout["phase"].as_str(), Some("Promoted" | "RolledBack" | "Aborted"))
}

/// Publishes a version whose weights file is damaged after its checksum was recorded: staged
/// in another directory, then moved in whole, as a half-broken copy job would leave it.
async fn publish_corrupt(stack: &Stack, version: u64) {
    stack.publish_mlp("staging", "adder", LAYERS, 9, &["eval_loss=0.1"]).await.unwrap();
    let staged = stack.claim_dir("staging").join("adder/1");
    std::fs::write(staged.join("model.safetensors"), b"not the weights the manifest promises").unwrap();
    std::fs::rename(&staged, stack.claim_dir("models").join(format!("adder/{version}"))).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_are_served_canaried_promoted_and_rolled_back() {
    let mut stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    assert_eq!(stack.publish_mlp("models", "adder", LAYERS, 1, &["eval_loss=0.5"]).await.unwrap(), 1);
    let applied = stack.apply(SERVICE).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);

    let ready = settled(&stack, "adder").await;
    assert_eq!(ready["status"]["stableVersion"], 1);
    assert_eq!(ready["status"]["readyReplicas"], 2);
    assert_eq!(ready["status"]["url"], "http://adder.default.svc:8500");

    // gRPC and HTTP through the Service.
    let address = stack.service_address("adder").await.unwrap();
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{address}")).await.unwrap();
    let response = client.model_infer(request()).await.unwrap().into_inner();
    assert_eq!((response.model_version.as_str(), response.outputs[0].shape.as_slice()), ("1", &[1, 1][..]));
    let body =
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let http = reqwest::Client::new().post(format!("http://{address}/v2/models/adder/infer")).json(&body).send().await;
    let http = http.unwrap();
    assert_eq!(http.status(), 200);
    assert_eq!(http.json::<serde_json::Value>().await.unwrap()["model_version"], "1");

    // A better version goes out as a canary under traffic and is promoted, losing no request.
    let traffic = Traffic::start(address.clone(), request(), 1, Duration::from_millis(10));
    stack.publish_mlp("models", "adder", LAYERS, 2, &["eval_loss=0.4"]).await.unwrap();
    let canary = stack
        .wait_for("isvc/adder", "a canary step", Duration::from_secs(60), |s| s["status"]["canaryPercent"] == 50)
        .await;
    assert_eq!(canary["status"]["canaryVersion"], 2);
    assert_eq!(condition(&canary, "RolloutProgressing").0, "True");
    // The operator dies mid-rollout; its successor carries on from the status.
    stack.restart_operator().await.unwrap();
    let promoted =
        stack.wait_for("isvc/adder", "the promotion", Duration::from_secs(60), |s| rollout_ended(s, 2)).await;
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(promoted["status"]["rollout"]["phase"], "Promoted", "{:#}", promoted["status"]);
    assert_eq!(promoted["status"]["stableVersion"], 2);
    assert_eq!(promoted["status"]["rollout"]["analyses"].as_array().map(Vec::len), Some(2));
    assert_eq!(failed, 0, "{failed} of {sent} requests failed during the rollout: {errors:?}");
    let response = client.model_infer(request()).await.unwrap().into_inner();
    assert_eq!(response.model_version, "2");

    // A version whose held-out loss is worse is rolled back before it gets traffic.
    stack.publish_mlp("models", "adder", LAYERS, 3, &["eval_loss=0.9"]).await.unwrap();
    let regressed =
        stack.wait_for("isvc/adder", "the rollback", Duration::from_secs(60), |s| rollout_ended(s, 3)).await;
    let status = &regressed["status"];
    assert_eq!(
        (status["rollout"]["phase"].as_str(), status["rollout"]["reason"].as_str()),
        (Some("RolledBack"), Some("EvalMetricRegressed"))
    );
    assert_eq!(status["rejectedVersions"], serde_json::json!([3]));
    assert_eq!(
        condition(&regressed, "RolloutProgressing"),
        ("False", "EvalMetricRegressed", status["rollout"]["message"].as_str().unwrap())
    );

    // A corrupt version fails to load; the stable version keeps serving and the status says why.
    publish_corrupt(&stack, 4).await;
    let corrupt = stack.wait_for("isvc/adder", "the rollback", Duration::from_secs(60), |s| rollout_ended(s, 4)).await;
    let (_, reason, message) = condition(&corrupt, "RolloutProgressing");
    assert_eq!(reason, "ModelLoadFailed", "{:#}", corrupt["status"]);
    assert!(message.contains("failed to load"), "{message}");
    assert_eq!(corrupt["status"]["stableVersion"], 2);
    assert_eq!(condition(&corrupt, "Ready").0, "True");
    assert_eq!(client.model_infer(request()).await.unwrap().into_inner().model_version, "2");

    let events = stack.kubectl(&["get", "events", "--field-selector", "involvedObject.name=adder"]).await.unwrap();
    for reason in ["RolloutStarted", "TrafficShifted", "Promoted", "RolledBack"] {
        assert!(events.stdout.contains(reason), "no {reason} event:\n{}", events.stdout);
    }
    // Each transition is recorded once, though the operator restarted and re-reads its status.
    assert_eq!(events.stdout.matches("version 2 promoted").count(), 1, "{}", events.stdout);
    assert_eq!(events.stdout.matches("version 3 rolled back").count(), 1, "{}", events.stdout);

    // Management is not on the serving port; on the management port it needs the token the
    // operator keeps in its Secret. A model unloaded behind the operator's back is loaded again.
    let mut on_service = ModelServiceClient::connect(format!("http://{address}")).await.unwrap();
    let refused = on_service.get_model_status(GetModelStatusRequest { model: "adder".into() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{}", refused.message());
    let token = stack
        .kubectl(&["get", "secret", "adder-management", "-o", "go-template={{.data.token | base64decode}}"])
        .await
        .unwrap();
    assert!(token.ok && token.stdout.len() == 64, "{}{}", token.stdout, token.stderr);
    let workers =
        ["get", "pods", "-l", "lantern.dev/inference-service=adder", "-o", "jsonpath={.items[0].status.podIP}"];
    let pod_ip = stack.kubectl(&workers).await.unwrap().stdout;
    let mut management = GrpcInferenceServiceClient::connect(format!("http://{pod_ip}:8501")).await.unwrap();
    let unload = || RepositoryModelUnloadRequest { model_name: "adder".into(), ..Default::default() };
    assert_eq!(management.repository_model_unload(unload()).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut with_token = tonic::Request::new(unload());
    with_token.metadata_mut().insert("authorization", format!("Bearer {}", token.stdout).parse().unwrap());
    management.repository_model_unload(with_token).await.unwrap();
    let mut pod = GrpcInferenceServiceClient::connect(format!("http://{pod_ip}:8500")).await.unwrap();
    let ready = || ModelReadyRequest { name: "adder".into(), version: String::new() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pod.model_ready(ready()).await.map(|r| r.into_inner().ready).unwrap_or(false) {
        assert!(tokio::time::Instant::now() < deadline, "the unload never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while !pod.model_ready(ready()).await.map(|r| r.into_inner().ready).unwrap_or(false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the operator did not load the model again:\n{}",
            stack.operator_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let policy = stack.json("networkpolicy/adder").await.unwrap();
    assert_eq!(policy["spec"]["ingress"][1]["ports"][0]["port"], 8501);

    // Deleting the service deletes its pods and Service, and the operator's series of its
    // traffic split.
    let metrics = format!("http://{}/metrics", stack.operator().metrics_address().await.unwrap());
    let split = || async { reqwest::get(&metrics).await.unwrap().text().await.unwrap().contains("service=\"adder\"") };
    assert!(split().await, "the split is exported while the service serves");
    assert!(stack.kubectl(&["delete", "isvc", "adder"]).await.unwrap().ok);
    stack
        .wait_for("pods", "the pods' deletion", Duration::from_secs(60), |pods| {
            pods["items"].as_array().is_some_and(|items| {
                items.iter().all(|p| p["metadata"]["labels"]["lantern.dev/inference-service"] != "adder")
            })
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while split().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted service's traffic series stay:\n{}",
            stack.operator_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop().await.unwrap();
}

/// A tiny llama trained from scratch for two steps: version 1 of `base`, the adapters' base.
const BASE_JOB: &str = "apiVersion: lantern.dev/v1alpha1
kind: TrainingJob
metadata: {name: base}
spec:
  replicas: 1
  model:
    llama: {hiddenSize: 32, intermediateSize: 64, layers: 2, heads: 4, kvHeads: 2, context: 64}
  data:
    addition: {maxOperand: 99, trainExamples: 400, evalExamples: 40}
  schedule: {steps: 2, globalBatch: 8}
  seed: 1
  checkpoint: {everySteps: 2}
  output:
    model: base
    repository: {claimName: models}
";

/// A one-rank LoRA fine-tune of `base` on `.datasets/NAME/`, publishing adapter versions 1 and 2
/// of model NAME.
/// `lantern_requests_total` of `model` v1 answered OK, read from a worker's `/metrics`.
async fn served(pod_ip: &str, model: &str) -> u64 {
    let text = reqwest::get(format!("http://{pod_ip}:8500/metrics")).await.unwrap().text().await.unwrap();
    let prefix = format!("lantern_requests_total{{model=\"{model}\",version=\"1\",code=\"OK\"}} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_grpc_channel_is_balanced_over_three_pods_by_the_router() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    stack.publish_mlp("models", "adder", LAYERS, 1, &[]).await.unwrap();
    let three = SERVICE.replace("replicas: 2", "replicas: 3");
    assert!(stack.apply(&three).await.unwrap().ok);
    settled(&stack, "adder").await;
    let router = stack.json("deployment/adder-router").await.unwrap();
    assert_eq!(router["spec"]["template"]["spec"]["serviceAccountName"], "adder-router");
    let binding = stack.json("rolebinding/adder-router").await.unwrap();
    assert_eq!(binding["roleRef"]["name"], "lantern-router");

    // One channel, so one connection through the Service: without the router every request
    // would reach one pod.
    let address = stack.service_address("adder").await.unwrap();
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{address}")).await.unwrap();
    for _ in 0..45 {
        assert_eq!(client.model_infer(request()).await.unwrap().into_inner().model_version, "1");
    }
    let pods = stack.json("pods").await.unwrap();
    let ips: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["labels"]["lantern.dev/inference-service"] == "adder")
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ips.len(), 3);
    let counts = || futures::future::join_all(ips.iter().map(|ip| served(ip, "adder")));
    // One at a time, nothing is in flight when a pod is chosen: the fewest routed decides.
    let one_at_a_time = counts().await;
    assert!(one_at_a_time.iter().all(|&n| (13..=17).contains(&n)), "each pod within 2 of a third: {one_at_a_time:?}");
    let together = (0..45).map(|_| {
        let mut client = client.clone();
        async move { client.model_infer(request()).await }
    });
    assert!(futures::future::join_all(together).await.iter().all(Result::is_ok));
    let counts = counts().await;
    assert_eq!(counts.iter().sum::<u64>(), 90, "{counts:?}");
    // At once, the least outstanding requests follow each pod's speed: a fifth of a third.
    assert!(counts.iter().all(|&n| (24..=36).contains(&n)), "each pod within a fifth of a third: {counts:?}");
    stack.stop().await.unwrap();
}

/// `SERVICE` autoscaled between `min` and `max` replicas from `replicas`, on short windows.
fn autoscaled(replicas: u32, min: u32, max: u32) -> String {
    SERVICE.replace(
        "replicas: 2",
        &format!(
            "replicas: {replicas}\n  minReplicas: {min}\n  maxReplicas: {max}\n  autoscaling: {{targetInFlight: 2, \
         stableWindowSeconds: 6, panicWindowSeconds: 3, scaleDownDelaySeconds: 3, idleSecondsBeforeZero: 6}}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_autoscales_the_service_up_and_a_quiet_period_back_down() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    stack.publish_mlp("models", "adder", LAYERS, 1, &[]).await.unwrap();
    let applied = stack.apply(&autoscaled(1, 1, 3)).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    settled(&stack, "adder").await;
    let address = stack.service_address("adder").await.unwrap();
    let traffic = Traffic::start(address.clone(), request(), 16, Duration::ZERO);
    let limit = Duration::from_secs(90);
    // The scale is written before the status of the same pass: wait for both.
    let three = |s: &serde_json::Value| s["spec"]["replicas"] == 3 && s["status"]["autoscaler"]["desiredReplicas"] == 3;
    stack.wait_for("isvc/adder", "scaled up to 3", limit, three).await;
    settled(&stack, "adder").await;
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed while pods were added: {errors:?}");
    // A trickle goes on while the pods it no longer needs are removed: none of it is lost.
    let trickle = Traffic::start(address, request(), 1, Duration::from_millis(50));
    let one = |s: &serde_json::Value| s["spec"]["replicas"] == 1 && s["status"]["autoscaler"]["desiredReplicas"] == 1;
    let down = stack.wait_for("isvc/adder", "scaled back down to 1", limit, one).await;
    assert_eq!(down["status"]["autoscaler"]["mode"], "Stable");
    settled(&stack, "adder").await;
    let (sent, failed, errors) = trickle.stop().await;
    assert!(sent > 0 && failed == 0, "{failed} of {sent} requests failed while pods were removed: {errors:?}");
    let events = stack.kubectl(&["get", "events", "--field-selector", "reason=Scaled"]).await.unwrap();
    assert!(events.stdout.contains("replicas 1 → ") && events.stdout.contains("→ 1"), "{}", events.stdout);
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_scaled_to_zero_holds_its_first_request_until_a_pod_answers_it() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    stack.publish_mlp("models", "adder", LAYERS, 1, &[]).await.unwrap();
    let applied = stack.apply(&autoscaled(0, 0, 2)).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    // Idle, it is at zero: no worker pod, only the router.
    let limit = Duration::from_secs(90);
    stack
        .wait_for("deployment/adder-router", "the router ready", limit, |d| d["status"]["availableReplicas"] == 1)
        .await;
    let no_workers = |pods: &serde_json::Value| {
        let items = pods["items"].as_array().into_iter().flatten();
        !items.into_iter().any(|p| p["metadata"]["labels"]["lantern.dev/inference-service"] == "adder")
    };
    stack.wait_for("isvc/adder", "scaled to zero", limit, |s| s["spec"]["replicas"] == 0).await;
    stack.wait_for("pods", "no worker pod", limit, no_workers).await;

    // The first request waits at the router while a pod starts and loads the model.
    let address = stack.service_address("adder").await.unwrap();
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{address}")).await.unwrap();
    let started = std::time::Instant::now();
    let answer = client.model_infer(request()).await.unwrap().into_inner();
    assert_eq!(answer.model_version, "1");
    eprintln!("scale from zero: the first request answered after {:?}", started.elapsed());
    let scaled = stack.json("isvc/adder").await.unwrap();
    assert_eq!(scaled["spec"]["replicas"], 1);
    // Idle again, it goes back to zero.
    stack.wait_for("isvc/adder", "back to zero", limit, |s| s["spec"]["replicas"] == 0).await;
    stack.stop().await.unwrap();
}

/// SmolLM2 as model `chat` on one pod, through its router.
fn chat_service() -> String {
    lantern_e2e::claim_service("chat", 1)
}

/// Whether a worker pod of `service` has been asked to stop (deleted, still draining).
fn terminating(pods: &serde_json::Value, service: &str) -> bool {
    let items = pods["items"].as_array().into_iter().flatten();
    let mut workers = items.filter(|p| p["metadata"]["labels"]["lantern.dev/inference-service"] == service);
    workers.any(|p| p["metadata"]["deletionTimestamp"].is_string())
}

/// A greedy completion of `max_tokens` from `chat` streamed through `address` in the
/// background: fires the first receiver at its first event, and resolves to its events (the SSE
/// `data:` payloads), each with the time it came.
fn stream_completion(
    address: &str,
    max_tokens: u32,
) -> (tokio::sync::oneshot::Receiver<()>, tokio::task::JoinHandle<Vec<(std::time::Instant, String)>>) {
    let body = serde_json::json!({
        "model": "chat", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": max_tokens, "temperature": 0, "stream": true,
    });
    let request = reqwest::Client::new().post(format!("http://{address}/v1/completions")).json(&body);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut first = Some(first_tx);
        let mut events = Vec::new();
        let mut buffer = String::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let data = event.lines().filter_map(|line| line.strip_prefix("data: "));
                events.extend(data.map(|d| (std::time::Instant::now(), d.to_owned())));
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
            }
        }
        events
    });
    (first_rx, reader)
}

/// SmolLM2's GGUF published as `chat` version 1 in the stack's `models` claim.
async fn publish_smollm2(stack: &Stack) {
    let gguf = lantern_e2e::workspace().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "{} is not fetched: run scripts/setup-test-deps.sh", gguf.display());
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    assert_eq!(stack.publish("models", "chat", &gguf, &[]).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_in_flight_finishes_while_its_pod_is_scaled_away() {
    let stack = Stack::start().await.unwrap();
    publish_smollm2(&stack).await;
    assert!(stack.apply(&chat_service()).await.unwrap().ok);
    settled(&stack, "chat").await;
    let address = stack.service_address("chat").await.unwrap();

    // A long greedy completion streams through the router; each event is timed as it comes.
    let (started, reader) = stream_completion(&address, 300);
    // Once it has started, the service is scaled to zero: its only pod is deleted while the
    // stream runs, and drains.
    started.await.unwrap();
    let scaled = stack.kubectl(&["patch", "isvc", "chat", "--type", "merge", "-p", r#"{"spec":{"replicas":0}}"#]);
    assert!(scaled.await.unwrap().ok);
    stack.wait_for("pods", "the pod terminating", Duration::from_secs(30), |p| terminating(p, "chat")).await;
    let asked_to_stop = std::time::Instant::now();
    let events = reader.await.unwrap();
    let after = events.iter().filter(|(at, _)| *at > asked_to_stop).count();
    let chunks: Vec<serde_json::Value> =
        events.iter().filter(|(_, e)| e != "[DONE]").map(|(_, e)| serde_json::from_str(e).unwrap()).collect();
    eprintln!("{} events, {after} of them after the pod was asked to stop", events.len());
    assert!(after > 1, "the stream ended before its pod was asked to stop; make it longer");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length", "{:?}", chunks.last());
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert!(text.contains("7, 8"), "{text:?}");
    stack.wait_for("pods", "the pod gone", Duration::from_secs(30), |p| !terminating(p, "chat")).await;
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_language_model_scales_on_the_kv_cache_its_streams_hold() {
    let stack = Stack::start().await.unwrap();
    publish_smollm2(&stack).await;
    // A small cache, and a target of 30% of it per pod.
    let service = chat_service().replace(
        "replicas: 1\n",
        "replicas: 1\n  minReplicas: 1\n  maxReplicas: 2\n  generation: {kvCacheMib: 16}\n  autoscaling: \
         {targetKvCachePercent: 30, stableWindowSeconds: 9, panicWindowSeconds: 3, scaleDownDelaySeconds: 3}\n",
    );
    let applied = stack.apply(&service).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    settled(&stack, "chat").await;
    let address = stack.service_address("chat").await.unwrap();

    // Four long streams: few requests, much cache.
    let streams: Vec<_> = (0..4).map(|_| stream_completion(&address, 300).1).collect();
    let limit = Duration::from_secs(90);
    let two = |s: &serde_json::Value| s["spec"]["replicas"] == 2;
    let scaled = stack.wait_for("isvc/chat", "scaled up to 2 on the cache", limit, two).await;
    assert!(scaled["status"]["autoscaler"]["averageKvCachePods"].is_number(), "{:#}", scaled["status"]);
    for stream in streams {
        assert_eq!(stream.await.unwrap().last().unwrap().1, "[DONE]");
    }
    // Their cache released, one pod is enough again.
    stack.wait_for("isvc/chat", "scaled back to 1", limit, |s| s["spec"]["replicas"] == 1).await;
    let events = stack.kubectl(&["get", "events", "--field-selector", "reason=Scaled"]).await.unwrap();
    assert!(events.stdout.contains("pods' worth of KV cache held"), "{}", events.stdout);
    stack.stop().await.unwrap();
}

fn adapter_job(name: &str) -> String {
    format!(
        "apiVersion: lantern.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  replicas: 1
  model:
    fineTune:
      base: {{model: base, version: 1}}
      method:
        lora: {{rank: 4, alpha: 8, targets: [q_proj, v_proj, down_proj]}}
      sequenceLength: 32
  data:
    jsonl: {{path: .datasets/{name}/train.jsonl, evalPath: .datasets/{name}/eval.jsonl}}
  optimizer: {{learningRate: 0.01, minLearningRate: 0.001, weightDecay: 0.0}}
  schedule: {{steps: 8, warmupSteps: 2, globalBatch: 8}}
  seed: 1
  checkpoint: {{everySteps: 4}}
  output:
    model: {name}
    repository: {{claimName: models}}
"
    )
}

/// Serves `base` with adapter models `keys` and `codes` from their jobs, each adapter held to
/// version 1 until its `versionPolicy` line is dropped.
const ADAPTER_SERVICE: &str = "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {name: base}
spec:
  model: base
  source:
    repository: {claimName: models}
  replicas: 2
  rollout:
    steps: [50, 100]
    stepSeconds: 2
    analysis:
      minRequests: 5
      maxLatencyRatio: 100
      evalMetric: {name: eval_loss}
  adapters:
  - trainingJobRef: {name: keys}
    versionPolicy: {specific: [1]}
  - trainingJobRef: {name: codes}
    versionPolicy: {specific: [1]}
";

/// Prompt/completion pairs a byte-level model can learn, `answer` giving each key's completion.
fn write_pairs(path: &std::path::Path, keys: std::ops::Range<u32>, answer: fn(u32) -> String) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let lines: Vec<String> =
        keys.map(|k| serde_json::json!({"prompt": format!("key {k}:"), "completion": answer(k)}).to_string()).collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// One adapter's answers: the versions that answered, in order, and the failed requests.
struct Answers {
    model: String,
    versions: Vec<String>,
    errors: Vec<String>,
}

/// OpenAI completions of each adapter through the Service without pause.
struct AdapterTraffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Answers>>,
}

impl AdapterTraffic {
    fn start(address: String, models: &[&str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let models: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut seen: Vec<Answers> =
                models.iter().map(|m| Answers { model: m.clone(), versions: Vec::new(), errors: Vec::new() }).collect();
            while !stopping.load(Ordering::Relaxed) {
                for Answers { model, versions, errors } in &mut seen {
                    let body = serde_json::json!({"model": model, "prompt": "key 3:", "max_tokens": 2});
                    let url = format!("http://{address}/v1/completions");
                    match client.post(url).json(&body).send().await {
                        Ok(response) if response.status() == 200 => {
                            let version = response.headers().get("x-lantern-model-version").cloned();
                            versions.push(version.and_then(|v| Some(v.to_str().ok()?.to_owned())).unwrap_or_default());
                        }
                        Ok(response) => {
                            errors.push(format!("{}: {}", response.status(), response.text().await.unwrap_or_default()))
                        }
                        Err(error) => errors.push(error.to_string()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        Self { stop, task }
    }

    /// Stops, returning each adapter's answers.
    async fn stop(self) -> Vec<Answers> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

fn adapter_status<'a>(service: &'a serde_json::Value, model: &str) -> &'a serde_json::Value {
    let adapters = service["status"]["adapters"].as_array();
    adapters.and_then(|a| a.iter().find(|s| s["model"] == model)).unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_adapters_on_one_base_roll_out_each_on_its_own() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    let applied = stack.apply(BASE_JOB).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    let datasets = stack.claim_dir("models").join(".datasets");
    write_pairs(&datasets.join("keys/train.jsonl"), 0..64, |k| format!(" v{}", k * 7 % 100));
    write_pairs(&datasets.join("keys/eval.jsonl"), 64..72, |k| format!(" v{}", k * 7 % 100));
    write_pairs(&datasets.join("codes/train.jsonl"), 0..64, |k| format!(" c{}", k * 3 % 50));
    write_pairs(&datasets.join("codes/eval.jsonl"), 64..72, |k| format!(" c{}", k * 3 % 50));
    let ended = |j: &serde_json::Value| matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    let base = stack.wait_for("tj/base", "the base's training", Duration::from_secs(120), ended).await;
    assert_eq!(base["status"]["phase"], "Succeeded", "{:#}", base["status"]);

    // Both adapters train to versions 1 and 2; the service serves version 1 of each.
    for name in ["keys", "codes"] {
        assert!(stack.apply(&adapter_job(name)).await.unwrap().ok);
    }
    for name in ["keys", "codes"] {
        let job = stack.wait_for(&format!("tj/{name}"), "the fine-tune", Duration::from_secs(180), ended).await;
        assert_eq!(job["status"]["phase"], "Succeeded", "{:#}", job["status"]);
    }
    assert!(stack.apply(ADAPTER_SERVICE).await.unwrap().ok);
    let both_served = |s: &serde_json::Value| {
        condition(s, "Ready").0 == "True"
            && condition(s, "AdaptersReady").0 == "True"
            && ["keys", "codes"].iter().all(|m| adapter_status(s, m)["stableVersion"] == 1)
    };
    let ready = stack.wait_for("isvc/base", "both adapters served", Duration::from_secs(90), both_served).await;
    settled(&stack, "base").await;
    assert_eq!(adapter_status(&ready, "keys")["base"], "base:1", "{:#}", ready["status"]);
    let address = stack.service_address("base").await.unwrap();
    let models: serde_json::Value =
        reqwest::get(format!("http://{address}/v1/models")).await.unwrap().json().await.unwrap();
    let listed: Vec<(&str, &str)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| Some((m["id"].as_str()?, m["parent"].as_str().unwrap_or_default())))
        .collect();
    for adapter in ["keys", "codes"] {
        assert!(listed.contains(&(adapter, "base")), "{adapter} with its parent in {listed:?}");
    }

    // keys' version 2 goes out as a canary and is promoted; codes keeps answering from version 1.
    let traffic = AdapterTraffic::start(address.clone(), &["keys", "codes"]);
    let unpinned_keys = ADAPTER_SERVICE.replacen(
        "  - trainingJobRef: {name: keys}\n    versionPolicy: {specific: [1]}\n",
        "  - trainingJobRef: {name: keys}\n",
        1,
    );
    assert!(stack.apply(&unpinned_keys).await.unwrap().ok);
    let rollout_of = |model: &'static str, version: u64| {
        move |s: &serde_json::Value| {
            let rollout = &adapter_status(s, model)["rollout"];
            rollout["version"] == version
                && matches!(rollout["phase"].as_str(), Some("Promoted" | "RolledBack" | "Aborted"))
        }
    };
    let promoted = stack.wait_for("isvc/base", "keys' rollout", Duration::from_secs(60), rollout_of("keys", 2)).await;
    let keys = adapter_status(&promoted, "keys");
    assert_eq!(keys["rollout"]["phase"], "Promoted", "{:#}", promoted["status"]);
    assert_eq!(
        (keys["stableVersion"].as_u64(), keys["rollout"]["analyses"].as_array().map(Vec::len)),
        (Some(2), Some(2))
    );
    assert_eq!(adapter_status(&promoted, "codes")["stableVersion"], 1);
    assert!(adapter_status(&promoted, "codes")["rollout"].is_null(), "codes had no rollout");

    // Then codes' own.
    let unpinned = unpinned_keys.replace("    versionPolicy: {specific: [1]}\n", "");
    assert!(stack.apply(&unpinned).await.unwrap().ok);
    let done = stack.wait_for("isvc/base", "codes' rollout", Duration::from_secs(60), rollout_of("codes", 2)).await;
    assert_eq!(adapter_status(&done, "codes")["rollout"]["phase"], "Promoted", "{:#}", done["status"]);
    let seen = traffic.stop().await;
    for Answers { model, versions, errors } in &seen {
        assert!(
            errors.is_empty(),
            "{model}: {} of {} requests failed: {:?}",
            errors.len(),
            versions.len() + errors.len(),
            &errors[..errors.len().min(5)]
        );
        let (ones, twos) =
            (versions.iter().filter(|v| *v == "1").count(), versions.iter().filter(|v| *v == "2").count());
        assert!(
            ones > 0 && twos > 0 && ones + twos == versions.len(),
            "{model}: {ones} from 1, {twos} from 2, of {versions:?}"
        );
    }
    // While keys rolled out, codes answered from version 1 alone: its first version 2 answer
    // came after keys' promotion.
    let keys_last_one = seen[0].versions.iter().rposition(|v| v == "1").unwrap();
    let codes_first_two = seen[1].versions.iter().position(|v| v == "2").unwrap();
    assert!(codes_first_two > keys_last_one, "codes moved before keys' rollout ended");

    // A PEFT-layout adapter from elsewhere, published as codes' version 3 with a worse held-out
    // loss, is rolled back before it gets traffic; keys is untouched.
    let peft = tempfile::tempdir().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(stack.claim_dir("models").join("keys/2").join(file), peft.path().join(file)).unwrap();
    }
    let published = stack.publish("models", "codes", peft.path(), &["--base", "base:1", "--metric", "eval_loss=99"]);
    assert_eq!(published.await.unwrap(), 3);
    let regressed =
        stack.wait_for("isvc/base", "codes' rollback", Duration::from_secs(60), rollout_of("codes", 3)).await;
    let codes = adapter_status(&regressed, "codes");
    assert_eq!(
        (codes["rollout"]["reason"].as_str(), codes["stableVersion"].as_u64()),
        (Some("EvalMetricRegressed"), Some(2))
    );
    assert_eq!(codes["rejectedVersions"], serde_json::json!([3]));
    assert_eq!(adapter_status(&regressed, "keys")["stableVersion"], 2);

    let events = stack.kubectl(&["get", "events", "--field-selector", "involvedObject.name=base"]).await.unwrap();
    for message in [
        "adapter keys: version 2 promoted",
        "adapter codes: version 2 promoted",
        "adapter codes: version 3 rolled back",
    ] {
        assert!(events.stdout.contains(message), "no {message:?} event:\n{}", events.stdout);
    }
    stack.stop().await.unwrap();
}
