//! What a TrainingJob needs next, decided from the job and its pods alone (a pure function, so
//! that every rule is a unit test): which rank pods to create or delete, whether the gang
//! restarts, and the phase with its reason.
//!
//! - Ranks run in gang attempts (pod label `lantern.dev/attempt`). Any rank failing ends the
//!   attempt: all its pods are deleted and, once they are gone, the next attempt starts (resuming
//!   from the last checkpoint) while restarts stay within `runPolicy.maxRestarts`; then the job
//!   fails. Waiting for the old pods keeps two rank 0s from writing one state directory.
//! - A rank that refuses the job as configured (exit code [`exit::INVALID`]: its file, data or
//!   base cannot be used) fails the job at once (`InvalidSpec`): a restart would refuse it again.
//! - Suspending deletes the pods; resuming starts a new attempt that does not count as a restart.
//! - `activeDeadlineSeconds` (from the start) and `startupDeadlineSeconds` (from an attempt's
//!   pods' creation until all run) fail the job.
//! - Once finished, pods are cleaned up as `cleanPodPolicy` says, and the job is deleted
//!   `ttlSecondsAfterFinished` after it finished.

use std::time::Duration;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use lantern_contract::exit;
use lantern_proto::TERMINATION_PREFIX;
use lantern_proto::lantern::v1::TrainingProgress;
use prost::Message as _;

use super::objects::{ATTEMPT_LABEL, RANK_LABEL};
use crate::crd::TrainingJob;
use crate::crd::training::CleanPodPolicy;

/// Gang restarts allowed when `runPolicy.maxRestarts` is unset.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

pub use crate::crd::training::Phase;

/// What the controller does next.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub phase: Phase,
    /// A stable CamelCase reason, and a sentence for people.
    pub reason: &'static str,
    pub message: String,
    /// The gang attempt the pods belong to, and restarts counted so far.
    pub attempt: u32,
    pub restarts: u32,
    /// Ranks to create pods for, in the current attempt.
    pub create: Vec<u32>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Delete the job itself (its TTL after finishing has passed).
    pub delete_job: bool,
    /// Reconcile again after this long at the latest (a deadline or the TTL).
    pub requeue: Option<Duration>,
}

/// A rank pod as the plan sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RankPod {
    pub name: String,
    pub attempt: u32,
    pub rank: u32,
    pub state: PodState,
    pub created: Option<Timestamp>,
    pub terminating: bool,
    /// The progress the rank left in its termination message as it exited (rank 0 writes one).
    pub report: Option<TrainingProgress>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PodState {
    /// Not running yet; the reason a container waits, when it says one.
    Pending(Option<String>),
    Running,
    Succeeded,
    /// Ended with this exit code (or failed before running), and why.
    Failed(String),
    /// Refused the job as configured, and why: no restart helps.
    Refused(String),
}

impl RankPod {
    /// Reads a pod the job owns; `None` for one without rank and attempt labels.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let labels = pod.metadata.labels.as_ref()?;
        let attempt = labels.get(ATTEMPT_LABEL)?.parse().ok()?;
        let rank = labels.get(RANK_LABEL)?.parse().ok()?;
        let status = pod.status.as_ref();
        let container = status.and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
        let terminated = container.and_then(|c| c.state.as_ref()).and_then(|s| s.terminated.as_ref());
        let waiting = container.and_then(|c| c.state.as_ref()).and_then(|s| s.waiting.as_ref());
        let (report, said) = termination(terminated.and_then(|t| t.message.as_deref()).unwrap_or_default());
        let state = match (status.and_then(|s| s.phase.as_deref()), terminated) {
            (Some("Succeeded"), _) => PodState::Succeeded,
            (_, Some(t)) if t.exit_code == 0 => PodState::Succeeded,
            (_, Some(t)) if t.exit_code == exit::INVALID => {
                PodState::Refused(said.unwrap_or_else(|| format!("exit code {}", t.exit_code)))
            }
            (_, Some(t)) => {
                let reason = t.reason.clone().unwrap_or_else(|| "Error".to_owned());
                let why = said.map(|s| format!(": {s}")).unwrap_or_default();
                PodState::Failed(format!("exit code {} ({reason}){why}", t.exit_code))
            }
            (Some("Failed"), None) => {
                PodState::Failed(status.and_then(|s| s.message.clone()).unwrap_or_else(|| "the pod failed".to_owned()))
            }
            (Some("Running"), None) => PodState::Running,
            _ => PodState::Pending(waiting.and_then(|w| w.reason.clone())),
        };
        Some(Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            attempt,
            rank,
            state,
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            report,
        })
    }
}

