//! Which versions a service serves and how requests split between them (pure): the stable
//! version, the canary and its share, decided from the spec, the last status and what the pods
//! report ([`Fleet`]). Everything it reads is in the cluster or the pods, so an operator
//! restarted mid-rollout carries on.
//!
//! A rollout runs through these phases:
//! 1. `Loading`: the candidate (the newest version on disk the version policy allows, and not
//!    rejected before) loads on every pod next to the stable one; it gets no traffic. A failed
//!    load rolls it back (`ModelLoadFailed`); so does an evaluation metric in its manifest worse
//!    than the stable version's (`EvalMetricRegressed`).
//! 2. `Progressing`: each step gives the canary its share of the requests that name neither a
//!    version nor a label, for `stepSeconds`; then the analysis judges what the canary served in
//!    the step (error rate, p99 latency against the stable version's, after `minRequests`). A
//!    failed step rolls back (`AnalysisFailed`); the last passed step promotes.
//! 3. `Promoted` (the canary becomes stable) or `RolledBack` (the version is rejected and not
//!    tried again), or `Aborted` when a newer candidate or a pin replaces the rollout.
//!
//! `Immediate` promotes once the candidate serves on every pod. `pin` serves one version and
//! nothing else; `promote` and `abort` end the named canary's rollout at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lantern_proto::lantern::v1 as pb;

use super::fleet::{Fleet, Requests};
use crate::crd::inference::{
    AnalysisResult, InferenceServiceSpec, Rollout, RolloutPhase, RolloutStatus, ServedVersions, Strategy, VersionPolicy,
};

pub const DEFAULT_STEPS: [u32; 3] = [10, 50, 100];
pub const DEFAULT_STEP_SECONDS: u64 = 60;
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;
pub const DEFAULT_MAX_LATENCY_RATIO: f64 = 1.5;
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// How soon to look again while a canary loads or a step waits for requests.
const POLL: Duration = Duration::from_secs(1);

/// A model's rollout settings with their defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    strategy: Strategy,
    steps: Vec<u32>,
    step_seconds: u64,
    max_error_rate: f64,
    max_latency_ratio: f64,
    min_requests: u64,
    eval_metric: Option<EvalGate>,
    pin: Option<u64>,
    promote: Option<u64>,
    abort: Option<u64>,
    specific: Option<BTreeSet<u64>>,
}

impl Settings {
    /// The base model's settings.
    pub fn of(spec: &InferenceServiceSpec) -> Self {
        Self::from_parts(spec.rollout.as_ref(), spec.version_policy.as_ref())
    }

    /// The settings of a model rolled out as `rollout` says, its candidates limited by `policy`.
    pub fn from_parts(rollout: Option<&Rollout>, policy: Option<&VersionPolicy>) -> Self {
        let rollout = rollout.cloned().unwrap_or_default();
        let analysis = rollout.analysis.unwrap_or_default();
        Self {
            strategy: rollout.strategy.unwrap_or(Strategy::Canary),
            steps: rollout.steps.filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_STEPS.to_vec()),
            step_seconds: rollout.step_seconds.unwrap_or(DEFAULT_STEP_SECONDS),
            max_error_rate: analysis.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE),
            max_latency_ratio: analysis.max_latency_ratio.unwrap_or(DEFAULT_MAX_LATENCY_RATIO),
            min_requests: analysis.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
            eval_metric: analysis.eval_metric.map(|m| EvalGate {
                name: m.name,
                higher_is_better: m.higher_is_better.unwrap_or(false),
                tolerance: m.tolerance.unwrap_or(0.0),
            }),
            pin: rollout.pin,
            promote: rollout.promote,
            abort: rollout.abort,
            specific: policy.and_then(|p| p.specific.as_ref()).map(|versions| versions.iter().copied().collect()),
        }
    }
}

/// Something worth an Event on the service.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

/// The versions to serve and how to split requests between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub stable: Option<u64>,
    pub canary: Option<u64>,
    /// Percent of the requests that name no version or label going to the canary.
    pub canary_percent: u32,
    pub rollout: Option<RolloutStatus>,
    pub rejected: Vec<u64>,
    pub events: Vec<Event>,
    /// When the rollout wants another look (a step ends, a canary loads).
    pub requeue: Option<Duration>,
    /// How `spec.rollout.promote` and `abort` stand: `Ok` with what they did (none set: `None`),
    /// `Err` when one names a version that is not the canary (refused, nothing changes).
    pub manual: Option<Result<String, String>>,
}

