//! The router's Prometheus metrics, on its admin port's `/metrics`: per pod, requests in flight
//! and requests routed; requests retried on another pod, held while no pod was ready, and
//! refused after the hold; the ready pods.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod: String,
}

/// How a request's pod was chosen: `affinity` (its key, on the hash ring) or `least` (the less
/// loaded of two).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChoiceLabels {
    choice: &'static str,
}

/// Why a request was sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The pod could not be connected to.
    Connect,
    /// The pod's connection refused the request before it was sent (closing, draining).
    Refused,
}

impl Retry {
    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    reason: &'static str,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    in_flight: Family<PodLabels, Gauge>,
    routed: Family<PodLabels, Counter>,
    choices: Family<ChoiceLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    held: Gauge,
    hold_timeouts: Counter,
    ready: Gauge,
}

/// The metrics, shared by every request; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lantern_router");
        let in_flight = Family::<PodLabels, Gauge>::default();
        let routed = Family::<PodLabels, Counter>::default();
        let choices = Family::<ChoiceLabels, Counter>::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let (held, hold_timeouts, ready) = (Gauge::default(), Counter::default(), Gauge::default());
        registry.register("in_flight", "Requests in flight, per pod (a stream until it ends)", in_flight.clone());
        registry.register("routed", "Requests sent to each pod", routed.clone());
        registry.register("choices", "How pods were chosen: affinity or least loaded", choices.clone());
        registry.register("retries", "Requests sent again to another pod, by reason", retries.clone());
        registry.register("held", "Requests waiting for a ready pod", held.clone());
        registry.register("hold_timeouts", "Requests refused after waiting for a ready pod", hold_timeouts.clone());
        registry.register("ready_pods", "Pods requests may go to", ready.clone());
        Self(Arc::new(Inner { registry, in_flight, routed, choices, retries, held, hold_timeouts, ready }))
    }
}

impl Metrics {
    fn pod(addr: SocketAddr) -> PodLabels {
        PodLabels { pod: addr.to_string() }
    }

    pub(crate) fn started(&self, pod: SocketAddr) {
        self.0.in_flight.get_or_create(&Self::pod(pod)).inc();
        self.0.routed.get_or_create(&Self::pod(pod)).inc();
    }

    pub(crate) fn finished(&self, pod: SocketAddr) {
        self.0.in_flight.get_or_create(&Self::pod(pod)).dec();
    }

    pub(crate) fn routed(&self, by_affinity: bool) {
        let choice = if by_affinity { "affinity" } else { "least" };
        self.0.choices.get_or_create(&ChoiceLabels { choice }).inc();
    }

    pub(crate) fn retried(&self, reason: Retry) {
        self.0.retries.get_or_create(&RetryLabels { reason: reason.label() }).inc();
    }

    /// Counts a request as held until the returned guard is dropped; `None`, counting nothing,
    /// when `max` are held already (the count and the check are one atomic step).
    pub(crate) fn hold(&self, max: usize) -> Option<Held> {
        let before = self.0.held.inc();
        if usize::try_from(before).unwrap_or(usize::MAX) >= max {
            self.0.held.dec();
            return None;
        }
        Some(Held(self.clone()))
    }

    pub(crate) fn hold_timed_out(&self) {
        self.0.hold_timeouts.inc();
    }

    pub(crate) fn set_ready(&self, pods: usize) {
        self.0.ready.set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    /// Requests held now.
    pub fn held(&self) -> i64 {
        self.0.held.get()
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

/// A held request, counted until dropped (answered, refused, or its client gone).
pub(crate) struct Held(Metrics);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.0.held.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_the_maximum_are_held_and_a_leaving_one_frees_its_place() {
        let metrics = Metrics::default();
        let first = metrics.hold(2).unwrap();
        let _second = metrics.hold(2).unwrap();
        assert!(metrics.hold(2).is_none());
        assert_eq!(metrics.held(), 2, "a refused request is not counted");
        drop(first);
        assert!(metrics.hold(2).is_some());
    }
}
