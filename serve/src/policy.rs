//! Pure decisions of the version manager: which versions should be loaded, and which loaded
//! versions may go. Transitions are availability-preserving: an old version is kept until a
//! wanted version can replace it, and the last available version is never dropped for nothing.

use std::collections::BTreeSet;

use super::config::{ServingConfig, VersionPolicy};

/// The versions that should be loaded: the policy's choice among `on_disk`, plus versions the
/// config pins through labels or traffic weights (when they exist on disk).
pub fn desired_versions(config: &ServingConfig, on_disk: &BTreeSet<u64>) -> BTreeSet<u64> {
    let mut desired: BTreeSet<u64> = match &config.policy {
        VersionPolicy::Latest(n) => on_disk.iter().rev().take(*n as usize).copied().collect(),
        VersionPolicy::All => on_disk.clone(),
        VersionPolicy::Specific(versions) => versions.intersection(on_disk).copied().collect(),
    };
    desired.extend(config.pinned_versions().intersection(on_disk));
    desired
}

/// Which available versions to unload. A version outside `desired` is kept, newest first, while
/// desired versions are still missing (loading or failed), one for each missing one; and the
/// newest available version is kept when nothing desired exists at all (say every version
/// directory was deleted), so the model keeps answering.
pub fn versions_to_unload(desired: &BTreeSet<u64>, available: &BTreeSet<u64>) -> BTreeSet<u64> {
    let missing = desired.difference(available).count();
    let keep_for_nothing = usize::from(desired.is_empty());
    available.iter().rev().filter(|v| !desired.contains(v)).skip(missing.max(keep_for_nothing)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<const N: usize>(items: [u64; N]) -> BTreeSet<u64> {
        BTreeSet::from(items)
    }

    fn config(policy: &str) -> ServingConfig {
        ServingConfig::with_policy(policy.parse().unwrap())
    }

    #[test]
    fn policies_choose_versions_on_disk() {
        let disk = set([1, 2, 3, 5]);
        assert_eq!(desired_versions(&config("latest"), &disk), set([5]));
        assert_eq!(desired_versions(&config("latest:2"), &disk), set([3, 5]));
        assert_eq!(desired_versions(&config("all"), &disk), disk);
        assert_eq!(desired_versions(&config("specific:2,4"), &disk), set([2]));
        assert_eq!(desired_versions(&config("latest:9"), &disk), disk);
    }

    #[test]
    fn labels_and_traffic_pin_versions_that_exist() {
        let mut cfg = config("latest");
        cfg.labels.insert("stable".into(), 2);
        cfg.labels.insert("future".into(), 9);
        cfg.traffic.insert(1, 10);
        assert_eq!(desired_versions(&cfg, &set([1, 2, 3])), set([1, 2, 3]));
    }

    #[test]
    fn old_version_stays_until_the_new_one_is_available() {
        // v2 is wanted but still loading (or failed): v1 keeps serving.
        assert_eq!(versions_to_unload(&set([2]), &set([1])), set([]));
        // v2 is available: v1 goes.
        assert_eq!(versions_to_unload(&set([2]), &set([1, 2])), set([1]));
    }

    #[test]
    fn only_as_many_old_versions_are_kept_as_new_ones_are_missing() {
        // latest:2 moving from {1,2,3} to {4,5} with 4 loaded, 5 loading: keep the newest old one.
        assert_eq!(versions_to_unload(&set([4, 5]), &set([1, 2, 3, 4])), set([1, 2]));
    }

    #[test]
    fn the_last_version_is_kept_when_nothing_is_wanted() {
        assert_eq!(versions_to_unload(&set([]), &set([3, 4])), set([3]));
        assert_eq!(versions_to_unload(&set([]), &set([])), set([]));
    }
}
