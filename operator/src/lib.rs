//! `lantern-operator`: the Kubernetes operator for TrainingJobs and InferenceServices.
//!
//! - [`crd`]: the custom resources and their schemas (`crdgen` writes them into `crds/`).
//! - [`training`]: what a TrainingJob becomes: the worker job file its ranks read.

pub mod crd;
pub mod training;
