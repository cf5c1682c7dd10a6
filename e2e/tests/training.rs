//! TrainingJobs end to end: the operator runs the ranks as worker pods on the devcluster; they
//! train, publish versions into the claim, and the job's status follows.

use std::time::{Duration, Instant};

use lantern_e2e::Stack;

const JOB: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models}
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: lantern.dev/v1alpha1
kind: TrainingJob
metadata: {name: tiny}
spec:
  replicas: 2
  model:
    llama: {hiddenSize: 16, intermediateSize: 32, layers: 1, heads: 2, context: 16}
  data:
    addition: {maxOperand: 9, trainExamples: 200, evalExamples: 10}
  schedule: {steps: 40, globalBatch: 8}
  seed: 1
  checkpoint: {everySteps: 20}
  output:
    model: tiny
    repository: {claimName: models}
";

/// Polls until `done` holds of the job's JSON, or fails with the last state and the operator's log.
async fn wait_for(
    stack: &Stack,
    object: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    let mut last = serde_json::Value::Null;
    while start.elapsed() < limit {
        if let Ok(object) = stack.json(object).await {
            if done(&object) {
                return object;
            }
            last = object;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pods = stack.kubectl(&["get", "pods", "-o", "wide"]).await.map(|k| k.stdout).unwrap_or_default();
    panic!(
        "{object}: {what} did not happen within {limit:?}\nlast seen: {}\npods:\n{pods}\noperator log:\n{}",
        serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
        stack.operator_log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_rank_job_trains_publishes_versions_and_succeeds() {
    let stack = Stack::start().await.unwrap();
    let applied = stack.apply(JOB).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);

    let running =
        wait_for(&stack, "tj/tiny", "Running", Duration::from_secs(60), |j| j["status"]["phase"] == "Running").await;
    assert_eq!(running["status"]["ranks"].as_array().map(Vec::len), Some(2));
    let done = wait_for(&stack, "tj/tiny", "Succeeded", Duration::from_secs(240), |j| {
        matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    })
    .await;
    let status = &done["status"];
    assert_eq!(status["phase"], "Succeeded", "{status:#}\n{}", stack.operator_log());
    assert_eq!(status["restarts"], 0);
    assert!(status["completionTime"].is_string() && status["startTime"].is_string());
    let conditions: Vec<(&str, &str)> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert!(
        conditions.contains(&("Succeeded", "True")) && conditions.contains(&("Running", "False")),
        "{conditions:?}"
    );

    // The versions are in the claim, as the worker published them.
    let repository = stack.state.path().join("claims/default/models/tiny");
    let versions: Vec<String> = std::fs::read_dir(&repository)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(versions.contains(&"1".to_owned()) && versions.contains(&"2".to_owned()), "{versions:?}");
    // The finished pods stay (cleanPodPolicy Running deletes only running ones) with their logs.
    let logs = stack.kubectl(&["logs", "tiny-0-rank-0"]).await.unwrap();
    assert!(logs.ok, "{}", logs.stderr);
    let events = stack.kubectl(&["get", "events", "--field-selector", "involvedObject.name=tiny"]).await.unwrap();
    assert!(events.stdout.contains("JobSucceeded"), "{}", events.stdout);
    stack.stop().await.unwrap();
}
