//! A TrainingJob's next status, from its plan, its pods and rank 0's progress report (pure).
//!
//! Conditions follow the Kubeflow training operator's: `Created` once the job was seen, then the
//! condition of the current phase (`Running`, `Restarting`, `Succeeded`, `Failed`,
//! `Suspended`) true with the plan's reason and message, and every other phase's condition that
//! was set before turned false. A condition's `lastTransitionTime` moves only when its status
//! changes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lantern_proto::lantern::v1::{PublishedVersion, TrainingProgress};

use super::plan::{Phase, Plan, PodState, RankPod};
use crate::crd::TrainingJob;
use crate::crd::training::{Checkpoint, HISTORY_POINTS, HistoryPoint, Progress, RankStatus, TrainingJobStatus};
use crate::status::condition;

const PHASES: [Phase; 5] = [Phase::Running, Phase::Restarting, Phase::Succeeded, Phase::Failed, Phase::Suspended];

/// The status after `plan`; `report` is rank 0's progress when it answered.
pub fn next(
    job: &TrainingJob,
    plan: &Plan,
    pods: &[RankPod],
    report: Option<&TrainingProgress>,
    now: Timestamp,
) -> TrainingJobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let mut conditions = Vec::new();
    let created_message = format!("TrainingJob {} was created", job.metadata.name.as_deref().unwrap_or_default());
    conditions.push(condition(&previous.conditions, "Created", true, "JobCreated", &created_message, generation, now));
    for phase in PHASES {
        let current = phase == plan.phase;
        let existing = previous.conditions.iter().find(|c| c.type_ == phase.as_str());
        match existing {
            // A finished job's condition keeps the reason and message it finished with
            // (`MaxRestartsExceeded`, `InvalidSpec`, …), not the clean-up passes' generic one.
            Some(kept) if current && phase.finished() && kept.status == "True" => conditions.push(kept.clone()),
            _ if current => conditions.push(condition(
                &previous.conditions,
                phase.as_str(),
                true,
                plan.reason,
                &plan.message,
                generation,
                now,
            )),
            // A phase's condition turning false keeps the reason it had.
            Some(existing) => conditions.push(condition(
                &previous.conditions,
                phase.as_str(),
                false,
                &existing.reason,
                "",
                generation,
                now,
            )),
            None => {}
        }
    }
    let mut ranks: Vec<RankStatus> = pods
        .iter()
        .filter(|p| p.attempt == plan.attempt)
        .map(|p| RankStatus {
            rank: p.rank,
            pod: p.name.clone(),
            state: match &p.state {
                PodState::Pending(Some(reason)) => reason.clone(),
                PodState::Pending(None) => "Pending".to_owned(),
                PodState::Running => "Running".to_owned(),
                PodState::Succeeded => "Succeeded".to_owned(),
                PodState::Failed(why) => format!("Failed: {why}"),
                PodState::Refused(why) => format!("Refused: {why}"),
            },
        })
        .collect();
    ranks.sort_by_key(|r| r.rank);
    let start_time = previous.start_time.clone().or_else(|| (plan.phase == Phase::Running).then_some(Time(now)));
    let completion_time = previous.completion_time.clone().or_else(|| plan.phase.finished().then_some(Time(now)));
    let mut checkpoints = previous.checkpoints.clone();
    let mut progress = previous.progress.clone();
    let mut baseline = previous.baseline.clone();
    let mut history = previous.history.clone();
    if let Some(report) = report {
        let moved = progress.as_ref().is_none_or(|p| p.step != report.step);
        let updated = match (moved, &progress) {
            (false, Some(p)) => p.updated.clone(),
            _ => Time(now),
        };
        if !report.baseline.is_empty() {
            baseline = report.baseline.iter().map(|(name, value)| (name.clone(), *value)).collect();
        }
        let finite = |x: f64| x.is_finite().then_some(x);
        let (loss, tokens_per_second) =
            (finite(report.loss).map(rounded), rounded(finite(report.tokens_per_second).unwrap_or(0.0)));
        progress = Some(Progress {
            step: report.step,
            total_steps: report.total_steps,
            percent: percent(report.step, report.total_steps),
            loss,
            tokens_per_second,
            eta_seconds: finite(report.eta_seconds).filter(|s| *s >= 0.0).map(|s| s as u64),
            updated,
        });
        if moved {
            record(&mut history, HistoryPoint { step: report.step, loss, tokens_per_second });
        }
        for published in published_versions(report) {
            if checkpoints.iter().any(|c| c.version == published.version) {
                continue;
            }
            // The worker records the version's step as its `step` metric; a report without one
            // (an older worker) gives the checkpoint at or before the current step.
            let every = job.spec.checkpoint.as_ref().map_or(1, |c| c.every_steps.max(1));
            let step = match published.metrics.get("step") {
                Some(&step) if step >= 0.0 => step as u64,
                _ => report.step.min(report.total_steps) / every * every,
            };
            checkpoints.push(Checkpoint {
                version: published.version,
                step,
                metrics: published.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                digest: (!published.digest.is_empty()).then(|| published.digest.clone()),
                removed: false,
            });
        }
        for checkpoint in checkpoints.iter_mut().filter(|c| report.removed.contains(&c.version)) {
            checkpoint.removed = true;
        }
        checkpoints.sort_by_key(|c| c.version);
    }
    TrainingJobStatus {
        phase: Some(plan.phase),
        conditions,
        observed_generation: generation,
        ranks,
        restarts: plan.restarts,
        attempt: plan.attempt,
        start_time,
        completion_time,
        progress,
        published_versions: checkpoints.len() as u32,
        checkpoints,
        baseline,
        history,
    }
}

