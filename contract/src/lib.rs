//! The contract between Lantern's operator and its worker, in one place so that neither side can
//! drift from the other:
//!
//! - [`job`]: the training job file a TrainingJob's ranks read ([`job::JobConfig`]), which the
//!   operator builds as a typed value from the CRD and the worker validates and runs;
//! - [`env`]: the names of the environment variables the operator sets on worker pods and the
//!   worker reads (its clap flags name these constants);
//! - [`device::DeviceSpec`]: where a worker runs its models, as both sides spell it;
//! - [`exit`]: the exit codes of `train` that the operator acts on;
//! - [`examples`]: the shape of a fine-tuning JSONL file, which the `lantern` CLI checks before it
//!   creates a job and the worker checks before it tokenizes.
//!
//! Dependencies are serde, serde_json and thiserror only: the operator and the CLI link this
//! crate, not the worker's runtime. Validation that needs the file system or the model repository (files exist, model
//! names are valid) belongs to the worker's training crate.

pub mod device;
pub mod env;
pub mod examples;
pub mod exit;
pub mod job;

/// A setting that cannot be used; `field` is its path in the job file or the variable's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ContractError {
    pub field: String,
    pub reason: String,
}

impl ContractError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}
