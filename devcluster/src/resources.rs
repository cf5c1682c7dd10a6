//! The resource types the devcluster serves: the built-in kinds the project needs, and every
//! version of every CustomResourceDefinition applied to it. Discovery, routing and validation all
//! read this registry.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::store::ResourceKey;

/// A column of `kubectl get`'s table.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// A JSONPath into the object, e.g. `.status.phase`.
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

/// Where a scale subresource reads and writes: a CRD's declared paths, or a Deployment's.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One resource at one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether `status` is a separate subresource (writes to the main resource keep the stored
    /// status, writes to `/status` keep the stored spec).
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Pods' `log` subresource.
    pub log: bool,
    /// A CRD version's `openAPIV3Schema`.
    pub schema: Option<Value>,
    pub columns: Vec<PrinterColumn>,
    /// Whether this version is the one objects are stored as (a CRD's storage version).
    pub storage: bool,
    /// A kind of Kubernetes itself, not one a CRD defines.
    pub builtin: bool,
}

impl ResourceType {
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(&self.group, &self.plural)
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        match self.group.as_str() {
            "" => self.version.clone(),
            group => format!("{group}/{}", self.version),
        }
    }

    /// The entry in a group-version's `APIResourceList`, and its subresources'.
    pub fn discovery(&self) -> Vec<Value> {
        let mut verbs = vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        if self.plural == "events" {
            verbs.retain(|v| *v != "deletecollection");
        }
        let mut entries = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
            "categories": self.categories,
            "storageVersionHash": "",
        })];
        if self.status {
            entries.push(self.subresource("status", &self.kind, &["get", "patch", "update"]));
        }
        if self.scale.is_some() {
            let mut scale = self.subresource("scale", "Scale", &["get", "patch", "update"]);
            scale["group"] = "autoscaling".into();
            scale["version"] = "v1".into();
            entries.push(scale);
        }
        if self.log {
            entries.push(self.subresource("log", "Pod", &["get"]));
        }
        entries
    }

    fn subresource(&self, name: &str, kind: &str, verbs: &[&str]) -> Value {
        json!({
            "name": format!("{}/{name}", self.plural),
            "singularName": "",
            "namespaced": self.namespaced,
            "kind": kind,
            "verbs": verbs,
        })
    }
}

/// A built-in kind: plural, singular, kind, namespaced, short names, and whether `status` is a
/// subresource.
type Builtin = (&'static str, &'static str, &'static str, bool, &'static [&'static str], bool);

/// The built-in kinds the project uses, by group-version.
const BUILTINS: &[(&str, &str, Builtin)] = &[
    ("", "v1", ("namespaces", "namespace", "Namespace", false, &["ns"], true)),
    ("", "v1", ("pods", "pod", "Pod", true, &["po"], true)),
    ("", "v1", ("services", "service", "Service", true, &["svc"], true)),
    ("", "v1", ("endpoints", "endpoints", "Endpoints", true, &["ep"], false)),
    ("", "v1", ("configmaps", "configmap", "ConfigMap", true, &["cm"], false)),
    ("", "v1", ("secrets", "secret", "Secret", true, &[], false)),
    ("", "v1", ("events", "event", "Event", true, &["ev"], false)),
    ("", "v1", ("serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], false)),
    ("", "v1", ("persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", true, &["pvc"], true)),
    ("coordination.k8s.io", "v1", ("leases", "lease", "Lease", true, &[], false)),
    ("apps", "v1", ("deployments", "deployment", "Deployment", true, &["deploy"], true)),
    // Served (clients that follow Deployments look them up) but not used: the Deployment
    // controller owns its pods directly.
    ("apps", "v1", ("replicasets", "replicaset", "ReplicaSet", true, &["rs"], true)),
    // Stored for the charts that install them; the devcluster does not authorize requests.
    ("rbac.authorization.k8s.io", "v1", ("clusterroles", "clusterrole", "ClusterRole", false, &[], false)),
    (
        "rbac.authorization.k8s.io",
        "v1",
        ("clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, &[], false),
    ),
    ("rbac.authorization.k8s.io", "v1", ("roles", "role", "Role", true, &[], false)),
    ("rbac.authorization.k8s.io", "v1", ("rolebindings", "rolebinding", "RoleBinding", true, &[], false)),
    // Stored for the operator, which writes one per InferenceService and TrainingJob; the
    // devcluster's proxy does not enforce them (every pod is a process on one host).
    ("networking.k8s.io", "v1", ("networkpolicies", "networkpolicy", "NetworkPolicy", true, &["netpol"], false)),
    (
        "apiextensions.k8s.io",
        "v1",
        (
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ),
    ),
];

fn builtin_type(group: &str, version: &str, builtin: &Builtin) -> ResourceType {
    let (plural, singular, kind, namespaced, short_names, status) = *builtin;
    ResourceType {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
        singular: singular.to_owned(),
        kind: kind.to_owned(),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: if matches!(plural, "pods" | "services" | "deployments") {
            vec!["all".to_owned()]
        } else {
            Vec::new()
        },
        status,
        // `kubectl scale deployment` and clients' `*_scale` calls: a Scale over `spec.replicas`.
        scale: matches!(plural, "deployments" | "replicasets").then(|| ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: Some(".spec.selector".into()),
        }),
        log: plural == "pods",
        schema: None,
        columns: Vec::new(),
        storage: true,
        builtin: true,
    }
}

/// Every resource type served.
pub struct Registry {
    types: RwLock<Vec<ResourceType>>,
    /// Bumped by every change, so clients' cached OpenAPI documents are refetched.
    generation: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The built-in kinds.
    pub fn new() -> Self {
        let types = BUILTINS.iter().map(|(group, version, b)| builtin_type(group, version, b)).collect();
        Self { types: RwLock::new(types), generation: AtomicU64::new(1) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<ResourceType>> {
        self.types.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The type served at `group`/`version` under `plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.read().iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    /// Every type, in registration order.
    pub fn all(&self) -> Vec<ResourceType> {
        self.read().clone()
    }

    /// Replaces the versions of the resource `key` (a CRD applied, changed or removed).
    pub fn replace(&self, key: &ResourceKey, versions: Vec<ResourceType>) {
        let mut types = self.types.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        types.retain(|t| &t.key() != key);
        types.extend(versions);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes with every registration.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The groups and their versions, core first, in registration order; the first version
    /// listed is the preferred one.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.read().iter() {
            match groups.iter_mut().find(|(group, _)| *group == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version.clone()),
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        groups
    }
}