/// A termination message read: the rank's final progress when it wrote one, and what it says
/// went wrong (the progress's failure, or the last line of the log the kubelet fell back to).
fn termination(message: &str) -> (Option<TrainingProgress>, Option<String>) {
    let report = message.strip_prefix(TERMINATION_PREFIX).and_then(|encoded| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        TrainingProgress::decode(bytes.as_slice()).ok()
    });
    let said = match &report {
        Some(report) => Some(report.failure.clone()),
        None => message.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned),
    };
    let said = said.filter(|s| !s.is_empty()).map(|s| s.chars().take(300).collect());
    (report, said)
}

/// What the job's status already says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    pub phase: Option<Phase>,
    pub attempt: u32,
    pub restarts: u32,
    pub start_time: Option<Timestamp>,
    pub completion_time: Option<Timestamp>,
}

pub fn plan(job: &TrainingJob, recorded: &Recorded, pods: &[RankPod], now: Timestamp) -> Plan {
    let spec = &job.spec;
    let policy = spec.run_policy.clone().unwrap_or_default();
    let mut plan = Plan {
        phase: recorded.phase.unwrap_or(Phase::Created),
        reason: "JobCreated",
        message: String::new(),
        attempt: recorded.attempt,
        restarts: recorded.restarts,
        create: Vec::new(),
        delete: Vec::new(),
        delete_job: false,
        requeue: None,
    };

    // Finished: clean up, then wait out the TTL.
    if let Some(phase) = recorded.phase.filter(|p| p.finished()) {
        plan.reason = if phase == Phase::Succeeded { "JobSucceeded" } else { "JobFailed" };
        plan.delete =
            live_names(pods.iter().filter(|p| match policy.clean_pod_policy.unwrap_or(CleanPodPolicy::Running) {
                CleanPodPolicy::All => true,
                CleanPodPolicy::Running => matches!(p.state, PodState::Running | PodState::Pending(_)),
                CleanPodPolicy::None => false,
            }))
            .collect();
        if let (Some(ttl), Some(done)) = (policy.ttl_seconds_after_finished, recorded.completion_time) {
            let left = seconds_left(done, ttl, now);
            plan.delete_job = left.is_zero();
            plan.requeue = (!left.is_zero()).then_some(left);
        }
        return plan;
    }

    // Pods of earlier attempts go first; nothing new starts until they are gone.
    let stale: Vec<&RankPod> = pods.iter().filter(|p| p.attempt != recorded.attempt).collect();
    plan.delete.extend(live_names(stale.iter().copied()));
    let current: Vec<&RankPod> =
        pods.iter().filter(|p| p.attempt == recorded.attempt && p.rank < spec.replicas).collect();
    // Ranks beyond `replicas` (it shrank while suspended) go.
    plan.delete.extend(live_names(pods.iter().filter(|p| p.attempt == recorded.attempt && p.rank >= spec.replicas)));

    if policy.suspend.unwrap_or(false) {
        plan.delete.extend(live_names(current.iter().copied()));
        plan.phase = Phase::Suspended;
        plan.reason = "JobSuspended";
        plan.message = "the job is suspended; its ranks are stopped".to_owned();
        return plan;
    }
    if recorded.phase == Some(Phase::Suspended) {
        // Resuming: a new attempt, not a restart.
        plan.attempt += 1;
        plan.phase = Phase::Restarting;
        plan.reason = "JobResumed";
        plan.message = "resuming from the last checkpoint".to_owned();
        plan.delete.extend(live_names(current.iter().copied()));
        return plan;
    }

    if let (Some(deadline), Some(start)) = (policy.active_deadline_seconds, recorded.start_time) {
        let left = seconds_left(start, deadline, now);
        if left.is_zero() {
            return fail(
                plan,
                "DeadlineExceeded",
                format!("the job ran longer than activeDeadlineSeconds ({deadline})"),
            );
        }
        plan.requeue = Some(left);
    }

    let refused = current.iter().find_map(|p| match &p.state {
        PodState::Refused(why) => Some((p.rank, &p.name, why)),
        _ => None,
    });
    if let Some((rank, name, why)) = refused {
        let running = current.iter().copied().filter(|p| matches!(p.state, PodState::Running | PodState::Pending(_)));
        plan.delete.extend(live_names(running));
        return fail(plan, "InvalidSpec", format!("rank {rank} ({name}) refused the job: {why}"));
    }
    if let Some((rank, what)) = failure(recorded, spec.replicas, &current) {
        let max = policy.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS);
        let what = format!("rank {rank} {what}");
        if recorded.restarts >= max {
            // The failed pods stay for their logs; the ranks still running stop.
            let running =
                current.iter().copied().filter(|p| matches!(p.state, PodState::Running | PodState::Pending(_)));
            plan.delete.extend(live_names(running));
            return fail(plan, "MaxRestartsExceeded", format!("{what}; all {max} restarts are used"));
        }
        plan.delete.extend(live_names(current.iter().copied()));
        plan.attempt += 1;
        plan.restarts += 1;
        plan.phase = Phase::Restarting;
        plan.reason = "RankFailed";
        plan.message = format!("{what}; restarting every rank from the last checkpoint ({} of {max})", plan.restarts);
        return plan;
    }

    if !current.is_empty()
        && current.len() as u32 == spec.replicas
        && current.iter().all(|p| p.state == PodState::Succeeded)
    {
        plan.phase = Phase::Succeeded;
        plan.reason = "JobSucceeded";
        plan.message = format!("all {} ranks finished", spec.replicas);
        return plan;
    }

    if !stale.is_empty() {
        plan.phase = Phase::Restarting;
        plan.reason = "Restarting";
        plan.message = format!("waiting for {} pod(s) of an earlier attempt to stop", stale.len());
        return plan;
    }

    plan.create = (0..spec.replicas).filter(|rank| !current.iter().any(|p| p.rank == *rank)).collect();
    let running = current.iter().filter(|p| p.state == PodState::Running).count() as u32;
    // Ranks end one by one: a rank that finished while the others still run is still Running.
    let finished = current.iter().filter(|p| p.state == PodState::Succeeded).count() as u32;
    if running > 0 && running + finished == spec.replicas {
        plan.phase = Phase::Running;
        plan.reason = "JobRunning";
        plan.message = match finished {
            0 => format!("all {running} ranks are running"),
            _ => format!("{finished} of {} ranks finished, {running} running", spec.replicas),
        };
        return plan;
    }
    if let Some(deadline) = policy.startup_deadline_seconds
        && let Some(first) = current.iter().filter_map(|p| p.created).min()
    {
        let left = seconds_left(first, deadline, now);
        if left.is_zero() {
            plan.delete.extend(live_names(current.iter().copied()));
            plan.create.clear();
            let message =
                format!("only {running} of {} ranks ran within startupDeadlineSeconds ({deadline})", spec.replicas);
            return fail(plan, "StartupDeadlineExceeded", message);
        }
        plan.requeue = Some(plan.requeue.map_or(left, |r| r.min(left)));
    }
    (plan.phase, plan.reason) = match recorded.phase {
        Some(Phase::Restarting) => (Phase::Restarting, "Restarting"),
        _ => (Phase::Created, "JobCreated"),
    };
    let waiting: Vec<String> = current
        .iter()
        .filter_map(|p| match &p.state {
            PodState::Pending(Some(reason)) => Some(format!("rank {}: {reason}", p.rank)),
            _ => None,
        })
        .collect();
    plan.message = match waiting.is_empty() {
        true => format!("{running} of {} ranks are running", spec.replicas),
        false => format!("{running} of {} ranks are running; {}", spec.replicas, waiting.join(", ")),
    };
    plan
}

