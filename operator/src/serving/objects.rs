//! The objects an InferenceService owns, as pure functions of it: the Service clients connect
//! to, and the worker pods behind it.
//!
//! Pods belong to a *revision*: a hash of everything that needs a new process to change (image,
//! resources, device, batching and generation limits, scheduling, the repository). Changing versions,
//! labels or the traffic split changes no pod; it is pushed to the running workers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::json;

use crate::crd::{Device, InferenceService, Repository};
use crate::objects::{self, REPOSITORY_MOUNT, owned_metadata};

/// The one port of every worker, for gRPC and HTTP alike.
pub const SERVING_PORT: u16 = 8500;

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

/// Where clients in the cluster connect.
pub fn url(service: &InferenceService) -> String {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    format!("http://{}.{namespace}.svc:{SERVING_PORT}", name(service))
}

/// The revision of the pods `service` wants, running `image` (the service's own when set) with
/// models from `repository`: 10 hex digits of a stable hash (FNV-1a) of the runtime settings.
pub fn revision(service: &InferenceService, repository: &Repository, image: &str) -> String {
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
    let hash = runtime
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

pub fn pod_name(service: &InferenceService, revision: &str, index: u32) -> String {
    format!("{}-{revision}-{index}", name(service))
}

/// The Service in front of the ready pods.
pub fn service(service: &InferenceService) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": owned_metadata(service, name(service).to_owned(), service_labels(service)),
        "spec": {
            "selector": {SERVICE_LABEL: name(service)},
            "ports": [{"name": "serving", "port": SERVING_PORT, "targetPort": SERVING_PORT}],
        },
    }))
    .expect("a Service built from known fields")
}

/// One worker pod: slot `index` of `revision`, serving the model from `repository` with
/// `policy` (the worker's `--version-policy`) until the operator pushes its config.
pub fn pod(
    service: &InferenceService,
    repository: &Repository,
    image: &str,
    revision: &str,
    index: u32,
    policy: &str,
) -> Pod {
    let spec = &service.spec;
    let mut labels = service_labels(service);
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    labels.insert(INDEX_LABEL.to_owned(), index.to_string());
    let mut env = vec![
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "LANTERN_LISTEN", "value": format!("$(POD_IP):{SERVING_PORT}")}),
        json!({"name": "LANTERN_REPOSITORY", "value": REPOSITORY_MOUNT}),
        json!({"name": "LANTERN_MODELS", "value": spec.model}),
        json!({"name": "LANTERN_VERSION_POLICY", "value": policy}),
    ];
    let batching = spec.batching.clone().unwrap_or_default();
    let generation = spec.generation.clone().unwrap_or_default();
    let settings = [
        ("LANTERN_MAX_BATCH_SIZE", batching.max_batch_size.map(u64::from)),
        ("LANTERN_BATCH_DELAY_US", batching.batch_delay_micros),
        ("LANTERN_QUEUE_CAPACITY", batching.queue_capacity.map(u64::from)),
        ("LANTERN_KV_CACHE_MIB", generation.kv_cache_mib.map(u64::from)),
        ("LANTERN_MAX_RUNNING_SEQUENCES", generation.max_running_sequences.map(u64::from)),
        ("LANTERN_MAX_WAITING_SEQUENCES", generation.max_waiting_sequences.map(u64::from)),
        ("LANTERN_MAX_STEP_TOKENS", generation.max_step_tokens.map(u64::from)),
    ];
    env.extend(
        settings.into_iter().filter_map(|(name, value)| Some(json!({"name": name, "value": value?.to_string()}))),
    );
    let (repository_volume, mut repository_mount) = objects::repository_volume(repository);
    repository_mount["readOnly"] = json!(true);
    let http_get = |path: String| json!({"path": path, "port": SERVING_PORT});
    let mut container = json!({
        "name": "worker",
        "image": spec.image.as_deref().unwrap_or(image),
        "args": ["serve"],
        "env": env,
        "ports": [{"name": "serving", "containerPort": SERVING_PORT}],
        "volumeMounts": [repository_mount],
        // Ready once a version of the model serves: the worker's own per-version state.
        "readinessProbe": {"httpGet": http_get(format!("/v2/models/{}/ready", spec.model)), "periodSeconds": 2},
        "livenessProbe": {"httpGet": http_get("/v2/health/live".to_owned()), "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": objects::worker_security_context(),
    });
    objects::place_on_device(&mut container, spec.resources.as_ref(), spec.device.unwrap_or_default());
    let mut pod_spec = json!({
        "containers": [container],
        "volumes": [repository_volume],
        // The worker drains in-flight requests for up to 30 s after SIGTERM.
        "terminationGracePeriodSeconds": 35,
    });
    objects::apply_overrides(&mut pod_spec, spec.template.as_ref());
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": owned_metadata(service, pod_name(service, revision, index), labels),
        "spec": pod_spec,
    }))
    .expect("a Pod built from known fields")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::test_service;

    fn repository() -> Repository {
        Repository { claim_name: "models".into(), sub_path: Some("team-a".into()) }
    }

    #[test]
    fn a_pod_serves_the_model_from_the_repository_and_is_ready_by_the_workers_own_state() {
        let service = test_service(json!({
            "batching": {"maxBatchSize": 32},
            "resources": {"limits": {"cpu": "2"}},
            "template": {"nodeSelector": {"pool": "cpu"}},
        }));
        let pod = serde_json::to_value(pod(&service, &repository(), "worker:1", "abc", 1, "specific:3")).unwrap();
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
        assert_eq!(env["LANTERN_LISTEN"], "$(POD_IP):8500");
        assert_eq!(env["LANTERN_MODELS"], "adder");
        assert_eq!(env["LANTERN_VERSION_POLICY"], "specific:3");
        assert_eq!(env["LANTERN_MAX_BATCH_SIZE"], "32");
        assert!(!env.contains_key("LANTERN_KV_CACHE_MIB"), "unset limits keep the worker's defaults");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/v2/models/adder/ready");
        assert_eq!(container["volumeMounts"][0]["subPath"], "team-a");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["spec"]["nodeSelector"]["pool"], "cpu");
        assert_eq!(container["resources"]["limits"]["cpu"], "2");
    }

    #[test]
    fn only_runtime_settings_change_the_revision() {
        let base = test_service(json!({}));
        let revision_of = |service: &InferenceService| revision(service, &repository(), "worker:1");
        let same =
            test_service(json!({"replicas": 5, "rollout": {"steps": [50, 100]}, "versionPolicy": {"specific": [1]}}));
        assert_eq!(revision_of(&base), revision_of(&same));
        assert_eq!(revision_of(&base).len(), 10);
        for change in [
            json!({"image": "worker:2"}),
            json!({"batching": {"maxBatchSize": 8}}),
            json!({"resources": {"limits": {"cpu": "4"}}}),
            json!({"device": "cuda"}),
        ] {
            assert_ne!(revision_of(&base), revision_of(&test_service(change.clone())), "{change}");
        }
        assert_eq!(revision_of(&base), revision_of(&test_service(json!({"device": "cpu"}))), "the default device");
        assert_ne!(revision_of(&base), revision(&base, &repository(), "worker:2"), "the operator's default image");
    }

    #[test]
    fn the_service_selects_every_pod_of_the_inference_service() {
        let service = serde_json::to_value(super::service(&test_service(json!({})))).unwrap();
        assert_eq!(service["spec"]["selector"][SERVICE_LABEL], "adder");
        assert_eq!(service["spec"]["ports"][0]["port"], 8500);
        assert_eq!(url(&test_service(json!({}))), "http://adder.ml.svc:8500");
    }
}
