//! What every object the operator makes shares: owner metadata, the model repository volume, the
//! worker container's hardening and the user's pod overrides. Pure functions to k8s-openapi's
//! typed structs, which each controller's own `objects` module assembles into objects: a field
//! misspelt here does not compile, where a `json!` key would be dropped silently.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    HostPathVolumeSource, KeyToPath, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, ResourceRequirements, SeccompProfile, SecretEnvSource, SecretVolumeSource, SecurityContext, ServicePort,
    Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use lantern_contract::env;

use crate::crd::{Device, PodOverrides, Repository};

/// Where worker pods mount the model repository.
pub const REPOSITORY_MOUNT: &str = "/var/lib/lantern/models";

/// Metadata for an object that `owner` controls (and the garbage collector deletes with it).
pub fn owned_metadata<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        owner_references: Some(owner.controller_owner_ref(&()).into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// The labels of every worker pod and Service, plus `owner_label` naming the owner.
pub fn worker_labels(owner_label: &str, owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "lantern-worker".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "lantern-operator".to_owned()),
        (owner_label.to_owned(), owner.to_owned()),
    ])
}

/// A label selector matching exactly `labels`.
pub fn match_labels<const N: usize>(labels: [(&str, &str); N]) -> LabelSelector {
    let labels = labels.into_iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect();
    LabelSelector { match_labels: Some(labels), ..LabelSelector::default() }
}

/// An environment variable with a literal value.
pub fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.into()), value_from: None }
}

/// `POD_IP`, the pod's own address, for the variables that name a listen address.
pub fn pod_ip_var() -> EnvVar {
    let field = ObjectFieldSelector { field_path: "status.podIP".to_owned(), api_version: None };
    EnvVar {
        name: "POD_IP".to_owned(),
        value: None,
        value_from: Some(EnvVarSource { field_ref: Some(field), ..EnvVarSource::default() }),
    }
}

/// A read-only mount of the volume `volume` at `directory`.
pub fn read_only_mount(volume: &str, directory: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: directory.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// A TCP port, for a NetworkPolicy rule.
pub fn tcp_port(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort { protocol: Some("TCP".to_owned()), port: Some(IntOrString::Int(port.into())), end_port: None }
}

/// A named port of a worker container.
pub fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort { name: Some(name.to_owned()), container_port: port.into(), ..ContainerPort::default() }
}

/// A named Service port that forwards to the same port of the pods.
pub fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: port.into(),
        target_port: Some(IntOrString::Int(port.into())),
        ..ServicePort::default()
    }
}

/// Where worker pods keep a remote repository's files.
pub const CACHE_MOUNT: &str = "/var/cache/lantern/models";

/// The node cache's budget when the resource does not say.
pub const DEFAULT_CACHE_MIB: u64 = 20 * 1024;

/// What a worker container needs to reach a model repository.
#[derive(Clone, Debug, PartialEq)]
pub struct RepositoryAccess {
    /// The claim, or the node cache of a remote repository.
    pub volume: Volume,
    /// Where the container mounts it: [`REPOSITORY_MOUNT`] or [`CACHE_MOUNT`].
    pub mount: VolumeMount,
    /// `LANTERN_REPOSITORY` (the mount or the URI) and the cache's settings.
    pub env: Vec<EnvVar>,
    /// The Secret with the store's endpoint and credentials, as environment variables.
    pub env_from: Vec<EnvFromSource>,
    /// For an `oci://` repository with a Secret: its `.dockerconfigjson` (if it has one) as the
    /// file `LANTERN_OCI_AUTH_FILE` names.
    pub registry_auth: Option<(Volume, VolumeMount)>,
}

/// Where an `oci://` repository's Docker config file is mounted.
pub const REGISTRY_AUTH_DIR: &str = "/var/run/secrets/lantern/registry";

/// A claim mounted at [`REPOSITORY_MOUNT`], or a URI with its Secret's variables and a cache
/// volume (an emptyDir limited to the budget, or the node's directory) at [`CACHE_MOUNT`].
pub fn repository_access(repository: &Repository) -> RepositoryAccess {
    if let Some(claim_name) = &repository.claim_name {
        let claim = PersistentVolumeClaimVolumeSource { claim_name: claim_name.clone(), read_only: None };
        let volume =
            Volume { name: "repository".to_owned(), persistent_volume_claim: Some(claim), ..Volume::default() };
        let mount = VolumeMount {
            name: "repository".to_owned(),
            mount_path: REPOSITORY_MOUNT.to_owned(),
            sub_path: repository.sub_path.clone(),
            ..VolumeMount::default()
        };
        return RepositoryAccess {
            volume,
            mount,
            env: vec![env_var(env::REPOSITORY, REPOSITORY_MOUNT)],
            env_from: vec![],
            registry_auth: None,
        };
    }
    let cache = repository.cache.clone().unwrap_or_default();
    let budget = cache.size_mib.unwrap_or(DEFAULT_CACHE_MIB);
    let volume = match &cache.host_path {
        Some(path) => Volume {
            name: "model-cache".to_owned(),
            host_path: Some(HostPathVolumeSource { path: path.clone(), type_: Some("DirectoryOrCreate".to_owned()) }),
            ..Volume::default()
        },
        None => Volume {
            name: "model-cache".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource { medium: None, size_limit: Some(Quantity(format!("{budget}Mi"))) }),
            ..Volume::default()
        },
    };
    let mut env = vec![
        env_var(env::REPOSITORY, repository.uri.clone().unwrap_or_default()),
        env_var(env::CACHE_DIR, CACHE_MOUNT),
        env_var(env::CACHE_BUDGET_MIB, budget.to_string()),
    ];
    let oci_secret =
        repository.secret_ref.as_ref().filter(|_| repository.uri.as_ref().is_some_and(|u| u.starts_with("oci://")));
    let registry_auth = oci_secret.map(|secret| {
        let (mut volume, mount) =
            secret_file_volume("registry-auth", &secret.name, ".dockerconfigjson", "config.json", REGISTRY_AUTH_DIR);
        // An opaque Secret (username and password keys) has no such key: no file, no error.
        if let Some(source) = volume.secret.as_mut() {
            source.optional = Some(true);
        }
        env.push(env_var(env::OCI_AUTH_FILE, format!("{REGISTRY_AUTH_DIR}/config.json")));
        (volume, mount)
    });
    let env_from = repository
        .secret_ref
        .iter()
        .map(|secret| EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: secret.name.clone(), optional: Some(false) }),
            ..EnvFromSource::default()
        })
        .collect();
    let mount =
        VolumeMount { name: "model-cache".to_owned(), mount_path: CACHE_MOUNT.to_owned(), ..VolumeMount::default() };
    RepositoryAccess { volume, mount, env, env_from, registry_auth }
}