/// Decides one model's versions from its settings, its last status and the pods' reports at
/// `now`.
pub fn decide(settings: &Settings, previous: &ServedVersions, fleet: &Fleet, now: Timestamp) -> Decision {
    let mut decision = versions(settings, previous, fleet, now);
    decision.manual = manual(settings, previous, &decision);
    decision
}

/// Whether the manual overrides name the canary they act on. A version they already promoted
/// (now stable) or rolled back (now rejected) is fine: the field may stay set.
fn manual(settings: &Settings, previous: &ServedVersions, decision: &Decision) -> Option<Result<String, String>> {
    let canary = previous.canary_version;
    let which = |canary: Option<u64>| match canary {
        Some(canary) => format!("the canary is version {canary}"),
        None => "there is no canary".to_owned(),
    };
    let promote = settings.promote.map(|version| match version {
        _ if canary == Some(version) || decision.stable == Some(version) => Ok(format!("version {version} promoted")),
        _ => Err(format!("spec.rollout.promote names version {version}, which is not the canary ({})", which(canary))),
    });
    let abort = settings.abort.map(|version| match version {
        _ if canary == Some(version) || decision.rejected.contains(&version) => {
            Ok(format!("version {version} rolled back"))
        }
        _ => Err(format!("spec.rollout.abort names version {version}, which is not the canary ({})", which(canary))),
    });
    match (promote, abort) {
        (Some(Err(refused)), _) | (_, Some(Err(refused))) => Some(Err(refused)),
        (Some(Ok(done)), _) | (None, Some(Ok(done))) => Some(Ok(done)),
        (None, None) => None,
    }
}

fn versions(settings: &Settings, previous: &ServedVersions, fleet: &Fleet, now: Timestamp) -> Decision {
    let mut decision = Decision {
        stable: previous.stable_version,
        canary: previous.canary_version,
        canary_percent: previous.canary_percent,
        rollout: previous.rollout.clone(),
        rejected: previous.rejected_versions.clone(),
        events: Vec::new(),
        requeue: None,
        manual: None,
    };
    if let Some(pinned) = settings.pin {
        decision.pin(pinned, now);
        return decision;
    }
    if fleet.pods == 0 {
        // No worker answered: nothing is known of the versions, so nothing changes.
        return decision;
    }
    let allowed = |v: &u64| settings.specific.as_ref().is_none_or(|listed| listed.contains(v));
    let candidates: BTreeSet<u64> =
        fleet.on_disk.iter().copied().filter(allowed).filter(|v| !decision.rejected.contains(v)).collect();
    let target = candidates.last().copied();
    let Some(stable) = decision.stable else {
        if let Some(first) = target {
            decision.stable = Some(first);
            decision.event("InitialVersion", format!("serving version {first}"), false);
        }
        return decision;
    };
    if let Some(replacement) = target.filter(|&t| t != stable && stable_failed_everywhere(fleet, stable)) {
        decision.end_rollout(
            RolloutPhase::Aborted,
            "Superseded",
            format!("the stable version {stable} failed on every pod"),
            now,
        );
        decision.stable = Some(replacement);
        decision.reject(stable);
        let reason = fleet.version(stable).message;
        decision.event(
            "StableFailed",
            format!("version {stable} failed on every pod ({reason}); serving {replacement}"),
            true,
        );
        return decision;
    }
    let wanted = target.filter(|&t| t != stable && (t > stable || !candidates.contains(&stable)));
    match (decision.running_canary(), wanted) {
        (Some(canary), Some(wanted)) if wanted != canary => {
            let message = format!("version {wanted} replaced it");
            decision.end_rollout(RolloutPhase::Aborted, "Superseded", message, now);
            decision.start(stable, wanted, now);
        }
        // Only the spec takes a candidate away: a pod that has not rescanned the repository
        // since the version appeared does not.
        (Some(canary), _) if !allowed(&canary) => {
            let message = format!("the version policy no longer allows version {canary}");
            decision.end_rollout(RolloutPhase::Aborted, "NoLongerCandidate", message, now);
        }
        (Some(canary), _) => decision.advance(settings, stable, canary, fleet, now),
        (None, Some(wanted)) => decision.start(stable, wanted, now),
        (None, None) => {}
    }
    decision
}

fn stable_failed_everywhere(fleet: &Fleet, stable: u64) -> bool {
    fleet.pods > 0 && fleet.version(stable).failed == fleet.pods
}

