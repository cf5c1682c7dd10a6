//! An InferenceService's rollout as the terminal shows it, and the manual rollout fields.
//! [`health`] and [`render`] are pure; the rest reads, watches and patches through kube-rs.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use lantern_operator::crd::InferenceService;
use lantern_operator::crd::inference::{InferenceServiceStatus, RolloutPhase};

/// The outcome a command exits with, as Argo Rollouts' `status` reports a rollout's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Serving its stable version with no rollout under way, the last one promoted.
    Healthy = 0,
    /// The last rollout rolled back, or the service cannot serve (a failed load, no source).
    Degraded = 1,
    /// The command itself failed (unknown name, no cluster).
    Error = 2,
    /// A rollout, or the first version, is still under way.
    Progressing = 3,
}

fn condition<'a>(
    status: &'a InferenceServiceStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Where `service` stands.
pub fn health(service: &InferenceService) -> Health {
    let Some(status) = &service.status else { return Health::Progressing };
    if status.observed_generation < service.metadata.generation {
        return Health::Progressing;
    }
    match status.served.rollout.as_ref().map(|r| r.phase) {
        Some(RolloutPhase::Loading | RolloutPhase::Progressing) => return Health::Progressing,
        Some(RolloutPhase::RolledBack) => return Health::Degraded,
        _ => {}
    }
    match condition(status, "Ready") {
        Some(ready) if ready.status == "True" => Health::Healthy,
        Some(ready) if matches!(ready.reason.as_str(), "ModelLoadFailed" | "SourceNotFound") => Health::Degraded,
        _ => Health::Progressing,
    }
}

/// `service`'s state in a few lines: readiness, stable and canary with their shares, the
/// rollout's step and the gate's verdicts, the versions on the pods and those rejected.
pub fn render(service: &InferenceService) -> String {
    let name = format!(
        "{}/{}",
        service.metadata.namespace.as_deref().unwrap_or("default"),
        service.metadata.name.as_deref().unwrap_or_default()
    );
    let Some(status) = &service.status else { return format!("inferenceservice {name}: no status yet\n") };
    let mut out = String::new();
    let ready = condition(status, "Ready");
    let (state, message) = ready.map_or(("Unknown", ""), |c| {
        (if c.status == "True" { "Ready" } else { c.reason.as_str() }, c.message.as_str())
    });
    out.push_str(&format!(
        "inferenceservice {name}: {state} ({message}), {} of {} pods ready\n",
        status.ready_replicas, service.spec.replicas
    ));
    let served = &status.served;
    if let Some(stable) = served.stable_version {
        out.push_str(&format!("  stable  version {stable}  {}% of requests\n", 100 - served.canary_percent.min(100)));
    }
    if let Some(canary) = served.canary_version {
        out.push_str(&format!("  canary  version {canary}  {}% of requests\n", served.canary_percent));
    }
    if let Some(rollout) = &served.rollout {
        let phase = format!("{:?}", rollout.phase);
        out.push_str(&format!("  rollout of version {}: {phase}, {}\n", rollout.version, rollout.message));
        for analysis in &rollout.analyses {
            let verdict = if analysis.passed { "passed" } else { "failed" };
            let latency = analysis.latency_ratio.map_or(String::new(), |r| format!(", latency ratio {r:.2}"));
            let reason = if analysis.reason.is_empty() { String::new() } else { format!(": {}", analysis.reason) };
            out.push_str(&format!(
                "    step {} {verdict}: {} requests, error rate {:.3}{latency}{reason}\n",
                analysis.step + 1,
                analysis.requests,
                analysis.error_rate
            ));
        }
    }
    for version in &served.versions {
        out.push_str(&format!(
            "  version {}: {} available, {} loading, {} failed\n",
            version.version, version.available, version.loading, version.failed
        ));
    }
    if !served.rejected_versions.is_empty() {
        let rejected: Vec<String> = served.rejected_versions.iter().map(u64::to_string).collect();
        out.push_str(&format!("  rejected: {}\n", rejected.join(", ")));
    }
    if let Some(manual) = condition(status, "ManualOverride") {
        out.push_str(&format!("  manual override: {} ({})\n", manual.reason, manual.message));
    }
    out
}

async fn get(api: &Api<InferenceService>, namespace: &str, name: &str) -> anyhow::Result<InferenceService> {
    match api.get_opt(name).await? {
        Some(service) => Ok(service),
        None => anyhow::bail!("inferenceservice {name:?} not found in namespace {namespace:?}"),
    }
}

/// Prints the service once, or with `watch` at every change until it settles (or `timeout`).
pub async fn status(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    watch: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<Health> {
    let api: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    let service = get(&api, namespace, name).await?;
    let mut shown = render(&service);
    print!("{shown}");
    let now = health(&service);
    if !watch || now != Health::Progressing {
        return Ok(now);
    }
    let mut changes = std::pin::pin!(watcher::watch_object(api, name).boxed());
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, changes.next()).await {
                Ok(next) => next,
                Err(_) => {
                    println!("timed out: the rollout is still under way");
                    return Ok(Health::Progressing);
                }
            },
            None => changes.next().await,
        };
        let Some(change) = next else { anyhow::bail!("the watch of {name:?} ended") };
        let Some(service) = change? else { anyhow::bail!("inferenceservice {name:?} was deleted") };
        let rendered = render(&service);
        if rendered != shown {
            print!("{rendered}");
            shown = rendered;
        }
        let now = health(&service);
        if now != Health::Progressing {
            return Ok(now);
        }
    }
}

