//! TrainingJobs end to end: the operator runs the ranks as worker pods on the devcluster; they
//! train, publish versions into the claim, and the job's status follows.

use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread")]
async fn a_two_rank_job_trains_publishes_versions_and_succeeds() {
    let stack = Stack::start().await.unwrap();
    let applied = stack.apply(JOB).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);

    let running =
        stack.wait_for("tj/tiny", "Running", Duration::from_secs(60), |j| j["status"]["phase"] == "Running").await;
    assert_eq!(running["status"]["ranks"].as_array().map(Vec::len), Some(2));
    let done = stack
        .wait_for("tj/tiny", "Succeeded", Duration::from_secs(240), |j| {
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
