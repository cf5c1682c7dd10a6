//! An InferenceService's next status (pure), from the rollout's decision, the pods and what
//! their workers report.
//!
//! Conditions:
//! - `ModelsReady`: the stable version serves on every answering pod. False with `NoVersion`
//!   (nothing committed yet), `Loading`, `ModelLoadFailed` (with the worker's reason) or
//!   `SourceNotFound` (the referenced TrainingJob does not exist).
//! - `RolloutProgressing`: true while a canary loads (`Loading`) or runs its steps
//!   (`CanaryStep`); false with how the last rollout ended (`Promoted`, `ModelLoadFailed`,
//!   `EvalMetricRegressed`, `AnalysisFailed`, `Aborted`, `Pinned`, `Superseded`,
//!   `NoLongerCandidate`), or `NoRollout`.
//! - `AdaptersReady` (only with `spec.adapters`): every adapter model's stable version serves on
//!   every answering pod. False with the first unready adapter's reason (`NoVersion`, `Loading`,
//!   `ModelLoadFailed`, `SourceNotFound`, `SourceInvalid`) and every unready adapter in the
//!   message. Each adapter's own rollout is in `status.adapters[]`.
//! - `ManualOverride` (only while `spec.rollout.promote` or `abort` is set): true (`Applied`)
//!   once it acted on the canary it names, false (`NotTheCanary`) when it names a version that
//!   is not the canary, which changes nothing.
//! - `Ready`: `replicas` pods are ready and serve the base's stable version. False with
//!   `ModelsReady`'s reason, `PodsNotReady` or `ScaledToZero`. Adapters do not hold it back: a
//!   base serves while an adapter's first version is still being trained.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::adapters::AdapterState;
use super::autoscale;
use super::fleet::Fleet;
use super::objects;
use super::rollout::Decision;
use crate::crd::InferenceService;
use crate::crd::inference::{
    AdapterStatus, AutoscalerStatus, InferenceServiceStatus, RolloutPhase, ServedVersions, VersionStatus,
};
use crate::metrics::Share;
use crate::status::condition;

/// What the controller saw this pass.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Live pods of the wanted revision.
    pub replicas: u32,
    /// Ready pods whose worker serves the stable version.
    pub serving: u32,
    pub fleet: Fleet,
    /// The largest version the pods have reported loading so far ([`objects::model_bytes`]).
    pub model_bytes: u64,
    /// Why the model's source cannot be used, if it cannot.
    pub source_error: Option<String>,
    /// Whether the clients' way in works: the router has a ready pod.
    pub router_ready: bool,
    /// The autoscaler's targets and its decision this pass, if it decided.
    pub autoscaler: Option<(autoscale::Targets, autoscale::Decision)>,
}

