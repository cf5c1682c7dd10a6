//! `lantern-operator`: the Kubernetes operator for TrainingJobs and InferenceServices.
//!
//! - [`crd`]: the custom resources and their schemas (`crdgen` writes them into `crds/`).
//! - [`training`]: the TrainingJob controller: rank pods in gang attempts, restarts, deadlines,
//!   progress and status.
//! - [`serving`]: the InferenceService controller: worker pods and their Service, serving config
//!   pushed to every pod, and the canary rollout decided on the workers' per-version metrics.
//! - [`context`]: what every reconcile shares (client, settings, metrics, errors, Events).
//! - [`credentials`]: the tokens the operator creates for its workers (a Secret per service and
//!   per job) and sends on its calls to them.
//! - [`leader`]: leader election on a Lease, so that one of several replicas reconciles.
//! - [`metrics`]: the operator's Prometheus metrics and its `/metrics`, `/healthz`, `/readyz`.
//! - [`objects`]: what every pod and Service the operator makes shares; [`status`]: conditions
//!   and status patches.

pub mod context;
pub mod crd;
pub mod credentials;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod serving;
pub mod status;
pub mod training;

/// A `kind` object `adder` in namespace `ml` (with `uid` and `generation`) for the unit tests:
/// `spec` is `base` with `overrides`' fields replacing its own.
#[cfg(test)]
pub(crate) fn test_object<K: serde::de::DeserializeOwned>(
    kind: &str,
    uid: &str,
    generation: i64,
    mut base: serde_json::Value,
    overrides: serde_json::Value,
) -> K {
    for (field, value) in overrides.as_object().into_iter().flatten() {
        base[field] = value.clone();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "lantern.dev/v1alpha1", "kind": kind,
        "metadata": {"name": "adder", "namespace": "ml", "uid": uid, "generation": generation},
        "spec": base,
    }))
    .unwrap_or_else(|e| panic!("a valid {kind}: {e}"))
}
