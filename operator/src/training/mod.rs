//! The TrainingJob controller ([`controller`]) and its pure pieces: the worker job file a job's
//! ranks read ([`job_file`]), the objects the job owns ([`objects`]), what the job needs next
//! ([`plan`]) and its next status ([`status`]).

pub mod controller;
pub mod job_file;
pub mod objects;
pub mod plan;
pub mod status;

/// The `adder` job of the unit tests, in namespace `ml`: a small llama on the addition task,
/// two ranks; `spec`'s fields replace the base spec's.
#[cfg(test)]
pub(crate) fn test_job(spec: serde_json::Value) -> crate::crd::TrainingJob {
    let mut base = serde_json::json!({
        "model": {"llama": {"hiddenSize": 48, "intermediateSize": 128, "layers": 2, "heads": 4, "context": 16}},
        "data": {"addition": {"maxOperand": 9, "trainExamples": 2000, "evalExamples": 20}},
        "schedule": {"steps": 1000, "globalBatch": 32},
        "replicas": 2,
        "checkpoint": {"everySteps": 100},
        "output": {"model": "adder", "repository": {"claimName": "models"}},
    });
    for (field, value) in spec.as_object().into_iter().flatten() {
        base[field] = value.clone();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "lantern.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "adder", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": base,
    }))
    .expect("a valid TrainingJob")
}
