//! The `lantern` binary as a user runs it, before any cluster is reached: its commands, and a
//! fine-tuning data file refused with its file and line while nothing is created (the kubeconfig
//! here points nowhere, so reaching for the cluster would fail differently). The commands that
//! talk to a cluster are tested on the devcluster (`e2e/tests/serving/cli.rs`).

use std::path::Path;
use std::process::Command;

/// `lantern ARGS` with a kubeconfig that does not exist: (exit code, stdout, stderr).
fn lantern(args: &[&str], dir: &Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_lantern"))
        .args(args)
        .current_dir(dir)
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[test]
fn help_lists_every_everyday_flow() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = lantern(&["--help"], dir.path());
    assert_eq!(code, 0);
    for command in ["finetune", "status", "promote", "abort", "pin", "chat", "curves"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(command)), "{command} in:\n{stdout}");
    }
    let (code, stdout, _) = lantern(&["finetune", "--help"], dir.path());
    assert_eq!(code, 0);
    assert!(
        stdout.contains("--base <BASE>") && stdout.contains("--lora-rank") && stdout.contains("--full"),
        "{stdout}"
    );
}

#[test]
fn a_bad_data_file_is_refused_with_its_line_before_the_cluster_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"prompt": "2+2=", "completion": "4"}"#;
    std::fs::write(dir.path().join("train.jsonl"), format!("{good}\n\n{good}\n{{\"prompt\": \"3+3=\"}}\n")).unwrap();
    let (code, stdout, stderr) = lantern(&["finetune", "--base", "chat", "--data", "train.jsonl"], dir.path());
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: train.jsonl line 4: an example has either \"messages\", both \"prompt\" and \"completion\", or \"text\""
    );

    std::fs::write(dir.path().join("train.jsonl"), format!("{good}\n{good}\n")).unwrap();
    std::fs::write(dir.path().join("eval.jsonl"), "{\"text\": \"\"}\n").unwrap();
    let flags = ["finetune", "--base", "chat", "--data", "train.jsonl", "--eval", "eval.jsonl"];
    let (code, stdout, stderr) = lantern(&flags, dir.path());
    assert_eq!(code, 2);
    assert_eq!(stdout, "train.jsonl: 2 examples (2 prompt/completion pairs)\n");
    assert_eq!(stderr.trim(), "error: eval.jsonl line 1: the text is empty");

    let (code, _, stderr) = lantern(&["finetune", "--base", "chat", "--data", "missing.jsonl"], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.starts_with("error: missing.jsonl: "), "{stderr}");

    // A good file gets as far as the cluster, which this kubeconfig does not name.
    let (code, _, stderr) = lantern(&["finetune", "--base", "chat", "--data", "train.jsonl"], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.starts_with("error: connecting with the kubeconfig"), "{stderr}");
}

#[test]
fn data_beyond_what_a_config_map_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let line = format!("{{\"text\": \"{}\"}}\n", "a".repeat(1000));
    std::fs::write(dir.path().join("big.jsonl"), line.repeat(1100)).unwrap();
    let (code, stdout, stderr) = lantern(&["finetune", "--base", "chat", "--data", "big.jsonl"], dir.path());
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("more than the 1024 KiB a ConfigMap holds"), "{stderr}");
    assert!(stdout.is_empty(), "refused by its size before it is read: {stdout}");
}