/// Whether a model's stable version serves on every answering pod, with a reason and a message
/// (`SourceNotFound` when `source_error` says the model's source cannot be used).
fn readiness(
    model: &str,
    source_error: Option<&(&'static str, String)>,
    stable: Option<u64>,
    fleet: &Fleet,
) -> (bool, &'static str, String) {
    match (source_error, stable) {
        (Some((reason, error)), _) => (false, *reason, error.clone()),
        (None, None) => (false, "NoVersion", format!("no committed version of model {model} in the repository yet")),
        (None, Some(stable)) => {
            let view = fleet.version(stable);
            if view.failed > 0 {
                let message = format!(
                    "version {stable} of {model} failed to load on {} of {} pods: {}",
                    view.failed, fleet.pods, view.message
                );
                (false, "ModelLoadFailed", message)
            } else if fleet.serves_everywhere(stable) {
                (true, "Available", format!("version {stable} of {model} serves on {} pods", fleet.pods))
            } else {
                let message =
                    format!("version {stable} of {model} serves on {} of {} pods", view.available, fleet.pods);
                (false, "Loading", message)
            }
        }
    }
}

/// A model's stable and canary versions, rollout and per-version states after `decision`.
pub fn served_versions(decision: &Decision, fleet: &Fleet) -> ServedVersions {
    let versions = fleet
        .versions
        .iter()
        .filter(|(_, v)| v.available + v.loading + v.failed > 0)
        .map(|(&version, v)| VersionStatus {
            version,
            available: v.available,
            loading: v.loading,
            failed: v.failed,
            message: v.message.clone(),
            digest: v.digest.clone(),
            fetch: v.fetch.clone(),
        })
        .collect();
    ServedVersions {
        stable_version: decision.stable,
        canary_version: decision.canary,
        canary_percent: decision.canary_percent,
        rollout: decision.rollout.clone(),
        rejected_versions: decision.rejected.clone(),
        versions,
    }
}

/// An adapter model's status: its versions as decided, its base, or why it is not served.
fn adapter_status(adapter: &AdapterState) -> AdapterStatus {
    let served = adapter.decision.as_ref().map(|d| served_versions(d, &adapter.fleet)).unwrap_or_default();
    let base = served.stable_version.and_then(|stable| adapter.fleet.version(stable).base);
    let message = adapter.error.as_ref().map(|(_, message)| message.clone()).unwrap_or_default();
    AdapterStatus { model: adapter.model.clone(), base, served, message }
}

/// The `AdaptersReady` condition's status, reason and message.
fn adapters_ready(adapters: &[AdapterState]) -> (bool, &'static str, String) {
    let unready: Vec<(&'static str, String)> = adapters
        .iter()
        .map(|a| readiness(&a.model, a.error.as_ref(), a.decision.as_ref().and_then(|d| d.stable), &a.fleet))
        .filter(|(ready, ..)| !ready)
        .map(|(_, reason, message)| (reason, message))
        .collect();
    match unready.first() {
        None => (true, "Available", format!("{} adapter models serve on every pod", adapters.len())),
        Some((reason, _)) => {
            (false, *reason, unready.iter().map(|(_, message)| message.as_str()).collect::<Vec<_>>().join("; "))
        }
    }
}

/// The status after `decision`.
pub fn next(
    service: &InferenceService,
    decision: &Decision,
    adapters: &[AdapterState],
    observed: &Observed,
    now: Timestamp,
) -> InferenceServiceStatus {
    let previous = service.status.clone().unwrap_or_default();
    let generation = service.metadata.generation;
    let fleet = &observed.fleet;
    let source_error = observed.source_error.clone().map(|error| ("SourceNotFound", error));
    let (models_ready, models_reason, models_message) =
        readiness(&service.spec.model, source_error.as_ref(), decision.stable, fleet);
    let (rolling, rollout_reason, rollout_message) = match &decision.rollout {
        Some(r) if r.phase == RolloutPhase::Loading => (true, "Loading", r.message.clone()),
        Some(r) if r.phase == RolloutPhase::Progressing => (true, "CanaryStep", r.message.clone()),
        Some(r) => (false, r.reason.as_str(), r.message.clone()),
        None => (false, "NoRollout", String::new()),
    };
    let wanted = service.spec.replicas;
    let (ready, ready_reason, ready_message) = if wanted == 0 {
        (false, "ScaledToZero", "replicas is 0".to_owned())
    } else if !models_ready {
        (false, models_reason, models_message.clone())
    } else if observed.serving < wanted {
        (false, "PodsNotReady", format!("{} of {wanted} pods ready", observed.serving))
    } else if !observed.router_ready {
        (false, "RouterNotReady", "the router in front of the pods has no ready pod".to_owned())
    } else {
        let stable = decision.stable.unwrap_or_default();
        (true, "Ready", format!("version {stable} serves on {wanted} pods"))
    };
    let make = |type_: &str, status: bool, reason: &str, message: &str| -> Condition {
        condition(&previous.conditions, type_, status, reason, message, generation, now)
    };
    let mut conditions = vec![
        make("Ready", ready, ready_reason, &ready_message),
        make("ModelsReady", models_ready, models_reason, &models_message),
    ];
    if !adapters.is_empty() {
        let (ready, reason, message) = adapters_ready(adapters);
        conditions.push(make("AdaptersReady", ready, reason, &message));
    }
    conditions.push(make("RolloutProgressing", rolling, rollout_reason, &rollout_message));
    match &decision.manual {
        Some(Ok(done)) => conditions.push(make("ManualOverride", true, "Applied", done)),
        Some(Err(refused)) => conditions.push(make("ManualOverride", false, "NotTheCanary", refused)),
        None => {}
    }
    InferenceServiceStatus {
        url: Some(objects::url(service)),
        conditions,
        observed_generation: generation,
        replicas: observed.replicas,
        ready_replicas: observed.serving,
        selector: Some(objects::selector(service)),
        served: served_versions(decision, fleet),
        adapters: adapters.iter().map(adapter_status).collect(),
        model_bytes: (observed.model_bytes > 0).then_some(observed.model_bytes),
        autoscaler: observed.autoscaler.map(|(targets, decision)| {
            // Two decimals: a status that changes in the fourth digit is written every pass.
            let rounded = |value: f64| (value * 100.0).round() / 100.0;
            AutoscalerStatus {
                average_in_flight: rounded(decision.stable.in_flight),
                average_waiting_sequences: targets.waiting.map(|_| rounded(decision.stable.waiting)),
                average_kv_cache_pods: targets.kv_cache.map(|_| rounded(decision.stable.kv_cache)),
                desired_replicas: decision.replicas,
                mode: if decision.panicking { "Panic" } else { "Stable" }.to_owned(),
            }
        }),
    }
}

/// Each served version's share of the requests: the base model's and every adapter's stable
/// and canary versions, for `lantern_operator_traffic_percent`.
pub fn traffic(status: &InferenceServiceStatus, model: &str) -> Vec<Share> {
    let models =
        std::iter::once((model, &status.served)).chain(status.adapters.iter().map(|a| (a.model.as_str(), &a.served)));
    models
        .flat_map(|(model, served)| {
            let canary = served.canary_version.map(|version| Share {
                model: model.to_owned(),
                version,
                role: "canary",
                percent: served.canary_percent,
            });
            let stable = served.stable_version.map(|version| Share {
                model: model.to_owned(),
                version,
                role: "stable",
                percent: 100 - canary.as_ref().map_or(0, |c| c.percent.min(100)),
            });
            stable.into_iter().chain(canary)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use lantern_proto::lantern::v1::VersionState::{Available, Failed};

    use super::*;
    use crate::serving::fleet::tests::report;
    use crate::serving::test_service;

    fn decision(stable: Option<u64>) -> Decision {
        Decision {
            stable,
            canary: None,
            canary_percent: 0,
            rollout: None,
            rejected: vec![],
            events: vec![],
            requeue: None,
            manual: None,
        }
    }

    fn conditions(status: &InferenceServiceStatus) -> Vec<(&str, &str, &str)> {
        status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect()
    }

    #[test]
    fn ready_when_every_pod_serves_the_stable_version() {
        let service = test_service(serde_json::json!({"replicas": 2}));
        let fleet = Fleet::from_reports(&[
            report(&[1], &[(1, Available, 0, 0, [0; 5])]),
            report(&[1], &[(1, Available, 0, 0, [0; 5])]),
        ]);
        let observed = Observed {
            replicas: 2,
            serving: 2,
            fleet,
            model_bytes: 0,
            source_error: None,
            router_ready: true,
            autoscaler: None,
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let status = next(&service, &decision(Some(1)), &[], &observed, now);
        assert_eq!(
            conditions(&status),
            [
                ("Ready", "True", "Ready"),
                ("ModelsReady", "True", "Available"),
                ("RolloutProgressing", "False", "NoRollout")
            ]
        );
        assert_eq!((status.ready_replicas, status.served.stable_version), (2, Some(1)));
        assert_eq!(status.selector.as_deref(), Some("lantern.dev/inference-service=adder"));
        assert_eq!(status.served.versions, [VersionStatus { version: 1, available: 2, ..Default::default() }]);

        let no_router = Observed { router_ready: false, ..observed };
        let status = next(&service, &decision(Some(1)), &[], &no_router, now);
        assert_eq!(conditions(&status)[0], ("Ready", "False", "RouterNotReady"));
        let one_pod = Observed { serving: 1, router_ready: true, ..no_router };
        let status = next(&service, &decision(Some(1)), &[], &one_pod, now);
        assert_eq!(conditions(&status)[0], ("Ready", "False", "PodsNotReady"));
    }

    #[test]
    fn a_failed_stable_version_and_a_missing_source_say_why() {
        let service = test_service(serde_json::json!({}));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let fleet = Fleet::from_reports(&[report(&[1], &[(1, Failed, 0, 0, [0; 5])])]);
        let observed = Observed {
            replicas: 1,
            serving: 0,
            fleet,
            model_bytes: 0,
            source_error: None,
            router_ready: true,
            autoscaler: None,
        };
        let status = next(&service, &decision(Some(1)), &[], &observed, now);
        assert_eq!(conditions(&status)[1], ("ModelsReady", "False", "ModelLoadFailed"));
        assert!(status.conditions[0].message.contains("checksum mismatch"), "{:?}", status.conditions[0]);
        let missing = Observed { source_error: Some("TrainingJob ml/gone not found".into()), ..Observed::default() };
        let status = next(&service, &decision(None), &[], &missing, now);
        assert_eq!(conditions(&status)[0], ("Ready", "False", "SourceNotFound"));
        let empty = next(&service, &decision(None), &[], &Observed::default(), now);
        assert_eq!(conditions(&empty)[1], ("ModelsReady", "False", "NoVersion"));
    }

    #[test]
    fn adapters_report_their_versions_and_base_and_why_one_is_not_served() {
        use crate::serving::adapters::{self, AdapterState};
        let service = test_service(serde_json::json!({"adapters": [{"model": "tickets"}, {"model": "sku"}]}));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut tickets = report(&[1], &[(1, Available, 0, 0, [0; 5])]);
        tickets.model = "tickets".into();
        tickets.versions[0].base = Some(lantern_proto::lantern::v1::AdapterBase {
            model: "adder".into(),
            version: 1,
            manifest_digest: "sha256:00".into(),
        });
        let resolved = adapters::resolve(&service.spec, None, &Default::default());
        let mut states = adapters::decide(&resolved, &[], &[vec![tickets]], now);
        let fleet = Fleet::from_reports(&[report(&[1], &[(1, Available, 0, 0, [0; 5])])]);
        let observed = Observed {
            replicas: 1,
            serving: 1,
            fleet,
            model_bytes: 0,
            source_error: None,
            router_ready: true,
            autoscaler: None,
        };
        let ready = |states: &[AdapterState]| {
            let status = next(&service, &decision(Some(1)), states, &observed, now);
            let adapters_ready = status.conditions.iter().find(|c| c.type_ == "AdaptersReady").cloned().unwrap();
            (status, adapters_ready)
        };
        let (status, condition) = ready(&states);
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", "NoVersion"));
        assert!(condition.message.contains("model sku"), "{}", condition.message);
        let tickets = &status.adapters[0];
        assert_eq!((tickets.model.as_str(), tickets.served.stable_version), ("tickets", Some(1)));
        assert_eq!(tickets.base.as_deref(), Some("adder:1"));
        assert_eq!(tickets.served.versions[0].available, 1);

        states[1].error = Some(("SourceNotFound", "TrainingJob ml/sku not found".into()));
        states[1].decision = None;
        let (status, condition) = ready(&states);
        assert_eq!(
            (condition.reason.as_str(), condition.message.as_str()),
            ("SourceNotFound", "TrainingJob ml/sku not found")
        );
        assert_eq!(status.adapters[1].message, "TrainingJob ml/sku not found");
        assert_eq!(conditions(&status)[0], ("Ready", "True", "Ready"), "the base decides Ready alone");

        states.truncate(1);
        assert_eq!(ready(&states).1.status, "True");
        let without = next(&service, &decision(Some(1)), &[], &Observed::default(), now);
        assert!(!without.conditions.iter().any(|c| c.type_ == "AdaptersReady"), "no adapters, no condition");
    }

    #[test]
    fn the_traffic_split_names_stable_and_canary_of_the_base_and_each_adapter() {
        let served = |stable, canary, canary_percent| ServedVersions {
            stable_version: stable,
            canary_version: canary,
            canary_percent,
            ..ServedVersions::default()
        };
        let status = InferenceServiceStatus {
            served: served(Some(1), Some(2), 10),
            adapters: vec![AdapterStatus {
                model: "tickets".into(),
                served: served(Some(4), None, 0),
                ..Default::default()
            }],
            ..InferenceServiceStatus::default()
        };
        let shares: Vec<(String, u64, &str, u32)> =
            traffic(&status, "base").into_iter().map(|s| (s.model, s.version, s.role, s.percent)).collect();
        assert_eq!(
            shares,
            [("base".into(), 1, "stable", 90), ("base".into(), 2, "canary", 10), ("tickets".into(), 4, "stable", 100)]
        );
    }
}
