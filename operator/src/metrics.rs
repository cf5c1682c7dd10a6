//! The operator's own Prometheus metrics and its HTTP endpoint: `/metrics` (text format),
//! `/healthz` (the process answers) and `/readyz` (its controllers run, as leader or as a
//! standby waiting for the Lease).
//!
//! Series:
//! - `lantern_operator_reconciles_total{kind, result}`: reconciles by kind and `success`/`error`;
//! - `lantern_operator_reconcile_duration_seconds{kind}`: how long each took;
//! - `lantern_operator_reconciles_in_flight{kind}`: reconciles running now — with the error
//!   rate (each error is retried after 5 s), what the work-queue panel shows, since kube-rs's
//!   controller exposes no queue depth of its own;
//! - `lantern_operator_events_total{kind, reason}`: the Events the operator recorded (rollouts
//!   promoted or rolled back, gang restarts, …);
//! - `lantern_operator_leader`: 1 while this replica holds the Lease;
//! - `lantern_operator_traffic_percent{namespace, service, model, version, role}`: the percent
//!   of requests each served version gets, `role` `stable` or `canary` (what dashboards show
//!   stable beside canary with); a deleted service's series go when the controller learns of it
//!   (its owned pods' deletions ask for it, and it is not found).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    kind: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    namespace: String,
    service: String,
    model: String,
    version: String,
    role: &'static str,
}

/// One version's share of a service's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    pub model: String,
    pub version: u64,
    /// `stable` or `canary`.
    pub role: &'static str,
    pub percent: u32,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every operator metric, registered once per process.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: HistogramFamily<KindLabels>,
    in_flight: Family<KindLabels, Gauge>,
    events: Family<EventLabels, Counter>,
    leader: Gauge,
    traffic: Family<TrafficLabels, Gauge>,
    /// The traffic series each service set last, to drop those of versions it no longer serves.
    traffic_of: Mutex<HashMap<(String, String), Vec<TrafficLabels>>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lantern_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by kind and result", reconciles.clone());
        let reconcile_duration = HistogramFamily::<KindLabels>::new_with_constructor(reconcile_histogram as fn() -> _);
        registry.register("reconcile_duration_seconds", "Time per reconcile", reconcile_duration.clone());
        let in_flight = Family::<KindLabels, Gauge>::default();
        registry.register("reconciles_in_flight", "Reconciles running now, by kind", in_flight.clone());
        let events = Family::<EventLabels, Counter>::default();
        registry.register("events", "Events recorded, by kind of object and reason", events.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        let traffic = Family::<TrafficLabels, Gauge>::default();
        registry.register(
            "traffic_percent",
            "Percent of a service's requests each served version gets, by role (stable, canary)",
            traffic.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            in_flight,
            events,
            leader,
            traffic,
            traffic_of: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// A reconcile of `kind` starts; [`Metrics::observe_reconcile`] ends it.
    pub fn start_reconcile(&self, kind: &'static str) {
        self.in_flight.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn observe_reconcile(&self, kind: &'static str, success: bool, seconds: f64) {
        self.in_flight.get_or_create(&KindLabels { kind }).dec();
        let result = if success { "success" } else { "error" };
        self.reconciles.get_or_create(&ReconcileLabels { kind, result }).inc();
        self.reconcile_duration.get_or_create(&KindLabels { kind }).observe(seconds);
    }

    pub fn observe_event(&self, kind: &'static str, reason: &str) {
        self.events.get_or_create(&EventLabels { kind, reason: reason.to_owned() }).inc();
    }

    /// The traffic split of `service` in `namespace` now, replacing the one it had.
    pub fn set_traffic(&self, namespace: &str, service: &str, shares: &[Share]) {
        let labels: Vec<TrafficLabels> = shares
            .iter()
            .map(|share| TrafficLabels {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
                model: share.model.clone(),
                version: share.version.to_string(),
                role: share.role,
            })
            .collect();
        let mut previous = self.traffic_of.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (namespace.to_owned(), service.to_owned());
        for gone in previous.get(&key).into_iter().flatten().filter(|l| !labels.contains(l)) {
            self.traffic.remove(gone);
        }
        for (label, share) in labels.iter().zip(shares) {
            self.traffic.get_or_create(label).set(i64::from(share.percent));
        }
        previous.insert(key, labels);
    }

    /// Drops the series of the `kind` object `namespace`/`name`, which was deleted: an
    /// InferenceService's traffic split.
    pub fn forget(&self, kind: &str, namespace: &str, name: &str) {
        if kind != "InferenceService" {
            return;
        }
        self.set_traffic(namespace, name, &[]);
        let mut previous = self.traffic_of.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        previous.remove(&(namespace.to_owned(), name.to_owned()));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Marks the process ready for `/readyz`.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail; this is a bug");
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(encoded))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readiness))
        .with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn encoded(State(metrics): State<std::sync::Arc<Metrics>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = lantern_telemetry::exposition::negotiate(accept, metrics.encode());
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn readiness(State(metrics): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_events_and_leadership_are_counted_by_their_labels() {
        let metrics = Metrics::default();
        for _ in 0..2 {
            metrics.start_reconcile("InferenceService");
        }
        metrics.start_reconcile("TrainingJob");
        metrics.observe_reconcile("InferenceService", true, 0.004);
        metrics.observe_reconcile("InferenceService", false, 0.2);
        metrics.observe_event("InferenceService", "Promoted");
        metrics.set_leader(true);
        let text = metrics.encode();
        for line in [
            r#"lantern_operator_reconciles_total{kind="InferenceService",result="success"} 1"#,
            r#"lantern_operator_reconciles_total{kind="InferenceService",result="error"} 1"#,
            r#"lantern_operator_reconcile_duration_seconds_count{kind="InferenceService"} 2"#,
            r#"lantern_operator_reconciles_in_flight{kind="InferenceService"} 0"#,
            r#"lantern_operator_reconciles_in_flight{kind="TrainingJob"} 1"#,
            r#"lantern_operator_events_total{kind="InferenceService",reason="Promoted"} 1"#,
            "lantern_operator_leader 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn a_services_traffic_split_replaces_the_one_before() {
        let metrics = Metrics::default();
        let share = |version, role, percent| Share { model: "m".into(), version, role, percent };
        metrics.set_traffic("ns", "svc", &[share(1, "stable", 90), share(2, "canary", 10)]);
        metrics.set_traffic("ns", "svc", &[share(2, "stable", 100)]);
        let text = metrics.encode();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("lantern_operator_traffic_percent{")).collect();
        assert_eq!(
            series,
            [
                r#"lantern_operator_traffic_percent{namespace="ns",service="svc",model="m",version="2",role="stable"} 100"#
            ]
        );
        let traffic = |metrics: &Metrics| metrics.encode().matches("lantern_operator_traffic_percent{").count();
        metrics.forget("TrainingJob", "ns", "svc");
        assert_eq!(traffic(&metrics), 1, "a job of the same name is another object");
        metrics.forget("InferenceService", "ns", "svc");
        assert_eq!(traffic(&metrics), 0, "a deleted service's split goes with it");
    }
}
