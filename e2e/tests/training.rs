//! TrainingJobs end to end: the operator runs the ranks as worker pods on the devcluster; they
//! train, publish versions into the claim, and the job's status follows; a job its ranks refuse
//! fails at once with their reason.

use std::time::Duration;

use lantern_e2e::s3::S3Server;
use lantern_e2e::{MODELS_CLAIM, Stack, sha256_hex};

/// A two-rank TrainingJob `name` of a tiny llama on the addition task, with the claim
/// `models` it publishes into: `steps` steps, a version every `every`, up to 2 gang restarts.
fn job(name: &str, steps: u32, every: u32) -> String {
    format!(
        "{MODELS_CLAIM}---
apiVersion: lantern.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  replicas: 2
  model:
    llama: {{hiddenSize: 16, intermediateSize: 32, layers: 1, heads: 2, context: 16}}
  data:
    addition: {{maxOperand: 9, trainExamples: 200, evalExamples: 10}}
  schedule: {{steps: {steps}, globalBatch: 8}}
  seed: 1
  checkpoint: {{everySteps: {every}}}
  runPolicy: {{maxRestarts: 2}}
  output:
    model: {name}
    repository: {{claimName: models}}
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_rank_job_trains_publishes_versions_and_succeeds() {
    let stack = Stack::start().await.unwrap();
    let applied = stack.apply(&job("tiny", 40, 20)).await.unwrap();
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
    assert_eq!(status["restarts"], 0, "{status:#}\n{}", stack.operator_log());
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
    // Every version is in the status, the last one too (from rank 0's termination message, as
    // the process had gone by the next poll), each with its manifest's digest.
    let checkpoints: Vec<(u64, u64)> = status["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["version"].as_u64().unwrap(), c["step"].as_u64().unwrap()))
        .collect();
    assert_eq!(checkpoints, [(1, 20), (2, 40)], "{status:#}");
    for (checkpoint, version) in status["checkpoints"].as_array().unwrap().iter().zip(["1", "2"]) {
        let manifest = std::fs::read(repository.join(version).join("manifest.json")).unwrap();
        let digest = format!("sha256:{}", sha256_hex(&manifest));
        assert_eq!(checkpoint["digest"], digest.as_str(), "version {version}");
    }
    assert_eq!(status["progress"]["step"], 40);
    // The finished pods stay (cleanPodPolicy Running deletes only running ones) with their logs.
    let logs = stack.kubectl(&["logs", "tiny-0-rank-0"]).await.unwrap();
    assert!(logs.ok, "{}", logs.stderr);
    let events = stack.kubectl(&["get", "events", "--field-selector", "involvedObject.name=tiny"]).await.unwrap();
    assert!(events.stdout.contains("JobSucceeded"), "{}", events.stdout);

    // A job its ranks refuse (too little data for one batch) fails at once, without restarts.
    let refused = job("refused", 40, 20).replace("trainExamples: 200", "trainExamples: 4");
    assert!(stack.apply(&refused).await.unwrap().ok);
    let failed = stack
        .wait_for("tj/refused", "the refusal", Duration::from_secs(60), |j| {
            matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
        .await;
    let status = &failed["status"];
    let condition = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap();
    assert_eq!(
        (condition["reason"].as_str(), status["restarts"].as_u64()),
        (Some("InvalidSpec"), Some(0)),
        "{status:#}"
    );
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("refused the job: training config: data.addition"), "{message}");
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_rank_restarts_the_gang_which_resumes_from_its_checkpoint_and_succeeds() {
    let stack = Stack::start().await.unwrap();
    let applied = stack.apply(&job("long", 1000, 50)).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    stack
        .wait_for("tj/long", "a checkpoint", Duration::from_secs(120), |j| {
            j["status"]["checkpoints"].as_array().is_some_and(|c| !c.is_empty())
        })
        .await;
    // SIGKILL rank 1's process: its pod fails (restartPolicy Never), and the whole gang restarts.
    assert_eq!(kill_processes_whose_command_contains("_long-0-rank-1_"), 1, "rank 1's process was not found");

    let done = stack
        .wait_for("tj/long", "the end", Duration::from_secs(300), |j| {
            matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
        .await;
    let status = &done["status"];
    assert_eq!(status["phase"], "Succeeded", "{status:#}\n{}", stack.operator_log());
    assert_eq!(
        (status["restarts"].as_u64(), status["attempt"].as_u64()),
        (Some(1), Some(1)),
        "{status:#}\n{}",
        stack.operator_log()
    );
    // The new gang resumed from the checkpoint: the published steps only go forward.
    let steps: Vec<u64> =
        status["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "steps went back after the restart: {steps:?}");
    let events = stack.kubectl(&["get", "events", "--field-selector", "involvedObject.name=long"]).await.unwrap();
    assert!(events.stdout.contains("RankFailed"), "{}", events.stdout);
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_publishes_to_s3_and_a_gang_restarted_on_fresh_pods_resumes_from_the_bucket() {
    let Some(s3) = S3Server::start().unwrap() else { return };
    s3.bucket(&["create", "models"]).unwrap();
    let stack = Stack::start().await.unwrap();
    let variables: String = s3.env().iter().map(|(k, v)| format!("  {k}: \"{v}\"\n")).collect();
    let secret = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s3}}\nstringData:\n{variables}");
    assert!(stack.apply(&secret).await.unwrap().ok);
    let remote = job("remote", 1000, 250)
        .replace(MODELS_CLAIM, "")
        .replace("{claimName: models}", "{uri: \"s3://models/repo\", secretRef: {name: s3}}\n    keepVersions: 2");
    let applied = stack.apply(&remote).await.unwrap();
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    stack
        .wait_for("tj/remote", "a checkpoint", Duration::from_secs(120), |j| {
            j["status"]["checkpoints"].as_array().is_some_and(|c| !c.is_empty())
        })
        .await;
    // Rank 1 dies; the new gang's pods start with empty volumes and fetch the state from S3.
    assert_eq!(kill_processes_whose_command_contains("_remote-0-rank-1_"), 1, "rank 1's process was not found");
    let done = stack
        .wait_for("tj/remote", "the end", Duration::from_secs(300), |j| {
            matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
        .await;
    let status = &done["status"];
    assert_eq!((status["phase"].as_str(), status["restarts"].as_u64()), (Some("Succeeded"), Some(1)), "{status:#}");
    let steps: Vec<u64> =
        status["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]) && steps.last() == Some(&1000), "{steps:?}");
    let logs = stack.kubectl(&["logs", "remote-1-rank-0"]).await.unwrap();
    assert!(logs.stdout.contains("restored the training state"), "{}", logs.stdout);
    // The newest two versions are in the bucket (keepVersions: 2), nothing of the older ones;
    // the states kept are the newest three.
    let keys = s3.bucket(&["keys", "models"]).unwrap();
    let newest = steps.len() as u64;
    for version in 1..=newest {
        let kept = keys.contains(&format!("repo/remote/{version}/manifest.json"));
        let any = keys.contains(&format!("repo/remote/{version}/"));
        assert_eq!((kept, any), (version + 2 > newest, version + 2 > newest), "version {version}:\n{keys}");
    }
    let removed: Vec<u64> = status["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["removed"] == true)
        .map(|c| c["version"].as_u64().unwrap())
        .collect();
    assert!(removed.contains(&(newest - 2)) && removed.iter().all(|v| v + 2 <= newest), "{status:#}");
    let states: std::collections::BTreeSet<&str> = keys
        .lines()
        .filter_map(|k| k.strip_prefix("repo/.lantern-training/default/remote/")?.split('/').next())
        .filter(|name| name.starts_with("step-"))
        .collect();
    assert_eq!(
        states.into_iter().collect::<Vec<_>>(),
        ["step-0000000500", "step-0000000750", "step-0000001000"],
        "{keys}"
    );
    stack.stop().await.unwrap();
}

/// SIGKILLs every process whose command line contains `needle` (a pod's directory names its
/// pod), as `pkill -KILL -f` would; returns how many.
fn kill_processes_whose_command_contains(needle: &str) -> usize {
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(command) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&command).contains(needle)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
            && rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// A TrainingJob `name` that makes `chat` smaller from SmolLM2 (`smollm2` version 1): `task` is
/// its `model` section; every job is measured on the same held-out examples.
fn compress_job(name: &str, task: &str, training: &str) -> String {
    format!(
        "apiVersion: lantern.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  model:
    {task}
  data:
    jsonl: {{path: .datasets/chat/train.jsonl, evalPath: .datasets/chat/eval.jsonl}}
{training}  output:
    model: chat
    repository: {{claimName: models}}
"
    )
}

/// Serves `chat`, a canary kept only while its held-out loss is within 0.5 of the stable
/// version's.
const CHAT_SERVICE: &str = "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: chat
  source:
    repository: {claimName: models}
  replicas: 1
  rollout:
    steps: [50, 100]
    stepSeconds: 2
    analysis:
      minRequests: 3
      maxLatencyRatio: 100
      evalMetric: {name: eval_loss, tolerance: 0.5}
";

#[tokio::test(flavor = "multi_thread")]
async fn quantized_and_distilled_versions_are_kept_or_rolled_back_by_the_eval_gate() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    let gguf = lantern_e2e::workspace().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "{} is not fetched: run scripts/setup-test-deps.sh", gguf.display());
    assert_eq!(stack.publish("models", "smollm2", &gguf, &[]).await.unwrap(), 1);
    let data = stack.claim_dir("models").join(".datasets/chat");
    std::fs::create_dir_all(&data).unwrap();
    let tickets = lantern_e2e::workspace().join("examples/training/tickets/train.jsonl");
    let four: Vec<String> = std::fs::read_to_string(tickets).unwrap().lines().take(4).map(str::to_owned).collect();
    std::fs::write(data.join("train.jsonl"), four.join("\n")).unwrap();
    let held_out = [
        r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "The capital of France is Paris."}]}"#,
        r#"{"prompt": "1, 2, 3, 4,", "completion": " 5, 6"}"#,
    ];
    std::fs::write(data.join("eval.jsonl"), held_out.join("\n")).unwrap();
    let ended = |j: &serde_json::Value| matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    let run = |name: &'static str, task: &'static str, training: &'static str| {
        let stack = &stack;
        async move {
            let applied = stack.apply(&compress_job(name, task, training)).await.unwrap();
            assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
            let done = stack.wait_for(&format!("tj/{name}"), "the job", Duration::from_secs(240), ended).await;
            assert_eq!(done["status"]["phase"], "Succeeded", "{:#}\n{}", done["status"], stack.operator_log());
            done["status"]["checkpoints"].as_array().unwrap().last().unwrap()["metrics"].clone()
        }
    };

    // Q8_0 is the first version of `chat`, served as stable.
    let q8 = run("q8", "quantize: {source: {model: smollm2, version: 1}, type: q8_0}", "").await;
    assert!(q8["size_ratio"].as_f64().unwrap() > 1.0, "{q8}");
    assert!(q8["baseline_eval_loss"].is_number() && q8["eval_accuracy"].is_number(), "{q8}");
    assert!(stack.apply(CHAT_SERVICE).await.unwrap().ok);
    let stable = |version: u64| move |s: &serde_json::Value| s["status"]["stableVersion"] == version;
    stack.wait_for("isvc/chat", "version 1 stable", Duration::from_secs(90), stable(1)).await;

    // Requests through the service all along: a canary step is judged on the ones it served.
    let address = stack.service_address("chat").await.unwrap();
    let traffic = tokio::spawn(async move {
        let body = serde_json::json!({"model": "chat", "prompt": "Hello", "max_tokens": 1});
        loop {
            let _ = reqwest::Client::new().post(format!("http://{address}/v1/completions")).json(&body).send().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // Q4_0 loses a little held-out loss, within the tolerance: it is rolled out and promoted.
    let q4 = run("q4", "quantize: {source: {model: smollm2, version: 1}, type: q4_0}", "").await;
    let (q8_loss, q4_loss) = (q8["eval_loss"].as_f64().unwrap(), q4["eval_loss"].as_f64().unwrap());
    assert!(q4_loss - q8_loss < 0.5, "Q4_0 {q4_loss} against Q8_0 {q8_loss}: the tolerance no longer fits");
    let rollout = |version: u64| {
        move |s: &serde_json::Value| {
            let rollout = &s["status"]["rollout"];
            rollout["version"] == version && matches!(rollout["phase"].as_str(), Some("Promoted" | "RolledBack"))
        }
    };
    let kept = stack.wait_for("isvc/chat", "version 2's rollout", Duration::from_secs(90), rollout(2)).await;
    assert_eq!(kept["status"]["rollout"]["phase"], "Promoted", "{:#}", kept["status"]);

    // A student of two of SmolLM2's layers, two steps in, is far worse: rolled back before any
    // traffic, Q4_0 stays stable.
    let student = run(
        "student",
        "distill: {teacher: {model: smollm2, version: 1}, student: {layers: [0, 29]}, sequenceLength: 256, topK: 16}",
        "  schedule: {steps: 2, globalBatch: 2}\n  checkpoint: {everySteps: 2}\n",
    )
    .await;
    let agreement = student["eval_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement) && student["parameter_ratio"].as_f64().unwrap() < 0.35, "{student}");
    let rejected = stack.wait_for("isvc/chat", "the student's rollout", Duration::from_secs(90), rollout(3)).await;
    let status = &rejected["status"];
    assert_eq!(
        (status["rollout"]["phase"].as_str(), status["rollout"]["reason"].as_str(), status["stableVersion"].as_u64()),
        (Some("RolledBack"), Some("EvalMetricRegressed"), Some(2)),
        "{status:#}"
    );
    let message = status["rollout"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("by more than the tolerance 0.5"), "{message}");
    traffic.abort();
    stack.stop().await.unwrap();
}
