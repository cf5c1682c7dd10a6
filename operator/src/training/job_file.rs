//! The worker's job file for a TrainingJob: the training sections of the spec with their keys
//! turned from Kubernetes' camelCase into the file's snake_case, plus where checkpoints and
//! versions go. Each rank's identity (rank, world size, addresses) and the repository's mount
//! come from its environment, not from this file, so all ranks share one ConfigMap; the state
//! directory and `initFrom` are written relative to the repository, which the worker resolves.

use serde_json::{Map, Value, json};

use crate::crd::TrainingJob;
use crate::objects::REPOSITORY_MOUNT;

/// The training state directory, relative to the repository: a dot-directory, which servers of
/// the repository ignore. It outlives the pods, so every gang restart resumes from it.
pub fn state_dir(namespace: &str, job: &str) -> String {
    format!(".lantern-training/{namespace}/{job}")
}

/// The job file (JSON) the ranks of `job` read.
pub fn render(job: &TrainingJob) -> Value {
    let spec = &job.spec;
    let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let mut model = snake_keys(serde_json::to_value(&spec.model).unwrap_or_default());
    if let Some(init) = spec.model.llama.as_ref().and_then(|l| l.init_from.as_ref()) {
        model["llama"]["init_from"] = json!(format!("{}/{}", init.model, init.version));
    }
    let mut file = json!({
        "model": model,
        "data": snake_keys(serde_json::to_value(&spec.data).unwrap_or_default()),
        "schedule": snake_keys(serde_json::to_value(&spec.schedule).unwrap_or_default()),
        "checkpoint": {
            "every_steps": spec.checkpoint.every_steps,
            "state_dir": state_dir(namespace, name),
        },
        "output": {"repository": REPOSITORY_MOUNT, "model": spec.output.model},
    });
    if let Some(optimizer) = &spec.optimizer {
        file["optimizer"] = snake_keys(serde_json::to_value(optimizer).unwrap_or_default());
    }
    if let Some(seed) = spec.seed {
        file["seed"] = json!(seed);
    }
    if let Some(keep) = spec.checkpoint.keep {
        file["checkpoint"]["keep"] = json!(keep);
    }
    if let Some(timeout) = spec.checkpoint.timeout_seconds {
        file["checkpoint"]["timeout_seconds"] = json!(timeout);
    }
    file
}

/// Every object key of `value`, recursively, from camelCase to snake_case.
fn snake_keys(value: Value) -> Value {
    match value {
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(k, v)| (snake_case(&k), snake_keys(v))).collect::<Map<_, _>>())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(snake_keys).collect()),
        other => other,
    }
}

fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adder() -> Value {
        json!({
            "model": {"llama": {"hiddenSize": 48, "intermediateSize": 128, "layers": 2, "heads": 4, "context": 16,
                                "initFrom": {"model": "base", "version": 3}, "precision": "bf16"}},
            "data": {"addition": {"maxOperand": 9, "trainExamples": 2000, "evalExamples": 20}},
            "optimizer": {"learningRate": 0.01, "minLearningRate": 0.001},
            "schedule": {"steps": 1000, "warmupSteps": 20, "globalBatch": 32},
            "seed": 1,
            "replicas": 2,
            "checkpoint": {"everySteps": 100, "keep": 2},
            "output": {"model": "adder", "repository": {"claimName": "models"}},
        })
    }

    #[test]
    fn the_spec_becomes_the_workers_job_file() {
        let file = render(&crate::training::test_job(adder()));
        assert_eq!(file["model"]["llama"]["hidden_size"], 48);
        assert_eq!(file["model"]["llama"]["init_from"], "base/3");
        assert_eq!(file["data"]["addition"]["train_examples"], 2000);
        assert_eq!(file["optimizer"]["min_learning_rate"], 0.001);
        assert_eq!(file["schedule"]["global_batch"], 32);
        assert_eq!(file["checkpoint"]["state_dir"], ".lantern-training/ml/adder");
        assert_eq!(file["output"], json!({"repository": "/var/lib/lantern/models", "model": "adder"}));
    }

    #[test]
    fn the_worker_accepts_the_file() {
        use lantern_worker::train::config::JobConfig;
        let mut mlp = adder();
        mlp["model"] = json!({"mlp": {"hidden": [16, 8], "activation": "gelu"}});
        mlp["data"] =
            json!({"csv": {"path": "/data/iris.csv", "target": "species", "classes": 3, "evalFraction": 0.2}});
        for spec in [adder(), mlp] {
            let file = render(&crate::training::test_job(spec));
            let parsed = JobConfig::from_json(file.to_string().as_bytes());
            assert!(parsed.is_ok(), "{file}: {parsed:?}");
        }
    }
}
