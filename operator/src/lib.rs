//! `lantern-operator`: the Kubernetes operator for TrainingJobs and InferenceServices.
//!
//! - [`crd`]: the custom resources and their schemas (`crdgen` writes them into `crds/`).
//! - [`training`]: the TrainingJob controller: rank pods in gang attempts, restarts, deadlines,
//!   progress and status.

pub mod crd;
pub mod training;
