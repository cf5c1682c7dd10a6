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
//! - `Ready`: `replicas` pods are ready and serve the stable version. False with `ModelsReady`'s
//!   reason, `PodsNotReady` or `ScaledToZero`.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::fleet::Fleet;
use super::objects;
use super::rollout::Decision;
use crate::crd::InferenceService;
use crate::crd::inference::{InferenceServiceStatus, RolloutPhase, VersionStatus};
use crate::status::condition;

/// What the controller saw this pass.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Live pods of the wanted revision.
    pub replicas: u32,
    /// Ready pods whose worker serves the stable version.
    pub serving: u32,
    pub fleet: Fleet,
    /// Why the model's source cannot be used, if it cannot.
    pub source_error: Option<String>,
}

/// The status after `decision`.
pub fn next(
    service: &InferenceService,
    decision: &Decision,
    observed: &Observed,
    now: Timestamp,
) -> InferenceServiceStatus {
    let previous = service.status.clone().unwrap_or_default();
    let generation = service.metadata.generation;
    let fleet = &observed.fleet;
    let model = &service.spec.model;
    let (models_ready, models_reason, models_message) = match (&observed.source_error, decision.stable) {
        (Some(error), _) => (false, "SourceNotFound", error.clone()),
        (None, None) => (false, "NoVersion", format!("no committed version of model {model} in the repository yet")),
        (None, Some(stable)) => {
            let view = fleet.version(stable);
            if view.failed > 0 {
                let message = format!(
                    "version {stable} failed to load on {} of {} pods: {}",
                    view.failed, fleet.pods, view.message
                );
                (false, "ModelLoadFailed", message)
            } else if fleet.serves_everywhere(stable) {
                (true, "Available", format!("version {stable} serves on {} pods", fleet.pods))
            } else {
                (false, "Loading", format!("version {stable} serves on {} of {} pods", view.available, fleet.pods))
            }
        }
    };
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
    } else {
        let stable = decision.stable.unwrap_or_default();
        (true, "Ready", format!("version {stable} serves on {wanted} pods"))
    };
    let make = |type_: &str, status: bool, reason: &str, message: &str| -> Condition {
        condition(&previous.conditions, type_, status, reason, message, generation, now)
    };
    let conditions = vec![
        make("Ready", ready, ready_reason, &ready_message),
        make("ModelsReady", models_ready, models_reason, &models_message),
        make("RolloutProgressing", rolling, rollout_reason, &rollout_message),
    ];
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
        })
        .collect();
    InferenceServiceStatus {
        url: Some(objects::url(service)),
        conditions,
        observed_generation: generation,
        replicas: observed.replicas,
        ready_replicas: observed.serving,
        selector: Some(objects::selector(service)),
        stable_version: decision.stable,
        canary_version: decision.canary,
        canary_percent: decision.canary_percent,
        rollout: decision.rollout.clone(),
        rejected_versions: decision.rejected.clone(),
        versions,
    }
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
        let observed = Observed { replicas: 2, serving: 2, fleet, source_error: None };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let status = next(&service, &decision(Some(1)), &observed, now);
        assert_eq!(
            conditions(&status),
            [
                ("Ready", "True", "Ready"),
                ("ModelsReady", "True", "Available"),
                ("RolloutProgressing", "False", "NoRollout")
            ]
        );
        assert_eq!((status.ready_replicas, status.stable_version), (2, Some(1)));
        assert_eq!(status.selector.as_deref(), Some("lantern.dev/inference-service=adder"));
        assert_eq!(status.versions, [VersionStatus { version: 1, available: 2, ..Default::default() }]);

        let one_pod = Observed { serving: 1, ..observed };
        let status = next(&service, &decision(Some(1)), &one_pod, now);
        assert_eq!(conditions(&status)[0], ("Ready", "False", "PodsNotReady"));
    }

    #[test]
    fn a_failed_stable_version_and_a_missing_source_say_why() {
        let service = test_service(serde_json::json!({}));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let fleet = Fleet::from_reports(&[report(&[1], &[(1, Failed, 0, 0, [0; 5])])]);
        let observed = Observed { replicas: 1, serving: 0, fleet, source_error: None };
        let status = next(&service, &decision(Some(1)), &observed, now);
        assert_eq!(conditions(&status)[1], ("ModelsReady", "False", "ModelLoadFailed"));
        assert!(status.conditions[0].message.contains("checksum mismatch"), "{:?}", status.conditions[0]);
        let missing = Observed { source_error: Some("TrainingJob ml/gone not found".into()), ..Observed::default() };
        let status = next(&service, &decision(None), &missing, now);
        assert_eq!(conditions(&status)[0], ("Ready", "False", "SourceNotFound"));
        let empty = next(&service, &decision(None), &Observed::default(), now);
        assert_eq!(conditions(&empty)[1], ("ModelsReady", "False", "NoVersion"));
    }
}
