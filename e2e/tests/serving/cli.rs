//! The `lantern` CLI against the devcluster, as a user runs it with the kubeconfig: `status` with
//! its exit codes (healthy, still rolling out, an unknown name), `promote` refused for a version
//! that is not the canary (the operator's condition printed, the field cleared) and then
//! promoting the canary, `status --watch` until the rollout settles, `pin`, and a TrainingJob's
//! `curves`.

use std::time::Duration;

use lantern_e2e::{MODELS_CLAIM, Stack};

use super::{LAYERS, SERVICE, settled};

/// `lantern ARGS` against the stack: (exit code, stdout, stderr).
async fn lantern(stack: &Stack, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(lantern_e2e::binary("lantern").unwrap())
        .args(args)
        .env("KUBECONFIG", stack.cluster.kubeconfig())
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shows_a_rollout_promotes_its_canary_refuses_another_version_and_draws_curves() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    stack.publish_mlp("models", "adder", LAYERS, 1, &[]).await.unwrap();
    // Steps of ten minutes without traffic: a canary stays in its first step until promoted.
    let service = SERVICE.replace("replicas: 2", "replicas: 1").replace("stepSeconds: 2", "stepSeconds: 600");
    assert!(stack.apply(&service).await.unwrap().ok);
    settled(&stack, "adder").await;

    let (code, _, stderr) = lantern(&stack, &["status", "nope"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("inferenceservice \"nope\" not found in namespace \"default\""), "{stderr}");
    let (code, stdout, _) = lantern(&stack, &["status", "adder"]).await;
    assert_eq!(code, 0, "healthy: {stdout}");
    assert!(stdout.contains("stable  version 1  100% of requests"), "{stdout}");

    stack.publish_mlp("models", "adder", LAYERS, 2, &["eval_loss=0.4"]).await.unwrap();
    let canary =
        |s: &serde_json::Value| s["status"]["canaryVersion"] == 2 && s["status"]["rollout"]["phase"] == "Progressing";
    stack.wait_for("isvc/adder", "version 2 as the canary", Duration::from_secs(60), canary).await;
    let (code, stdout, _) = lantern(&stack, &["status", "adder"]).await;
    assert_eq!(code, 3, "still rolling out: {stdout}");
    assert!(
        stdout.contains("canary  version 2  50% of requests") && stdout.contains("rollout of version 2: Progressing"),
        "{stdout}"
    );

    let (code, stdout, stderr) = lantern(&stack, &["promote", "adder", "7"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("refused (NotTheCanary): spec.rollout.promote names version 7, which is not the canary (the canary is version 2)"),
        "{stdout}"
    );
    assert_eq!(stack.field("isvc/adder", ".spec.rollout.promote").await.unwrap(), "", "the refused field is cleared");
    let (code, stdout, stderr) = lantern(&stack, &["promote", "adder"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("adder: version 2 promoted"), "{stdout}");
    let (code, stdout, _) = lantern(&stack, &["status", "adder", "--watch", "--timeout", "60s"]).await;
    assert_eq!(code, 0, "settled: {stdout}");
    assert!(stdout.contains("stable  version 2  100% of requests"), "{stdout}");

    let (code, stdout, _) = lantern(&stack, &["pin", "adder", "1"]).await;
    assert_eq!((code, stdout.trim()), (0, "adder: pinned to version 1"));
    stack.wait_for("isvc/adder", "pinned to 1", Duration::from_secs(60), |s| s["status"]["stableVersion"] == 1).await;
    let (code, _, _) = lantern(&stack, &["pin", "adder", "--clear"]).await;
    assert_eq!(code, 0);

    // A short training job's curves and versions.
    let job = "apiVersion: lantern.dev/v1alpha1
kind: TrainingJob
metadata: {name: tiny}
spec:
  replicas: 1
  model:
    llama: {hiddenSize: 16, intermediateSize: 32, layers: 1, heads: 2, context: 16}
  data:
    addition: {maxOperand: 9, trainExamples: 200, evalExamples: 10}
  schedule: {steps: 200, globalBatch: 8}
  checkpoint: {everySteps: 100}
  output:
    model: tiny
    repository: {claimName: models}
";
    assert!(stack.apply(job).await.unwrap().ok);
    let done = |j: &serde_json::Value| j["status"]["phase"] == "Succeeded";
    stack.wait_for("tj/tiny", "Succeeded", Duration::from_secs(120), done).await;
    let (code, stdout, stderr) = lantern(&stack, &["curves", "tiny"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("trainingjob default/tiny: Succeeded, step 200 of 200 (100%)"), "{stdout}");
    assert!(stdout.contains("loss by step:") && stdout.contains('•'), "{stdout}");
    assert!(
        stdout.contains("eval_accuracy") && stdout.lines().any(|l| l.trim_start().starts_with("2      200")),
        "{stdout}"
    );
    let (code, _, stderr) = lantern(&stack, &["curves", "nope"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("trainingjob \"nope\" not found"), "{stderr}");
    stack.stop().await.unwrap();
}

const QUESTION: &str = "What is the capital of France?";

/// `lantern chat` through a pseudo-terminal, as a person types to it: the prompt, a question, the
/// streamed answer, the next prompt, Ctrl-D. A version the service does not serve gets the
/// server's 404 message; an unknown service a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn chat_streams_answers_in_a_terminal_and_says_what_is_not_served() {
    let stack = Stack::start().await.unwrap();
    super::publish_smollm2(&stack).await;
    assert!(stack.apply(&super::chat_service()).await.unwrap().ok);
    settled(&stack, "chat").await;

    let script = lantern_e2e::workspace().join("e2e/tests/serving/chat_pty.py");
    let binary = lantern_e2e::binary("lantern").unwrap();
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&binary)
        .args(["chat", QUESTION, "--temperature", "0", "--max-tokens", "24"])
        .env("KUBECONFIG", stack.cluster.kubeconfig())
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    assert!(output.status.success(), "{shown}{}", String::from_utf8_lossy(&output.stderr));
    assert!(shown.starts_with("chatting with chat at http://"), "{shown}");
    // The answer streamed between the prompts is the service's own greedy answer.
    let answer = shown.split("you> ").nth(1).unwrap_or_default();
    let answer = answer.split_once('\n').map_or("", |(_, rest)| rest).trim();
    let address = stack.service_address("chat").await.unwrap();
    let body = serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": QUESTION}],
                                  "temperature": 0, "max_tokens": 24});
    let whole = reqwest::Client::new().post(format!("http://{address}/v1/chat/completions")).json(&body).send().await;
    let whole: serde_json::Value = whole.unwrap().json().await.unwrap();
    let expected = whole["choices"][0]["message"]["content"].as_str().unwrap().trim().to_owned();
    assert!(!expected.is_empty() && answer == expected, "streamed {answer:?}, answered {expected:?}\n{shown}");
    assert!(shown.trim_end().ends_with("EXIT 0"), "Ctrl-D ends the chat: {shown}");

    let mut unserved = tokio::process::Command::new(&binary)
        .args(["chat", "chat:9"])
        .env("KUBECONFIG", stack.cluster.kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    unserved.stdin.take().unwrap().write_all(b"hello\n").await.unwrap();
    let unserved = unserved.wait_with_output().await.unwrap();
    let said = String::from_utf8_lossy(&unserved.stdout);
    assert_eq!(unserved.status.code(), Some(1), "{said}");
    assert!(said.starts_with("error: 404 Not Found: ") && said.contains('9'), "the server's message: {said}");
    let (code, _, stderr) = lantern(&stack, &["chat", "nope"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("inferenceservice \"nope\" not found"), "{stderr}");
    stack.stop().await.unwrap();
}
