//! `lantern-operator`: the Kubernetes operator for TrainingJobs and InferenceServices.
//!
//! - [`crd`]: the custom resources and their schemas (`crdgen` writes them into `crds/`).

pub mod crd;
