//! A service's adapter models (pure): which model each `spec.adapters` entry names (a listed
//! name, or the output of a LoRA fine-tuning TrainingJob over the service's model), the rollout
//! settings it gets, and its decision from what the pods report. Each adapter model rolls out
//! on its own, by the same [`rollout`](super::rollout) as the base, so one adapter's canary
//! never moves another's traffic.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use lantern_proto::lantern::v1::ModelStatus;

use super::fleet::Fleet;
use super::rollout::{self, Decision, Event, Settings};
use crate::crd::inference::{AdapterModel, AdapterStatus, InferenceServiceSpec};
use crate::crd::{Repository, TrainingJob};

/// Why an adapter is not served: a condition reason and a message.
pub type Unusable = (&'static str, String);

/// A `spec.adapters` entry, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// The adapter model; empty when its TrainingJob could not be read.
    pub model: String,
    pub settings: Settings,
    /// Why it is not served, if it is not.
    pub error: Option<Unusable>,
}

/// An adapter after this pass's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterState {
    pub model: String,
    pub error: Option<Unusable>,
    /// `None` for an adapter that is not served.
    pub decision: Option<Decision>,
    pub fleet: Fleet,
}

/// Resolves every entry of `spec.adapters`: `jobs` holds each referenced TrainingJob as read
/// (or why it could not be), `repository` is where the service's pods read versions from.
pub fn resolve(
    spec: &InferenceServiceSpec,
    repository: Option<&Repository>,
    jobs: &BTreeMap<String, Result<TrainingJob, String>>,
) -> Vec<Adapter> {
    let mut served = BTreeSet::from([spec.model.clone()]);
    let mut adapters = Vec::with_capacity(spec.adapters.len());
    for entry in &spec.adapters {
        let rollout = entry.rollout.as_ref().or(spec.rollout.as_ref());
        let settings = Settings::from_parts(rollout, entry.version_policy.as_ref());
        let (model, mut error) = source(entry, spec, repository, jobs);
        if error.is_none() && !served.insert(model.clone()) {
            error = Some(("SourceInvalid", format!("model {model} is already served by this service")));
        }
        adapters.push(Adapter { model, settings, error });
    }
    adapters
}

/// The model an entry names, or why it cannot be served.
fn source(
    entry: &AdapterModel,
    spec: &InferenceServiceSpec,
    repository: Option<&Repository>,
    jobs: &BTreeMap<String, Result<TrainingJob, String>>,
) -> (String, Option<Unusable>) {
    if let Some(model) = &entry.model {
        return (model.clone(), None);
    }
    let Some(reference) = &entry.training_job_ref else {
        return (String::new(), Some(("SourceInvalid", "the adapter names neither a model nor a TrainingJob".into())));
    };
    let name = &reference.name;
    let job = match jobs.get(name) {
        Some(Ok(job)) => job,
        Some(Err(error)) => return (String::new(), Some(("SourceNotFound", error.clone()))),
        None => return (String::new(), Some(("SourceNotFound", format!("TrainingJob {name} not found")))),
    };
    let model = job.spec.output.model.clone();
    let invalid = |message: String| (model.clone(), Some(("SourceInvalid", message)));
    let Some(fine_tune) = &job.spec.model.fine_tune else {
        return invalid(format!("TrainingJob {name} trains from scratch; its versions are not adapters"));
    };
    if fine_tune.method.lora.is_none() {
        return invalid(format!("TrainingJob {name} fine-tunes every weight; its versions are not adapters"));
    }
    if fine_tune.merge == Some(true) {
        return invalid(format!(
            "TrainingJob {name} publishes merged checkpoints (merge: true), not adapters; set merge: false, \
             or serve model {model} as an InferenceService's own model"
        ));
    }
    if fine_tune.base.model != spec.model {
        return invalid(format!(
            "TrainingJob {name} fine-tunes model {}, not this service's model {}",
            fine_tune.base.model, spec.model
        ));
    }
    if repository.is_some_and(|repository| *repository != job.spec.output.repository) {
        return invalid(format!(
            "TrainingJob {name} publishes into claim {}, not the repository this service reads",
            job.spec.output.repository.claim_name.as_deref().unwrap_or_default()
        ));
    }
    (model, None)
}

