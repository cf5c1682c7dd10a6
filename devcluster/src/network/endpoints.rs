//! The endpoints controller: every Service with a selector gets an Endpoints object of its name
//! listing the IPs of the pods it selects — ready ones (all, with `publishNotReadyAddresses`)
//! under `addresses`, the others under `notReadyAddresses` — with the Service's ports resolved
//! against each pod's container ports (a named `targetPort` can differ between pods, which then
//! fall in different subsets).
//! Endpoints whose Service is gone are deleted.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::objects;
use crate::store::{Expect, ObjectKey, ResourceKey, resource_version};

/// One sweep; returns whether it changed anything.
pub fn sweep(cluster: &Cluster) -> bool {
    let store = &cluster.store;
    let services = store.list(&ResourceKey::new("", "services"), None).0;
    let pods: Vec<Value> = store.list(&ResourceKey::new("", "pods"), None).0.into_iter().map(|(_, p)| p).collect();
    let endpoints_key = ResourceKey::new("", "endpoints");
    let mut changed = false;
    let mut wanted = HashSet::new();
    for (key, service) in &services {
        let Some(selector) = service["spec"]["selector"].as_object().filter(|s| !s.is_empty()) else { continue };
        let selected: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["namespace"] == service["metadata"]["namespace"])
            .filter(|p| selector.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
            .collect();
        let target = ObjectKey { resource: endpoints_key.clone(), ..key.clone() };
        wanted.insert(target.clone());
        let subsets = subsets(service, &selected);
        changed |= write(cluster, &target, service, subsets);
    }
    for (key, _) in store.list(&endpoints_key, None).0 {
        let service = ObjectKey { resource: ResourceKey::new("", "services"), ..key.clone() };
        if !wanted.contains(&key) && store.get(&service).is_none() {
            changed |= store.remove(&key, None).is_ok();
        }
    }
    changed
}

/// The Endpoints `subsets` of `service` over the pods it selects.
pub fn subsets(service: &Value, pods: &[&Value]) -> Vec<Value> {
    // Pods that resolve the ports the same way share a subset.
    let mut groups: BTreeMap<String, (Value, Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        if ip.is_empty() || !pod["metadata"]["deletionTimestamp"].is_null() || matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let ports: Vec<Value> = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|port| {
                let number = target_port(pod, &port["targetPort"])?;
                let mut endpoint = json!({"port": number, "protocol": port["protocol"].as_str().unwrap_or("TCP")});
                if let Some(name) = port["name"].as_str().filter(|n| !n.is_empty()) {
                    endpoint["name"] = json!(name);
                }
                Some(endpoint)
            })
            .collect();
        let ready = service["spec"]["publishNotReadyAddresses"] == true
            || pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let metadata = &pod["metadata"];
        let address = json!({
            "ip": ip,
            "nodeName": pod["spec"]["nodeName"],
            "targetRef": {"kind": "Pod", "namespace": metadata["namespace"], "name": metadata["name"], "uid": metadata["uid"]},
        });
        let group = groups.entry(Value::Array(ports.clone()).to_string()).or_insert((
            Value::Array(ports),
            Vec::new(),
            Vec::new(),
        ));
        match ready {
            true => group.1.push(address),
            false => group.2.push(address),
        }
    }
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            for list in [&mut ready, &mut not_ready] {
                list.sort_by(|a, b| a["ip"].as_str().cmp(&b["ip"].as_str()));
            }
            let mut subset = json!({"ports": ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect()
}

/// A `targetPort` on one pod: a number as is, a name through the pod's container ports.
fn target_port(pod: &Value, target: &Value) -> Option<u64> {
    match target {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => name.parse().ok().or_else(|| {
            let containers = pod["spec"]["containers"].as_array()?;
            containers
                .iter()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .find(|p| p["name"] == *name)
                .and_then(|p| p["containerPort"].as_u64())
        }),
        _ => None,
    }
}

/// Creates or updates the Endpoints at `key`; true when it wrote.
fn write(cluster: &Cluster, key: &ObjectKey, service: &Value, subsets: Vec<Value>) -> bool {
    let labels = service["metadata"]["labels"].clone();
    let store = &cluster.store;
    match store.get(key) {
        Some(existing)
            if existing["subsets"] == json!(subsets) || (existing["subsets"].is_null() && subsets.is_empty()) =>
        {
            false
        }
        Some(mut existing) => {
            existing["subsets"] = json!(subsets);
            let expect = Expect::Version(resource_version(&existing));
            store.write(key, existing, expect).is_ok()
        }
        None => {
            let Some(rtype) = cluster.registry.find("", "v1", "endpoints") else { return false };
            let mut body = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": key.name}});
            if labels.is_object() {
                body["metadata"]["labels"] = labels;
            }
            if !subsets.is_empty() {
                body["subsets"] = json!(subsets);
            }
            match objects::prepare_create(&rtype, Some(&key.namespace), body, &objects::now()) {
                Ok(object) => store.write(key, object, Expect::Absent).is_ok(),
                Err(_) => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: u64) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name},
            "spec": {"nodeName": "devcluster", "containers": [{"ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    #[test]
    fn pods_are_listed_by_readiness_and_resolved_port() {
        let service =
            json!({"spec": {"ports": [{"name": "grpc", "port": 9000, "targetPort": "grpc", "protocol": "TCP"}]}});
        let (a, b, c) = (
            pod("a", "127.1.0.2", true, "grpc", 8001),
            pod("b", "127.1.0.1", false, "grpc", 8001),
            pod("c", "127.1.0.3", true, "grpc", 7000),
        );
        let mut gone = pod("d", "127.1.0.4", true, "grpc", 8001);
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let subsets = subsets(&service, &[&a, &b, &c, &gone]);
        assert_eq!(subsets.len(), 2);
        let by_port = |port: u64| subsets.iter().find(|s| s["ports"][0]["port"] == port).unwrap();
        assert_eq!(by_port(8001)["addresses"][0]["ip"], "127.1.0.2");
        assert_eq!(by_port(8001)["notReadyAddresses"][0]["ip"], "127.1.0.1");
        assert_eq!(by_port(7000)["addresses"][0]["targetRef"]["name"], "c");
        assert_eq!(by_port(8001)["ports"][0]["name"], "grpc");
    }
}
