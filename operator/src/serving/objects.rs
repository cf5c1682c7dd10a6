//! The objects an InferenceService owns, as pure functions of it: the Service clients connect
//! to, and the worker pods behind it.
//!
//! Pods belong to a *revision*: a hash of everything that needs a new process to change (image,
//! resources, device, batching and generation limits, scheduling, the repository, the adapter
//! models served). Changing versions, labels or the traffic split changes no pod; it is pushed to
//! the running workers.

use std::collections::BTreeMap;
use std::hash::Hasher;

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, Pod, PodSpec, Probe, Secret, SecretVolumeSource, Service, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use lantern_contract::env;

use super::fleet::Fleet;
use crate::crd::{Device, InferenceService, Repository};
use crate::credentials::{self, TOKEN_KEY};
use crate::objects::{self, env_var, match_labels, owned_metadata, tcp_port};

/// The serving port of every worker, for gRPC and HTTP alike.
pub const SERVING_PORT: u16 = 8500;
/// The worker's management port (`ModelService`, the repository APIs): the operator's only.
pub const MANAGEMENT_PORT: u16 = 8501;
/// Where a worker finds its management token.
const MANAGEMENT_TOKEN_DIR: &str = "/var/run/lantern/management";
/// Where a worker or router finds the service's certificate and key ([`tls_volume`]).
const TLS_DIR: &str = "/var/run/lantern/tls";
pub const TLS_CERT_FILE: &str = "/var/run/lantern/tls/tls.crt";
pub const TLS_KEY_FILE: &str = "/var/run/lantern/tls/tls.key";
/// Where a worker finds the API keys.
const API_KEYS_DIR: &str = "/var/run/lantern/api-keys";

pub const SERVICE_LABEL: &str = "lantern.dev/inference-service";
pub const REVISION_LABEL: &str = "lantern.dev/revision";
/// The pod's slot in its revision, `0..replicas`.
pub const INDEX_LABEL: &str = "lantern.dev/index";

fn name(service: &InferenceService) -> &str {
    service.metadata.name.as_deref().unwrap_or_default()
}

fn service_labels(service: &InferenceService) -> BTreeMap<String, String> {
    objects::worker_labels(SERVICE_LABEL, name(service))
}

/// The label selector of the service's pods (for the scale subresource and the Service).
pub fn selector(service: &InferenceService) -> String {
    format!("{SERVICE_LABEL}={}", name(service))
}

/// The service's TLS Secret as a volume and its mount at [`TLS_CERT_FILE`] and [`TLS_KEY_FILE`],
/// for a service with `tls`.
pub fn tls_volume(service: &InferenceService) -> Option<(Volume, VolumeMount)> {
    let tls = service.spec.tls.as_ref()?;
    let certificate = SecretVolumeSource { secret_name: Some(tls.secret_name.clone()), ..Default::default() };
    let volume = Volume { name: "tls".to_owned(), secret: Some(certificate), ..Volume::default() };
    Some((volume, objects::read_only_mount("tls", TLS_DIR)))
}

/// Where clients in the cluster connect.
pub fn url(service: &InferenceService) -> String {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let scheme = if service.spec.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}.{namespace}.svc:{SERVING_PORT}", name(service))
}

/// The memory limit a pod gets when the service's `resources` set none, once a worker has
/// reported the model's size: room for two versions at once (a canary beside the stable one),
/// each with its KV cache (`generation.kvCacheMib`, default 256 MiB), and 512 MiB for the runtime,
/// rounded up to a power of two so that versions of about the same size keep the same pods.
pub fn default_memory_limit(service: &InferenceService, largest_version_bytes: u64) -> Option<String> {
    let limits = service.spec.resources.as_ref().and_then(|r| r.limits.as_ref());
    if largest_version_bytes == 0 || limits.is_some_and(|l| l.contains_key("memory")) {
        return None;
    }
    let kv_mib = service.spec.generation.as_ref().and_then(|g| g.kv_cache_mib).unwrap_or(256);
    let mib = 2 * largest_version_bytes.div_ceil(1 << 20) + 2 * u64::from(kv_mib) + 512;
    Some(format!("{}Mi", mib.next_power_of_two()))
}