/// Decides every served adapter's versions: `pods` holds each answering pod's report of every
/// model it serves; `previous` the last status of the adapters.
pub fn decide(
    adapters: &[Adapter],
    previous: &[AdapterStatus],
    pods: &[Vec<ModelStatus>],
    now: Timestamp,
) -> Vec<AdapterState> {
    adapters
        .iter()
        .map(|adapter| {
            let fleet = Fleet::of_model(pods, &adapter.model);
            let decision = adapter.error.is_none().then(|| {
                let last = previous.iter().find(|s| s.model == adapter.model).map(|s| s.served.clone());
                rollout::decide(&adapter.settings, &last.unwrap_or_default(), &fleet, now)
            });
            AdapterState { model: adapter.model.clone(), error: adapter.error.clone(), decision, fleet }
        })
        .collect()
}

impl AdapterState {
    /// The decision's events, each message naming the adapter.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.decision
            .iter()
            .flat_map(|d| &d.events)
            .map(|event| Event { message: format!("adapter {}: {}", self.model, event.message), ..event.clone() })
    }
}

#[cfg(test)]
mod tests {
    use lantern_proto::lantern::v1::VersionState::{Available, Failed};
    use serde_json::json;

    use super::*;
    use crate::serving::fleet::tests::report;
    use crate::serving::test_service;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    /// A LoRA fine-tune of `base` publishing model `output` into claim `claim`, its checkpoints
    /// merged or not.
    fn job(base: &str, output: &str, claim: &str, merge: bool) -> TrainingJob {
        let spec = json!({
            "model": {"fineTune": {
                "base": {"model": base, "version": 1},
                "method": {"lora": {"rank": 8, "targets": ["q_proj", "v_proj"]}},
                "sequenceLength": 64,
                "merge": merge,
            }},
            "data": {"jsonl": {"path": "train.jsonl"}},
            "schedule": {"steps": 10, "globalBatch": 8},
            "checkpoint": {"everySteps": 5},
            "output": {"model": output, "repository": {"claimName": claim}},
        });
        crate::test_object("TrainingJob", "u-9", 1, spec, json!({}))
    }

    fn claim(name: &str) -> Repository {
        Repository::claim(name)
    }

    /// An `adder` service with these adapters; the base rollout takes two steps.
    fn spec(adapters: serde_json::Value) -> InferenceServiceSpec {
        test_service(json!({"adapters": adapters, "rollout": {"steps": [50, 100], "stepSeconds": 5}})).spec
    }

    fn errors(adapters: &[Adapter]) -> Vec<(&str, Option<&str>)> {
        adapters.iter().map(|a| (a.model.as_str(), a.error.as_ref().map(|(reason, _)| *reason))).collect()
    }

    #[test]
    fn listed_adapters_and_lora_jobs_over_the_base_in_its_repository_are_served() {
        let spec = spec(json!([
            {"model": "sku", "rollout": {"strategy": "Immediate"}},
            {"trainingJobRef": {"name": "tickets-job"}},
        ]));
        let jobs = BTreeMap::from([("tickets-job".to_owned(), Ok(job("adder", "tickets", "models", false)))]);
        let adapters = resolve(&spec, Some(&claim("models")), &jobs);
        assert_eq!(errors(&adapters), [("sku", None), ("tickets", None)]);
        assert_eq!(adapters[0].settings, Settings::from_parts(spec.adapters[0].rollout.as_ref(), None));
        assert_eq!(adapters[1].settings, Settings::of(&spec), "without its own rollout, the service's");
    }

    #[test]
    fn an_adapter_source_that_cannot_be_served_says_why() {
        let spec = spec(json!([
            {"trainingJobRef": {"name": "missing"}},
            {"trainingJobRef": {"name": "merged"}},
            {"trainingJobRef": {"name": "other-base"}},
            {"trainingJobRef": {"name": "elsewhere"}},
            {"trainingJobRef": {"name": "twin"}},
            {"model": "tickets"},
        ]));
        let jobs = BTreeMap::from([
            ("merged".to_owned(), Ok(job("adder", "merged", "models", true))),
            ("other-base".to_owned(), Ok(job("smollm2", "chat", "models", false))),
            ("elsewhere".to_owned(), Ok(job("adder", "far", "team-b", false))),
            ("twin".to_owned(), Ok(job("adder", "tickets", "models", false))),
        ]);
        let adapters = resolve(&spec, Some(&claim("models")), &jobs);
        assert_eq!(
            errors(&adapters),
            [
                ("", Some("SourceNotFound")),
                ("merged", Some("SourceInvalid")),
                ("chat", Some("SourceInvalid")),
                ("far", Some("SourceInvalid")),
                ("tickets", None),
                ("tickets", Some("SourceInvalid")),
            ]
        );
        let message = |i: usize| adapters[i].error.as_ref().unwrap().1.as_str();
        assert!(message(1).contains("merge: true"), "{}", message(1));
        assert!(message(2).contains("fine-tunes model smollm2, not this service's model adder"), "{}", message(2));
        assert!(message(3).contains("claim team-b"), "{}", message(3));
        assert!(message(5).contains("already served"), "{}", message(5));
    }

