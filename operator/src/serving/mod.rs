//! The InferenceService controller ([`controller`]) and its pure pieces: the objects a service
//! owns ([`objects`]), the replicas the load asks for ([`autoscale`]), which pods to create and delete ([`pods`]), the workers' reports folded
//! per version ([`fleet`]), the rollout state machine ([`rollout`]), the adapter models served
//! beside the base, each rolled out on its own ([`adapters`]), the router in front of the pods
//! ([`router`]), and the next status ([`status`]).

pub mod adapters;
pub mod autoscale;
pub mod controller;
pub mod fleet;
pub mod objects;
pub mod pods;
pub mod rollout;
pub mod router;
pub mod status;

/// The `adder` service of the unit tests, in namespace `ml`, serving from claim `models`;
/// `spec`'s fields replace the base spec's.
#[cfg(test)]
pub(crate) fn test_service(spec: serde_json::Value) -> crate::crd::InferenceService {
    let base = serde_json::json!({
        "model": "adder",
        "source": {"repository": {"claimName": "models"}},
    });
    crate::test_object("InferenceService", "u-2", 2, base, spec)
}