/// The rank that ended the current attempt, and how: a pod that failed, or, once the gang
/// ran, a rank whose pod is gone or being deleted.
fn failure(recorded: &Recorded, replicas: u32, current: &[&RankPod]) -> Option<(u32, String)> {
    let failed = current.iter().find_map(|p| match &p.state {
        PodState::Failed(why) => Some((p.rank, format!("({}) failed: {why}", p.name))),
        _ => None,
    });
    if failed.is_some() {
        return failed;
    }
    if recorded.phase != Some(Phase::Running) {
        return None;
    }
    (0..replicas).find_map(|rank| match current.iter().find(|p| p.rank == rank) {
        None => Some((rank, "is gone: its pod was deleted".to_owned())),
        Some(pod) if pod.terminating && pod.state != PodState::Succeeded => {
            Some((rank, format!("({}) is being deleted", pod.name)))
        }
        Some(_) => None,
    })
}

/// The names of the pods not already being deleted.
fn live_names<'a>(pods: impl Iterator<Item = &'a RankPod>) -> impl Iterator<Item = String> {
    pods.filter(|p| !p.terminating).map(|p| p.name.clone())
}

fn fail(mut plan: Plan, reason: &'static str, message: String) -> Plan {
    plan.phase = Phase::Failed;
    plan.reason = reason;
    plan.message = message;
    plan.create.clear();
    plan
}

