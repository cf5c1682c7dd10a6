//! The level-triggered controllers inside the devcluster: after every burst of changes (and
//! every second) each sweep runs over the whole store, again and again while any of them still
//! changes something — garbage collection and namespaces ([`crate::api::gc`]), endpoints
//! ([`crate::network::endpoints`]), claim binding ([`crate::kubelet::bind_claims`]) and
//! Deployments ([`crate::deployments`]).

use std::sync::Weak;
use std::time::Duration;

use crate::cluster::Cluster;

/// How long a sweep waits for a burst of changes to settle.
const SETTLE: Duration = Duration::from_millis(20);
/// A sweep at least this often, for anything a failed write left behind.
const RESYNC: Duration = Duration::from_secs(1);
/// Sweeps in a row after one burst; each is one level of a chain of owners.
const MAX_SWEEPS: usize = 64;

/// One sweep: looks at everything, returns whether it changed anything.
type Sweep = fn(&Cluster) -> bool;

const SWEEPS: [Sweep; 4] =
    [crate::api::gc::sweep, crate::network::endpoints::sweep, crate::kubelet::bind_claims, crate::deployments::sweep];

/// Sweeps until the cluster is dropped.
pub async fn run(cluster: Weak<Cluster>) {
    let Some(strong) = cluster.upgrade() else { return };
    let (_, mut changes) = strong.store.watch(strong.store.revision());
    drop(strong);
    loop {
        let _ = tokio::time::timeout(RESYNC, changes.recv()).await;
        tokio::time::sleep(SETTLE).await;
        while changes.try_recv().is_ok() {}
        let Some(cluster) = cluster.upgrade() else { return };
        // Each sweep's writes are changes too; sweep until nothing is left to do.
        for _ in 0..MAX_SWEEPS {
            let mut changed = false;
            for sweep in SWEEPS {
                changed |= sweep(&cluster);
            }
            if !changed {
                break;
            }
        }
    }
}
