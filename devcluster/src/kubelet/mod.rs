//! The process kubelet: every Pod runs as processes on this machine, on a loopback IP of its own.
//!
//! - [`Kubelet`] follows the pods in the store and runs one task per pod ([`pod`]): it schedules
//!   the pod onto the one node, prepares its volumes ([`volumes`]), runs the init containers in
//!   order and then the containers, restarts them as `restartPolicy` says with CrashLoopBackOff
//!   ([`lifecycle`]), runs their probes ([`probe`]), reports the pod's status as the real kubelet
//!   does, and on deletion stops them gracefully (SIGTERM, the grace period, SIGKILL) before it
//!   removes the pod.
//! - Images map to local executables through [`Config::images`]; an image not in the map leaves
//!   its container waiting with `ErrImagePull` (`ErrImageNeverPull` under `imagePullPolicy:
//!   Never`). Under [`Runtime::Podman`] containers run from their images instead ([`podman`]),
//!   and an image missing from podman's storage leaves them waiting the same way.
//! - [`env`] builds each container's environment, [`process`] runs it with its output in a log
//!   file per run (what `kubectl logs` and `--previous` read).
//! - [`bind_claims`] binds PersistentVolumeClaims, each to a directory of its own.

pub mod env;
pub mod lifecycle;
mod pod;
pub mod podman;
pub mod probe;
pub mod process;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::network::Range;
use crate::node::NODE_NAME;
use crate::store::{ChangeKind, Expect, ObjectKey, ResourceKey, resource_version};

/// What runs a pod's containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// Each container is a process on this machine, its image mapped to an executable
    /// ([`Config::images`]): fast, and what the suites use.
    #[default]
    Processes,
    /// Each container runs from its image in podman's local storage, under its pod security
    /// ([`podman`]).
    Podman,
}

/// How pods run.
#[derive(Clone, Debug)]
pub struct Config {
    pub runtime: Runtime,
    /// Image → the executable it stands for, under [`Runtime::Processes`]. A reference matches
    /// exactly, or by its repository with the tag or digest left off (`ghcr.io/x/worker` matches
    /// `ghcr.io/x/worker:0.1`).
    pub images: BTreeMap<String, PathBuf>,
    /// The first CrashLoopBackOff delay; it doubles with each restart.
    pub back_off: Duration,
    /// The longest CrashLoopBackOff delay.
    pub max_back_off: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtime: Runtime::Processes,
            images: BTreeMap::new(),
            back_off: Duration::from_secs(10),
            max_back_off: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// The executable `image` runs.
    pub fn executable(&self, image: &str) -> Option<&Path> {
        if let Some(path) = self.images.get(image) {
            return Some(path);
        }
        let repository = image.split('@').next().unwrap_or(image);
        let repository = match repository.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => repository,
        };
        self.images.get(repository).map(PathBuf::as_path)
    }
}

/// `REFERENCE=PATH`, as `--image` takes it.
pub fn parse_image(argument: &str) -> Result<(String, PathBuf), String> {
    match argument.split_once('=') {
        Some((image, path)) if !image.is_empty() && !path.is_empty() => Ok((image.to_owned(), PathBuf::from(path))),
        _ => Err(format!("expected IMAGE=EXECUTABLE, got {argument:?}")),
    }
}

/// Pod IPs from the devcluster's pod range, each held by one pod at a time.
#[derive(Clone)]
struct IpPool {
    range: Range,
    used: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
}

/// A pod's IP, returned to the pool when dropped.
struct IpLease {
    address: Ipv4Addr,
    pool: Option<IpPool>,
}

impl IpPool {
    fn new(range: Range) -> Self {
        Self { range, used: Arc::default() }
    }

    fn lease(&self) -> Option<IpLease> {
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let free = self.range.addresses().find(|ip| !used.contains(ip))?;
        used.insert(free);
        Some(IpLease { address: free, pool: Some(self.clone()) })
    }
}

impl IpLease {
    /// Host-network pods share the host's loopback address.
    fn host() -> Self {
        Self { address: Ipv4Addr::LOCALHOST, pool: None }
    }
}

impl Drop for IpLease {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.address);
        }
    }
}

/// What every pod task shares.
struct Context {
    cluster: Arc<Cluster>,
    config: Config,
    state_dir: PathBuf,
    /// Where pod IPs come from.
    pods: Range,
    /// True once the kubelet is stopping: pods end without being deleted.
    stopping: watch::Receiver<bool>,
}

/// A running kubelet.
pub struct Kubelet {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// One pod's task and the channel that brings it the pod's newest state (`None`: removed).
struct PodTask {
    key: ObjectKey,
    updates: watch::Sender<Option<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Runs the cluster's pods, with IPs from `pods`.
    pub fn start(cluster: Arc<Cluster>, config: Config, state_dir: PathBuf, pods: Range) -> Self {
        let (stop, stopping) = watch::channel(false);
        let context = Arc::new(Context { cluster, config, state_dir, pods, stopping });
        Self { stop, task: tokio::spawn(follow(context)) }
    }

