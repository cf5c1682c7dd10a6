//! The service proxy: every TCP port of a Service with a cluster IP gets a listener on that
//! loopback address, which forwards each connection to the Service's ready endpoints in turn
//! (round-robin), trying the next one when a backend refuses. A Service with no ready endpoint
//! accepts and closes. Headless Services (`clusterIP: None`) get no listener.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::Cluster;
use crate::store::ResourceKey;

/// How long a connection to one backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A reconcile at least this often (to retry listeners that could not bind).
const RESYNC: Duration = Duration::from_secs(1);

/// Frontend (cluster IP and port) → the ready backends, from Services and their Endpoints.
pub fn routes(services: &[Value], endpoints: &[Value]) -> BTreeMap<SocketAddr, Vec<SocketAddr>> {
    let mut routes = BTreeMap::new();
    // Endpoints by namespace and name: a lookup per Service, not a scan (thousands of each).
    let key = |object: &Value| {
        let metadata = &object["metadata"];
        (
            metadata["namespace"].as_str().unwrap_or_default().to_owned(),
            metadata["name"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let by_name: HashMap<(String, String), &Value> = endpoints.iter().map(|e| (key(e), e)).collect();
    for service in services {
        let Ok(ip) = service["spec"]["clusterIP"].as_str().unwrap_or_default().parse::<std::net::IpAddr>() else {
            continue;
        };
        let subsets = by_name.get(&key(service)).and_then(|e| e["subsets"].as_array()).cloned().unwrap_or_default();
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            if port["protocol"].as_str().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Some(number) = port["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else { continue };
            let name = port["name"].as_str().unwrap_or_default();
            let mut backends = Vec::new();
            for subset in &subsets {
                let ports = subset["ports"].as_array().cloned().unwrap_or_default();
                let Some(target) = ports.iter().find(|p| p["name"].as_str().unwrap_or_default() == name) else {
                    continue;
                };
                let Some(target) = target["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else { continue };
                for address in subset["addresses"].as_array().into_iter().flatten() {
                    if let Ok(ip) = address["ip"].as_str().unwrap_or_default().parse() {
                        backends.push(SocketAddr::new(ip, target));
                    }
                }
            }
            backends.sort();
            routes.insert(SocketAddr::new(ip, number), backends);
        }
    }
    routes
}

struct Listener {
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps the listeners in line with the Services until the cluster is dropped.
pub async fn run(cluster: Weak<Cluster>) {
    let Some(strong) = cluster.upgrade() else { return };
    let (_, mut changes) = strong.store.watch(strong.store.revision());
    drop(strong);
    let (services, endpoints) = (ResourceKey::new("", "services"), ResourceKey::new("", "endpoints"));
    let mut listeners: BTreeMap<SocketAddr, Listener> = BTreeMap::new();
    let mut unbindable: BTreeMap<SocketAddr, String> = BTreeMap::new();
    loop {
        let Some(cluster) = cluster.upgrade() else { return };
        let listed = |resource: &ResourceKey| -> Vec<Value> {
            cluster.store.list(resource, None).0.into_iter().map(|(_, v)| v).collect()
        };
        let wanted = routes(&listed(&services), &listed(&endpoints));
        drop(cluster);
        listeners.retain(|frontend, _| wanted.contains_key(frontend));
        unbindable.retain(|frontend, _| wanted.contains_key(frontend));
        for (frontend, backends) in wanted {
            if let Some(listener) = listeners.get(&frontend) {
                *listener.backends.write().unwrap_or_else(std::sync::PoisonError::into_inner) = backends;
                continue;
            }
            match std::net::TcpListener::bind(frontend).and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            }) {
                Ok(socket) => {
                    unbindable.remove(&frontend);
                    let backends = Arc::new(RwLock::new(backends));
                    let task = tokio::spawn(serve(socket, backends.clone()));
                    listeners.insert(frontend, Listener { backends, task });
                }
                Err(error) => {
                    if unbindable.insert(frontend, error.to_string()).is_none() {
                        tracing::warn!(%frontend, %error, "the service proxy cannot listen");
                    }
                }
            }
        }
        // Wait for a change to Services or Endpoints (or the resync).
        let deadline = tokio::time::sleep(RESYNC);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                change = changes.recv() => match change {
                    Ok(change) if change.key.resource == services || change.key.resource == endpoints => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, backends: Arc<RwLock<Vec<SocketAddr>>>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some connections close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let candidates = backends.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let first = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            for offset in 0..candidates.len() {
                let backend = candidates[(first + offset) % candidates.len()];
                if let Ok(Ok(mut outbound)) =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(backend)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_pair_service_ports_with_ready_endpoints() {
        let services = [
            json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"clusterIP": "127.2.0.1", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"name": "peers", "namespace": "ns"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}),
        ];
        let endpoints = [json!({"metadata": {"name": "web", "namespace": "ns"}, "subsets": [
            {"ports": [{"name": "http", "port": 8080}], "addresses": [{"ip": "127.1.0.2"}, {"ip": "127.1.0.1"}], "notReadyAddresses": [{"ip": "127.1.0.3"}]},
        ]})];
        let routes = routes(&services, &endpoints);
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes[&"127.2.0.1:80".parse().unwrap()],
            vec!["127.1.0.1:8080".parse::<SocketAddr>().unwrap(), "127.1.0.2:8080".parse().unwrap()]
        );
    }
}
