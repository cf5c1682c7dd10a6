//! The `lantern` CLI against the devcluster, as a user runs it with the kubeconfig: `status` with
//! its exit codes (healthy, still rolling out, an unknown name), `promote` refused for a version
//! that is not the canary (the operator's condition printed, the field cleared) and then
//! promoting the canary, `status --watch` until the rollout settles, `pin`, a TrainingJob's
//! `curves`, `chat` and `finetune` in a terminal.

use std::time::Duration;

use lantern_e2e::{MODELS_CLAIM, Stack};

use super::{LAYERS, SERVICE, settled};

/// `lantern ARGS` run in a pseudo-terminal and driven by `steps` (`expect:TEXT`, `send:TEXT`;
/// `pty_expect.py`): what the terminal showed, ending with `EXIT <code>`.
async fn in_terminal(stack: &Stack, steps: &[&str], args: &[&str]) -> String {
    let script = lantern_e2e::workspace().join("e2e/tests/serving/pty_expect.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args(steps)
        .arg("--")
        .arg(lantern_e2e::binary("lantern").unwrap())
        .args(args)
        .env("KUBECONFIG", stack.cluster.kubeconfig())
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    assert!(output.status.success(), "{shown}{}", String::from_utf8_lossy(&output.stderr));
    shown
}

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

    let binary = lantern_e2e::binary("lantern").unwrap();
    let question = format!("send:{QUESTION}\\n");
    let steps = ["expect:you> ", question.as_str(), "expect:you> ", "send:\\x04"];
    let shown = in_terminal(&stack, &steps, &["chat", "chat", "--temperature", "0", "--max-tokens", "24"]).await;
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

/// `lantern finetune` on a served base (a tiny llama): a bad file and an unknown base create
/// nothing; in a terminal the job's progress shows and Ctrl-C detaches while the job goes on and
/// succeeds; without a terminal a run prints its versions and exits 0, and a job the worker
/// refuses exits 1 with the reason. The data's ConfigMap goes with its job.
#[tokio::test(flavor = "multi_thread")]
async fn finetune_checks_the_data_follows_the_job_and_detaches_on_ctrl_c() {
    let stack = Stack::start().await.unwrap();
    assert!(stack.apply(MODELS_CLAIM).await.unwrap().ok);
    assert!(stack.apply(super::BASE_JOB).await.unwrap().ok);
    let ended = |j: &serde_json::Value| matches!(j["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    let base = stack.wait_for("tj/base", "the base's training", Duration::from_secs(120), ended).await;
    assert_eq!(base["status"]["phase"], "Succeeded", "{:#}", base["status"]);
    assert!(stack.apply(&lantern_e2e::claim_service("base", 1)).await.unwrap().ok);
    settled(&stack, "base").await;
    let data = tempfile::tempdir().unwrap();
    let file = |name: &str| data.path().join(name).to_str().unwrap().to_owned();
    super::write_pairs(&data.path().join("train.jsonl"), 0..64, |k| format!(" v{}", k * 7 % 100));
    super::write_pairs(&data.path().join("eval.jsonl"), 64..72, |k| format!(" v{}", k * 7 % 100));
    std::fs::write(data.path().join("bad.jsonl"), "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"messages\": []}\n")
        .unwrap();

    let (code, _, stderr) = lantern(&stack, &["finetune", "--base", "base", "--data", &file("bad.jsonl")]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("bad.jsonl line 2: the conversation has no assistant turn"), "{stderr}");
    let (code, _, stderr) = lantern(&stack, &["finetune", "--base", "nope", "--data", &file("train.jsonl")]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("no InferenceService in namespace \"default\" serves model \"nope\""), "{stderr}");
    let jobs = stack.json("trainingjobs").await.unwrap();
    assert_eq!(jobs["items"].as_array().unwrap().len(), 1, "only the base's job: {jobs:#}");
    let data_maps = |maps: &serde_json::Value| {
        let items = maps["items"].as_array().cloned().unwrap_or_default();
        items
            .into_iter()
            .filter(|m| m["metadata"]["name"].as_str().is_some_and(|n| n.contains("-data-")))
            .collect::<Vec<_>>()
    };
    assert!(data_maps(&stack.json("configmaps").await.unwrap()).is_empty());

    // In a terminal: the bar moves, Ctrl-C detaches, the job goes on to the end (long enough,
    // at a few hundred tiny steps a second, to be still running when Ctrl-C comes).
    let train = file("train.jsonl");
    let eval = file("eval.jsonl");
    let flags = |name: &'static str, steps: &'static str, every: &'static str| {
        let mut flags = vec!["finetune", "--base", "base", "--output", "base", "--full", "--name", name];
        flags.extend(["--data", train.as_str(), "--eval", eval.as_str(), "--sequence-length", "32"]);
        flags.extend(["--steps", steps, "--checkpoint-every", every, "--learning-rate", "0.01"]);
        flags
    };
    let shown =
        in_terminal(&stack, &["expect:/2000", "send:\\x03", "expect:detached"], &flags("tune", "2000", "1000")).await;
    assert!(shown.contains("64 examples (64 prompt/completion pairs)"), "{shown}");
    assert!(shown.contains("trainingjob default/tune created: fine-tunes base:1 on configmap tune-data-"), "{shown}");
    assert!(shown.contains("detached: trainingjob tune goes on"), "{shown}");
    assert!(shown.trim_end().ends_with("EXIT 3"), "detached: {shown}");
    let job = stack.wait_for("tj/tune", "the detached job's end", Duration::from_secs(240), ended).await;
    assert_eq!(job["status"]["phase"], "Succeeded", "{:#}", job["status"]);
    let maps = data_maps(&stack.json("configmaps").await.unwrap());
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0]["metadata"]["ownerReferences"][0]["uid"], job["metadata"]["uid"], "the job owns its data");
    let keys: Vec<&String> = maps[0]["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["eval.jsonl", "train.jsonl"]);

    // Without a terminal: a line per change and per version, and the outcome as the exit code;
    // two ranks, each reading the data from its own pod's ConfigMap volume.
    let mut again = flags("again", "8", "4");
    again.extend(["--replicas", "2"]);
    let (code, stdout, stderr) = lantern(&stack, &again).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("the base on the held-out data: eval_"), "{stdout}");
    for step in [4, 8] {
        let published = format!(" at step {step}: eval_");
        assert!(stdout.lines().any(|l| l.starts_with("published base version ") && l.contains(&published)), "{stdout}");
    }
    assert!(stdout.contains("step 8/8"), "{stdout}");
    assert!(stdout.lines().last().is_some_and(|l| l.starts_with("Succeeded")), "the outcome last: {stdout}");
    let mut refused = flags("short", "8", "4");
    *refused.iter_mut().find(|f| **f == "32").unwrap() = "4";
    let (code, stdout, _) = lantern(&stack, &refused).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("Failed: ") && stdout.contains("sequence_length 4"), "{stdout}");

    // The data goes with its job.
    assert!(stack.kubectl(&["delete", "tj", "tune"]).await.unwrap().ok);
    let gone = |maps: &serde_json::Value| {
        data_maps(maps).iter().all(|m| !m["metadata"]["name"].as_str().unwrap().starts_with("tune-"))
    };
    stack.wait_for("configmaps", "the deleted job's data", Duration::from_secs(60), gone).await;
    stack.stop().await.unwrap();
}
