//! Training states: everything needed to continue a job exactly where it stopped (weights,
//! optimizer moments, step), one directory per checkpoint under the job's `state_dir`:
//! `step-0000000100/` holding `params.safetensors`, `optimizer.safetensors` and `state.json`
//! (the step, the loss, and every file's sha256).
//!
//! A state is written into a dot-directory, fsynced, then renamed into place, so a reader sees a
//! complete state or none; on start [`latest`] takes the newest state whose files match their
//! digests and skips (with a warning) any that do not. Model versions are published separately,
//! after the state they come from is safe, so a version never exists without its state.
//!
//! With a remote repository the states are also kept in its object store ([`mirror`]): rank 0
//! uploads each state's files and then its `state.json` (a state without one is incomplete and
//! never restored), and every rank that finds no state on its node fetches the newest complete
//! one ([`restore`]), so a gang restarted on other nodes resumes where it stopped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use lantern_runtime::repository::ObjectDir;

use crate::error::{Error, Result};

pub const PARAMS_FILE: &str = "params.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
/// The fine-tuned base's own held-out metrics, measured once before the first step.
const BASELINE_FILE: &str = "baseline.json";
const PREFIX: &str = "step-";

/// `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Optimizer updates completed.
    pub step: u64,
    /// The training loss of the last step.
    pub loss: f64,
    /// sha256 of each other file, by name.
    pub files: BTreeMap<String, String>,
}

/// A complete state on disk.
#[derive(Clone, Debug)]
pub struct Saved {
    pub dir: PathBuf,
    pub state: State,
}

impl Saved {
    pub fn params(&self) -> PathBuf {
        self.dir.join(PARAMS_FILE)
    }

    pub fn optimizer(&self) -> PathBuf {
        self.dir.join(OPTIMIZER_FILE)
    }
}

