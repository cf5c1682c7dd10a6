//! The CRDs: the YAML in `crds/` and in the Helm chart is what `crdgen` writes from the Rust types (regenerate with
//! `cargo run -p lantern-operator --bin crdgen`), and applied with the real kubectl to the
//! devcluster they serve the examples and refuse bad manifests with the schema's and CEL rules'
//! messages.

use std::path::{Path, PathBuf};

use lantern_devcluster::{DevCluster, Options};
use lantern_operator::crd;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the operator is in the workspace").to_owned()
}

#[test]
fn the_checked_in_crds_and_the_charts_are_what_crdgen_writes() {
    for directory in crd::DIRECTORIES {
        for (file, definition) in crd::definitions() {
            let path = workspace().join(directory).join(file);
            let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                checked_in == crd::to_yaml(&definition).unwrap(),
                "{} is out of date: run `cargo run -p lantern-operator --bin crdgen`",
                path.display()
            );
        }
    }
}

/// kubectl against the cluster; (success, stdout, stderr).
async fn kubectl(cluster: &DevCluster, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let run = cluster.kubectl(args, stdin).await.expect("kubectl runs");
    (run.ok, run.stdout, run.stderr)
}

const JOB: &str = "apiVersion: lantern.dev/v1alpha1
kind: TrainingJob
metadata: {name: tiny}
spec:
  model:
    llama: {hiddenSize: 48, intermediateSize: 128, layers: 2, heads: 4, context: 16}
  data:
    addition: {maxOperand: 9, trainExamples: 200, evalExamples: 20}
  schedule: {steps: 100, globalBatch: 8}
  checkpoint: {everySteps: 50}
  output: {model: tiny, repository: {claimName: models}}
";

/// A quantize job: no schedule or checkpoint, JSON Lines to measure on.
static QUANTIZE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    JOB.replace(
        "    llama: {hiddenSize: 48, intermediateSize: 128, layers: 2, heads: 4, context: 16}",
        "    quantize: {source: {model: tickets, version: 3}, type: q4_0}",
    )
    .replace("    addition: {maxOperand: 9, trainExamples: 200, evalExamples: 20}", "    jsonl: {path: /data/t.jsonl}")
    .replace("  schedule: {steps: 100, globalBatch: 8}\n  checkpoint: {everySteps: 50}\n", "")
});

/// A distillation job from SmolLM2 into two of its layers.
static DISTILL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    JOB.replace(
        "    llama: {hiddenSize: 48, intermediateSize: 128, layers: 2, heads: 4, context: 16}",
        "    distill: {teacher: {model: smollm2, version: 1}, student: {layers: [0, 29]}, sequenceLength: 96}",
    )
    .replace("    addition: {maxOperand: 9, trainExamples: 200, evalExamples: 20}", "    jsonl: {path: /data/t.jsonl}")
});

/// A fine-tuning job on the wrong data (the addition task, not JSON Lines).
static FINE_TUNE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    JOB.replace(
        "    llama: {hiddenSize: 48, intermediateSize: 128, layers: 2, heads: 4, context: 16}",
        "    fineTune:\n      base: {model: smollm2, version: 1}\n      method: {lora: {rank: 8, targets: [q_proj, v_proj]}}\n      sequenceLength: 96",
    )
});

