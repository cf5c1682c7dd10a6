//! What a service's pods say: each worker's `ModelService.GetModelStatus` answer for a model
//! (the base or an adapter), folded into one view per version (pure). The rollout decides on this view, and the status
//! reports it.

use std::collections::{BTreeMap, BTreeSet};

use lantern_proto::lantern::v1::{ModelStatus, RequestStats, VersionState};

use crate::crd::inference::FetchStatus;

/// A version's requests summed over the pods: counts, and the latency histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests {
    pub total: u64,
    pub errors: u64,
    /// Bucket upper bounds in seconds; `latency_counts` has one more entry, for the overflow.
    pub latency_bounds: Vec<f64>,
    pub latency_counts: Vec<u64>,
}

impl Requests {
    fn add(&mut self, stats: &RequestStats) {
        self.total += stats.total;
        self.errors += stats.errors;
        if self.latency_bounds.is_empty() {
            self.latency_bounds = stats.latency_bounds.clone();
            self.latency_counts = vec![0; stats.latency_counts.len()];
        }
        // Workers of one image share their bounds; a pod with other bounds (mid-upgrade) adds
        // its counts but not its histogram.
        if self.latency_bounds == stats.latency_bounds && self.latency_counts.len() == stats.latency_counts.len() {
            for (sum, count) in self.latency_counts.iter_mut().zip(&stats.latency_counts) {
                *sum += count;
            }
        }
    }

    /// The `q` quantile of latency in seconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without requests. A quantile in the
    /// overflow bucket is the highest bound.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let observed: u64 = self.latency_counts.iter().sum();
        if observed == 0 || self.latency_bounds.is_empty() {
            return None;
        }
        let rank = q * observed as f64;
        let mut below = 0u64;
        for (i, &count) in self.latency_counts.iter().enumerate() {
            let Some(&upper) = self.latency_bounds.get(i) else { break };
            if (below + count) as f64 >= rank && count > 0 {
                let lower = if i == 0 { 0.0 } else { self.latency_bounds[i - 1] };
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below += count;
        }
        self.latency_bounds.last().copied()
    }
}

/// One version across the pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VersionView {
    /// Pods where it serves, loads, or failed its last load.
    pub available: u32,
    pub loading: u32,
    pub failed: u32,
    /// The last load error a pod reported.
    pub message: String,
    /// The manifest's evaluation metrics, from any pod that loaded it.
    pub metrics: BTreeMap<String, f64>,
    /// An adapter's base as `model:version`, from any pod that knows it.
    pub base: Option<String>,
    pub requests: Requests,
    /// Its manifest's digest, from any pod that loaded it.
    pub digest: Option<String>,
    /// How the pods that loaded it from a remote repository fetched its files.
    pub fetch: Option<FetchStatus>,
}

/// Every answering pod's view of the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    /// Pods whose worker answered.
    pub pods: u32,
    /// Committed versions in the repository, as any pod saw it.
    pub on_disk: BTreeSet<u64>,
    pub versions: BTreeMap<u64, VersionView>,
    /// The largest version any pod has loaded, in bytes of files (0 before any has loaded).
    pub largest_version_bytes: u64,
}

impl Fleet {
    /// Folds the answers of the pods (one `ModelStatus` of the model per answering pod).
    pub fn from_reports(reports: &[ModelStatus]) -> Self {
        let mut fleet = Fleet { pods: reports.len() as u32, ..Fleet::default() };
        for report in reports {
            fleet.on_disk.extend(&report.on_disk);
            for version in &report.versions {
                fleet.largest_version_bytes = fleet.largest_version_bytes.max(version.size_bytes);
                let view = fleet.versions.entry(version.version).or_default();
                match VersionState::try_from(version.state) {
                    Ok(VersionState::Available) => view.available += 1,
                    Ok(VersionState::Start | VersionState::Loading) => view.loading += 1,
                    Ok(VersionState::Failed) => {
                        view.failed += 1;
                        view.message.clone_from(&version.reason);
                    }
                    _ => {}
                }
                if let (None, Some(base)) = (&view.base, &version.base) {
                    view.base = Some(format!("{}:{}", base.model, base.version));
                }
                if view.metrics.is_empty() {
                    view.metrics = version.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
                }
                if let Some(stats) = &version.requests {
                    view.requests.add(stats);
                }
                if view.digest.is_none() && !version.manifest_digest.is_empty() {
                    view.digest = Some(version.manifest_digest.clone());
                }
                if let Some(fetched) = &version.fetch {
                    let fetch = view.fetch.get_or_insert_default();
                    match fetched.files_downloaded {
                        0 => fetch.from_cache += 1,
                        _ => fetch.downloaded += 1,
                    }
                    fetch.downloaded_bytes += fetched.bytes_downloaded;
                    fetch.seconds = fetch.seconds.max(fetched.seconds);
                }
            }
        }
        fleet
    }

    /// Folds `model`'s reports out of each answering pod's report of all its models; a pod
    /// that does not know the model yet (it has not scanned the repository since) counts as
    /// not answering.
    pub fn of_model(pods: &[Vec<ModelStatus>], model: &str) -> Self {
        let reports: Vec<ModelStatus> = pods.iter().flatten().filter(|r| r.model == model).cloned().collect();
        Self::from_reports(&reports)
    }

