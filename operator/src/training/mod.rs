//! The TrainingJob controller ([`controller`]) and its pure pieces: the worker job file a job's
//! ranks read ([`job_file`]), the objects the job owns ([`objects`]), what the job needs next
//! ([`plan`]), the versions its retention keeps ([`retention`]) and its next status ([`status`]).

pub mod controller;
pub mod job_file;
pub mod objects;
pub mod plan;
pub mod retention;
pub mod status;

/// The `adder` job of the unit tests, in namespace `ml`: a small llama on the addition task,
/// two ranks; `spec`'s fields replace the base spec's.
#[cfg(test)]
pub(crate) fn test_job(spec: serde_json::Value) -> crate::crd::TrainingJob {
    let base = serde_json::json!({
        "model": {"llama": {"hiddenSize": 48, "intermediateSize": 128, "layers": 2, "heads": 4, "context": 16}},
        "data": {"addition": {"maxOperand": 9, "trainExamples": 2000, "evalExamples": 20}},
        "schedule": {"steps": 1000, "globalBatch": 32},
        "replicas": 2,
        "checkpoint": {"everySteps": 100},
        "output": {"model": "adder", "repository": {"claimName": "models"}},
    });
    crate::test_object("TrainingJob", "u-1", 3, base, spec)
}
