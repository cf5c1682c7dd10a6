//! What every object the operator makes shares: owner metadata, the model repository volume, the
//! worker container's hardening and the user's pod overrides. Pure functions to JSON, which
//! each controller's own `objects` module assembles into typed objects.

use std::collections::BTreeMap;

use kube::Resource;
use serde_json::{Value, json};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use lantern_contract::env;

use crate::crd::{Device, PodOverrides, Repository};

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

/// The user and group workers run as (the images' `nonroot`).
pub const WORKER_UID: u32 = 65532;

/// The worker container's security context: not root, nothing written outside its volumes, no
/// privileges, the runtime's default seccomp profile.
pub fn worker_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// Pod-level hardening of a worker pod: the same user and seccomp profile for every container,
/// and no service-account token (workers never call the Kubernetes API).
pub fn harden_pod(pod_spec: &mut Value) {
    pod_spec["securityContext"] = json!({
        "runAsNonRoot": true,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "fsGroup": WORKER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    pod_spec["automountServiceAccountToken"] = json!(false);
}

/// A pod volume holding one key of a Secret as the file `file`, and the container's read-only
/// mount of it at `directory`.
pub fn secret_file_volume(volume: &str, secret: &str, key: &str, file: &str, directory: &str) -> (Value, Value) {
    let volume_json = json!({"name": volume, "secret": {"secretName": secret, "items": [{"key": key, "path": file}]}});
    (volume_json, json!({"name": volume, "mountPath": directory, "readOnly": true}))
}

/// The NetworkPolicy peer that is the operator's own pods.
pub fn operator_peer(operator_namespace: &str) -> Value {
    json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "lantern-operator"}},
    })
}

/// The resource name of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Gives the worker `container` its `resources` and puts it on `device`: `LANTERN_DEVICE` for
/// the worker and, for CUDA, GPUs in the limits: the count `resources` names (as a limit or a
/// request), else one. Kubernetes takes extended resources as limits and refuses a request
/// without one.
pub fn place_on_device(container: &mut Value, resources: Option<&ResourceRequirements>, device: Device) {
    let mut resources = resources.cloned().unwrap_or_default();
    if device == Device::Cuda {
        let requested = resources.requests.as_ref().and_then(|requests| requests.get(GPU_RESOURCE)).cloned();
        let count = requested.unwrap_or_else(|| Quantity("1".to_owned()));
        resources.limits.get_or_insert_default().entry(GPU_RESOURCE.to_owned()).or_insert(count);
        if let Some(env) = container["env"].as_array_mut() {
            env.push(json!({"name": env::DEVICE, "value": "cuda"}));
        }
    }
    if resources != ResourceRequirements::default() {
        container["resources"] = json!(resources);
    }
}

/// Copies the user's scheduling overrides into a pod spec.
pub fn apply_overrides(pod_spec: &mut Value, overrides: Option<&PodOverrides>) {
    let Some(overrides) = overrides else { return };
    let overrides = serde_json::to_value(overrides).unwrap_or_default();
    for (field, value) in overrides.as_object().into_iter().flatten() {
        pod_spec[field] = value.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(resources: Value, device: Device) -> Value {
        let mut container = json!({"name": "worker", "env": [{"name": "LANTERN_RANK", "value": "0"}]});
        let resources: Option<ResourceRequirements> = serde_json::from_value(resources).unwrap();
        place_on_device(&mut container, resources.as_ref(), device);
        container
    }

    #[test]
    fn a_cuda_worker_gets_one_gpu_and_says_so_to_the_worker() {
        let container = placed(json!({"limits": {"cpu": "4"}}), Device::Cuda);
        assert_eq!(container["resources"]["limits"], json!({"cpu": "4", "nvidia.com/gpu": "1"}));
        assert_eq!(container["env"][1], json!({"name": "LANTERN_DEVICE", "value": "cuda"}));
        let none_given = placed(Value::Null, Device::Cuda);
        assert_eq!(none_given["resources"], json!({"limits": {"nvidia.com/gpu": "1"}}));
    }

    #[test]
    fn a_gpu_count_the_user_names_is_kept() {
        let limits = placed(json!({"limits": {"nvidia.com/gpu": "2"}}), Device::Cuda);
        assert_eq!(limits["resources"]["limits"], json!({"nvidia.com/gpu": "2"}));
        let requests = placed(json!({"requests": {"nvidia.com/gpu": "2"}}), Device::Cuda);
        assert_eq!(
            requests["resources"],
            json!({"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}})
        );
    }

    #[test]
    fn a_cpu_worker_keeps_its_resources_and_environment() {
        let container = placed(json!({"limits": {"cpu": "2"}}), Device::Cpu);
        assert_eq!(container["resources"], json!({"limits": {"cpu": "2"}}));
        assert_eq!(container["env"].as_array().unwrap().len(), 1);
        assert!(placed(Value::Null, Device::Cpu).get("resources").is_none());
    }
}
