//! The router an InferenceService's clients reach (`lantern-router`), as pure functions of the
//! service: a Deployment of router pods, behind the Service the clients already use, which
//! balance each request over the service's ready worker pods; the ServiceAccount they run as,
//! and the RoleBinding that lets it watch the namespace's pods (the ClusterRole it binds is the
//! Helm chart's, `--router-cluster-role`).
//!
//! One router per InferenceService: its load and failures stay its service's own, and it scales
//! with it. A service with TLS has its Secret mounted in the router too: the router serves the
//! certificate to clients and reaches the pods over TLS, trusting that same certificate.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::objects::{SERVING_PORT, TLS_CERT_FILE, TLS_KEY_FILE, selector, tls_volume};
use crate::crd::InferenceService;
use crate::objects::{self, match_labels, owned_metadata};

/// The label of a service's router pods (its worker pods carry [`SERVICE_LABEL`]).
pub const ROUTER_LABEL: &str = "lantern.dev/router";
/// The router's `/metrics`, `/healthz` and `/stats`.
pub const ADMIN_PORT: u16 = 8502;

fn name(service: &InferenceService) -> &str {
    service.metadata.name.as_deref().unwrap_or_default()
}

/// The Deployment's, ServiceAccount's and RoleBinding's name.
pub fn router_name(service: &InferenceService) -> String {
    format!("{}-router", name(service))
}

fn router_labels(service: &InferenceService) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "lantern-router".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "lantern-operator".to_owned()),
        (ROUTER_LABEL.to_owned(), name(service).to_owned()),
    ])
}

/// The pods the service's Service sends to: the router's.
pub fn service_selector(service: &InferenceService) -> BTreeMap<String, String> {
    BTreeMap::from([(ROUTER_LABEL.to_owned(), name(service).to_owned())])
}

/// The router pods' identity.
pub fn service_account(service: &InferenceService) -> ServiceAccount {
    ServiceAccount {
        metadata: owned_metadata(service, router_name(service), router_labels(service)),
        ..ServiceAccount::default()
    }
}

/// Lets the router pods watch the namespace's pods, through the chart's `cluster_role`.
pub fn role_binding(service: &InferenceService, cluster_role: &str) -> RoleBinding {
    RoleBinding {
        metadata: owned_metadata(service, router_name(service), router_labels(service)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: cluster_role.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: router_name(service),
            namespace: service.metadata.namespace.clone(),
            api_group: None,
        }]),
    }
}

/// `name` from the pod's own field `path` (downward API).
fn field_var(name: &str, path: &str) -> EnvVar {
    let field = ObjectFieldSelector { field_path: path.to_owned(), api_version: None };
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource { field_ref: Some(field), ..EnvVarSource::default() }),
    }
}

