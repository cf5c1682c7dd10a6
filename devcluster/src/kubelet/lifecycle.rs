//! The kubelet's decisions, as pure functions: whether a container that exited is restarted,
//! how long it backs off first, and which phase its pod is in.

use std::time::Duration;

/// Whether a container that exited with `code` starts again under the pod's `restartPolicy`.
/// Init containers restart only on failure, and never under `Never`.
pub fn restarts(policy: &str, init: bool, code: i32) -> bool {
    match (policy, init) {
        ("Never", _) => false,
        (_, true) | ("OnFailure", _) => code != 0,
        _ => true,
    }
}

/// The back-off before restart number `attempt` (0 for the first): `initial`, doubling, capped
/// at `max`, as the kubelet's CrashLoopBackOff is (10 s to 5 min by default).
pub fn back_off(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial.saturating_mul(1 << attempt.min(20)).min(max)
}

/// What the phase depends on, per regular container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Never started yet (waiting for an image, its config, or its turn).
    NotStarted,
    /// Running, or between runs with a restart to come.
    Live,
    /// Done for good with this exit code.
    Exited(i32),
}

/// The pod phase: `Failed` when an init container failed for good; `Pending` until the init
/// containers are done and every container has started; `Running` while any container runs or
/// will restart; then `Succeeded` if every container exited 0, else `Failed`.
pub fn phase(init_failed: bool, initialized: bool, containers: &[Progress]) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !initialized || containers.contains(&Progress::NotStarted) {
        return "Pending";
    }
    if containers.contains(&Progress::Live) {
        return "Running";
    }
    match containers.iter().all(|p| *p == Progress::Exited(0)) {
        true => "Succeeded",
        false => "Failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_decide_by_exit_code() {
        assert!(restarts("Always", false, 0));
        assert!(restarts("Always", false, 1));
        assert!(!restarts("OnFailure", false, 0));
        assert!(restarts("OnFailure", false, 2));
        assert!(!restarts("Never", false, 2));
        assert!(!restarts("Always", true, 0));
        assert!(restarts("Always", true, 1));
        assert!(!restarts("Never", true, 1));
    }

    #[test]
    fn back_off_doubles_to_its_cap() {
        let (initial, max) = (Duration::from_secs(10), Duration::from_secs(300));
        let delays: Vec<u64> = (0..7).map(|n| back_off(initial, max, n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(back_off(initial, max, 1000), max);
    }

    #[test]
    fn phases_follow_the_containers() {
        use Progress::*;
        assert_eq!(phase(false, false, &[NotStarted]), "Pending");
        assert_eq!(phase(false, true, &[Live, NotStarted]), "Pending");
        assert_eq!(phase(false, true, &[Live, Exited(0)]), "Running");
        assert_eq!(phase(false, true, &[Exited(0), Exited(0)]), "Succeeded");
        assert_eq!(phase(false, true, &[Exited(0), Exited(137)]), "Failed");
        assert_eq!(phase(true, false, &[NotStarted]), "Failed");
    }
}