impl Decision {
    /// The serving config every pod gets: the stable and canary versions loaded, labelled
    /// `stable` and `canary`, and the split; `None` while there is no version to serve.
    pub fn serving_config(&self) -> Option<pb::ServingConfig> {
        let stable = self.stable?;
        let mut labels = BTreeMap::from([("stable".to_owned(), stable)]);
        let mut versions = vec![stable];
        let mut traffic = BTreeMap::from([(stable, 100)]);
        if let Some(canary) = self.canary {
            labels.insert("canary".to_owned(), canary);
            versions.push(canary);
            traffic = match self.canary_percent {
                0 => traffic,
                p if p >= 100 => BTreeMap::from([(canary, 100)]),
                p => BTreeMap::from([(stable, 100 - p), (canary, p)]),
            };
        }
        Some(pb::ServingConfig {
            version_policy: Some(pb::VersionPolicy {
                policy: Some(pb::version_policy::Policy::Specific(pb::version_policy::Specific { versions })),
            }),
            labels: labels.into_iter().collect(),
            traffic: traffic.into_iter().collect(),
        })
    }

    /// The worker's version policy for the model on a new pod: what the others serve now, until
    /// the next push.
    pub fn starting_policy(&self) -> String {
        let versions: Vec<String> = self.stable.iter().chain(&self.canary).map(u64::to_string).collect();
        if versions.is_empty() { "latest:1".to_owned() } else { format!("specific:{}", versions.join(",")) }
    }

    /// The canary of a rollout still loading or progressing.
    fn running_canary(&self) -> Option<u64> {
        let rollout = self.rollout.as_ref()?;
        let running = rollout.phase.running();
        (running && self.canary == Some(rollout.version)).then_some(rollout.version)
    }

    fn event(&mut self, reason: &'static str, message: String, warning: bool) {
        self.events.push(Event { reason, message, warning });
    }

    fn reject(&mut self, version: u64) {
        if !self.rejected.contains(&version) {
            self.rejected.push(version);
            self.rejected.sort_unstable();
        }
    }

    fn pin(&mut self, pinned: u64, now: Timestamp) {
        if self.running_canary().is_some() {
            self.end_rollout(RolloutPhase::Aborted, "Pinned", format!("pinned to version {pinned}"), now);
        }
        self.canary = None;
        self.canary_percent = 0;
        if self.stable != Some(pinned) {
            self.stable = Some(pinned);
            self.event("Pinned", format!("serving version {pinned} only, as spec.rollout.pin says"), false);
        }
    }

    fn start(&mut self, stable: u64, version: u64, now: Timestamp) {
        self.rollout = Some(RolloutStatus {
            version,
            phase: RolloutPhase::Loading,
            step: 0,
            step_started: Time(now),
            step_start_requests: 0,
            step_start_errors: 0,
            reason: String::new(),
            message: format!("loading version {version} next to the stable version {stable}"),
            analyses: Vec::new(),
        });
        self.canary = Some(version);
        self.canary_percent = 0;
        self.requeue = Some(POLL);
        self.event("RolloutStarted", format!("rolling out version {version} (stable: {stable})"), false);
    }