#[tokio::test(flavor = "multi_thread")]
async fn the_crds_serve_the_examples_and_refuse_bad_manifests_with_clear_messages() {
    let state = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(Options::new(state.path())).await.unwrap();
    let crds = workspace().join("crds");
    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", crds.to_str().unwrap()], None).await;
    assert!(ok, "{out}{err}");
    let established = ["wait", "--for=condition=Established", "crd", "--all", "--timeout=10s"];
    assert!(kubectl(&cluster, &established, None).await.0);
    let examples = [
        "examples/training/adder-job.yaml",
        "examples/serving/adder.yaml",
        "examples/training/finetune-tickets-job.yaml",
        "examples/serving/tickets.yaml",
        "examples/training/finetune-adapters-jobs.yaml",
        "examples/serving/adapters.yaml",
        "examples/serving/from-s3.yaml",
        "examples/training/compress-tickets-jobs.yaml",
        "examples/serving/tickets-compressed.yaml",
    ];
    for example in examples {
        let path = workspace().join(example);
        let (ok, out, err) = kubectl(&cluster, &["apply", "-f", path.to_str().unwrap()], None).await;
        assert!(ok, "{example}: {out}{err}");
    }
    let (ok, out, _) = kubectl(&cluster, &["get", "lantern"], None).await;
    let kinds = ["trainingjob.lantern.dev", "inferenceservice.lantern.dev"];
    let applied =
        kinds.iter().all(|kind| ["adder", "tickets"].iter().all(|name| out.contains(&format!("{kind}/{name}"))));
    assert!(ok && applied, "{out}");
    let (_, out, _) = kubectl(&cluster, &["get", "tj", "adder", "-o", "jsonpath={.spec.replicas}"], None).await;
    assert_eq!(out, "2");

    let cases = [
        (
            JOB.replace("heads: 4", "heads: 5"),
            "spec.model.llama: Invalid value: \"object\": hiddenSize must be a multiple of heads",
        ),
        (
            JOB.replace("  data:", "    mlp: {hidden: [8], activation: relu}\n  data:"),
            "spec.model: Invalid value: \"object\": set exactly one of model.llama, model.mlp, model.fineTune, model.quantize and model.distill",
        ),
        (JOB.replace("    llama: {", "    fineTune: {base: {model: smollm2, version: 1}, method: {full: {}}, sequenceLength: 96}\n    llama: {"), "set exactly one of model.llama, model.mlp, model.fineTune"),
        (FINE_TUNE.replace("    addition:", "    jsonl: {path: /data/t.jsonl}\n    addition:"), "set exactly one of data.addition, data.text, data.csv and data.jsonl"),
        (FINE_TUNE.clone(), "fineTune, quantize and distill read data.jsonl, and only they do"),
        (QUANTIZE.replace("  output:", "  schedule: {steps: 1, globalBatch: 1}\n  output:"), "a quantize job has no schedule; every other job needs one"),
        (QUANTIZE.replace("  output:", "  checkpoint: {everySteps: 1}\n  output:"), "a quantize job has no checkpoint settings"),
        (QUANTIZE.replace("  output:", "  replicas: 2\n  output:"), "a quantize job trains nothing: one replica, no optimizer"),
        (QUANTIZE.replace("type: q4_0", "type: q2_k"), "Unsupported value: \"q2_k\""),
        (JOB.replace("  schedule: {steps: 100, globalBatch: 8}\n", ""), "a quantize job has no schedule; every other job needs one"),
        (DISTILL.replace("student: {layers: [0, 29]}", "student: {layers: [0, 29], base: {model: s, version: 1}}"), "set exactly one of student.layers, student.sizes and student.base"),
        (DISTILL.replace("[0, 29]", "[3, 3]"), "student.layers names a layer twice"),
        (DISTILL.replace("student: {layers: [0, 29]}", "student: {sizes: {hiddenSize: 60, intermediateSize: 64, layers: 1, heads: 8}}"), "hiddenSize must be a multiple of heads"),
        (DISTILL.replace("sequenceLength: 96}", "sequenceLength: 96, topK: 0}"), "spec.model.distill.topK: Invalid value: 0"),
        (DISTILL.replace("sequenceLength: 96}", "sequenceLength: 96, crossEntropyWeight: 2}"), "spec.model.distill.crossEntropyWeight: Invalid value: 2"),
        (FINE_TUNE.replace("method: {lora:", "method: {full: {}, lora:"), "set exactly one of method.lora and method.full"),
        (FINE_TUNE.replace("[q_proj, v_proj]", "[q_proj, q_proj]"), "lora.targets names a projection twice"),
        (FINE_TUNE.replace("[q_proj, v_proj]", "[qkv_proj]"), "Unsupported value: \"qkv_proj\""),
        (FINE_TUNE.replace("version: 1}", "version: 1, digest: md5:abc}"), "spec.model.fineTune.base.digest: Invalid value: \"md5:abc\""),
        (FINE_TUNE.replace("rank: 8", "rank: 0"), "spec.model.fineTune.method.lora.rank: Invalid value: 0"),
        (FINE_TUNE.replace("rank: 8,", "rank: 8, dropout: 1.5,"), "spec.model.fineTune.method.lora.dropout: Invalid value: 1.5"),
        (JOB.replace("{steps: 100,", "{steps: 100, warmupSteps: 100,"), "warmupSteps must be fewer than steps"),
        (JOB.replace("everySteps: 50", "everySteps: 0"), "spec.checkpoint.everySteps: Invalid value: 0"),
        (JOB.replace("model: tiny,", "model: Tiny_Model!,"), "spec.output.model: Invalid value: \"Tiny_Model!\""),
        (JOB.replace("  schedule:", "  schedul:"), "unknown field \"spec.schedul\""),
    ];
    for (manifest, message) in &cases {
        let (ok, _, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(manifest)).await;
        assert!(!ok && err.contains(message), "expected {message:?}, got: {err}");
    }
    let (ok, out, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(JOB)).await;
    assert!(ok, "{out}{err}");
    let renamed = JOB.replace("model: tiny,", "model: other,");
    let (ok, _, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(&renamed)).await;
    assert!(!ok && err.contains("spec.output.model is immutable"), "{err}");

    let service = "apiVersion: lantern.dev/v1alpha1
kind: InferenceService
metadata: {name: svc}
spec:
  model: tiny
  source: {repository: {claimName: models}}
  replicas: 2
";
    let service_cases = [
        (
            service.replace("replicas: 2", "replicas: 2\n  minReplicas: 3\n  maxReplicas: 2"),
            "minReplicas must not exceed maxReplicas",
        ),
        (service.replace("replicas: 2", "replicas: 2\n  rollout: {steps: [10, 50]}"), "the last step must be 100"),
        (
            service.replace(
                "replicas: 2",
                "replicas: 2\n  rollout: {analysis: {evalMetric: {name: eval_accuracy, tolerance: -0.1}}}",
            ),
            "spec.rollout.analysis.evalMetric.tolerance: Invalid value: -0.1",
        ),
        (
            service.replace("replicas: 2", "replicas: 2\n  rollout: {steps: [0, 100]}"),
            "every step is a percentage from 1 to 100",
        ),
        (
            service.replace("source: {repository: {claimName: models}}", "source: {}"),
            "set exactly one of source.repository and source.trainingJobRef",
        ),
        (
            service.replace("{claimName: models}", "{claimName: models, uri: \"s3://models/repo\"}"),
            "set exactly one of repository.claimName and repository.uri",
        ),
        (
            service.replace("{claimName: models}", "{claimName: models, secretRef: {name: s3}}"),
            "repository.secretRef and repository.cache go with repository.uri",
        ),
        (
            service.replace("{claimName: models}", "{uri: \"s3://models/repo\", subPath: a}"),
            "repository.subPath goes with repository.claimName",
        ),
        (
            service.replace("{claimName: models}", "{uri: \"ftp://host/models\"}"),
            "spec.source.repository.uri: Invalid value: \"ftp://host/models\"",
        ),
        (
            service.replace("{claimName: models}", "{uri: \"s3://models/repo\", cache: {sizeMib: 1}}"),
            "spec.source.repository.cache.sizeMib: Invalid value: 1",
        ),
        (
            service.replace("replicas: 2", "replicas: 2\n  device: gpu"),
            "spec.device: Unsupported value: \"gpu\": supported values: \"cpu\", \"cuda\"",
        ),
        (
            service.replace("replicas: 2", "replicas: 2\n  adapters: [{model: a, trainingJobRef: {name: a}}]"),
            "set exactly one of model and trainingJobRef in each adapter",
        ),
        (
            service.replace("replicas: 2", "replicas: 2\n  adapters: [{model: a}, {model: a}]"),
            "each adapter model is listed once and differs from spec.model",
        ),
        (
            service.replace("replicas: 2", "replicas: 2\n  adapters: [{model: tiny}]"),
            "each adapter model is listed once and differs from spec.model",
        ),
    ];
    for (manifest, message) in &service_cases {
        let (ok, _, err) = kubectl(&cluster, &["apply", "-f", "-"], Some(manifest)).await;
        assert!(!ok && err.contains(message), "expected {message:?}, got: {err}");
    }
    // The scale subresource, as an autoscaler uses it.
    assert!(kubectl(&cluster, &["apply", "-f", "-"], Some(service)).await.0);
    let (ok, out, err) = kubectl(&cluster, &["scale", "isvc/svc", "--replicas=3"], None).await;
    assert!(ok, "{out}{err}");
    let (_, out, _) = kubectl(&cluster, &["get", "isvc", "svc", "-o", "jsonpath={.spec.replicas}"], None).await;
    assert_eq!(out, "3");
    cluster.stop().await.unwrap();
}
