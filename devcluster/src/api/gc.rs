//! The garbage collector and the namespace controller, one level-triggered sweep over all
//! objects (run by [`crate::controllers`]) that
//! - deletes an object whose owners (`ownerReferences`) are all gone, and drops references to
//!   owners that are gone while another remains (background propagation);
//! - for an owner being deleted with the `orphan` finalizer, removes its references from the
//!   dependents, then the finalizer;
//! - for one with `foregroundDeletion`, deletes the dependents first and removes the finalizer
//!   once none is left;
//! - empties a terminating namespace, then removes it.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::{Cluster, Params, Target, delete, store_update};
use crate::store::{ObjectKey, ResourceKey, resource_version};

/// One pass; returns whether it changed anything.
pub fn sweep(cluster: &Cluster) -> bool {
    let objects = everything(cluster);
    let live: HashSet<&str> = objects.iter().filter_map(|(_, o)| o["metadata"]["uid"].as_str()).collect();
    let mut changed = false;
    // Dependents by owner uid.
    let mut dependents: HashMap<&str, Vec<&(ObjectKey, Value)>> = HashMap::new();
    for entry in &objects {
        for owner in owner_uids(&entry.1) {
            dependents.entry(owner).or_default().push(entry);
        }
    }
    for (key, object) in &objects {
        let owners = owner_uids(object);
        if owners.is_empty() {
            continue;
        }
        let gone: Vec<&str> = owners.iter().copied().filter(|uid| !live.contains(uid)).collect();
        let deleting = !object["metadata"]["deletionTimestamp"].is_null();
        if gone.len() == owners.len() && !deleting {
            changed |= delete_object(cluster, key, "Background");
        } else if !gone.is_empty() && gone.len() < owners.len() {
            changed |= drop_owner_refs(cluster, key, &gone);
        }
    }
    for (key, object) in &objects {
        if object["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        let finalizers = super::objects::finalizers(object);
        let own = dependents.get(uid).cloned().unwrap_or_default();
        if finalizers.iter().any(|f| f == "orphan") {
            for (dependent, _) in &own {
                changed |= drop_owner_refs(cluster, dependent, &[uid]);
            }
            changed |= remove_finalizer(cluster, key, "orphan");
        }
        if finalizers.iter().any(|f| f == "foregroundDeletion") {
            if own.is_empty() {
                changed |= remove_finalizer(cluster, key, "foregroundDeletion");
            }
            for (dependent, value) in &own {
                if value["metadata"]["deletionTimestamp"].is_null() {
                    changed |= delete_object(cluster, dependent, "Foreground");
                }
            }
        }
        if key.resource == ResourceKey::new("", "namespaces") {
            changed |= empty_namespace(cluster, key, &objects);
        }
    }
    changed
}

/// Every object of every resource served.
fn everything(cluster: &Cluster) -> Vec<(ObjectKey, Value)> {
    let mut resources: Vec<ResourceKey> = cluster.registry.all().iter().map(|t| t.key()).collect();
    resources.sort();
    resources.dedup();
    resources.iter().flat_map(|resource| cluster.store.list(resource, None).0).collect()
}

fn owner_uids(object: &Value) -> Vec<&str> {
    object["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter_map(|r| r["uid"].as_str()).collect()
}

/// The API target of a stored object, at the version its resource is stored as.
fn target_of(cluster: &Cluster, key: &ObjectKey) -> Option<Target> {
    let types = cluster.registry.all();
    let rtype = types
        .iter()
        .filter(|t| t.key() == key.resource)
        .find(|t| t.storage)
        .or_else(|| types.iter().find(|t| t.key() == key.resource))?
        .clone();
    let namespace = (!key.namespace.is_empty()).then(|| key.namespace.clone());
    Some(Target { rtype, namespace, name: Some(key.name.clone()), subresource: None })
}

/// Deletes the object at `key` as an API client would (a pod on the node gracefully).
pub fn delete_object(cluster: &Cluster, key: &ObjectKey, policy: &str) -> bool {
    let Some(target) = target_of(cluster, key) else { return false };
    let options = json!({"propagationPolicy": policy}).to_string();
    delete(cluster, &target, options.as_bytes(), &Params::default()).is_ok()
}

/// Writes `object` back over the stored version it was read from.
fn rewrite(cluster: &Cluster, key: &ObjectKey, object: Value) -> bool {
    let Some(target) = target_of(cluster, key) else { return false };
    let expect = resource_version(&object);
    store_update(cluster, &target, object, Some(expect), &Params::default()).is_ok()
}

fn drop_owner_refs(cluster: &Cluster, key: &ObjectKey, owners: &[&str]) -> bool {
    let Some(mut object) = cluster.store.get(key) else { return false };
    let Some(references) = object["metadata"]["ownerReferences"].as_array_mut() else { return false };
    let before = references.len();
    references.retain(|r| !owners.contains(&r["uid"].as_str().unwrap_or_default()));
    if references.len() == before {
        return false;
    }
    rewrite(cluster, key, object)
}

fn remove_finalizer(cluster: &Cluster, key: &ObjectKey, finalizer: &str) -> bool {
    let Some(mut object) = cluster.store.get(key) else { return false };
    let Some(finalizers) = object["metadata"]["finalizers"].as_array_mut() else { return false };
    finalizers.retain(|f| f != finalizer);
    rewrite(cluster, key, object)
}

/// Deletes what a terminating namespace holds; once it is empty, removes the namespace.
fn empty_namespace(cluster: &Cluster, namespace: &ObjectKey, objects: &[(ObjectKey, Value)]) -> bool {
    let content: Vec<&ObjectKey> = objects.iter().map(|(k, _)| k).filter(|k| k.namespace == namespace.name).collect();
    if content.is_empty() {
        return cluster.store.remove(namespace, None).is_ok();
    }
    let mut changed = false;
    for key in content {
        let terminating = cluster.store.get(key).is_some_and(|o| !o["metadata"]["deletionTimestamp"].is_null());
        if !terminating {
            changed |= delete_object(cluster, key, "Background");
        }
    }
    changed
}
