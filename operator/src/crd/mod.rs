//! The custom resources, group `lantern.dev`, version `v1alpha1`: [`TrainingJob`] and
//! [`InferenceService`] as Rust types, their schemas (with CEL rules for what spans fields)
//! derived from them. `crdgen` writes the CustomResourceDefinitions into `crds/`; a test fails
//! when the checked-in YAML drifts from these types.

pub mod inference;
pub mod training;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use inference::{Autoscaling, InferenceService, InferenceServiceSpec, InferenceServiceStatus};
pub use training::{TrainingJob, TrainingJobSpec, TrainingJobStatus};

/// A model repository: a PersistentVolumeClaim (or a directory in it), or a URI.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new("has(self.claimName) != has(self.uri)").message("set exactly one of repository.claimName and repository.uri"))]
#[x_kube(validation = Rule::new("has(self.uri) || !has(self.secretRef) && !has(self.cache)").message("repository.secretRef and repository.cache go with repository.uri"))]
#[x_kube(validation = Rule::new("has(self.claimName) || !has(self.subPath)").message("repository.subPath goes with repository.claimName"))]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// A PersistentVolumeClaim every pod mounts (ReadWriteMany where pods of several nodes
    /// share it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// A directory inside the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// An object store, HTTP or OCI location: `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`,
    /// `az://CONTAINER/PREFIX`, `http(s)://…` (read-only) or `oci://REGISTRY/PREFIX` (served
    /// from; training publishes to object stores). Pods read it through a node-local cache;
    /// endpoint and credentials come from `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^(s3|gs|az|https?|oci)://[^/?#@\s]+(/[^?#\s]*)?$"))]
    pub uri: Option<String>,
    /// A Secret whose keys become the workers' environment: the store's standard variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AZURE_STORAGE_ACCOUNT_NAME`, `GOOGLE_SERVICE_ACCOUNT_KEY`, …). The operator never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Where pods keep the files they download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RepositoryCache>,
}

impl Repository {
    /// A repository in the claim `name`.
    pub fn claim(name: &str) -> Self {
        Self { claim_name: Some(name.to_owned()), ..Self::default() }
    }

    /// The repository with the operator's cache `defaults` where a URI repository's `cache`
    /// leaves a setting out.
    pub fn with_cache_defaults(&self, defaults: &RepositoryCache) -> Self {
        if self.uri.is_none() {
            return self.clone();
        }
        let own = self.cache.clone().unwrap_or_default();
        let cache = RepositoryCache {
            size_mib: own.size_mib.or(defaults.size_mib),
            host_path: own.host_path.or_else(|| defaults.host_path.clone()),
        };
        Self { cache: Some(cache), ..self.clone() }
    }
}

/// A Secret in the resource's namespace.
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The node-local cache of a remote repository's files.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryCache {
    /// The cache's budget in MiB (default 20480): beyond it the least recently used files no
    /// loaded version needs are removed. An emptyDir cache gets this as its size limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64))]
    pub size_mib: Option<u64>,
    /// A directory on the node (hostPath) instead of the pod's emptyDir, so that pods on a node
    /// share it and a replaced pod finds its files there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub host_path: Option<String>,
}

/// The processor a worker runs its models on.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// Scheduling settings passed to the pods the operator makes.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Where the generated CRDs are checked in, relative to the workspace: `crds/`, and the Helm
/// chart's `crds/` (Helm installs those before the templates).
pub const DIRECTORIES: [&str; 2] = ["crds", "charts/lantern/crds"];

/// Every CRD the operator serves, by file name under each of [`DIRECTORIES`].
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("trainingjobs.lantern.dev.yaml", TrainingJob::crd()),
        ("inferenceservices.lantern.dev.yaml", InferenceService::crd()),
    ]
}

/// A CRD as the YAML `crdgen` writes.
pub fn to_yaml(crd: &CustomResourceDefinition) -> anyhow::Result<String> {
    let body =
        serde_saphyr::to_string(crd).map_err(|e| anyhow::anyhow!("writing {:?} as YAML: {e}", crd.metadata.name))?;
    Ok(format!("# Generated by `cargo run -p lantern-operator --bin crdgen`; do not edit.\n{body}"))
}