/// The router pods, running `image`: they listen on the serving port like a worker, find the
/// service's worker pods by its label selector, and are ready as soon as they serve (a request
/// that comes before any worker is ready is held, not refused). Without API keys they are told
/// the `models` the workers serve, so a request for another is refused without a pod hop (with
/// keys, the worker's 401 must come first). A rolling update starts the new pod before the old
/// one goes.
pub fn deployment(service: &InferenceService, image: &str, models: &[&str]) -> Deployment {
    let labels = router_labels(service);
    let mut args = vec![
        "--listen".to_owned(),
        format!("$(POD_IP):{SERVING_PORT}"),
        "--admin-listen".to_owned(),
        format!("$(POD_IP):{ADMIN_PORT}"),
        "--selector".to_owned(),
        selector(service),
        "--pod-port".to_owned(),
        SERVING_PORT.to_string(),
    ];
    if service.spec.api_keys.is_none() {
        args.extend(["--models".to_owned(), models.join(",")]);
    }
    let tls = tls_volume(service);
    if tls.is_some() {
        args.extend(["--tls-cert-file", TLS_CERT_FILE, "--tls-key-file", TLS_KEY_FILE].map(str::to_owned));
    }
    let quantity = |q: &str| Quantity(q.to_owned());
    let container = Container {
        name: "router".to_owned(),
        image: Some(image.to_owned()),
        args: Some(args),
        env: Some(vec![objects::pod_ip_var(), field_var("POD_NAMESPACE", "metadata.namespace")]),
        ports: Some(vec![
            objects::container_port("serving", SERVING_PORT),
            objects::container_port("admin", ADMIN_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".to_owned()),
                port: IntOrString::Int(ADMIN_PORT.into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("100m")),
                ("memory".to_owned(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("256Mi"))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(objects::worker_security_context()),
        volume_mounts: tls.as_ref().map(|(_, mount)| vec![mount.clone()]),
        ..Container::default()
    };
    let mut pod_spec = PodSpec {
        containers: vec![container],
        volumes: tls.map(|(volume, _)| vec![volume]),
        service_account_name: Some(router_name(service)),
        // Held requests and streams in flight get the router's 30 s grace.
        termination_grace_period_seconds: Some(35),
        ..PodSpec::default()
    };
    objects::harden_pod(&mut pod_spec);
    // The router watches pods: it needs its service-account token.
    pod_spec.automount_service_account_token = Some(true);
    let rolling =
        RollingUpdateDeployment { max_unavailable: Some(IntOrString::Int(0)), max_surge: Some(IntOrString::Int(1)) };
    Deployment {
        metadata: owned_metadata(service, router_name(service), labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: match_labels([(ROUTER_LABEL, name(service))]),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(rolling),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::objects::SERVICE_LABEL;
    use crate::serving::test_service;

    #[test]
    fn the_router_finds_the_workers_by_their_label_and_the_service_finds_the_router() {
        let service = test_service(serde_json::json!({}));
        let deployment =
            serde_json::to_value(deployment(&service, "ghcr.io/lantern-dev/router:0.1.0", &["adder", "adder-sql"]))
                .unwrap();
        let pod = &deployment["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"][ROUTER_LABEL], "adder");
        assert!(pod["metadata"]["labels"].get(SERVICE_LABEL).is_none(), "router pods are not worker pods");
        assert_eq!(deployment["spec"]["selector"]["matchLabels"][ROUTER_LABEL], "adder");
        let container = &pod["spec"]["containers"][0];
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args[4..6], ["--selector", "lantern.dev/inference-service=adder"]);
        assert_eq!(args[1], "$(POD_IP):8500");
        assert_eq!(args[8..], ["--models", "adder,adder-sql"]);
        let keyed = test_service(serde_json::json!({"apiKeys": {"name": "keys", "key": "keys"}}));
        let keyed = serde_json::to_value(super::deployment(&keyed, "router", &["adder"])).unwrap();
        let args = keyed["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().clone();
        assert!(!args.contains(&serde_json::json!("--models")), "with API keys the worker answers first");
        assert_eq!(pod["spec"]["serviceAccountName"], "adder-router");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], true);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(deployment["metadata"]["ownerReferences"][0]["name"], "adder");
        assert_eq!(service_selector(&service), BTreeMap::from([(ROUTER_LABEL.to_owned(), "adder".to_owned())]));
    }

    #[test]
    fn the_binding_grants_the_charts_role_to_the_routers_account_alone() {
        let service = test_service(serde_json::json!({}));
        let binding = serde_json::to_value(role_binding(&service, "lantern-router")).unwrap();
        assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
        assert_eq!(binding["roleRef"]["name"], "lantern-router");
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "adder-router", "namespace": "ml"}])
        );
        assert_eq!(binding["metadata"]["namespace"], "ml");
    }

    #[test]
    fn with_tls_the_router_mounts_the_services_secret_and_serves_it() {
        let service = test_service(serde_json::json!({"tls": {"secretName": "adder-tls"}}));
        let deployment = serde_json::to_value(deployment(&service, "router", &["adder"])).unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let scratch = serde_json::json!({"name": "scratch", "emptyDir": {}});
        assert_eq!(
            pod["volumes"],
            serde_json::json!([{"name": "tls", "secret": {"secretName": "adder-tls"}}, scratch])
        );
        let container = &pod["containers"][0];
        assert_eq!(container["volumeMounts"][0]["mountPath"], "/var/run/lantern/tls");
        // The root filesystem is read-only; /tmp is the pod's.
        assert_eq!(container["volumeMounts"][1], serde_json::json!({"name": "scratch", "mountPath": "/tmp"}));
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(
            args[args.len() - 4..],
            ["--tls-cert-file", "/var/run/lantern/tls/tls.crt", "--tls-key-file", "/var/run/lantern/tls/tls.key"]
        );
        assert_eq!(service_selector(&service), BTreeMap::from([(ROUTER_LABEL.to_owned(), "adder".to_owned())]));
    }
}
