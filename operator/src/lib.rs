//! `lantern-operator`: the Kubernetes operator for TrainingJobs and InferenceServices.
//!
//! - [`crd`]: the custom resources and their schemas (`crdgen` writes them into `crds/`).
//! - [`training`]: the TrainingJob controller: rank pods in gang attempts, restarts, deadlines,
//!   progress and status.
//! - [`serving`]: the InferenceService controller: worker pods and their Service, serving config
//!   pushed to every pod, and the canary rollout decided on the workers' per-version metrics.
//! - [`context`]: what every reconcile shares (client, settings, errors, Events).
//! - [`objects`]: what every pod and Service the operator makes shares; [`status`]: conditions
//!   and status patches.

pub mod context;
pub mod crd;
pub mod objects;
pub mod serving;
pub mod status;
pub mod training;
