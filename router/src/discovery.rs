//! Where the pods are: a fixed list, or the Kubernetes API. With the API the router watches the
//! pods its label selector picks in its namespace (a reflector: one list, then a watch, relisted
//! after errors with backoff) and keeps the pool to those that are ready ([`ready_addresses`]):
//! a pod that fails its readiness probe, or starts terminating, takes no new request at once,
//! before its endpoints would be updated.

use std::net::{IpAddr, SocketAddr};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use super::pool::Pool;

/// The ready pods' serving addresses: running, `Ready`, not terminating, with an IP.
pub fn ready_addresses<'a>(pods: impl IntoIterator<Item = &'a Pod>, port: u16) -> Vec<SocketAddr> {
    pods.into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
            let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
            ready.then_some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// Keeps `pool` to the ready pods `selector` picks in `namespace`, serving on `port`, until the
/// watch ends (it does not, short of the process).
pub async fn watch_pods(client: kube::Client, namespace: &str, selector: &str, port: u16, pool: Pool) {
    let api: kube::Api<Pod> = kube::Api::namespaced(client, namespace);
    let (store, writer) = reflector::store();
    let events = reflector(writer, watcher(api, watcher::Config::default().labels(selector))).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => pool.set(ready_addresses(store.state().iter().map(|pod| pod.as_ref()), port)),
            Err(error) => tracing::warn!(%error, %namespace, %selector, "watching the pods failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: &str, ready: &str, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{ip}")},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap();
        if terminating {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        pod
    }

    #[test]
    fn only_ready_pods_that_are_not_terminating_take_requests() {
        let pods = [
            pod("10.0.0.1", "True", false),
            pod("10.0.0.2", "False", false),
            pod("10.0.0.3", "True", true),
            pod("", "True", false),
            pod("10.0.0.5", "True", false),
        ];
        let expected: Vec<SocketAddr> = vec!["10.0.0.1:8500".parse().unwrap(), "10.0.0.5:8500".parse().unwrap()];
        assert_eq!(ready_addresses(&pods, 8500), expected);
    }
}