/// Time left until `seconds` after `since` (zero once passed).
fn seconds_left(since: Timestamp, seconds: u64, now: Timestamp) -> Duration {
    let end = since.as_second().saturating_add(seconds as i64);
    Duration::from_secs(end.saturating_sub(now.as_second()).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(policy: serde_json::Value) -> TrainingJob {
        crate::training::test_job(json!({"runPolicy": policy}))
    }

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    fn pod(attempt: u32, rank: u32, state: PodState) -> RankPod {
        RankPod {
            name: format!("adder-{attempt}-rank-{rank}"),
            attempt,
            rank,
            state,
            created: Some(now() - jiff::SignedDuration::from_secs(30)),
            terminating: false,
            report: None,
        }
    }

    fn recorded(phase: Phase, attempt: u32, restarts: u32) -> Recorded {
        Recorded { phase: Some(phase), attempt, restarts, start_time: Some(now()), completion_time: None }
    }

    #[test]
    fn a_new_job_creates_every_rank_then_runs() {
        let fresh = plan(&job(json!({})), &Recorded::default(), &[], now());
        assert_eq!((fresh.phase, fresh.create.clone()), (Phase::Created, vec![0, 1]));
        let half = plan(&job(json!({})), &Recorded::default(), &[pod(0, 0, PodState::Running)], now());
        assert_eq!(half.create, vec![1]);
        let waiting = [pod(0, 0, PodState::Running), pod(0, 1, PodState::Pending(Some("ErrImagePull".into())))];
        assert!(plan(&job(json!({})), &Recorded::default(), &waiting, now()).message.contains("rank 1: ErrImagePull"));
        let all = [pod(0, 0, PodState::Running), pod(0, 1, PodState::Running)];
        let running = plan(&job(json!({})), &recorded(Phase::Created, 0, 0), &all, now());
        assert_eq!((running.phase, running.create.len(), running.delete.len()), (Phase::Running, 0, 0));
        // Ranks finish one by one; the job is still running until the last one does.
        let ending = [pod(0, 0, PodState::Running), pod(0, 1, PodState::Succeeded)];
        let ending = plan(&job(json!({})), &recorded(Phase::Running, 0, 0), &ending, now());
        assert_eq!((ending.phase, ending.create.len()), (Phase::Running, 0));
        assert_eq!(ending.message, "1 of 2 ranks finished, 1 running");
    }

    #[test]
    fn one_rank_failing_restarts_the_whole_gang_within_the_budget() {
        let pods = [pod(0, 0, PodState::Running), pod(0, 1, PodState::Failed("exit code 137 (Error)".into()))];
        let restart = plan(&job(json!({"maxRestarts": 2})), &recorded(Phase::Running, 0, 0), &pods, now());
        assert_eq!((restart.phase, restart.attempt, restart.restarts), (Phase::Restarting, 1, 1));
        assert_eq!(restart.delete, vec!["adder-0-rank-0", "adder-0-rank-1"]);
        assert!(restart.create.is_empty(), "the new attempt waits for the old pods");
        assert!(restart.message.contains("rank 1 (adder-0-rank-1) failed: exit code 137"), "{}", restart.message);

        // The old pods are stopping: wait; once gone, the new attempt's ranks are created.
        let mut stopping = pods.clone();
        stopping.iter_mut().for_each(|p| p.terminating = true);
        let waiting = plan(&job(json!({"maxRestarts": 2})), &recorded(Phase::Restarting, 1, 1), &stopping, now());
        assert_eq!((waiting.phase, waiting.create.len(), waiting.delete.len()), (Phase::Restarting, 0, 0));
        let next = plan(&job(json!({"maxRestarts": 2})), &recorded(Phase::Restarting, 1, 1), &[], now());
        assert_eq!((next.phase, next.create.clone()), (Phase::Restarting, vec![0, 1]));

        let exhausted = plan(
            &job(json!({"maxRestarts": 2})),
            &recorded(Phase::Running, 2, 2),
            &[pod(2, 0, PodState::Failed("exit code 1 (Error)".into())), pod(2, 1, PodState::Running)],
            now(),
        );
        assert_eq!((exhausted.phase, exhausted.reason), (Phase::Failed, "MaxRestartsExceeded"));
        assert_eq!(exhausted.delete, vec!["adder-2-rank-1"], "the running rank is stopped");
    }

    #[test]
    fn a_rank_deleted_while_the_gang_runs_restarts_it() {
        let left = [pod(0, 0, PodState::Running)];
        let restart = plan(&job(json!({})), &recorded(Phase::Running, 0, 0), &left, now());
        assert_eq!((restart.phase, restart.restarts), (Phase::Restarting, 1));
        assert!(restart.message.starts_with("rank 1 is gone"), "{}", restart.message);
    }

    #[test]
    fn all_ranks_finishing_is_success_and_cleanup_follows_the_policy() {
        let done = [pod(0, 0, PodState::Succeeded), pod(0, 1, PodState::Succeeded)];
        let succeeded = plan(&job(json!({})), &recorded(Phase::Running, 0, 0), &done, now());
        assert_eq!(succeeded.phase, Phase::Succeeded);
        let mut finished = recorded(Phase::Succeeded, 0, 0);
        finished.completion_time = Some(now() - jiff::SignedDuration::from_secs(50));
        let kept = plan(&job(json!({"ttlSecondsAfterFinished": 60})), &finished, &done, now());
        assert_eq!((kept.delete.len(), kept.delete_job, kept.requeue), (0, false, Some(Duration::from_secs(10))));
        let all = plan(&job(json!({"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 30})), &finished, &done, now());
        assert_eq!((all.delete.len(), all.delete_job), (2, true));
    }

    #[test]
    fn suspension_stops_the_ranks_and_resuming_is_not_a_restart() {
        let pods = [pod(1, 0, PodState::Running), pod(1, 1, PodState::Running)];
        let suspended = plan(&job(json!({"suspend": true})), &recorded(Phase::Running, 1, 1), &pods, now());
        assert_eq!((suspended.phase, suspended.delete.len()), (Phase::Suspended, 2));
        let resumed = plan(&job(json!({"suspend": false})), &recorded(Phase::Suspended, 1, 1), &[], now());
        assert_eq!((resumed.phase, resumed.attempt, resumed.restarts), (Phase::Restarting, 2, 1));
    }

    #[test]
    fn deadlines_fail_the_job() {
        let mut started = recorded(Phase::Running, 0, 0);
        started.start_time = Some(now() - jiff::SignedDuration::from_secs(100));
        let pods = [pod(0, 0, PodState::Running), pod(0, 1, PodState::Running)];
        let late = plan(&job(json!({"activeDeadlineSeconds": 60})), &started, &pods, now());
        assert_eq!((late.phase, late.reason), (Phase::Failed, "DeadlineExceeded"));
        let ok = plan(&job(json!({"activeDeadlineSeconds": 160})), &started, &pods, now());
        assert_eq!((ok.phase, ok.requeue), (Phase::Running, Some(Duration::from_secs(60))));

        let stuck = [pod(0, 0, PodState::Running), pod(0, 1, PodState::Pending(Some("ImagePullBackOff".into())))];
        let slow = plan(&job(json!({"startupDeadlineSeconds": 20})), &recorded(Phase::Created, 0, 0), &stuck, now());
        assert_eq!((slow.phase, slow.reason, slow.delete.len()), (Phase::Failed, "StartupDeadlineExceeded", 2));
    }

    #[test]
    fn a_rank_s_termination_message_gives_its_final_progress_or_why_it_failed() {
        use lantern_proto::lantern::v1::PublishedVersion;
        let progress = TrainingProgress {
            step: 300,
            published: vec![PublishedVersion { version: 3, ..Default::default() }],
            ..Default::default()
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(progress.encode_to_vec());
        let pod = |exit_code: i32, message: String| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "adder-0-rank-0", "labels": {ATTEMPT_LABEL: "0", RANK_LABEL: "0"}},
                "status": {"phase": if exit_code == 0 { "Succeeded" } else { "Failed" }, "containerStatuses": [{
                    "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}},
                }]},
            }))
            .unwrap()
        };
        let finished = RankPod::from_pod(&pod(0, format!("{TERMINATION_PREFIX}{encoded}"))).unwrap();
        assert_eq!(finished.state, PodState::Succeeded);
        assert_eq!(finished.report.map(|r| (r.step, r.published.len())), Some((300, 1)));

        let failed = TrainingProgress { failure: "the loss is not finite at step 7".into(), ..progress };
        let encoded = base64::engine::general_purpose::STANDARD.encode(failed.encode_to_vec());
        let stopped = RankPod::from_pod(&pod(1, format!("{TERMINATION_PREFIX}{encoded}"))).unwrap();
        assert_eq!(stopped.state, PodState::Failed("exit code 1 (Error): the loss is not finite at step 7".into()));

        let crashed = RankPod::from_pod(&pod(1, "loading\nrank 1 failed: out of memory\n".into())).unwrap();
        assert_eq!(crashed.state, PodState::Failed("exit code 1 (Error): rank 1 failed: out of memory".into()));
        assert!(crashed.report.is_none());

        let refused =
            RankPod::from_pod(&pod(exit::INVALID, "training config: schedule.steps: must be at least 1".into()));
        assert_eq!(
            refused.unwrap().state,
            PodState::Refused("training config: schedule.steps: must be at least 1".into())
        );
    }

    #[test]
    fn a_rank_refusing_the_job_fails_it_at_once_without_a_restart() {
        let why = "training config: data.jsonl.path: train.jsonl line 2: not JSON";
        let pods = [pod(0, 0, PodState::Running), pod(0, 1, PodState::Refused(why.into()))];
        let failed = plan(&job(json!({"maxRestarts": 3})), &recorded(Phase::Running, 0, 0), &pods, now());
        assert_eq!((failed.phase, failed.reason, failed.restarts), (Phase::Failed, "InvalidSpec", 0));
        assert_eq!(failed.message, format!("rank 1 (adder-0-rank-1) refused the job: {why}"));
        assert_eq!(
            failed.delete,
            vec!["adder-0-rank-0"],
            "the running rank is stopped; the refusing pod stays for its log"
        );
    }
}