/// Writes a state for `step`: `write_files` fills the staging directory with the parameter and
/// optimizer files; their digests go into `state.json`, then the directory is renamed into place.
pub fn save(state_dir: &Path, step: u64, loss: f64, write_files: impl FnOnce(&Path) -> Result<()>) -> Result<Saved> {
    std::fs::create_dir_all(state_dir).map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
    let name = format!("{PREFIX}{step:010}");
    let staging = state_dir.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = write_staged(&staging, step, loss, write_files).and_then(|state| {
        let dir = state_dir.join(&name);
        if dir.exists() {
            // The same step saved before a restart: the existing state is equally valid.
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(format!("removing {}", staging.display()), e))?;
            return Ok(Saved { dir, state });
        }
        std::fs::rename(&staging, &dir)
            .map_err(|e| Error::io(format!("renaming {} into place", staging.display()), e))?;
        sync(state_dir)?;
        Ok(Saved { dir, state })
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn write_staged(staging: &Path, step: u64, loss: f64, write_files: impl FnOnce(&Path) -> Result<()>) -> Result<State> {
    std::fs::create_dir_all(staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
    write_files(staging)?;
    let mut files = BTreeMap::new();
    for name in [PARAMS_FILE, OPTIMIZER_FILE] {
        let path = staging.join(name);
        sync(&path)?;
        files.insert(name.to_owned(), sha256_of(&path)?);
    }
    let state = State { step, loss, files };
    let path = staging.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(&state).expect("a state serializes; this is a bug");
    std::fs::write(&path, json).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    sync(&path)?;
    sync(staging)?;
    Ok(state)
}

/// Keeps the base's held-out metrics beside the states (written whole or not at all), so a
/// resumed run records the same baseline without measuring it again.
pub fn write_baseline(state_dir: &Path, metrics: &[(String, f64)]) -> Result<()> {
    std::fs::create_dir_all(state_dir).map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
    let staging = state_dir.join(format!(".{BASELINE_FILE}.partial-{}", std::process::id()));
    let json = serde_json::to_vec_pretty(&metrics.iter().cloned().collect::<BTreeMap<_, _>>())
        .expect("metrics serialize; this is a bug");
    std::fs::write(&staging, json).map_err(|e| Error::io(format!("writing {}", staging.display()), e))?;
    sync(&staging)?;
    let path = state_dir.join(BASELINE_FILE);
    std::fs::rename(&staging, &path).map_err(|e| Error::io(format!("renaming {} into place", path.display()), e))?;
    sync(state_dir)
}

/// The metrics [`write_baseline`] kept; none when it never ran.
pub fn read_baseline(state_dir: &Path) -> Result<Vec<(String, f64)>> {
    let path = state_dir.join(BASELINE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let metrics: BTreeMap<String, f64> =
        serde_json::from_slice(&bytes).map_err(|e| Error::State { path: path.clone(), reason: e.to_string() })?;
    Ok(metrics.into_iter().collect())
}

/// The newest complete, uncorrupted state, if any. Dot-directories (unfinished saves) are
/// ignored; a state whose files are missing or do not match their digests is skipped.
pub fn latest(state_dir: &Path) -> Result<Option<Saved>> {
    for dir in states(state_dir)?.into_iter().rev() {
        match verify(&dir) {
            Ok(state) => return Ok(Some(Saved { dir, state })),
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), %reason, "skipping a training state that cannot be used")
            }
        }
    }
    Ok(None)
}

/// Removes all but the newest `keep` states.
pub fn prune(state_dir: &Path, keep: usize) -> Result<()> {
    let states = states(state_dir)?;
    for dir in &states[..states.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
    }
    Ok(())
}

/// Copies `saved` (and the baseline beside it, if any) under `remote`: its files first, then
/// `state.json`, which marks the copy complete; then removes remote states beyond the newest
/// `keep`.
pub fn mirror(saved: &Saved, remote: &ObjectDir, keep: usize) -> Result<()> {
    let name = saved.dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    for file in saved.state.files.keys().map(String::as_str).chain([STATE_FILE]) {
        remote.put(&format!("{name}/{file}"), &saved.dir.join(file))?;
    }
    let state_dir = saved.dir.parent().unwrap_or(Path::new("."));
    if state_dir.join(BASELINE_FILE).is_file() {
        remote.put(BASELINE_FILE, &state_dir.join(BASELINE_FILE))?;
    }
    let names: Vec<String> = remote.subdirs()?.into_iter().filter(|n| n.starts_with(PREFIX)).collect();
    for old in &names[..names.len().saturating_sub(keep)] {
        remote.remove(old)?;
    }
    tracing::info!(step = saved.state.step, to = %remote.location(), "copied the training state");
    Ok(())
}

/// Fetches the newest complete state under `remote` into `state_dir` unless `state_dir` holds a
/// usable one; returns the step fetched. A remote state whose files are missing or do not match
/// `state.json` is skipped for the one before it.
pub fn restore(state_dir: &Path, remote: &ObjectDir) -> Result<Option<u64>> {
    if latest(state_dir)?.is_some() {
        return Ok(None);
    }
    std::fs::create_dir_all(state_dir).map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
    remote.get(BASELINE_FILE, &state_dir.join(BASELINE_FILE))?;
    let names: Vec<String> = remote.subdirs()?.into_iter().filter(|n| n.starts_with(PREFIX)).collect();
    for name in names.iter().rev() {
        let staging = state_dir.join(format!(".{name}.restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
        let complete = fetch_state(remote, name, &staging)?;
        let dir = state_dir.join(name);
        match complete.map(|()| verify(&staging)) {
            Some(Ok(state)) => {
                std::fs::rename(&staging, &dir)
                    .map_err(|e| Error::io(format!("renaming {} into place", staging.display()), e))?;
                tracing::info!(step = state.step, from = %remote.location(), "restored the training state");
                return Ok(Some(state.step));
            }
            Some(Err(reason)) => tracing::warn!(%name, %reason, "skipping a remote training state that cannot be used"),
            None => tracing::warn!(%name, "skipping an incomplete remote training state"),
        }
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(None)
}

/// Downloads the state `name` into `dir`: `Some(())` when `state.json` and every file it lists
/// were there.
fn fetch_state(remote: &ObjectDir, name: &str, dir: &Path) -> Result<Option<()>> {
    if !remote.get(&format!("{name}/{STATE_FILE}"), &dir.join(STATE_FILE))? {
        return Ok(None);
    }
    let bytes = std::fs::read(dir.join(STATE_FILE)).map_err(|e| Error::io(format!("reading {name}"), e))?;
    let Ok(state) = serde_json::from_slice::<State>(&bytes) else { return Ok(None) };
    for file in state.files.keys() {
        if file.contains('/') || !remote.get(&format!("{name}/{file}"), &dir.join(file))? {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

/// State directories, oldest first.
fn states(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", state_dir.display()), e)),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX)))
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn verify(dir: &Path) -> std::result::Result<State, String> {
    let bytes = std::fs::read(dir.join(STATE_FILE)).map_err(|e| format!("{STATE_FILE}: {e}"))?;
    let state: State = serde_json::from_slice(&bytes).map_err(|e| format!("{STATE_FILE}: {e}"))?;
    for name in [PARAMS_FILE, OPTIMIZER_FILE] {
        let expected = state.files.get(name).ok_or_else(|| format!("{STATE_FILE} lists no {name}"))?;
        let actual = sha256_of(&dir.join(name)).map_err(|e| e.to_string())?;
        if &actual != expected {
            return Err(format!("{name} has sha256 {actual}, the state says {expected}"));
        }
    }
    Ok(state)
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// Flushes a file or a directory (its entries) to disk.
fn sync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(format!("syncing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save_step(dir: &Path, step: u64) -> Saved {
        save(dir, step, 1.0 / step as f64, |staging| {
            std::fs::write(staging.join(PARAMS_FILE), format!("params {step}")).unwrap();
            std::fs::write(staging.join(OPTIMIZER_FILE), format!("moments {step}")).unwrap();
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn the_newest_intact_state_wins_and_corrupt_or_partial_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(latest(dir.path()).unwrap().is_none());
        save_step(dir.path(), 10);
        let newer = save_step(dir.path(), 20);
        assert_eq!(latest(dir.path()).unwrap().unwrap().state, newer.state);
        // A crash mid-save leaves a dot-directory; a bad disk a file that no longer matches.
        std::fs::create_dir_all(dir.path().join(".step-0000000030.partial-1")).unwrap();
        std::fs::write(newer.params(), "params 2?").unwrap();
        assert_eq!(latest(dir.path()).unwrap().unwrap().state.step, 10);
    }

    #[test]
    fn pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for step in [5, 10, 15] {
            save_step(dir.path(), step);
        }
        prune(dir.path(), 2).unwrap();
        let left: Vec<u64> = states(dir.path()).unwrap().iter().map(|d| verify(d).unwrap().step).collect();
        assert_eq!(left, vec![10, 15]);
    }

    #[test]
    fn a_failed_write_leaves_nothing_visible() {
        let dir = tempfile::tempdir().unwrap();
        let failed = save(dir.path(), 5, 0.0, |_| Err(Error::config("disk", "full")));
        assert!(failed.is_err());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "the staging directory is gone");
    }
}