/// The user and group workers run as (the images' `nonroot`).
pub const WORKER_UID: u32 = 65532;

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }
}

/// The worker container's security context: not root, nothing written outside its volumes, no
/// privileges, the runtime's default seccomp profile.
pub fn worker_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(WORKER_UID.into()),
        run_as_group: Some(WORKER_UID.into()),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// Where every container of a hardened pod may write besides its volumes: an emptyDir, as the
/// root filesystem is read-only (training stages each version there before publishing it).
pub const SCRATCH_MOUNT: &str = "/tmp";

/// Pod-level hardening of a worker pod: the same user and seccomp profile for every container,
/// scratch space at [`SCRATCH_MOUNT`] for each, and no service-account token (workers never call
/// the Kubernetes API).
pub fn harden_pod(pod_spec: &mut PodSpec) {
    let scratch = "scratch";
    pod_spec.volumes.get_or_insert_default().push(Volume {
        name: scratch.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    for container in &mut pod_spec.containers {
        container.volume_mounts.get_or_insert_default().push(VolumeMount {
            name: scratch.to_owned(),
            mount_path: SCRATCH_MOUNT.to_owned(),
            ..VolumeMount::default()
        });
    }
    pod_spec.security_context = Some(PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(WORKER_UID.into()),
        run_as_group: Some(WORKER_UID.into()),
        fs_group: Some(WORKER_UID.into()),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    });
    pod_spec.automount_service_account_token = Some(false);
}

/// A pod volume holding one key of a Secret as the file `file`, and the container's read-only
/// mount of it at `directory`.
pub fn secret_file_volume(volume: &str, secret: &str, key: &str, file: &str, directory: &str) -> (Volume, VolumeMount) {
    let item = KeyToPath { key: key.to_owned(), path: file.to_owned(), mode: None };
    let source = SecretVolumeSource {
        secret_name: Some(secret.to_owned()),
        items: Some(vec![item]),
        ..SecretVolumeSource::default()
    };
    let volume_spec = Volume { name: volume.to_owned(), secret: Some(source), ..Volume::default() };
    (volume_spec, read_only_mount(volume, directory))
}

/// The NetworkPolicy peer that is the operator's own pods.
pub fn operator_peer(operator_namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(match_labels([("kubernetes.io/metadata.name", operator_namespace)])),
        pod_selector: Some(match_labels([("app.kubernetes.io/name", "lantern-operator")])),
        ip_block: None,
    }
}

/// The resource name of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Gives the worker `container` its `resources` and puts it on `device`: `LANTERN_DEVICE` for
/// the worker and, for CUDA, GPUs in the limits: the count `resources` names (as a limit or a
/// request), else one. Kubernetes takes extended resources as limits and refuses a request
/// without one.
pub fn place_on_device(container: &mut Container, resources: Option<&ResourceRequirements>, device: Device) {
    let mut resources = resources.cloned().unwrap_or_default();
    if device == Device::Cuda {
        let requested = resources.requests.as_ref().and_then(|requests| requests.get(GPU_RESOURCE)).cloned();
        let count = requested.unwrap_or_else(|| Quantity("1".to_owned()));
        resources.limits.get_or_insert_default().entry(GPU_RESOURCE.to_owned()).or_insert(count);
        container.env.get_or_insert_default().push(env_var(env::DEVICE, "cuda"));
    }
    if resources != ResourceRequirements::default() {
        container.resources = Some(resources);
    }
}

/// Copies the user's scheduling overrides into a pod spec.
pub fn apply_overrides(pod_spec: &mut PodSpec, overrides: Option<&PodOverrides>) {
    let Some(PodOverrides { node_selector, tolerations, service_account_name, priority_class_name }) = overrides else {
        return;
    };
    if node_selector.is_some() {
        pod_spec.node_selector.clone_from(node_selector);
    }
    if tolerations.is_some() {
        pod_spec.tolerations.clone_from(tolerations);
    }
    if service_account_name.is_some() {
        pod_spec.service_account_name.clone_from(service_account_name);
    }
    if priority_class_name.is_some() {
        pod_spec.priority_class_name.clone_from(priority_class_name);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn placed(resources: Value, device: Device) -> Value {
        let mut container =
            Container { name: "worker".into(), env: Some(vec![env_var(env::RANK, "0")]), ..Container::default() };
        let resources: Option<ResourceRequirements> = serde_json::from_value(resources).unwrap();
        place_on_device(&mut container, resources.as_ref(), device);
        serde_json::to_value(container).unwrap()
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
