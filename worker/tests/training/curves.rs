//! Training curves: every version carries the loss, learning rate, gradient norm, tokens/s and
//! held-out metrics up to its own step, as TensorBoard event files that TensorBoard's own loader
//! reads (installed by `scripts/setup-test-deps.sh`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lantern_runtime::repository::Repository;
use lantern_train::curves::{self, Point};
use lantern_train::trainer;
use serde_json::Value;

use super::{MODEL, addition_job, config_of};

/// The scalar series of `tag` in `points`: (step, value).
fn series(points: &[Point], tag: &str) -> Vec<(u64, f32)> {
    points.iter().flat_map(|p| p.scalars.iter().filter(|(t, _)| t == tag).map(|(_, v)| (p.step, *v))).collect()
}

/// What TensorBoard's loader reads from `version`'s `curves/`, or `None` (SKIPPED) without it.
fn read_by_tensorboard(version: &Path) -> Option<Value> {
    let site = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/python/site");
    if !site.join("tensorboard").is_dir() {
        eprintln!("SKIPPED: tensorboard is not installed; run scripts/setup-test-deps.sh (the test command does)");
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/training/tensorboard_check.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(version.join(curves::CURVES_DIR))
        .env("PYTHONPATH", site)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

#[test]
fn every_version_carries_its_curves_up_to_its_step_and_tensorboard_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    trainer::train(&config_of(&addition_job(dir.path(), 30, 10)), &AtomicBool::new(false)).unwrap();
    let repository = Repository::new(dir.path().join("models"));
    let version = |n: u64| dir.path().join("models").join(MODEL).join(n.to_string());
    assert_eq!(repository.versions(MODEL).unwrap(), [1, 2, 3].into());

    // Version 2 (step 20): a point per step up to 20, its held-out metrics at 10 and 20.
    let second = curves::read(&curves::file_in(&version(2))).unwrap();
    let loss = series(&second, curves::LOSS);
    assert_eq!(loss.iter().map(|(step, _)| *step).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    for tag in [curves::LEARNING_RATE, curves::GRADIENT_NORM, curves::TOKENS_PER_SECOND] {
        assert_eq!(series(&second, tag).len(), 20, "{tag}");
    }
    assert!(series(&second, curves::TOKENS_PER_SECOND).iter().all(|(_, rate)| *rate > 0.0));
    let accuracy = series(&second, "eval/accuracy");
    assert_eq!(accuracy.iter().map(|(step, _)| *step).collect::<Vec<_>>(), [10, 20]);
    let manifest = repository.manifest(MODEL, 2).unwrap();
    assert_eq!(f64::from(accuracy[1].1), manifest.metrics["eval_accuracy"], "the curve holds the manifest's figure");

    // The last version, as TensorBoard reads it: the same series.
    let Some(read) = read_by_tensorboard(&version(3)) else { return };
    let third = curves::read(&curves::file_in(&version(3))).unwrap();
    for tag in [curves::LOSS, curves::LEARNING_RATE, "eval/loss", "eval/accuracy"] {
        let ours: Vec<(u64, f32)> = series(&third, tag);
        let theirs: Vec<(u64, f32)> = read[tag]
            .as_array()
            .unwrap_or_else(|| panic!("TensorBoard has no {tag}: {read}"))
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(theirs, ours, "{tag}");
    }
    assert_eq!(read[curves::LOSS].as_array().unwrap().len(), 30);
}