/// The size that sizes the default memory limit: the largest version the pods report now or
/// reported before (`previous`, from the status), so that a pass in which no pod answers, or
/// only pods still loading answer, does not drop the limit and replace every pod.
pub fn model_bytes(previous: Option<u64>, fleet: &Fleet) -> u64 {
    previous.unwrap_or(0).max(fleet.largest_version_bytes)
}

/// The models a pod serves, each with its version policy until the operator pushes the model's
/// config: the service's model (the worker's `--version-policy`), then its adapter models
/// (`--model-policy`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodModels {
    pub policy: String,
    pub adapters: Vec<PodAdapter>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodAdapter {
    pub model: String,
    pub policy: String,
}

/// The revision of the pods `service` wants, running `image` (the service's own when set) with
/// models from `repository`, the `adapters` models beside the base and the default `memory`
/// limit: 10 hex digits of a stable hash (FNV-1a) of the runtime settings. The starting
/// policies are not part of it.
pub fn revision(
    service: &InferenceService,
    repository: &Repository,
    image: &str,
    memory: Option<&str>,
    adapters: &[PodAdapter],
) -> String {
    let spec = &service.spec;
    let mut runtime = json!({
        "image": spec.image.as_deref().unwrap_or(image),
        "model": spec.model,
        "repository": repository,
        "resources": spec.resources,
        "batching": spec.batching,
        "generation": spec.generation,
        "template": spec.template,
    });
    // Only off the default, so that services from before the field keep their pods.
    if let Some(device) = spec.device.filter(|device| *device != Device::default()) {
        runtime["device"] = json!(device);
    }
    if let Some(keys) = &spec.api_keys {
        runtime["apiKeys"] = json!(keys);
    }
    if let Some(tls) = &spec.tls {
        runtime["tls"] = json!(tls);
    }
    if let Some(memory) = memory {
        runtime["memory"] = json!(memory);
    }
    if !adapters.is_empty() {
        runtime["adapters"] = json!(adapters.iter().map(|a| a.model.as_str()).collect::<Vec<_>>());
    }
    let mut hash = fnv::FnvHasher::default();
    hash.write(runtime.to_string().as_bytes());
    let hash = hash.finish();
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

pub fn pod_name(service: &InferenceService, revision: &str, index: u32) -> String {
    format!("{}-{revision}-{index}", name(service))
}

/// The Service clients connect to, in front of the router's pods.
pub fn service(service: &InferenceService) -> Service {
    Service {
        metadata: owned_metadata(service, name(service).to_owned(), service_labels(service)),
        spec: Some(ServiceSpec {
            selector: Some(super::router::service_selector(service)),
            ports: Some(vec![objects::service_port("serving", SERVING_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Secret holding the token the operator sends on management calls to the service's
/// workers; created once with a random token, never rewritten.
pub fn management_secret_name(service: &InferenceService) -> String {
    format!("{}-management", name(service))
}

/// The management Secret, with a fresh token (kept only if no such Secret exists yet).
pub fn management_secret(service: &InferenceService) -> Secret {
    credentials::token_secret(service, management_secret_name(service), service_labels(service))
}

/// Who may reach the service's pods: anyone on the serving port, only the operator's pods on
/// the management port.
pub fn network_policy(service: &InferenceService, operator_namespace: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: owned_metadata(service, name(service).to_owned(), service_labels(service)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels([(SERVICE_LABEL, name(service))])),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: None, ports: Some(vec![tcp_port(SERVING_PORT)]) },
                NetworkPolicyIngressRule {
                    from: Some(vec![objects::operator_peer(operator_namespace)]),
                    ports: Some(vec![tcp_port(MANAGEMENT_PORT)]),
                },
            ]),
            egress: None,
        }),
    }
}

/// One worker pod: slot `index` of `revision`, serving `models` from `repository`, with the
/// default `memory` limit when the spec gives none.
pub fn pod(
    service: &InferenceService,
    repository: &Repository,
    image: &str,
    revision: &str,
    index: u32,
    models: &PodModels,
    memory: Option<&str>,
) -> Pod {
    let spec = &service.spec;
    let mut labels = service_labels(service);
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    labels.insert(INDEX_LABEL.to_owned(), index.to_string());
    let adapters = &models.adapters;
    let names: Vec<&str> =
        std::iter::once(spec.model.as_str()).chain(adapters.iter().map(|a| a.model.as_str())).collect();
    let mut env = vec![
        objects::pod_ip_var(),
        env_var(env::LISTEN, format!("$(POD_IP):{SERVING_PORT}")),
        env_var(env::MANAGEMENT_LISTEN, format!("$(POD_IP):{MANAGEMENT_PORT}")),
        env_var(env::MANAGEMENT_TOKEN_FILE, format!("{MANAGEMENT_TOKEN_DIR}/{TOKEN_KEY}")),
        env_var(env::MODELS, names.join(",")),
        env_var(env::VERSION_POLICY, models.policy.as_str()),
    ];
    if !adapters.is_empty() {
        let policies: Vec<String> = adapters.iter().map(|a| format!("{}={}", a.model, a.policy)).collect();
        env.push(env_var(env::MODEL_POLICIES, policies.join(" ")));
    }
    let batching = spec.batching.clone().unwrap_or_default();
    let generation = spec.generation.clone().unwrap_or_default();
    let settings = [
        (env::MAX_BATCH_SIZE, batching.max_batch_size.map(u64::from)),
        (env::BATCH_DELAY_US, batching.batch_delay_micros),
        (env::QUEUE_CAPACITY, batching.queue_capacity.map(u64::from)),
        (env::KV_CACHE_MIB, generation.kv_cache_mib.map(u64::from)),
        (env::MAX_RUNNING_SEQUENCES, generation.max_running_sequences.map(u64::from)),
        (env::MAX_WAITING_SEQUENCES, generation.max_waiting_sequences.map(u64::from)),
        (env::MAX_STEP_TOKENS, generation.max_step_tokens.map(u64::from)),
    ];
    env.extend(settings.into_iter().filter_map(|(name, value)| Some(env_var(name, value?.to_string()))));
    let access = objects::repository_access(repository);
    env.extend(access.env);
    let mut repository_mount = access.mount;
    // Serving only reads a claim; a remote repository's cache is written.
    repository_mount.read_only = repository.claim_name.as_ref().map(|_| true);
    let (token_volume, token_mount) = objects::secret_file_volume(
        "management-token",
        &management_secret_name(service),
        TOKEN_KEY,
        TOKEN_KEY,
        MANAGEMENT_TOKEN_DIR,
    );
    let mut volumes = vec![access.volume, token_volume];
    let mut mounts = vec![repository_mount, token_mount];
    if let Some((volume, mount)) = access.registry_auth {
        volumes.push(volume);
        mounts.push(mount);
    }
    if let Some(keys) = &spec.api_keys {
        let (volume, mount) = objects::secret_file_volume("api-keys", &keys.name, &keys.key, "keys", API_KEYS_DIR);
        volumes.push(volume);
        mounts.push(mount);
        env.push(env_var(env::API_KEYS_FILE, format!("{API_KEYS_DIR}/keys")));
    }
    if let Some((volume, mount)) = tls_volume(service) {
        volumes.push(volume);
        mounts.push(mount);
        env.push(env_var(env::TLS_CERT_FILE, TLS_CERT_FILE));
        env.push(env_var(env::TLS_KEY_FILE, TLS_KEY_FILE));
    }
    let scheme = if spec.tls.is_some() { "HTTPS" } else { "HTTP" };
    let http_get = |path: String| HTTPGetAction {
        path: Some(path),
        port: IntOrString::Int(SERVING_PORT.into()),
        scheme: Some(scheme.to_owned()),
        ..HTTPGetAction::default()
    };
    let mut container = Container {
        name: "worker".to_owned(),
        image: Some(spec.image.as_deref().unwrap_or(image).to_owned()),
        args: Some(vec!["serve".to_owned()]),
        env: Some(env),
        env_from: Some(access.env_from).filter(|e| !e.is_empty()),
        ports: Some(vec![
            objects::container_port("serving", SERVING_PORT),
            objects::container_port("management", MANAGEMENT_PORT),
        ]),
        volume_mounts: Some(mounts),
        // Ready once a version of the model serves: the worker's own per-version state.
        readiness_probe: Some(Probe {
            http_get: Some(http_get(format!("/v2/models/{}/ready", spec.model))),
            period_seconds: Some(2),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/v2/health/live".to_owned())),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        security_context: Some(objects::worker_security_context()),
        ..Container::default()
    };
    objects::place_on_device(&mut container, spec.resources.as_ref(), spec.device.unwrap_or_default());
    if let Some(memory) = memory {
        let resources = container.resources.get_or_insert_default();
        resources.limits.get_or_insert_default().insert("memory".to_owned(), Quantity(memory.to_owned()));
    }
    let mut pod_spec = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        // The worker drains in-flight requests for up to 30 s after SIGTERM.
        termination_grace_period_seconds: Some(35),
        ..PodSpec::default()
    };
    objects::harden_pod(&mut pod_spec);
    objects::apply_overrides(&mut pod_spec, spec.template.as_ref());
    Pod {
        metadata: owned_metadata(service, pod_name(service, revision, index), labels),
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::test_service;

    /// The base alone, starting with `policy`.
    fn starting(policy: &str) -> PodModels {
        PodModels { policy: policy.to_owned(), adapters: Vec::new() }
    }

    fn repository() -> Repository {
        Repository { sub_path: Some("team-a".into()), ..Repository::claim("models") }
    }

    #[test]
    fn a_pod_serves_the_model_from_the_repository_and_is_ready_by_the_workers_own_state() {
        let service = test_service(json!({
            "batching": {"maxBatchSize": 32},
            "resources": {"limits": {"cpu": "2"}},
            "template": {"nodeSelector": {"pool": "cpu"}},
        }));
        let pod =
            serde_json::to_value(pod(&service, &repository(), "worker:1", "abc", 1, &starting("specific:3"), None))
                .unwrap();
        assert_eq!(pod["metadata"]["name"], "adder-abc-1");
        assert_eq!(pod["metadata"]["labels"][SERVICE_LABEL], "adder");
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], "abc");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "InferenceService");
        let container = &pod["spec"]["containers"][0];
        let env: BTreeMap<&str, &str> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        assert_eq!(env[env::LISTEN], "$(POD_IP):8500");
        assert_eq!(env[env::MODELS], "adder");
        assert_eq!(env[env::VERSION_POLICY], "specific:3");
        assert_eq!(env[env::MAX_BATCH_SIZE], "32");
        assert!(!env.contains_key("LANTERN_KV_CACHE_MIB"), "unset limits keep the worker's defaults");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/v2/models/adder/ready");
        assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(container["volumeMounts"][0]["subPath"], "team-a");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert_eq!(env[env::MANAGEMENT_LISTEN], "$(POD_IP):8501");
        assert_eq!(env[env::MANAGEMENT_TOKEN_FILE], "/var/run/lantern/management/token");
        assert_eq!(pod["spec"]["volumes"][1]["secret"]["secretName"], "adder-management");
        assert_eq!(container["volumeMounts"][1]["mountPath"], "/var/run/lantern/management");
        assert!(!env.contains_key("LANTERN_API_KEYS_FILE"), "inference is open without apiKeys");
        assert_eq!(pod["spec"]["nodeSelector"]["pool"], "cpu");
        assert_eq!(container["resources"]["limits"]["cpu"], "2");
    }

    #[test]
    fn a_remote_repository_is_a_uri_with_its_secret_as_environment_and_a_writable_cache() {
        let service = test_service(json!({}));
        let pod_with = |repository: &Repository| {
            serde_json::to_value(pod(&service, repository, "worker:1", "abc", 0, &starting("latest:1"), None)).unwrap()
        };
        let remote: Repository = serde_json::from_value(json!({
            "uri": "s3://models/repo",
            "secretRef": {"name": "s3-credentials"},
            "cache": {"sizeMib": 4096},
        }))
        .unwrap();
        let pod = pod_with(&remote);
        let container = &pod["spec"]["containers"][0];
        let env = container["env"].as_array().unwrap();
        for (name, value) in [
            (env::REPOSITORY, "s3://models/repo"),
            (env::CACHE_DIR, "/var/cache/lantern/models"),
            (env::CACHE_BUDGET_MIB, "4096"),
        ] {
            assert!(env.contains(&json!({"name": name, "value": value})), "{name}: {env:?}");
        }
        assert_eq!(container["envFrom"], json!([{"secretRef": {"name": "s3-credentials", "optional": false}}]));
        assert_eq!(pod["spec"]["volumes"][0], json!({"name": "model-cache", "emptyDir": {"sizeLimit": "4096Mi"}}));
        assert_eq!(
            container["volumeMounts"][0],
            json!({"name": "model-cache", "mountPath": "/var/cache/lantern/models"})
        );
        // On the node, the cache outlives pods and is shared by them.
        let on_node = Repository {
            cache: Some(crate::crd::RepositoryCache {
                host_path: Some("/var/lib/lantern-cache".into()),
                size_mib: None,
            }),
            ..remote
        };
        let pod = pod_with(&on_node);
        let volume = &pod["spec"]["volumes"][0];
        assert_eq!(volume["hostPath"], json!({"path": "/var/lib/lantern-cache", "type": "DirectoryOrCreate"}));
        assert!(
            pod["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": env::CACHE_BUDGET_MIB, "value": "20480"}))
        );
        // A registry's Secret may be a dockerconfigjson one: its key is mounted, optionally.
        let registry = Repository { uri: Some("oci://ghcr.io/acme/models".into()), ..on_node.clone() };
        let pod = pod_with(&Repository { secret_ref: Some(crate::crd::SecretRef { name: "pull".into() }), ..registry });
        let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "registry-auth").unwrap();
        assert_eq!(
            volume["secret"],
            json!({"secretName": "pull", "items": [{"key": ".dockerconfigjson", "path": "config.json"}], "optional": true})
        );
        let container = &pod["spec"]["containers"][0];
        let auth_file = json!({"name": env::OCI_AUTH_FILE, "value": "/var/run/secrets/lantern/registry/config.json"});
        assert!(container["env"].as_array().unwrap().contains(&auth_file));
        assert!(container["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "registry-auth"));
        // The operator's defaults (the chart's modelCache) fill what the resource leaves out.
        let defaults = crate::crd::RepositoryCache { host_path: Some("/srv/cache".into()), size_mib: Some(512) };
        let own_size = Repository {
            cache: Some(crate::crd::RepositoryCache { host_path: None, size_mib: Some(100) }),
            ..on_node.clone()
        };
        let filled = own_size.with_cache_defaults(&defaults).cache.unwrap();
        assert_eq!((filled.host_path.as_deref(), filled.size_mib), (Some("/srv/cache"), Some(100)));
        assert_eq!(
            on_node.with_cache_defaults(&defaults).cache.unwrap().host_path.as_deref(),
            Some("/var/lib/lantern-cache")
        );
        assert_eq!(repository().with_cache_defaults(&defaults), repository(), "a claim has no cache");
        // A claim is mounted read-only, with no Secret.
        let pod = pod_with(&repository());
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][0]["readOnly"], true);
        assert!(pod["spec"]["containers"][0]["envFrom"].is_null());
    }

    #[test]
    fn api_keys_from_a_secret_are_mounted_for_the_worker() {
        let service = test_service(json!({"apiKeys": {"name": "team-keys"}}));
        let pod = serde_json::to_value(pod(&service, &repository(), "worker:1", "abc", 0, &starting("latest:1"), None))
            .unwrap();
        let volume = &pod["spec"]["volumes"][2];
        assert_eq!(volume["secret"]["secretName"], "team-keys");
        assert_eq!(volume["secret"]["items"][0], json!({"key": "keys", "path": "keys"}));
        let env = &pod["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "LANTERN_API_KEYS_FILE", "value": "/var/run/lantern/api-keys/keys"}))
        );
    }

    #[test]
    fn without_resources_a_pod_gets_a_memory_limit_from_the_model_size_and_kv_budget() {
        let service = test_service(json!({}));
        assert_eq!(default_memory_limit(&service, 0), None, "no size reported yet");
        // 2 x 70 MiB + 2 x 256 MiB + 512 MiB = 1164 MiB, rounded up to 2048 MiB.
        assert_eq!(default_memory_limit(&service, 70 << 20).as_deref(), Some("2048Mi"));
        let small_kv = test_service(json!({"generation": {"kvCacheMib": 16}}));
        assert_eq!(default_memory_limit(&small_kv, 1 << 20).as_deref(), Some("1024Mi"));
        let given = test_service(json!({"resources": {"limits": {"memory": "3Gi"}}}));
        assert_eq!(default_memory_limit(&given, 70 << 20), None, "the user's limit stands");
        let cpu_only = test_service(json!({"resources": {"limits": {"cpu": "2"}}}));
        let pod =
            serde_json::to_value(pod(&cpu_only, &repository(), "w", "abc", 0, &starting("latest:1"), Some("2048Mi")))
                .unwrap();
        assert_eq!(pod["spec"]["containers"][0]["resources"]["limits"], json!({"cpu": "2", "memory": "2048Mi"}));
    }

    #[test]
    fn the_size_behind_the_memory_limit_survives_a_pass_with_no_sizes_and_only_grows() {
        let fleet = |bytes| Fleet { largest_version_bytes: bytes, ..Fleet::default() };
        assert_eq!(model_bytes(None, &fleet(0)), 0, "nothing loaded yet");
        assert_eq!(model_bytes(None, &fleet(70 << 20)), 70 << 20);
        assert_eq!(model_bytes(Some(70 << 20), &fleet(0)), 70 << 20, "no pod answered, or none has loaded");
        assert_eq!(model_bytes(Some(70 << 20), &fleet(50 << 20)), 70 << 20);
        assert_eq!(model_bytes(Some(70 << 20), &fleet(90 << 20)), 90 << 20, "a larger version");
    }

    #[test]
    fn tls_from_a_secret_is_mounted_and_probed_over_https() {
        let service = test_service(json!({"tls": {"secretName": "adder-cert"}}));
        let pod = serde_json::to_value(pod(&service, &repository(), "worker:1", "abc", 0, &starting("latest:1"), None))
            .unwrap();
        assert_eq!(pod["spec"]["volumes"][2]["secret"]["secretName"], "adder-cert");
        let container = &pod["spec"]["containers"][0];
        let env = container["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "LANTERN_TLS_CERT_FILE", "value": "/var/run/lantern/tls/tls.crt"})));
        assert!(env.contains(&json!({"name": "LANTERN_TLS_KEY_FILE", "value": "/var/run/lantern/tls/tls.key"})));
        assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
        assert_eq!(url(&service), "https://adder.ml.svc:8500");
        let revision_of = |service: &InferenceService| revision(service, &repository(), "worker:1", None, &[]);
        assert_ne!(revision_of(&service), revision_of(&test_service(json!({}))));
    }

    #[test]
    fn the_network_policy_admits_anyone_to_serving_and_only_the_operator_to_management() {
        let policy = serde_json::to_value(network_policy(&test_service(json!({})), "lantern-system")).unwrap();
        assert_eq!(policy["spec"]["podSelector"]["matchLabels"][SERVICE_LABEL], "adder");
        let ingress = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress[0]["ports"][0]["port"], 8500);
        assert!(ingress[0].get("from").is_none());
        assert_eq!(ingress[1]["ports"][0]["port"], 8501);
        let operator = &ingress[1]["from"][0];
        assert_eq!(operator["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "lantern-system");
        assert_eq!(operator["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "lantern-operator");
        let secret = serde_json::to_value(management_secret(&test_service(json!({})))).unwrap();
        assert_eq!(secret["metadata"]["name"], "adder-management");
    }

    #[test]
    fn only_runtime_settings_change_the_revision() {
        let base = test_service(json!({}));
        let revision_of = |service: &InferenceService| revision(service, &repository(), "worker:1", None, &[]);
        let same =
            test_service(json!({"replicas": 5, "rollout": {"steps": [50, 100]}, "versionPolicy": {"specific": [1]}}));
        assert_eq!(revision_of(&base), revision_of(&same));
        assert_eq!(revision_of(&base).len(), 10);
        for change in [
            json!({"image": "worker:2"}),
            json!({"batching": {"maxBatchSize": 8}}),
            json!({"resources": {"limits": {"cpu": "4"}}}),
            json!({"device": "cuda"}),
            json!({"apiKeys": {"name": "keys"}}),
        ] {
            assert_ne!(revision_of(&base), revision_of(&test_service(change.clone())), "{change}");
        }
        assert_eq!(revision_of(&base), revision_of(&test_service(json!({"device": "cpu"}))), "the default device");
        assert_ne!(
            revision_of(&base),
            revision(&base, &repository(), "worker:2", None, &[]),
            "the operator's default image"
        );
        assert_ne!(
            revision_of(&base),
            revision(&base, &repository(), "worker:1", Some("1024Mi"), &[]),
            "a memory limit"
        );
        let adapter = |policy: &str| PodAdapter { model: "tickets".into(), policy: policy.into() };
        let with_adapter = revision(&base, &repository(), "worker:1", None, &[adapter("latest:1")]);
        assert_ne!(revision_of(&base), with_adapter, "an adapter model the workers must serve");
        let later = revision(&base, &repository(), "worker:1", None, &[adapter("specific:2")]);
        assert_eq!(with_adapter, later, "its versions are pushed, not a new pod");
    }

    #[test]
    fn adapter_models_are_served_beside_the_base_each_with_its_starting_policy() {
        let service = test_service(json!({}));
        let adapters = [
            PodAdapter { model: "tickets".into(), policy: "specific:2,3".into() },
            PodAdapter { model: "sku".into(), policy: "latest:1".into() },
        ];
        let models = PodModels { policy: "specific:1".into(), adapters: adapters.to_vec() };
        let pod = serde_json::to_value(pod(&service, &repository(), "w", "abc", 0, &models, None));
        let env = pod.unwrap()["spec"]["containers"][0]["env"].clone();
        let value = |name: &str| env.as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
        assert_eq!(value(env::MODELS), Some(json!("adder,tickets,sku")));
        assert_eq!(value(env::VERSION_POLICY), Some(json!("specific:1")));
        assert_eq!(value(env::MODEL_POLICIES), Some(json!("tickets=specific:2,3 sku=latest:1")));
    }

    #[test]
    fn the_service_selects_the_router_with_or_without_tls() {
        let service = serde_json::to_value(super::service(&test_service(json!({})))).unwrap();
        assert_eq!(service["spec"]["selector"], json!({super::super::router::ROUTER_LABEL: "adder"}));
        let tls = test_service(json!({"tls": {"secretName": "adder-tls"}}));
        let routed = serde_json::to_value(super::service(&tls)).unwrap();
        assert_eq!(routed["spec"]["selector"], json!({super::super::router::ROUTER_LABEL: "adder"}));
        assert_eq!(service["spec"]["ports"][0]["port"], 8500);
        assert_eq!(url(&test_service(json!({}))), "http://adder.ml.svc:8500");
        assert_eq!(url(&tls), "https://adder.ml.svc:8500");
    }
}
