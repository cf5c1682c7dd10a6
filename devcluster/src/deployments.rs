//! The Deployment controller, without ReplicaSets: each `apps/v1` Deployment keeps
//! `spec.replicas` pods of its current template, which it owns directly. A pod is named
//! `{deployment}-{hash}-{random}` and labelled `pod-template-hash: {hash}`, the hash being of
//! the template, as the real controller names its ReplicaSets' pods. A changed template rolls
//! out by `strategy`:
//! - `RollingUpdate` (the default): new pods are created up to `replicas + maxSurge`, and old
//!   ones removed while at least `replicas - maxUnavailable` pods stay ready (both 25% by
//!   default; surge rounded up, unavailable down, as Kubernetes does);
//! - `Recreate`: every old pod goes, then the new ones start.
//!
//! Status is what `kubectl rollout status` and Helm's `--wait` read: `observedGeneration`,
//! `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas` (ready is available:
//! `minReadySeconds` is not honoured), `unavailableReplicas`, and the `Available` and
//! `Progressing` conditions.

use std::hash::Hasher;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::objects;
use crate::store::{Expect, ObjectKey, ResourceKey, resource_version};

/// What one Deployment needs done.
#[derive(Debug, PartialEq)]
struct Plan {
    /// New pods of the current template to create.
    create: usize,
    /// Pods to delete, by name.
    delete: Vec<String>,
    status: Value,
}

/// One sweep; returns whether it changed anything.
pub fn sweep(cluster: &Cluster) -> bool {
    let store = &cluster.store;
    let deployments = store.list(&ResourceKey::new("apps", "deployments"), None).0;
    if deployments.is_empty() {
        return false;
    }
    let pods: Vec<(ObjectKey, Value)> = store.list(&ResourceKey::new("", "pods"), None).0;
    let mut changed = false;
    for (key, deployment) in deployments {
        if !deployment["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let uid = &deployment["metadata"]["uid"];
        let owned: Vec<&Value> = pods
            .iter()
            .map(|(_, pod)| pod)
            .filter(|pod| {
                pod["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|r| r["uid"] == *uid))
            })
            .collect();
        let hash = template_hash(&deployment["spec"]["template"]);
        let plan = plan(&deployment, &owned, &hash);
        for name in &plan.delete {
            let pod = ObjectKey { resource: ResourceKey::new("", "pods"), name: name.clone(), ..key.clone() };
            changed |= crate::api::gc::delete_object(cluster, &pod, "Background");
        }
        for _ in 0..plan.create {
            changed |= create_pod(cluster, &key, &deployment, &hash);
        }
        if deployment["status"] != plan.status {
            let expect = Expect::Version(resource_version(&deployment));
            let mut updated = deployment;
            updated["status"] = plan.status;
            changed |= store.write(&key, updated, expect).is_ok();
        }
    }
    changed
}

/// The pods to create and delete, and the status, given the pods the Deployment owns.
fn plan(deployment: &Value, owned: &[&Value], hash: &str) -> Plan {
    let spec = &deployment["spec"];
    let desired = spec["replicas"].as_u64().unwrap_or(1) as usize;
    let live: Vec<&Value> = owned.iter().copied().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
    let is_current = |pod: &&Value| pod["metadata"]["labels"]["pod-template-hash"] == hash;
    let (mut current, mut old): (Vec<&Value>, Vec<&Value>) = live.iter().copied().partition(is_current);
    // Unready pods go first, so a scale-down or a rollout keeps the ready ones longest.
    current.sort_by_key(is_ready);
    old.sort_by_key(is_ready);
    let ready = |pods: &[&Value]| pods.iter().filter(|p| is_ready(p)).count();
    let mut delete: Vec<String> = Vec::new();
    let mut create = 0;
    let recreate = spec["strategy"]["type"] == "Recreate";
    let (surge, unavailable) = rolling_limits(&spec["strategy"]["rollingUpdate"], desired);
    if current.len() > desired {
        delete.extend(current.drain(..current.len() - desired).map(name));
    }
    if recreate {
        delete.extend(old.drain(..).map(name));
        // New pods wait until the old ones have stopped.
        if owned.iter().all(is_current) {
            create = desired - current.len();
        }
    } else {
        let total = current.len() + old.len();
        create = (desired - current.len()).min((desired + surge).saturating_sub(total));
        let minimum = desired.saturating_sub(unavailable);
        let mut available = ready(&current) + ready(&old);
        while let Some(pod) = old.first() {
            let counts = is_ready(pod);
            if counts && available <= minimum {
                break;
            }
            available -= usize::from(counts);
            delete.push(name(old.remove(0)));
        }
    }
    let updated = current.len();
    let replicas = current.len() + old.len();
    let ready_now = ready(&current) + ready(&old);
    let available = ready_now >= desired.saturating_sub(unavailable);
    let complete = updated == desired && old.is_empty() && ready(&current) == desired;
    let condition = |type_: &str, status: bool, reason: &str, message: String| json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason, "message": message});
    let deployment_name = deployment["metadata"]["name"].as_str().unwrap_or_default();
    let mut status = json!({
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready_now,
        "availableReplicas": ready_now,
        "conditions": [
            if available {
                condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into())
            } else {
                condition("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into())
            },
            if complete {
                condition("Progressing", true, "NewReplicaSetAvailable", format!("pods of {deployment_name}-{hash} are available"))
            } else {
                condition("Progressing", true, "ReplicaSetUpdated", format!("pods of {deployment_name}-{hash} are progressing"))
            },
        ],
    });
    if desired > ready_now {
        status["unavailableReplicas"] = json!(desired - ready_now);
    }
    Plan { create, delete, status }
}