    #[test]
    fn each_adapter_rolls_out_on_its_own_while_the_others_keep_their_traffic() {
        let spec = spec(json!([{"model": "tickets"}, {"model": "sku"}]));
        let adapters = resolve(&spec, Some(&claim("models")), &BTreeMap::new());
        let named = |model: &str, mut status: ModelStatus| {
            status.model = model.to_owned();
            status
        };
        let pod = |tickets: ModelStatus, sku: ModelStatus| vec![named("tickets", tickets), named("sku", sku)];
        let sku_serves = || report(&[1], &[(1, Available, 50, 0, [50, 0, 0, 0, 0])]);

        // Both adapters start on their first version.
        let first = decide(&adapters, &[], &[pod(report(&[1], &[]), sku_serves())], at(0));
        let stables: Vec<Option<u64>> = first.iter().map(|a| a.decision.as_ref().unwrap().stable).collect();
        assert_eq!(stables, [Some(1), Some(1)]);
        let status = |states: &[AdapterState]| -> Vec<AdapterStatus> {
            states
                .iter()
                .map(|a| AdapterStatus {
                    model: a.model.clone(),
                    served: crate::serving::status::served_versions(a.decision.as_ref().unwrap(), &a.fleet),
                    ..AdapterStatus::default()
                })
                .collect()
        };

        // tickets version 2 appears: it loads, then steps through the rollout; sku is untouched.
        let tickets_two = || report(&[1, 2], &[(1, Available, 40, 0, [40; 5]), (2, Available, 0, 0, [0; 5])]);
        let loading = decide(&adapters, &status(&first), &[pod(tickets_two(), sku_serves())], at(1));
        let (tickets, sku) = (loading[0].decision.as_ref().unwrap(), loading[1].decision.as_ref().unwrap());
        assert_eq!((tickets.stable, tickets.canary), (Some(1), Some(2)));
        assert_eq!((sku.stable, sku.canary, sku.events.len()), (Some(1), None, 0));
        let events: Vec<String> = loading[0].events().map(|e| e.message).collect();
        assert_eq!(events, ["adapter tickets: rolling out version 2 (stable: 1)"]);
        let stepping = decide(&adapters, &status(&loading), &[pod(tickets_two(), sku_serves())], at(2));
        let tickets = stepping[0].decision.as_ref().unwrap();
        assert_eq!(tickets.canary_percent, 50, "the service's steps");
        assert_eq!(tickets.serving_config().unwrap().traffic, [(1, 50), (2, 50)].into());
        assert_eq!(stepping[1].decision.as_ref().unwrap().serving_config().unwrap().traffic, [(1, 100)].into());

        // A broken sku version 2 is rolled back without moving tickets.
        let sku_broken = report(&[1, 2], &[(1, Available, 50, 0, [50, 0, 0, 0, 0]), (2, Failed, 0, 0, [0; 5])]);
        let sku_loading = decide(&adapters, &status(&stepping), &[pod(tickets_two(), sku_broken.clone())], at(3));
        let failed = decide(&adapters, &status(&sku_loading), &[pod(tickets_two(), sku_broken)], at(4));
        let sku = failed[1].decision.as_ref().unwrap();
        assert_eq!((sku.stable, sku.rejected.as_slice()), (Some(1), &[2][..]));
        let tickets = failed[0].decision.as_ref().unwrap();
        assert_eq!((tickets.canary, tickets.canary_percent), (Some(2), 50));
    }

    #[test]
    fn an_unusable_adapter_gets_no_decision() {
        let spec = spec(json!([{"trainingJobRef": {"name": "missing"}}]));
        let adapters = resolve(&spec, Some(&claim("models")), &BTreeMap::new());
        let states = decide(&adapters, &[], &[], at(0));
        assert_eq!((states[0].decision.as_ref(), states[0].events().count()), (None, 0));
    }
}
