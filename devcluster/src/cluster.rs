//! What every part of the devcluster shares: the object store, the kinds it serves, the
//! state directory and the Service IP range. The API serves it; the kubelet, the network and the
//! controllers read and write it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::objects::{self, with_type};
use crate::resources::Registry;
use crate::store::{Expect, ObjectKey, Store};

/// What every handler shares.
pub struct Cluster {
    pub store: Store,
    pub registry: Registry,
    /// Where the kubelet keeps pods' directories (and so their logs).
    pub state_dir: PathBuf,
    /// Where Services' cluster IPs come from.
    pub service_range: crate::network::Range,
    /// Held while a Service's cluster IP is chosen and stored, so that no two get the same.
    pub(crate) service_ips: Mutex<()>,
    /// Lists read page by page (`limit`, `continue`).
    pub pages: crate::api::pages::Pages,
}

impl Cluster {
    /// A cluster with the built-in kinds and the namespaces every cluster has.
    pub fn new(state_dir: PathBuf, service_range: crate::network::Range) -> Arc<Self> {
        let cluster = Arc::new(Self {
            store: Store::new(),
            registry: Registry::new(),
            state_dir,
            service_range,
            service_ips: Mutex::new(()),
            pages: Default::default(),
        });
        let namespaces = cluster.registry.find("", "v1", "namespaces").expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}});
            let mut object = objects::prepare_create(&namespaces, None, body, &objects::now())
                .expect("the built-in namespaces are valid");
            object["status"] = json!({"phase": "Active"});
            let key = ObjectKey { resource: namespaces.key(), namespace: String::new(), name: name.to_owned() };
            let _ = cluster.store.write(&key, with_type(&namespaces, object), Expect::Absent);
        }
        cluster
    }
}