    /// Stops every pod's processes (SIGTERM, then SIGKILL after a short grace) and returns once
    /// they are gone. The pods stay in the store.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Follows the pods: a task per pod uid, told of every change to its pod.
async fn follow(context: Arc<Context>) {
    let pods = ResourceKey::new("", "pods");
    let store = &context.cluster.store;
    let (_, mut changes) = store.watch(store.revision());
    let mut stopping = context.stopping.clone();
    let mut tasks: HashMap<String, PodTask> = HashMap::new();
    let ips = IpPool::new(context.pods);
    for (key, _) in store.list(&pods, None).0 {
        dispatch(&context, &mut tasks, &ips, &key);
    }
    loop {
        tokio::select! {
            _ = stopping.changed() => break,
            change = changes.recv() => match change {
                Ok(change) if change.key.resource == pods => {
                    if change.kind != ChangeKind::Deleted || tasks.values().any(|t| t.key == change.key) {
                        dispatch(&context, &mut tasks, &ips, &change.key);
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let keys: BTreeSet<ObjectKey> = store.list(&pods, None).0.into_iter().map(|(k, _)| k)
                        .chain(tasks.values().map(|t| t.key.clone())).collect();
                    keys.iter().for_each(|key| dispatch(&context, &mut tasks, &ips, key));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
        tasks.retain(|_, t| !t.task.is_finished());
    }
    for task in tasks.into_values() {
        let _ = task.task.await;
    }
}

/// Brings the pod at `key` to its task, starting one for a new uid and telling tasks of an
/// older pod by that name that theirs is gone.
fn dispatch(context: &Arc<Context>, tasks: &mut HashMap<String, PodTask>, ips: &IpPool, key: &ObjectKey) {
    let current = context.cluster.store.get(key);
    let uid = current.as_ref().and_then(|p| p["metadata"]["uid"].as_str()).map(str::to_owned);
    for (task_uid, task) in tasks.iter() {
        if &task.key == key && Some(task_uid) != uid.as_ref() {
            let _ = task.updates.send(None);
        }
    }
    let (Some(pod), Some(uid)) = (current, uid) else { return };
    // A pod bound to another node is not this kubelet's to run.
    if pod["spec"]["nodeName"].as_str().is_some_and(|node| !node.is_empty() && node != NODE_NAME) {
        return;
    }
    if let Some(task) = tasks.get(&uid) {
        let _ = task.updates.send(Some(pod));
        return;
    }
    let lease = match pod["spec"]["hostNetwork"] == true {
        true => Some(IpLease::host()),
        false => ips.lease(),
    };
    let Some(lease) = lease else {
        tracing::error!(pod = %key.name, "no pod IP is free");
        return;
    };
    let (updates, receiver) = watch::channel(Some(pod));
    let task = tokio::spawn(pod::run(context.clone(), key.clone(), receiver, lease));
    tasks.insert(uid, PodTask { key: key.clone(), updates, task });
}

/// Binds every pending PersistentVolumeClaim (to a directory under the state directory, made
/// when a pod first mounts it); returns whether it changed anything.
pub fn bind_claims(cluster: &Cluster) -> bool {
    let mut changed = false;
    for (key, mut claim) in cluster.store.list(&ResourceKey::new("", "persistentvolumeclaims"), None).0 {
        if claim["status"]["phase"] == "Bound" || !claim["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let spec = &claim["spec"];
        claim["status"] = json!({
            "phase": "Bound",
            "accessModes": spec["accessModes"],
            "capacity": {"storage": spec["resources"]["requests"]["storage"].as_str().unwrap_or("1Gi")},
        });
        if claim["spec"]["volumeName"].is_null() {
            claim["spec"]["volumeName"] = json!(format!("devcluster-{}", key.name));
        }
        let expect = Expect::Version(resource_version(&claim));
        changed |= cluster.store.write(&key, claim, expect).is_ok();
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_match_by_reference_or_repository() {
        let mut config = Config::default();
        config.images.insert("ghcr.io/lantern/worker".into(), "/bin/worker".into());
        config.images.insert("busybox:1.36".into(), "/bin/sh".into());
        assert_eq!(config.executable("ghcr.io/lantern/worker:0.1"), Some(Path::new("/bin/worker")));
        assert_eq!(config.executable("ghcr.io/lantern/worker@sha256:abc"), Some(Path::new("/bin/worker")));
        assert_eq!(config.executable("busybox:1.36"), Some(Path::new("/bin/sh")));
        assert_eq!(config.executable("busybox:1.37"), None);
        assert_eq!(config.executable("localhost:5000/worker"), None);
        assert_eq!(parse_image("a=/b"), Ok(("a".into(), "/b".into())));
        assert!(parse_image("a").is_err());
    }

    #[test]
    fn pod_ips_are_unique_while_held() {
        let pool = IpPool::new(Range(5));
        let first = pool.lease().unwrap();
        let second = pool.lease().unwrap();
        assert_eq!((first.address, second.address), (Ipv4Addr::new(127, 5, 0, 1), Ipv4Addr::new(127, 5, 0, 2)));
        drop(first);
        assert_eq!(pool.lease().unwrap().address, Ipv4Addr::new(127, 5, 0, 1));
    }
}