    /// Ends the running rollout without promoting: `phase` is `RolledBack` or `Aborted`.
    fn end_rollout(&mut self, phase: RolloutPhase, reason: &str, message: String, now: Timestamp) {
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.phase = phase;
            rollout.reason = reason.to_owned();
            rollout.message = message;
            rollout.step_started = Time(now);
        }
        self.canary = None;
        self.canary_percent = 0;
    }

    fn roll_back(&mut self, version: u64, reason: &str, message: String, now: Timestamp) {
        self.event("RolledBack", format!("version {version} rolled back: {message}"), true);
        self.end_rollout(RolloutPhase::RolledBack, reason, message, now);
        self.reject(version);
    }

    fn promote(&mut self, version: u64, message: String, now: Timestamp) {
        self.event("Promoted", format!("version {version} promoted: {message}"), false);
        if let Some(rollout) = self.rollout.as_mut() {
            rollout.phase = RolloutPhase::Promoted;
            rollout.reason = "Promoted".to_owned();
            rollout.message = message;
            rollout.step_started = Time(now);
        }
        self.stable = Some(version);
        self.canary = None;
        self.canary_percent = 0;
    }

    /// Moves a running rollout of `canary` on by what the pods report.
    fn advance(&mut self, settings: &Settings, stable: u64, canary: u64, fleet: &Fleet, now: Timestamp) {
        if settings.abort == Some(canary) {
            return self.roll_back(canary, "Aborted", "aborted through spec.rollout.abort".to_owned(), now);
        }
        if settings.promote == Some(canary) {
            return self.promote(canary, "promoted through spec.rollout.promote".to_owned(), now);
        }
        let view = fleet.version(canary);
        if view.failed > 0 {
            let message = format!("failed to load on {} of {} pods: {}", view.failed, fleet.pods, view.message);
            return self.roll_back(canary, "ModelLoadFailed", message, now);
        }
        let rollout = self.rollout.as_mut().expect("a running canary has a rollout; this is a bug");
        if rollout.phase == RolloutPhase::Loading {
            if !fleet.serves_everywhere(canary) {
                rollout.message =
                    format!("loading version {canary}: serving on {} of {} pods", view.available, fleet.pods);
                self.requeue = Some(POLL);
                return;
            }
            if let Err(message) = eval_gate(settings, fleet, stable, canary) {
                rollout.analyses.push(AnalysisResult { passed: false, reason: message.clone(), ..Default::default() });
                return self.roll_back(canary, "EvalMetricRegressed", message, now);
            }
            if settings.strategy == Strategy::Immediate {
                return self.promote(canary, "loaded on every pod (strategy Immediate)".to_owned(), now);
            }
            return self.enter_step(settings, 0, &view.requests, now);
        }
        let elapsed = now.duration_since(rollout.step_started.0).as_secs_f64().max(0.0);
        let step_length = settings.step_seconds as f64;
        if elapsed < step_length {
            self.requeue = Some(Duration::from_secs_f64(step_length - elapsed));
            return;
        }
        let step = rollout.step;
        let judged = analyze(settings, rollout, &view.requests, &fleet.version(stable).requests);
        match judged {
            Verdict::Wait(missing) => {
                let requests = if missing == 1 { "request" } else { "requests" };
                rollout.message = format!("step {}: waiting for {missing} more {requests} to the canary", step + 1);
                self.requeue = Some(POLL);
            }
            Verdict::Judged(result) if !result.passed => {
                let message = format!("step {} failed: {}", step + 1, result.reason);
                rollout.analyses.push(result);
                self.roll_back(canary, "AnalysisFailed", message, now);
            }
            Verdict::Judged(result) => {
                rollout.analyses.push(result);
                let next = step as usize + 1;
                if next >= settings.steps.len() {
                    self.promote(canary, format!("passed all {} steps", settings.steps.len()), now);
                } else {
                    self.enter_step(settings, next, &view.requests, now);
                }
            }
        }
    }

    fn enter_step(&mut self, settings: &Settings, step: usize, canary: &Requests, now: Timestamp) {
        let percent = settings.steps[step];
        let rollout = self.rollout.as_mut().expect("a running canary has a rollout; this is a bug");
        rollout.phase = RolloutPhase::Progressing;
        rollout.step = step as u32;
        rollout.step_started = Time(now);
        rollout.step_start_requests = canary.total;
        rollout.step_start_errors = canary.errors;
        rollout.message = format!("step {} of {}: {percent}% of requests", step + 1, settings.steps.len());
        let version = rollout.version;
        self.canary_percent = percent;
        self.requeue = Some(Duration::from_secs(settings.step_seconds));
        self.event("TrafficShifted", format!("version {version} gets {percent}% of requests"), false);
    }
}

/// The evaluation gate: a manifest metric, which way is better, and how much worse the canary
/// may be.
#[derive(Clone, Debug, PartialEq)]
struct EvalGate {
    name: String,
    higher_is_better: bool,
    tolerance: f64,
}

/// Whether the canary's evaluation metric is no worse than the stable version's, beyond the
/// tolerance.
fn eval_gate(settings: &Settings, fleet: &Fleet, stable: u64, canary: u64) -> Result<(), String> {
    let Some(EvalGate { name, higher_is_better, tolerance }) = &settings.eval_metric else { return Ok(()) };
    let Some(&candidate) = fleet.version(canary).metrics.get(name) else {
        return Err(format!("version {canary}'s manifest has no metric {name:?}"));
    };
    let Some(&current) = fleet.version(stable).metrics.get(name) else { return Ok(()) };
    let shortfall = if *higher_is_better { current - candidate } else { candidate - current };
    if shortfall > *tolerance {
        let admitted = match *tolerance > 0.0 {
            true => format!(" by more than the tolerance {tolerance}"),
            false => String::new(),
        };
        return Err(format!("{name} {candidate} is worse than the stable version's {current}{admitted}"));
    }
    Ok(())
}