/// Sets `spec.rollout.{field}` (`promote` or `abort`) to `version`, by default the canary, and
/// prints the operator's answer (the `ManualOverride` condition) once it has one. A refused
/// field is cleared again, so that it cannot act on a later canary of that number.
pub async fn steer(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    field: &str,
    version: Option<u64>,
) -> anyhow::Result<Health> {
    let api: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    let service = get(&api, namespace, name).await?;
    let canary = service.status.as_ref().and_then(|s| s.served.canary_version);
    let Some(version) = version.or(canary) else { anyhow::bail!("{name} has no canary to {field}") };
    let patch = serde_json::json!({"spec": {"rollout": {field: version}}});
    let patched = api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let generation = patched.metadata.generation;
    let answered = |s: &InferenceService| {
        let status = s.status.as_ref()?;
        (status.observed_generation >= generation).then_some(())?;
        condition(status, "ManualOverride").cloned()
    };
    let mut changes = std::pin::pin!(watcher::watch_object(api.clone(), name).boxed());
    let answer = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(change) = changes.next().await {
            if let Some(answer) = change.ok().flatten().as_ref().and_then(answered) {
                return Some(answer);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(answer) = answer else { anyhow::bail!("the operator did not answer spec.rollout.{field} within 60 s") };
    if answer.status == "True" {
        println!("{name}: {}", answer.message);
        return Ok(Health::Healthy);
    }
    println!("{name}: refused ({}): {}", answer.reason, answer.message);
    let clear = serde_json::json!({"spec": {"rollout": {field: null}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&clear)).await?;
    println!("{name}: spec.rollout.{field} cleared again");
    Ok(Health::Degraded)
}

/// Pins `name` to `version`, or with `None` clears the pin.
pub async fn pin(client: &kube::Client, namespace: &str, name: &str, version: Option<u64>) -> anyhow::Result<Health> {
    let api: Api<InferenceService> = Api::namespaced(client.clone(), namespace);
    get(&api, namespace, name).await?;
    let patch = serde_json::json!({"spec": {"rollout": {"pin": version}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    match version {
        Some(version) => println!("{name}: pinned to version {version}"),
        None => println!("{name}: pin cleared; new versions roll out again"),
    }
    Ok(Health::Healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: serde_json::Value) -> InferenceService {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lantern.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "adder", "namespace": "ml", "generation": 2},
            "spec": {"model": "adder", "source": {"repository": {"claimName": "models"}}, "replicas": 2},
            "status": status,
        }))
        .unwrap()
    }

    fn ready(status: &str, reason: &str) -> serde_json::Value {
        serde_json::json!([{"type": "Ready", "status": status, "reason": reason, "message": "m",
                            "lastTransitionTime": "2026-12-07T00:00:00Z"}])
    }

    fn rollout(phase: &str) -> serde_json::Value {
        serde_json::json!({"version": 2, "phase": phase, "step": 0, "stepStarted": "2026-12-07T00:00:00Z",
                           "stepStartRequests": 0, "stepStartErrors": 0, "reason": "", "message": "step 1 of 2",
                           "analyses": [{"step": 0, "requests": 12, "errorRate": 0.0, "latencyRatio": 0.9, "passed": true}]})
    }

    #[test]
    fn health_follows_the_rollout_and_readiness() {
        let status = |rollout: serde_json::Value, ready: serde_json::Value, generation: i64| {
            service(serde_json::json!({"observedGeneration": generation, "conditions": ready, "rollout": rollout,
                                       "stableVersion": 1, "readyReplicas": 2, "replicas": 2}))
        };
        assert_eq!(health(&status(serde_json::Value::Null, ready("True", "Ready"), 2)), Health::Healthy);
        assert_eq!(health(&status(rollout("Progressing"), ready("True", "Ready"), 2)), Health::Progressing);
        assert_eq!(health(&status(rollout("Promoted"), ready("True", "Ready"), 2)), Health::Healthy);
        assert_eq!(health(&status(rollout("RolledBack"), ready("True", "Ready"), 2)), Health::Degraded);
        assert_eq!(
            health(&status(rollout("Promoted"), ready("True", "Ready"), 1)),
            Health::Progressing,
            "an older generation"
        );
        assert_eq!(health(&status(serde_json::Value::Null, ready("False", "ModelLoadFailed"), 2)), Health::Degraded);
        assert_eq!(health(&status(serde_json::Value::Null, ready("False", "PodsNotReady"), 2)), Health::Progressing);
    }

    #[test]
    fn the_split_the_step_and_the_verdicts_are_shown() {
        let shown = render(&service(serde_json::json!({
            "observedGeneration": 2, "conditions": ready("True", "Ready"), "stableVersion": 1, "canaryVersion": 2,
            "canaryPercent": 10, "rollout": rollout("Progressing"), "rejectedVersions": [3], "readyReplicas": 2,
            "replicas": 2,
        })));
        for line in [
            "inferenceservice ml/adder: Ready (m), 2 of 2 pods ready",
            "  stable  version 1  90% of requests",
            "  canary  version 2  10% of requests",
            "  rollout of version 2: Progressing, step 1 of 2",
            "    step 1 passed: 12 requests, error rate 0.000, latency ratio 0.90",
            "  rejected: 3",
        ] {
            assert!(shown.lines().any(|l| l == line), "{line:?} in:\n{shown}");
        }
    }
}