/// `(maxSurge, maxUnavailable)` as pod counts: integers as given, percentages of `desired`
/// (surge rounded up, unavailable down); at least one of them is positive.
fn rolling_limits(rolling: &Value, desired: usize) -> (usize, usize) {
    let count = |value: &Value, round_up: bool| {
        let percent: usize = match value {
            Value::Number(n) => return n.as_u64().unwrap_or(0) as usize,
            Value::String(text) => text.trim_end_matches('%').parse().unwrap_or(25),
            // Unset: Kubernetes' default, 25%.
            _ => 25,
        };
        let scaled = desired * percent;
        if round_up { scaled.div_ceil(100) } else { scaled / 100 }
    };
    let surge = count(&rolling["maxSurge"], true);
    let unavailable = count(&rolling["maxUnavailable"], false);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

fn is_ready(pod: &&Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or_default().to_owned()
}

/// A short, stable hash of the pod template (FNV-1a), as `pod-template-hash` holds one.
fn template_hash(template: &Value) -> String {
    let mut hash = fnv::FnvHasher::default();
    hash.write(template.to_string().as_bytes());
    let hash = hash.finish();
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

/// Creates one pod of `deployment`'s template; true when it did.
fn create_pod(cluster: &Cluster, key: &ObjectKey, deployment: &Value, hash: &str) -> bool {
    let Some(rtype) = cluster.registry.find("", "v1", "pods") else { return false };
    let template = &deployment["spec"]["template"];
    let metadata = &deployment["metadata"];
    let mut pod_metadata = template["metadata"].clone();
    if !pod_metadata.is_object() {
        pod_metadata = json!({});
    }
    pod_metadata["generateName"] = json!(format!("{}-{hash}-", key.name));
    pod_metadata["labels"]["pod-template-hash"] = json!(hash);
    pod_metadata["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"], "uid": metadata["uid"],
        "controller": true, "blockOwnerDeletion": true,
    }]);
    let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": pod_metadata, "spec": template["spec"]});
    let Ok(pod) = objects::prepare_create(&rtype, Some(&key.namespace), body, &objects::now()) else { return false };
    let pod_key = ObjectKey {
        resource: ResourceKey::new("", "pods"),
        namespace: key.namespace.clone(),
        name: pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
    };
    cluster.store.write(&pod_key, pod, Expect::Absent).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: u64, strategy: Value) -> Value {
        json!({
            "metadata": {"name": "web", "generation": 2, "uid": "d"},
            "spec": {"replicas": replicas, "strategy": strategy, "template": {"spec": {}}},
        })
    }

    fn pod(name: &str, hash: &str, ready: bool) -> Value {
        json!({
            "metadata": {"name": name, "labels": {"pod-template-hash": hash}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    #[test]
    fn missing_pods_are_created_and_extra_ones_removed_unready_first() {
        let growing = plan(&deployment(3, json!({})), &[&pod("a", "h", true)], "h");
        assert_eq!((growing.create, growing.delete.len()), (2, 0));
        assert_eq!(growing.status["updatedReplicas"], 1);
        assert_eq!(growing.status["unavailableReplicas"], 2);
        assert_eq!(growing.status["conditions"][0]["status"], "False");

        let (a, b) = (pod("a", "h", true), pod("b", "h", false));
        let shrinking = plan(&deployment(1, json!({})), &[&a, &b], "h");
        assert_eq!(shrinking.delete, vec!["b".to_owned()]);
    }

    #[test]
    fn a_rolling_update_surges_and_removes_old_pods_only_as_new_ones_turn_ready() {
        let rolling = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        let (old_a, old_b) = (pod("old-a", "old", true), pod("old-b", "old", true));
        let start = plan(&deployment(2, rolling.clone()), &[&old_a, &old_b], "new");
        assert_eq!((start.create, start.delete.len()), (1, 0), "one surge pod, nothing removed yet");

        let new_a = pod("new-a", "new", true);
        let step = plan(&deployment(2, rolling.clone()), &[&old_a, &old_b, &new_a], "new");
        assert_eq!((step.create, step.delete.len()), (0, 1), "a new pod ready: one old pod goes");

        let new_b = pod("new-b", "new", true);
        let done = plan(&deployment(2, rolling), &[&new_a, &new_b], "new");
        assert_eq!((done.create, done.delete.len()), (0, 0));
        assert_eq!(done.status["conditions"][1]["reason"], "NewReplicaSetAvailable");
        assert_eq!(done.status["observedGeneration"], 2);
        assert!(done.status.get("unavailableReplicas").is_none());
    }

    #[test]
    fn recreate_removes_every_old_pod_before_starting_new_ones() {
        let recreate = json!({"type": "Recreate"});
        let old = pod("old", "old", true);
        let first = plan(&deployment(1, recreate.clone()), &[&old], "new");
        assert_eq!((first.create, first.delete), (0, vec!["old".to_owned()]));
        let mut stopping = old.clone();
        stopping["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(plan(&deployment(1, recreate.clone()), &[&stopping], "new").create, 0);
        assert_eq!(plan(&deployment(1, recreate), &[], "new").create, 1);
    }

    #[test]
    fn rolling_limits_round_like_kubernetes() {
        assert_eq!(rolling_limits(&json!({}), 2), (1, 0));
        assert_eq!(rolling_limits(&json!({}), 10), (3, 2));
        assert_eq!(rolling_limits(&json!({"maxSurge": 0, "maxUnavailable": 0}), 3), (0, 1));
        assert_eq!(rolling_limits(&json!({"maxSurge": "50%", "maxUnavailable": 1}), 3), (2, 1));
    }
}
