//! What every object the operator makes shares: owner metadata, the model repository volume, the
//! worker container's hardening and the user's pod overrides. Pure functions to JSON, which
//! each controller's own `objects` module assembles into typed objects.

use std::collections::BTreeMap;

use kube::Resource;
use serde_json::{Value, json};

use crate::crd::{PodOverrides, Repository};

/// Where worker pods mount the model repository.
pub const REPOSITORY_MOUNT: &str = "/var/lib/lantern/models";

/// Metadata for an object that `owner` controls (and the garbage collector deletes with it).
pub fn owned_metadata<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> Value {
    json!({
        "name": name,
        "namespace": owner.meta().namespace,
        "labels": labels,
        "ownerReferences": owner.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
    })
}

/// The labels of every worker pod and Service, plus `owner_label` naming the owner.
pub fn worker_labels(owner_label: &str, owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "lantern-worker".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "lantern-operator".to_owned()),
        (owner_label.to_owned(), owner.to_owned()),
    ])
}

/// The pod volume of a model repository claim, and the container's mount of it at
/// [`REPOSITORY_MOUNT`].
pub fn repository_volume(repository: &Repository) -> (Value, Value) {
    let volume = json!({"name": "repository", "persistentVolumeClaim": {"claimName": repository.claim_name}});
    let mut mount = json!({"name": "repository", "mountPath": REPOSITORY_MOUNT});
    if let Some(sub_path) = &repository.sub_path {
        mount["subPath"] = json!(sub_path);
    }
    (volume, mount)
}

/// The worker container's security context: not root, nothing written outside its volumes, no
/// privileges.
pub fn worker_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// Copies the user's scheduling overrides into a pod spec.
pub fn apply_overrides(pod_spec: &mut Value, overrides: Option<&PodOverrides>) {
    let Some(overrides) = overrides else { return };
    let overrides = serde_json::to_value(overrides).unwrap_or_default();
    for (field, value) in overrides.as_object().into_iter().flatten() {
        pod_spec[field] = value.clone();
    }
}
