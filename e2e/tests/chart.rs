//! The Helm chart on the devcluster: `helm install --wait` puts the CRDs, RBAC, the metrics
//! Service and the operator Deployment in place; its two replicas elect a leader, which serves
//! an InferenceService from inside its pod; deleting the leader's pod hands the Lease to the
//! other replica; `helm uninstall` removes the operator and keeps the CRDs (and so the users'
//! objects).

use std::time::Duration;

use lantern_e2e::{MODELS_CLAIM, Stack, claim_service, ready};

const NAMESPACE: &str = "lantern-system";

/// `kubectl get ARGS -n lantern-system -o json`.
async fn get(stack: &Stack, args: &[&str]) -> serde_json::Value {
    let run = stack.kubectl(&[&["get", "-n", NAMESPACE, "-o", "json"], args].concat()).await.unwrap();
    assert!(run.ok, "kubectl get {args:?}: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

async fn operator_pods(stack: &Stack) -> Vec<serde_json::Value> {
    let pods = get(stack, &["pods", "-l", "app.kubernetes.io/name=lantern-operator"]).await;
    pods["items"].as_array().cloned().unwrap_or_default()
}

async fn lease_holder(stack: &Stack) -> String {
    let run = stack.kubectl(&["get", "lease/lantern-operator", "-n", NAMESPACE, "-o", "json"]).await.unwrap();
    let lease: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_chart_installs_leader_elected_operators_that_serve_an_inference_service() {
    let stack = Stack::bare().await.unwrap();
    // The storage values example sets the operator's node cache defaults.
    let rendered =
        stack.helm(&["template", "lantern", "charts/lantern", "-f", "examples/helm/models-in-s3.yaml"]).await.unwrap();
    for arg in ["--model-cache-host-path=/var/lib/lantern/model-cache", "--model-cache-size-mib=51200"] {
        assert!(rendered.contains(arg), "{arg} is not in the rendered chart:\n{rendered}");
    }
    let installed = stack
        .helm(&[
            "install",
            "lantern",
            "charts/lantern",
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "2m",
        ])
        .await
        .unwrap();
    assert!(installed.contains("STATUS: deployed"), "{installed}");

    let pods = operator_pods(&stack).await;
    assert_eq!(pods.len(), 2, "the chart runs two operator replicas");
    assert!(pods.iter().all(ready), "{pods:#?}");
    let names: Vec<String> = pods.iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let holder = lease_holder(&stack).await;
        if names.contains(&holder) {
            break holder;
        }
        assert!(tokio::time::Instant::now() < deadline, "no operator pod took the Lease (holder {holder:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let metrics = get(&stack, &["service/lantern-metrics"]).await;
    assert_eq!(metrics["spec"]["ports"][0]["port"], 8080);

    // The operator in its pod serves a model: pods, Service, status.
    stack.publish_mlp("models", "charted", "2,8,1", 1, &[]).await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    assert!(stack.apply(&claim_service("charted", 1)).await.unwrap().ok);
    stack.wait_for("inferenceservice/charted", "Ready", Duration::from_secs(60), ready).await;

    // The leader's pod goes (a node drain, an eviction): it releases the Lease on SIGTERM, and
    // another replica (the standby, or the pod the Deployment starts in its place, whichever
    // asks first) takes over and reconciles.
    assert!(stack.kubectl(&["delete", "pod", &leader, "-n", NAMESPACE, "--wait=false"]).await.unwrap().ok);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let holder = lease_holder(&stack).await;
        if !holder.is_empty() && holder != leader {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the standby never took the Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let patch = r#"{"spec":{"replicas":2}}"#;
    assert!(stack.kubectl(&["patch", "inferenceservice/charted", "--type", "merge", "-p", patch]).await.unwrap().ok);
    stack
        .wait_for("inferenceservice/charted", "2 ready replicas", Duration::from_secs(60), |s| {
            s["status"]["readyReplicas"] == 2 && ready(s)
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while operator_pods(&stack)
        .await
        .iter()
        .filter(|p| ready(p) && p["metadata"]["deletionTimestamp"].is_null())
        .count()
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "the Deployment did not replace the deleted pod");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Uninstalling removes the operator; the CRDs (helm never deletes crds/) and the service stay.
    stack.helm(&["uninstall", "lantern", "-n", NAMESPACE, "--wait", "--timeout", "1m"]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !operator_pods(&stack).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the operator pods outlived the release");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stack.json("inferenceservice/charted").await.is_ok());
    stack.stop().await.unwrap();
}
