//! The versions of a job's model that its retention (`spec.output.keepVersions`) must keep,
//! from the InferenceServices of its namespace (pure): every version a service serves or is
//! loading, labels stable or canary, or lists in its version policy — for the base model and
//! for adapter models alike, and a base version that served adapters were trained on. A
//! service counts when it reads the job's repository: fed by the job (`trainingJobRef`, for the
//! service or one of its adapters) or naming the same claim, sub-path and URI.

use std::collections::BTreeSet;

use crate::crd::inference::{ServedVersions, VersionPolicy};
use crate::crd::{InferenceService, Repository, TrainingJob};

/// The versions of `job`'s output model that `services` hold.
pub fn held_versions(job: &TrainingJob, services: &[InferenceService]) -> BTreeSet<u64> {
    let model = &job.spec.output.model;
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let fed_by_job =
        |reference: Option<&crate::crd::inference::TrainingJobRef>| reference.is_some_and(|r| r.name == name);
    let mut held = BTreeSet::new();
    for service in services {
        let spec = &service.spec;
        let reads_job = fed_by_job(spec.source.training_job_ref.as_ref())
            || spec.adapters.iter().any(|a| fed_by_job(a.training_job_ref.as_ref()))
            || spec.source.repository.as_ref().is_some_and(|r| same_place(r, &job.spec.output.repository));
        if !reads_job {
            continue;
        }
        let status = service.status.as_ref();
        if spec.model == *model {
            hold(&mut held, spec.version_policy.as_ref(), status.map(|s| &s.served));
        }
        for adapter in &spec.adapters {
            if adapter.model.as_deref() == Some(model.as_str()) || fed_by_job(adapter.training_job_ref.as_ref()) {
                let served = status.and_then(|s| s.adapters.iter().find(|a| a.model == *model)).map(|a| &a.served);
                hold(&mut held, adapter.version_policy.as_ref(), served);
            }
        }
        for adapter in status.map(|s| s.adapters.as_slice()).unwrap_or_default() {
            let base = adapter.base.as_deref().and_then(|b| b.rsplit_once(':'));
            if let Some((base, version)) = base
                && base == model
                && let Ok(version) = version.parse()
            {
                held.insert(version);
            }
        }
    }
    held
}

/// Adds the versions a model's policy lists and its service serves, loads or labels.
fn hold(held: &mut BTreeSet<u64>, policy: Option<&VersionPolicy>, served: Option<&ServedVersions>) {
    held.extend(policy.and_then(|p| p.specific.as_deref()).unwrap_or_default());
    if let Some(served) = served {
        held.extend(served.stable_version.into_iter().chain(served.canary_version));
        held.extend(served.versions.iter().filter(|v| v.available + v.loading > 0).map(|v| v.version));
    }
}

/// Whether two repositories are one place: the same claim and sub-path, or the same URI.
fn same_place(a: &Repository, b: &Repository) -> bool {
    let sub_path = |r: &Repository| r.sub_path.as_deref().unwrap_or_default().trim_matches('/').to_owned();
    a.claim_name == b.claim_name && sub_path(a) == sub_path(b) && a.uri == b.uri
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::training::test_job;

    fn service(name: &str, spec: serde_json::Value, status: serde_json::Value) -> InferenceService {
        let mut service: InferenceService =
            crate::test_object("InferenceService", name, 1, json!({"model": "adder", "source": {}}), spec);
        service.status = Some(serde_json::from_value(status).unwrap());
        service
    }

    fn served(stable: u64, canary: Option<u64>, versions: &[(u64, u32, u32)]) -> serde_json::Value {
        let versions: Vec<_> = versions
            .iter()
            .map(|(v, available, failed)| json!({"version": v, "available": available, "loading": 0, "failed": failed}))
            .collect();
        json!({"stableVersion": stable, "canaryVersion": canary, "canaryPercent": 10, "versions": versions})
    }

    #[test]
    fn versions_served_labelled_or_listed_by_services_reading_the_repository_are_held() {
        let job =
            test_job(json!({"output": {"model": "adder", "repository": {"claimName": "models"}, "keepVersions": 2}}));
        let services = [
            // Fed by the job: stable 3, canary 7, version 5 still on a pod; 6 failed everywhere.
            service(
                "fed",
                json!({"source": {"trainingJobRef": {"name": "adder"}}}),
                served(3, Some(7), &[(3, 2, 0), (5, 1, 0), (6, 0, 2), (7, 1, 0)]),
            ),
            // The same claim, a version policy listing 1.
            service(
                "listed",
                json!({"source": {"repository": {"claimName": "models", "subPath": "/"}}, "versionPolicy": {"specific": [1]}}),
                served(1, None, &[]),
            ),
            // Another claim: nothing it serves is this job's.
            service(
                "elsewhere",
                json!({"source": {"repository": {"claimName": "other"}}}),
                served(4, None, &[(4, 1, 0)]),
            ),
        ];
        assert_eq!(held_versions(&job, &services), BTreeSet::from([1, 3, 5, 7]));
    }

    #[test]
    fn an_adapter_job_holds_its_served_adapter_versions_and_a_base_job_the_bases_they_need() {
        let job = test_job(json!({"output": {"model": "tickets-lora", "repository": {"claimName": "models"}}}));
        let mut adapter = served(4, Some(6), &[(4, 1, 0)]);
        adapter["model"] = "tickets-lora".into();
        adapter["base"] = "adder:1".into();
        let mut status = served(1, None, &[(1, 1, 0)]);
        status["adapters"] = json!([adapter]);
        let spec = json!({
            "source": {"repository": {"claimName": "other"}},
            "adapters": [{"trainingJobRef": {"name": "adder"}}],
        });
        let services = [service("adapters", spec, status)];
        assert_eq!(held_versions(&job, &services), BTreeSet::from([4, 6]));
        // The base's job keeps version 1, which both the base and the adapter stand on.
        let mut base = test_job(json!({}));
        base.metadata.name = Some("base-job".into());
        let mut services = services;
        services[0].spec.source.repository = Some(Repository::claim("models"));
        services[0].spec.adapters[0].training_job_ref = None;
        services[0].spec.adapters[0].model = Some("tickets-lora".into());
        assert_eq!(held_versions(&base, &services), BTreeSet::from([1]));
    }
}
