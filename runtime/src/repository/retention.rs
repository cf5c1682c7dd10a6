//! Retention: a model's versions beyond the newest few are removed, except the ones held
//! (served or labelled somewhere). Readers stop seeing a version before any of its files go:
//! a directory is renamed out of sight first, and in an object store the version leaves the
//! index and loses its manifest before its files. Version numbers are never reused, because the
//! newest versions always stay.

use std::collections::BTreeSet;

use super::Repository;
use crate::error::Result;

/// The versions to remove from `versions`: all but the newest `keep` and those `held`.
pub fn removable(versions: &BTreeSet<u64>, keep: usize, held: &BTreeSet<u64>) -> Vec<u64> {
    let newest: BTreeSet<u64> = versions.iter().rev().take(keep.max(1)).copied().collect();
    versions.iter().filter(|v| !newest.contains(v) && !held.contains(v)).copied().collect()
}

/// Removes `model`'s versions beyond the newest `keep`, except those `held`; returns the ones
/// removed. A removal that fails is logged and left for the next pass.
pub fn retain(repository: &Repository, model: &str, keep: usize, held: &BTreeSet<u64>) -> Result<Vec<u64>> {
    let mut removed = Vec::new();
    for version in removable(&repository.versions(model)?, keep, held) {
        match repository.remove_version(model, version) {
            Ok(()) => {
                tracing::info!(model, version, keep, "removed a version beyond the newest kept");
                removed.push(version);
            }
            Err(error) => tracing::warn!(model, version, %error, "removing a version failed; the next pass retries"),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_and_the_held_versions_stay() {
        let versions = BTreeSet::from([1, 2, 3, 4, 5, 6]);
        assert_eq!(removable(&versions, 2, &BTreeSet::new()), [1, 2, 3, 4]);
        assert_eq!(removable(&versions, 2, &BTreeSet::from([2, 6, 9])), [1, 3, 4]);
        assert_eq!(removable(&versions, 10, &BTreeSet::new()), Vec::<u64>::new());
        // The newest version always stays, so its number is never reused.
        assert_eq!(removable(&versions, 0, &BTreeSet::new()), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_directory_repository_loses_old_versions_out_of_sight_first() {
        let dir = tempfile::tempdir().unwrap();
        let repository = Repository::new(dir.path());
        let source = crate::repository::publish::tests::source_dir();
        for _ in 0..4 {
            let request = crate::repository::PublishRequest {
                repository: &repository,
                model: "m",
                source: source.path(),
                version: None,
                metrics: &[],
            };
            crate::repository::publish(&request).unwrap();
        }
        assert_eq!(retain(&repository, "m", 2, &BTreeSet::from([1])).unwrap(), [2]);
        assert_eq!(repository.versions("m").unwrap(), BTreeSet::from([1, 3, 4]));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("m")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 3, "nothing of version 2 is left: {left:?}");
    }
}
