//! Per-version request counts and latency, readable back: the operator's canary analysis reads
//! them from `ModelService.GetModelStatus` (the Prometheus families at `/metrics` can only be
//! encoded, not read).
//!
//! Counts are cumulative since the version was loaded on this pod, as Prometheus counters are;
//! the reader takes differences.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tonic::Code;

/// Upper bounds of the latency buckets, in seconds: 50 µs doubling to ~26 s, the same as the
/// `request_duration_seconds` histogram. One more bucket counts longer requests.
pub fn latency_bounds() -> Vec<f64> {
    (0..LATENCY_BUCKETS).map(|i| 50e-6 * f64::from(1u32 << i)).collect()
}

const LATENCY_BUCKETS: usize = 20;

/// Whether a request that ended with `code` failed for the server's part, and so counts against
/// a version: caller errors (`INVALID_ARGUMENT`, `NOT_FOUND`, ...) do not.
pub fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Internal
            | Code::Unknown
            | Code::Unavailable
            | Code::DataLoss
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// What one version has served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    /// Requests that ended with a server error ([`is_server_error`]).
    pub errors: u64,
    /// Requests per latency bucket: one per [`latency_bounds`] entry, then the overflow.
    pub latency_counts: Vec<u64>,
}

/// One version's counters.
#[derive(Debug)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS + 1],
}

impl Counters {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, code: Code, seconds: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if is_server_error(code) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = latency_bounds().iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_counts: self.latency.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// The counters of every loaded version, keyed by model and version.
#[derive(Debug, Default)]
pub struct RequestStats {
    versions: RwLock<HashMap<(String, u64), Arc<Counters>>>,
}

impl RequestStats {
    /// Counts one finished request to `model` `version` (the metrics' `Outcome` calls this once
    /// per request).
    pub fn record(&self, model: &str, version: u64, code: Code, seconds: f64) {
        self.counters(model, version).record(code, seconds);
    }

    /// The counters of `model` `version`, created on first use.
    fn counters(&self, model: &str, version: u64) -> Arc<Counters> {
        let key = (model.to_owned(), version);
        if let Some(counters) = self.versions.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return counters.clone();
        }
        let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
        versions.entry(key).or_insert_with(|| Arc::new(Counters::new())).clone()
    }

    /// What `model` `version` has served (all zero if nothing yet).
    pub fn snapshot(&self, model: &str, version: u64) -> Snapshot {
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        match versions.get(&(model.to_owned(), version)) {
            Some(counters) => counters.snapshot(),
            None => Counters::new().snapshot(),
        }
    }

    /// Forgets an unloaded version, so a reload starts from zero and the table stays bounded.
    pub fn forget(&self, model: &str, version: u64) {
        self.versions.write().unwrap_or_else(|p| p.into_inner()).remove(&(model.to_owned(), version));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_server_errors_and_latency_buckets() {
        let stats = RequestStats::default();
        stats.record("m", 1, Code::Ok, 40e-6);
        stats.record("m", 1, Code::Ok, 1e-3);
        stats.record("m", 1, Code::InvalidArgument, 1e-3);
        stats.record("m", 1, Code::Internal, 100.0);
        stats.record("m", 2, Code::Ok, 1e-3);
        let snapshot = stats.snapshot("m", 1);
        assert_eq!((snapshot.requests, snapshot.errors), (4, 1));
        assert_eq!(snapshot.latency_counts.len(), latency_bounds().len() + 1);
        assert_eq!(snapshot.latency_counts[0], 1, "40 µs is in the first bucket");
        // 1 ms lies in (0.8 ms, 1.6 ms]: bucket 5.
        assert_eq!(snapshot.latency_counts[5], 2);
        assert_eq!(snapshot.latency_counts[LATENCY_BUCKETS], 1, "100 s overflows");
        assert_eq!(stats.snapshot("m", 2).requests, 1);
        stats.forget("m", 1);
        assert_eq!(
            stats.snapshot("m", 1),
            Snapshot { latency_counts: vec![0; LATENCY_BUCKETS + 1], ..Snapshot::default() }
        );
    }

    #[test]
    fn caller_errors_do_not_count_against_a_version() {
        for code in [Code::InvalidArgument, Code::NotFound, Code::Cancelled, Code::FailedPrecondition] {
            assert!(!is_server_error(code), "{code:?}");
        }
        for code in [Code::Internal, Code::Unavailable, Code::ResourceExhausted, Code::DeadlineExceeded] {
            assert!(is_server_error(code), "{code:?}");
        }
    }
}