    /// The view of `version` (all zero when no pod knows it).
    pub fn version(&self, version: u64) -> VersionView {
        self.versions.get(&version).cloned().unwrap_or_default()
    }

    /// Whether every answering pod serves `version` (false with no pods).
    pub fn serves_everywhere(&self, version: u64) -> bool {
        self.pods > 0 && self.version(version).available == self.pods
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use lantern_proto::lantern::v1::VersionStatus;

    use super::*;

    /// A pod's report: `(version, state, total requests, errors, requests per latency bucket)`,
    /// with buckets bounded at 1, 2, 4 and 8 ms.
    pub(crate) fn report(on_disk: &[u64], versions: &[(u64, VersionState, u64, u64, [u64; 5])]) -> ModelStatus {
        ModelStatus {
            model: "adder".into(),
            on_disk: on_disk.to_vec(),
            unloaded: false,
            versions: versions
                .iter()
                .map(|&(version, state, total, errors, latency)| VersionStatus {
                    version,
                    state: state as i32,
                    reason: if state == VersionState::Failed { "checksum mismatch".into() } else { String::new() },
                    requests: Some(RequestStats {
                        total,
                        errors,
                        latency_bounds: vec![0.001, 0.002, 0.004, 0.008],
                        latency_counts: latency.to_vec(),
                    }),
                    ..VersionStatus::default()
                })
                .collect(),
        }
    }

    #[test]
    fn folds_states_and_sums_requests_over_pods() {
        use VersionState::*;
        let fleet = Fleet::from_reports(&[
            report(&[1, 2], &[(1, Available, 10, 1, [10, 0, 0, 0, 0]), (2, Loading, 0, 0, [0; 5])]),
            report(&[1, 2, 3], &[(1, Available, 30, 0, [0, 30, 0, 0, 0]), (2, Failed, 0, 0, [0; 5])]),
        ]);
        assert_eq!(fleet.pods, 2);
        assert_eq!(fleet.on_disk, BTreeSet::from([1, 2, 3]));
        let one = fleet.version(1);
        assert_eq!((one.available, one.requests.total, one.requests.errors), (2, 40, 1));
        assert_eq!(one.requests.latency_counts, vec![10, 30, 0, 0, 0]);
        assert!(fleet.serves_everywhere(1));
        let two = fleet.version(2);
        assert_eq!((two.available, two.loading, two.failed), (0, 1, 1));
        assert_eq!(two.message, "checksum mismatch");
        assert!(!fleet.serves_everywhere(2));
        assert!(!Fleet::default().serves_everywhere(1), "no pods serve nothing");
    }

    #[test]
    fn a_version_s_digest_and_how_each_pod_fetched_it_are_folded() {
        use lantern_proto::lantern::v1::VersionFetch;
        let loaded = |files_downloaded, bytes_downloaded, seconds| {
            let mut pod = report(&[1], &[(1, VersionState::Available, 0, 0, [0; 5])]);
            pod.versions[0].manifest_digest = "sha256:abc".into();
            pod.versions[0].fetch =
                Some(VersionFetch { files_cached: 2 - files_downloaded, files_downloaded, bytes_downloaded, seconds });
            pod
        };
        let fleet = Fleet::from_reports(&[loaded(2, 500, 1.5), loaded(0, 0, 0.25), loaded(1, 200, 0.5)]);
        let one = fleet.version(1);
        assert_eq!(one.digest.as_deref(), Some("sha256:abc"));
        assert_eq!(one.fetch, Some(FetchStatus { from_cache: 1, downloaded: 2, downloaded_bytes: 700, seconds: 1.5 }));
        // A directory repository fetches nothing.
        let local = Fleet::from_reports(&[report(&[1], &[(1, VersionState::Available, 0, 0, [0; 5])])]);
        assert_eq!(local.version(1).fetch, None);
    }

    #[test]
    fn latency_quantiles_interpolate_inside_buckets() {
        let requests = |counts: [u64; 5]| Requests {
            total: counts.iter().sum(),
            errors: 0,
            latency_bounds: vec![0.001, 0.002, 0.004, 0.008],
            latency_counts: counts.to_vec(),
        };
        assert_eq!(requests([0; 5]).latency_quantile(0.99), None);
        // All 100 in (1 ms, 2 ms]: the 50th is half way through it.
        let p50 = requests([0, 100, 0, 0, 0]).latency_quantile(0.5).unwrap();
        assert!((p50 - 0.0015).abs() < 1e-12, "{p50}");
        // 99 fast, 1 in (4 ms, 8 ms]: p99 is still in the first bucket, p99.5 in the slow one.
        let mixed = requests([99, 0, 0, 1, 0]);
        assert!(mixed.latency_quantile(0.99).unwrap() <= 0.001);
        assert!(mixed.latency_quantile(0.995).unwrap() > 0.004);
        assert_eq!(requests([0, 0, 0, 0, 7]).latency_quantile(0.99), Some(0.008), "overflow is the top bound");
    }
}