enum Verdict {
    /// Too few requests yet; this many more are needed.
    Wait(u64),
    Judged(AnalysisResult),
}

/// Judges one step: the canary's requests since the step started against the gates.
fn analyze(settings: &Settings, rollout: &RolloutStatus, canary: &Requests, stable: &Requests) -> Verdict {
    let requests = canary.total.saturating_sub(rollout.step_start_requests);
    let errors = canary.errors.saturating_sub(rollout.step_start_errors);
    if requests < settings.min_requests || requests == 0 {
        return Verdict::Wait(settings.min_requests.max(1) - requests);
    }
    let error_rate = errors as f64 / requests as f64;
    let latency_ratio = match (canary.latency_quantile(0.99), stable.latency_quantile(0.99)) {
        (Some(canary), Some(stable)) if stable > 0.0 => Some(canary / stable),
        _ => None,
    };
    let mut failures = Vec::new();
    if error_rate > settings.max_error_rate {
        failures.push(format!(
            "error rate {:.1}% is above {:.1}%",
            error_rate * 100.0,
            settings.max_error_rate * 100.0
        ));
    }
    if let Some(ratio) = latency_ratio.filter(|&r| r > settings.max_latency_ratio) {
        failures.push(format!(
            "p99 latency is {ratio:.2}x the stable version's (limit {:.2}x)",
            settings.max_latency_ratio
        ));
    }
    Verdict::Judged(AnalysisResult {
        step: rollout.step,
        requests,
        error_rate,
        latency_ratio,
        passed: failures.is_empty(),
        reason: failures.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use lantern_proto::lantern::v1::VersionState::{Available, Failed, Loading};

    use super::*;
    use crate::serving::fleet::tests::report;
    use crate::serving::test_service;

    const T0: i64 = 1_800_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(T0 + seconds).unwrap()
    }

    fn spec(rollout: serde_json::Value) -> Settings {
        Settings::of(&test_service(serde_json::json!({ "rollout": rollout })).spec)
    }

    /// Two pods that both hold `on_disk` and report `versions` alike.
    fn fleet(
        on_disk: &[u64],
        versions: &[(u64, lantern_proto::lantern::v1::VersionState, u64, u64, [u64; 5])],
    ) -> Fleet {
        Fleet::from_reports(&[report(on_disk, versions), report(on_disk, versions)])
    }

    fn status(decision: &Decision) -> ServedVersions {
        crate::serving::status::served_versions(decision, &Fleet::default())
    }

    fn stable(version: u64) -> ServedVersions {
        ServedVersions { stable_version: Some(version), ..Default::default() }
    }

    /// The settings of a service whose version policy lists `versions`.
    fn listing(versions: &[u64]) -> Settings {
        Settings::of(&test_service(serde_json::json!({"versionPolicy": {"specific": versions}})).spec)
    }

    fn reasons(decision: &Decision) -> Vec<&'static str> {
        decision.events.iter().map(|e| e.reason).collect()
    }

    /// Runs a canary of version 2 against stable 1 to the start of its first step at `at(10)`.
    fn first_step(rollout: serde_json::Value) -> (Settings, Decision) {
        let spec = spec(rollout);
        let loading = decide(&spec, &stable(1), &fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5])]), at(0));
        let loaded = fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])]);
        let stepping = decide(&spec, &status(&loading), &loaded, at(10));
        (spec, stepping)
    }

    #[test]
    fn the_first_version_is_served_at_once() {
        let decision = decide(&spec(serde_json::json!({})), &Default::default(), &fleet(&[1, 2], &[]), at(0));
        assert_eq!((decision.stable, decision.canary, decision.rollout.as_ref()), (Some(2), None, None));
        assert_eq!(reasons(&decision), ["InitialVersion"]);
        let nothing = decide(&spec(serde_json::json!({})), &Default::default(), &fleet(&[], &[]), at(0));
        assert_eq!((nothing.stable, nothing.serving_config()), (None, None));
    }

    #[test]
    fn a_new_version_loads_without_traffic_then_steps_through_the_analysis_to_promotion() {
        let spec = spec(serde_json::json!({"steps": [10, 100], "stepSeconds": 30, "analysis": {"minRequests": 10}}));
        let loading = decide(&spec, &stable(1), &fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5])]), at(0));
        assert_eq!((loading.canary, loading.canary_percent), (Some(2), 0));
        assert_eq!(loading.rollout.as_ref().unwrap().phase, RolloutPhase::Loading);
        assert_eq!(reasons(&loading), ["RolloutStarted"]);
        let config = loading.serving_config().unwrap();
        assert_eq!(config.labels, [("canary".to_owned(), 2), ("stable".to_owned(), 1)].into());
        assert_eq!(config.traffic, [(1, 100)].into(), "no traffic while loading");

        let half_loaded = Fleet::from_reports(&[
            report(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])]),
            report(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Loading, 0, 0, [0; 5])]),
        ]);
        let still = decide(&spec, &status(&loading), &half_loaded, at(5));
        assert_eq!(still.canary_percent, 0);
        assert!(still.rollout.as_ref().unwrap().message.contains("serving on 1 of 2 pods"));

        let served = |total, latency: [u64; 5]| {
            fleet(&[1, 2], &[(1, Available, 100, 0, [0, 100, 0, 0, 0]), (2, Available, total, 0, latency)])
        };
        let step1 = decide(&spec, &status(&loading), &served(4, [0, 4, 0, 0, 0]), at(10));
        let rollout = step1.rollout.clone().unwrap();
        assert_eq!((rollout.phase, rollout.step, step1.canary_percent), (RolloutPhase::Progressing, 0, 10));
        assert_eq!(rollout.step_start_requests, 8, "two pods' counts, summed");
        assert_eq!(step1.requeue, Some(Duration::from_secs(30)));
        assert_eq!(step1.serving_config().unwrap().traffic, [(1, 90), (2, 10)].into());

        let early = decide(&spec, &status(&step1), &served(50, [0, 50, 0, 0, 0]), at(20));
        assert_eq!((early.canary_percent, early.requeue), (10, Some(Duration::from_secs(20))));
        let waiting = decide(&spec, &status(&step1), &served(6, [0, 6, 0, 0, 0]), at(45));
        assert!(waiting.rollout.as_ref().unwrap().message.contains("waiting for 6 more requests"), "{waiting:?}");

        let step2 = decide(&spec, &status(&step1), &served(50, [0, 50, 0, 0, 0]), at(45));
        assert_eq!(step2.canary_percent, 100);
        let analysis = &step2.rollout.as_ref().unwrap().analyses[0];
        assert!(analysis.passed && analysis.requests == 92, "{analysis:?}");
        assert_eq!(step2.serving_config().unwrap().traffic, [(2, 100)].into());

        let done = decide(&spec, &status(&step2), &served(100, [0, 100, 0, 0, 0]), at(80));
        assert_eq!((done.stable, done.canary, done.canary_percent), (Some(2), None, 0));
        assert_eq!(done.rollout.as_ref().unwrap().phase, RolloutPhase::Promoted);
        assert_eq!(reasons(&done), ["Promoted"]);
        let after = decide(&spec, &status(&done), &served(100, [0, 100, 0, 0, 0]), at(90));
        assert_eq!((after.stable, after.canary, after.events.len()), (Some(2), None, 0), "nothing more to do");
    }

    #[test]
    fn errors_or_slowness_in_a_step_roll_the_canary_back_for_good() {
        let (spec, step1) = first_step(serde_json::json!({"stepSeconds": 30}));
        let errors =
            fleet(&[1, 2], &[(1, Available, 100, 0, [100, 0, 0, 0, 0]), (2, Available, 40, 4, [40, 0, 0, 0, 0])]);
        let failed = decide(&spec, &status(&step1), &errors, at(60));
        assert_eq!((failed.stable, failed.canary, failed.canary_percent), (Some(1), None, 0));
        assert_eq!(failed.rejected, [2]);
        let rollout = failed.rollout.clone().unwrap();
        assert_eq!((rollout.phase, rollout.reason.as_str()), (RolloutPhase::RolledBack, "AnalysisFailed"));
        assert!(rollout.message.contains("error rate 10.0% is above 5.0%"), "{}", rollout.message);
        assert!(failed.events[0].warning);
        let again = decide(&spec, &status(&failed), &errors, at(70));
        assert_eq!((again.canary, again.events.len()), (None, 0), "a rejected version is not tried again");

        let slow =
            fleet(&[1, 2], &[(1, Available, 100, 0, [100, 0, 0, 0, 0]), (2, Available, 40, 0, [0, 0, 40, 0, 0])]);
        let rolled_back = decide(&spec, &status(&step1), &slow, at(60));
        assert!(rolled_back.rollout.unwrap().message.contains("p99 latency is"));
    }

    #[test]
    fn a_canary_that_fails_to_load_is_rolled_back_and_stable_keeps_serving() {
        let spec = spec(serde_json::json!({}));
        let loading = decide(&spec, &stable(1), &fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5])]), at(0));
        let broken = fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Failed, 0, 0, [0; 5])]);
        let decision = decide(&spec, &status(&loading), &broken, at(5));
        let rollout = decision.rollout.clone().unwrap();
        assert_eq!(rollout.reason, "ModelLoadFailed");
        assert!(rollout.message.contains("failed to load on 2 of 2 pods: checksum mismatch"), "{}", rollout.message);
        assert_eq!((decision.stable, decision.rejected.as_slice()), (Some(1), &[2][..]));
        assert_eq!(decision.serving_config().unwrap().traffic, [(1, 100)].into());
    }

    #[test]
    fn a_worse_eval_metric_rolls_back_before_any_traffic() {
        let spec = spec(serde_json::json!({"analysis": {"evalMetric": {"name": "eval_loss"}}}));
        let loading = decide(&spec, &stable(1), &fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5])]), at(0));
        let with_metrics = |canary_loss: f64| {
            let mut reports = vec![report(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])])];
            reports[0].versions[0].metrics = [("eval_loss".to_owned(), 0.5)].into();
            reports[0].versions[1].metrics = [("eval_loss".to_owned(), canary_loss)].into();
            Fleet::from_reports(&reports)
        };
        let worse = decide(&spec, &status(&loading), &with_metrics(0.9), at(5));
        assert_eq!(worse.rollout.as_ref().unwrap().reason, "EvalMetricRegressed");
        assert!(worse.rollout.unwrap().message.contains("eval_loss 0.9 is worse than the stable version's 0.5"));
        let better = decide(&spec, &status(&loading), &with_metrics(0.1), at(5));
        assert_eq!((better.canary_percent, better.rejected.len()), (10, 0));
    }

    #[test]
    fn an_eval_tolerance_admits_a_small_loss_of_quality_and_no_more() {
        let gate = |tolerance: f64| {
            spec(serde_json::json!({"analysis": {"evalMetric":
                {"name": "eval_accuracy", "higherIsBetter": true, "tolerance": tolerance}}}))
        };
        let with_accuracy = |canary: f64| {
            let mut reports = vec![report(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])])];
            reports[0].versions[0].metrics = [("eval_accuracy".to_owned(), 0.80)].into();
            reports[0].versions[1].metrics = [("eval_accuracy".to_owned(), canary)].into();
            Fleet::from_reports(&reports)
        };
        let judged = |tolerance: f64, canary: f64| {
            let spec = gate(tolerance);
            let loading = decide(&spec, &stable(1), &fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5])]), at(0));
            decide(&spec, &status(&loading), &with_accuracy(canary), at(5))
        };
        let kept = judged(0.05, 0.78);
        assert_eq!((kept.canary_percent, kept.rejected.len()), (10, 0), "two points down, five allowed");
        let rejected = judged(0.05, 0.70);
        let message = rejected.rollout.unwrap().message;
        assert!(
            message
                .contains("eval_accuracy 0.7 is worse than the stable version's 0.8 by more than the tolerance 0.05"),
            "{message}"
        );
        assert_eq!(judged(0.0, 0.79).rejected, vec![2], "no tolerance: any loss rolls back");
    }

    #[test]
    fn immediate_promotes_once_loaded_everywhere() {
        let spec = spec(serde_json::json!({"strategy": "Immediate"}));
        let loading = decide(&spec, &stable(1), &fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5])]), at(0));
        let loaded = fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])]);
        let decision = decide(&spec, &status(&loading), &loaded, at(3));
        assert_eq!((decision.stable, decision.canary), (Some(2), None));
    }

    #[test]
    fn promote_and_abort_in_the_spec_end_a_rollout_at_once() {
        let (_, step1) = first_step(serde_json::json!({}));
        let served = fleet(&[1, 2], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])]);
        let promoted = decide(&spec(serde_json::json!({"promote": 2})), &status(&step1), &served, at(11));
        assert_eq!((promoted.stable, promoted.canary), (Some(2), None));
        let aborted = decide(&spec(serde_json::json!({"abort": 2})), &status(&step1), &served, at(11));
        assert_eq!((aborted.stable, aborted.rejected.as_slice()), (Some(1), &[2][..]));
        assert_eq!(aborted.rollout.unwrap().reason, "Aborted");
        let other = decide(&spec(serde_json::json!({"promote": 7})), &status(&step1), &served, at(11));
        assert_eq!(other.canary, Some(2), "promote names another version: no effect");
        assert_eq!(
            other.manual,
            Some(Err("spec.rollout.promote names version 7, which is not the canary (the canary is version 2)".into()))
        );
        assert_eq!(promoted.manual, Some(Ok("version 2 promoted".into())));
        // Left set after it promoted, the field is no refusal.
        let after = decide(&spec(serde_json::json!({"promote": 2})), &status(&promoted), &served, at(12));
        assert_eq!(after.manual, Some(Ok("version 2 promoted".into())));
    }

    #[test]
    fn a_pin_serves_one_version_and_ends_the_rollout() {
        let (_, step1) = first_step(serde_json::json!({}));
        let served = fleet(&[1, 2, 3], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])]);
        let pinned = decide(&spec(serde_json::json!({"pin": 1})), &status(&step1), &served, at(11));
        assert_eq!((pinned.stable, pinned.canary, pinned.canary_percent), (Some(1), None, 0));
        assert_eq!(pinned.rollout.as_ref().unwrap().reason, "Pinned");
        let config = pinned.serving_config().unwrap();
        assert_eq!((config.labels.len(), config.traffic), (1, [(1, 100)].into()));
        let other = decide(&spec(serde_json::json!({"pin": 3})), &status(&pinned), &served, at(12));
        assert_eq!((other.stable, reasons(&other)), (Some(3), vec!["Pinned"]));
    }

    #[test]
    fn a_pod_that_has_not_seen_the_canary_on_disk_yet_does_not_end_the_rollout() {
        let (spec, step1) = first_step(serde_json::json!({}));
        let stale = fleet(&[1], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])]);
        let decision = decide(&spec, &status(&step1), &stale, at(11));
        assert_eq!((decision.canary, decision.canary_percent), (Some(2), 10));
        let dropped = listing(&[1]);
        let decision = decide(&dropped, &status(&step1), &stale, at(11));
        assert_eq!((decision.canary, decision.rollout.unwrap().reason.as_str()), (None, "NoLongerCandidate"));
    }

    #[test]
    fn nothing_changes_while_no_worker_answers() {
        let (spec, step1) = first_step(serde_json::json!({}));
        let decision = decide(&spec, &status(&step1), &Fleet::default(), at(500));
        assert_eq!(status(&decision), status(&step1));
        assert!(decision.events.is_empty());
    }

    #[test]
    fn a_newer_candidate_supersedes_the_running_canary() {
        let (spec, step1) = first_step(serde_json::json!({}));
        let newer = fleet(&[1, 2, 3], &[(1, Available, 0, 0, [0; 5]), (2, Available, 0, 0, [0; 5])]);
        let decision = decide(&spec, &status(&step1), &newer, at(11));
        assert_eq!((decision.canary, decision.canary_percent), (Some(3), 0));
        assert_eq!(decision.rollout.as_ref().unwrap().phase, RolloutPhase::Loading);
        assert!(decision.rejected.is_empty(), "a superseded canary is not rejected");
    }

    #[test]
    fn a_specific_policy_limits_the_candidates() {
        let policy = listing(&[1, 2]);
        let decision = decide(&policy, &stable(1), &fleet(&[1, 2, 3], &[(1, Available, 0, 0, [0; 5])]), at(0));
        assert_eq!(decision.canary, Some(2));
        // Dropping the stable version from the list rolls out the highest listed one, even older.
        let back = listing(&[1]);
        let decision = decide(&back, &stable(2), &fleet(&[1, 2, 3], &[(2, Available, 0, 0, [0; 5])]), at(0));
        assert_eq!(decision.canary, Some(1));
    }

    #[test]
    fn a_stable_version_failing_everywhere_is_replaced_by_the_newest_candidate() {
        let spec = spec(serde_json::json!({}));
        let broken = fleet(&[1, 2], &[(1, Failed, 0, 0, [0; 5])]);
        let decision = decide(&spec, &stable(1), &broken, at(0));
        assert_eq!((decision.stable, decision.rejected.as_slice()), (Some(2), &[1][..]));
        assert_eq!(reasons(&decision), ["StableFailed"]);
    }
}
