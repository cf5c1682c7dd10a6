//! Running the operator as a Deployment of several replicas would: one leads (holds the Lease)
//! and reconciles, a standby takes over when it stops, and a leader that loses its Lease stops
//! at once. Each replica serves its metrics and health, and reconciles are exported as traces.

use std::time::Duration;

use lantern_e2e::{MODELS_CLAIM, OPERATOR_IDENTITY, Operator, Stack};
use lantern_telemetry::collector::Collector;

const SERVICE: &str = "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {name: idle}
spec:
  model: idle
  source:
    repository: {claimName: models}
  replicas: 0
";

/// A short Lease, so that the test sees a renewal and a takeover in seconds.
const LEASE: (&str, &str) = ("LANTERN_LEASE_DURATION_SECONDS", "6");

async fn holder(stack: &Stack) -> String {
    stack.field("lease/lantern-operator", ".spec.holderIdentity").await.unwrap_or_default()
}

async fn wait_for_holder(stack: &Stack, identity: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while holder(stack).await != identity {
        assert!(tokio::time::Instant::now() < deadline, "{identity} never held the Lease:\n{}", stack.operator_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(path, body)` of an operator's HTTP endpoint.
async fn scrape(operator: &Operator, path: &str) -> (u16, String) {
    let address = operator.metrics_address().await.unwrap();
    let response = reqwest::get(format!("http://{address}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn observed_generation(stack: &Stack, generation: i64) -> serde_json::Value {
    stack
        .wait_for("inferenceservice/idle", &format!("generation {generation} observed"), Duration::from_secs(20), |s| {
            s["status"]["observedGeneration"] == generation
        })
        .await
}

#[tokio::test]
async fn one_replica_leads_a_standby_takes_over_and_a_leader_that_loses_its_lease_stops() {
    let (collector, endpoint) = Collector::start().await.unwrap();
    let mut stack = Stack::start_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), LEASE]).await.unwrap();
    wait_for_holder(&stack, OPERATOR_IDENTITY).await;
    let mut standby = Operator::start(&stack.cluster, stack.state.path(), "standby", &[LEASE]).unwrap();

    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    assert!(stack.apply(SERVICE).await.unwrap().ok);
    observed_generation(&stack, 1).await;
    // Re-applying the unchanged Service on every pass changes nothing (no reconcile loop).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.field("service/idle", ".metadata.generation").await.unwrap(), "1");

    // The leader reconciled and says so; the standby waits, ready, and has reconciled nothing.
    let (code, leader_metrics) = scrape(stack.operator(), "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(metric(&leader_metrics, "lantern_operator_leader"), Some(1.0), "{leader_metrics}");
    let reconciled = r#"lantern_operator_reconciles_total{kind="InferenceService",result="success"}"#;
    assert!(metric(&leader_metrics, reconciled).is_some_and(|n| n >= 1.0), "{leader_metrics}");
    let (_, standby_metrics) = scrape(&standby, "/metrics").await;
    assert_eq!(metric(&standby_metrics, "lantern_operator_leader"), Some(0.0), "{standby_metrics}");
    assert_eq!(metric(&standby_metrics, reconciled), None, "{standby_metrics}");
    assert_eq!(scrape(&standby, "/readyz").await, (200, "ok".to_owned()));
    assert_eq!(scrape(&standby, "/healthz").await, (200, "ok".to_owned()));
    assert!(standby.log().contains("waiting for the leader Lease"), "{}", standby.log());

    // SIGTERM: the leader stops, releases the Lease, and the standby takes over well before the
    // Lease would have expired; then it reconciles a change.
    assert!(stack.operator().terminate().await.unwrap().success(), "{}", stack.operator_log());
    assert!(stack.operator_log().contains("released the leader Lease"), "{}", stack.operator_log());
    wait_for_holder(&stack, "standby").await;
    let patch = r#"{"spec":{"rollout":{"stepSeconds":5}}}"#;
    assert!(stack.kubectl(&["patch", "inferenceservice/idle", "--type", "merge", "-p", patch]).await.unwrap().ok);
    observed_generation(&stack, 2).await;
    let (_, standby_metrics) = scrape(&standby, "/metrics").await;
    assert_eq!(metric(&standby_metrics, "lantern_operator_leader"), Some(1.0), "{standby_metrics}");

    // The stopped leader flushed its reconcile spans to the collector on the way out.
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.name == "reconcile InferenceService"),
        "spans received: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // Another holder in the Lease (a partition healed, a replica that took over): the leader
    // notices at its next renewal and exits, rather than reconcile beside another leader.
    let intruder = r#"{"spec":{"holderIdentity":"intruder"}}"#;
    assert!(stack.kubectl(&["patch", "lease/lantern-operator", "--type", "merge", "-p", intruder]).await.unwrap().ok);
    let status = standby.exited(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(1), "{}", standby.log());
    assert!(standby.log().contains("lost the leader Lease (now held by intruder)"), "{}", standby.log());
    stack.stop().await.unwrap();
}