/// `x` to 4 significant digits, as the status shows figures.
fn rounded(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Percent of `total` steps done at `step`, rounded down.
fn percent(step: u64, total: u64) -> u32 {
    match total {
        0 => 0,
        _ => (step.min(total) * 100 / total) as u32,
    }
}

/// Appends `point`, and once the history is full keeps every other point (the first and the
/// newest always), so it spans the whole run at a coarser grain.
fn record(history: &mut Vec<HistoryPoint>, point: HistoryPoint) {
    history.retain(|p| p.step < point.step);
    history.push(point);
    if history.len() > HISTORY_POINTS {
        let newest = history.pop().expect("the history is not empty");
        let mut index = 0;
        history.retain(|_| {
            index += 1;
            index % 2 == 1
        });
        history.push(newest);
    }
}

/// Every version a report names: its list of published versions, or for a worker that sends
/// none, the last one.
fn published_versions(report: &TrainingProgress) -> Vec<PublishedVersion> {
    if !report.published.is_empty() {
        return report.published.clone();
    }
    let last = PublishedVersion {
        version: report.last_published_version,
        metrics: report.last_published_metrics.clone(),
        digest: String::new(),
    };
    if last.version > 0 { vec![last] } else { Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::merge_patch;
    use crate::training::plan::{self, Recorded};
    use serde_json::json;

    fn job() -> TrainingJob {
        crate::training::test_job(json!({"replicas": 1}))
    }

    fn running() -> RankPod {
        RankPod {
            name: "adder-0-rank-0".into(),
            attempt: 0,
            rank: 0,
            state: PodState::Running,
            created: None,
            terminating: false,
            report: None,
        }
    }

    #[test]
    fn conditions_follow_the_phase_and_keep_their_transition_times() {
        let t0: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let t1 = t0 + jiff::SignedDuration::from_secs(60);
        let mut job = job();
        let recorded = Recorded { phase: Some(Phase::Created), ..Recorded::default() };
        let plan = plan::plan(&job, &recorded, &[running()], t0);
        let mut report = TrainingProgress {
            step: 250,
            total_steps: 1000,
            loss: 1.5,
            last_published_version: 2,
            ..Default::default()
        };
        report.last_published_metrics.insert("eval_accuracy".into(), 0.4);
        // The version was published at step 100; the report comes later, at 250.
        report.last_published_metrics.insert("step".into(), 100.0);
        report.baseline.insert("eval_accuracy".into(), 0.1);
        let first = next(&job, &plan, &[running()], Some(&report), t0);
        assert_eq!(first.baseline["eval_accuracy"], 0.1, "the base's own score, beside the checkpoints'");
        assert_eq!(first.phase, Some(Phase::Running));
        assert_eq!(first.observed_generation, Some(3));
        let types: Vec<(&str, &str)> = first.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(types, [("Created", "True"), ("Running", "True")]);
        assert_eq!(first.checkpoints[0].step, 100);
        assert_eq!(first.checkpoints[0].metrics["eval_accuracy"], 0.4);
        assert_eq!(first.start_time, Some(Time(t0)));
        // A version retention removed stays listed, marked.
        let mut removing = job.clone();
        removing.status = Some(first.clone());
        let later = TrainingProgress { removed: vec![2], ..report.clone() };
        let marked = next(&removing, &plan, &[running()], Some(&later), t0);
        assert!(marked.checkpoints[0].removed && !first.checkpoints[0].removed);

        job.status = Some(first);
        let mut failed_pod = running();
        failed_pod.state = PodState::Failed("exit code 1 (Error)".into());
        let recorded = Recorded { phase: Some(Phase::Running), ..Recorded::default() };
        let plan = plan::plan(&job, &recorded, &[failed_pod.clone()], t1);
        let second = next(&job, &plan, &[failed_pod], None, t1);
        let was_running = second.conditions.iter().find(|c| c.type_ == "Running").unwrap();
        assert_eq!((was_running.status.as_str(), was_running.reason.as_str()), ("False", "JobRunning"));
        let restarting = second.conditions.iter().find(|c| c.type_ == "Restarting").unwrap();
        assert_eq!((restarting.status.as_str(), restarting.reason.as_str()), ("True", "RankFailed"));
        assert_eq!(second.conditions[0].last_transition_time, Time(t0), "Created did not change");
        assert_eq!((second.restarts, second.attempt, second.published_versions), (1, 1, 1));
        assert!(second.ranks.is_empty(), "the new attempt has no pods yet");
        let patch = merge_patch(job.status.as_ref(), &second);
        assert_eq!(patch["status"]["ranks"], serde_json::Value::Null, "cleared, not left as it was");
        assert!(patch["status"].as_object().unwrap().contains_key("ranks"));

        // A rank refuses the job: it fails with the reason, which the clean-up passes keep.
        job.status = Some(second);
        let mut refused = running();
        refused.attempt = 1;
        refused.state = PodState::Refused("training config: schedule.steps: must be at least 1".into());
        let recorded = Recorded { phase: Some(Phase::Restarting), attempt: 1, restarts: 1, ..Recorded::default() };
        let failing = plan::plan(&job, &recorded, &[refused.clone()], t1);
        job.status = Some(next(&job, &failing, &[refused.clone()], None, t1));
        let finished = Recorded { phase: Some(Phase::Failed), ..recorded };
        let later = next(&job, &plan::plan(&job, &finished, &[refused.clone()], t1), &[refused], None, t1);
        let failed = later.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "InvalidSpec"));
        assert!(failed.message.contains("refused the job: training config: schedule.steps"), "{}", failed.message);
        assert_eq!(later.ranks[0].state, "Refused: training config: schedule.steps: must be at least 1");
    }

    #[test]
    fn every_published_version_is_recorded_once_with_its_digest_even_between_polls() {
        let t0: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let mut job = job();
        let recorded = Recorded { phase: Some(Phase::Running), ..Recorded::default() };
        let plan = plan::plan(&job, &recorded, &[running()], t0);
        let version = |version: u64, step: f64| PublishedVersion {
            version,
            metrics: [("step".to_owned(), step)].into(),
            digest: format!("sha256:{version:02}"),
        };
        let report = TrainingProgress {
            step: 300,
            total_steps: 300,
            published: vec![version(1, 100.0), version(2, 200.0)],
            ..Default::default()
        };
        job.status = Some(next(&job, &plan, &[running()], Some(&report), t0));
        // The final report (rank 0's termination message) also names version 3.
        let last = TrainingProgress { published: vec![version(2, 200.0), version(3, 300.0)], ..report };
        let status = next(&job, &plan, &[running()], Some(&last), t0);
        let recorded: Vec<(u64, u64, Option<&str>)> =
            status.checkpoints.iter().map(|c| (c.version, c.step, c.digest.as_deref())).collect();
        assert_eq!(recorded, [(1, 100, Some("sha256:01")), (2, 200, Some("sha256:02")), (3, 300, Some("sha256:03"))]);
        assert_eq!(status.published_versions, 3);
    }

    #[test]
    fn progress_shows_rounded_figures_a_percentage_and_a_history_spread_over_the_run() {
        let t0: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let mut job = job();
        let recorded = Recorded { phase: Some(Phase::Running), ..Recorded::default() };
        let plan = plan::plan(&job, &recorded, &[running()], t0);
        for step in 1..=1000u64 {
            let report = TrainingProgress {
                step,
                total_steps: 1000,
                loss: 0.8281069993972778 + 1.0 / step as f64,
                tokens_per_second: 4259.61,
                ..Default::default()
            };
            job.status = Some(next(&job, &plan, &[running()], Some(&report), t0));
            // A poll that finds the step where it was adds nothing.
            job.status = Some(next(&job, &plan, &[running()], Some(&report), t0));
        }
        let status = job.status.unwrap();
        let progress = status.progress.unwrap();
        assert_eq!((progress.percent, progress.loss, progress.tokens_per_second), (100, Some(0.8291), 4260.0));
        let history = &status.history;
        assert!(history.len() <= HISTORY_POINTS && history.len() > HISTORY_POINTS / 2, "{}", history.len());
        assert_eq!((history[0].step, history.last().unwrap().step), (1, 1000));
        assert!(history.windows(2).all(|w| w[0].step < w[1].step));
        assert_eq!((percent(333, 1000), percent(5, 0), percent(20, 10)), (33, 0, 100));
        assert_eq!((rounded(0.000123456), rounded(-98765.4), rounded(0.0)), (0.0001235, -98770.0, 0.0));
    }
}
