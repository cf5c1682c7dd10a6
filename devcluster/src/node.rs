//! The one node: its name and where it keeps each pod's files (volumes, container logs,
//! termination messages) and the claims' directories, under the cluster's state directory. The
//! kubelet writes there; the API reads logs from there.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The one node's name, as pods' `spec.nodeName` says.
pub const NODE_NAME: &str = "devcluster";

/// A pod's directory: its volumes and its containers' logs.
pub fn pod_dir(state_dir: &Path, pod: &Value) -> PathBuf {
    let metadata = &pod["metadata"];
    let text = |field: &str| metadata[field].as_str().unwrap_or_default().to_owned();
    state_dir.join("pods").join(format!("{}_{}_{}", text("namespace"), text("name"), text("uid")))
}

/// The log of run `restart` (0 for the first) of a container.
pub fn log_path(pod_dir: &Path, container: &str, restart: u64) -> PathBuf {
    pod_dir.join("logs").join(container).join(format!("{restart}.log"))
}

/// The file a container's `terminationMessagePath` stands for.
pub fn termination_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("termination").join(container)
}

/// Where PersistentVolumeClaims' directories live.
pub fn claims_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("claims")
}
