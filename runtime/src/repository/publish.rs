//! Atomic publishing of a model version. In a directory, files are copied into a dot-directory
//! beside the versions (which readers ignore), hashed while copying, fsynced with the manifest,
//! then renamed into place in one step; in an object store the version number is claimed, the
//! files uploaded and the manifest created last (see [`super::remote`]). Either way a reader
//! sees no version or a complete, verifiable one.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags};
use sha2::{Digest, Sha256};

use super::{Backend, BaseVersion, FileEntry, MANIFEST_FILE, Manifest, Repository, validate_model_name};
use crate::error::{Error, Result};
use crate::model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, AdapterConfig};

/// What to publish and where.
#[derive(Clone, Debug)]
pub struct PublishRequest<'a> {
    /// The repository to publish into.
    pub repository: &'a Repository,
    /// Model name (the directory under the root).
    pub model: &'a str,
    /// A directory holding the model's files and a `manifest.json` without (or with stale)
    /// `files`; every other file in it, recursively, becomes part of the version. Without a
    /// manifest, an HF checkpoint directory is published by its `config.json`'s `model_type`:
    /// `bert` as a sentence encoder, `llama` as a language model. Or a single `.gguf` file,
    /// published as a llama language model with the standard text signature.
    pub source: &'a Path,
    /// The version number to publish as; `None` takes one more than the highest existing.
    pub version: Option<u64>,
    /// Eval metrics to record in the manifest, over any the source manifest has.
    pub metrics: &'a [(String, f64)],
}

/// Publishes `request.source` as a new version and returns its number. Fails without touching the
/// repository's visible state if anything goes wrong, including when the version already exists.
pub fn publish(request: &PublishRequest<'_>) -> Result<u64> {
    let (source_dir, manifest, sources) = read_source(request.source)?;
    publish_files(request, &source_dir, manifest, &sources)
}

/// Publishes the PEFT adapter in the directory `request.source` (`adapter_config.json`, checked,
/// and `adapter_model.safetensors`) as an adapter version over `base_model`'s version
/// `base_version`, which must be in the same repository: its manifest digest is recorded, and
/// serving checks it.
pub fn publish_adapter(request: &PublishRequest<'_>, base_model: &str, base_version: u64) -> Result<u64> {
    let source = request.source;
    let config_path = source.join(ADAPTER_CONFIG_FILE);
    let config = std::fs::read(&config_path)
        .map_err(|e| Error::invalid(format!("{} is not a PEFT adapter: {e}", config_path.display())))?;
    let adapter: AdapterConfig =
        serde_json::from_slice(&config).map_err(|e| Error::invalid(format!("{}: {e}", config_path.display())))?;
    adapter.check().map_err(|reason| Error::invalid(format!("{}: {reason}", config_path.display())))?;
    if !source.join(ADAPTER_WEIGHTS_FILE).is_file() {
        return Err(Error::invalid(format!("{} has no {ADAPTER_WEIGHTS_FILE}", source.display())));
    }
    let manifest_digest = request
        .repository
        .manifest_digest(base_model, base_version)
        .map_err(|e| Error::invalid(format!("the base {base_model} version {base_version}: {e}")))?;
    let base = BaseVersion { model: base_model.to_owned(), version: base_version, manifest_digest };
    let files = [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE].map(PathBuf::from);
    publish_files(request, source, Manifest::lora_adapter(base), &files)
}

fn publish_files(
    request: &PublishRequest<'_>,
    source_dir: &Path,
    mut manifest: Manifest,
    sources: &[PathBuf],
) -> Result<u64> {
    validate_model_name(request.model)?;
    manifest.metrics.extend(request.metrics.iter().cloned());
    let root = match &request.repository.backend {
        Backend::Local(root) => root,
        Backend::Remote(remote) => {
            return remote.publish(request.model, request.version, source_dir, manifest, sources);
        }
        Backend::Oci(oci) => return oci.publish(request.model, request.version, source_dir, manifest, sources),
    };
    let model_dir = root.join(request.model);
    std::fs::create_dir_all(&model_dir).map_err(|e| Error::io(format!("creating {}", model_dir.display()), e))?;
    remove_dead_staging(&model_dir);
    let staging = model_dir.join(format!("{STAGING_PREFIX}{}-{}", std::process::id(), unique_suffix()));
    let result = stage(&staging, source_dir, sources, manifest).and_then(|_lock| {
        // The lock is held until the staging directory is renamed into place.
        commit(&staging, &model_dir, request.version)
    });
    if result.is_err() {
        // Best effort: a leftover dot-directory is invisible to readers anyway.
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Staging directories are `<model>/.publish-<pid>-<nonce>`.
const STAGING_PREFIX: &str = ".publish-";

/// Removes the staging directories of publishes that died (killed, even with SIGKILL, or on a
/// node that went away): a live publish holds an exclusive `flock` on its staging directory for
/// as long as it runs, and the kernel drops the lock with the process, so a staging directory
/// whose lock can be taken has no owner left. Best effort: failures only leave invisible
/// dot-directories behind.
fn remove_dead_staging(model_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(model_dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            continue;
        }
        let path = entry.path();
        if lock_dir(&path).is_ok() {
            tracing::info!(path = %path.display(), "removing the staging directory of a publish that died");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Takes the exclusive lock that marks a staging directory as in use, without waiting.
fn lock_dir(dir: &Path) -> std::io::Result<File> {
    let handle = File::open(dir)?;
    rustix::fs::flock(&handle, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    Ok(handle)
}

/// The directory to copy from, the manifest and the files to publish (relative to the directory).
fn read_source(source: &Path) -> Result<(PathBuf, Manifest, Vec<PathBuf>)> {
    if source.is_file() && source.extension().is_some_and(|e| e == "gguf") {
        let dir = source.parent().map(Path::to_owned).unwrap_or_default();
        let name = source.file_name().map(PathBuf::from).expect("a file path has a file name; this is a bug");
        return Ok((dir, Manifest::gguf_language_model(), vec![name]));
    }
    let manifest = source_manifest(source)?;
    let files = list_files(source)?;
    if files.is_empty() {
        return Err(Error::invalid(format!("{} holds no model files besides the manifest", source.display())));
    }
    Ok((source.to_owned(), manifest, files))
}

/// The manifest a directory publishes with: its `manifest.json`, or the one an HF checkpoint's
/// `config.json` implies. A PEFT adapter without a manifest is refused: it needs its base.
pub fn source_manifest(source: &Path) -> Result<Manifest> {
    let path = source.join(MANIFEST_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Manifest::from_json(&bytes, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && source.join(HF_CONFIG).is_file() => {
            infer_hf_manifest(&source.join(HF_CONFIG))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && source.join(ADAPTER_CONFIG_FILE).is_file() => {
            Err(Error::invalid(format!(
                "{} is a PEFT adapter: publish it with the base it adapts (--base MODEL:VERSION)",
                source.display()
            )))
        }
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// An HF checkpoint's configuration file.
const HF_CONFIG: &str = "config.json";

/// The manifest of an HF checkpoint without one, from its `config.json`.
fn infer_hf_manifest(config_path: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(config_path).map_err(|e| Error::io(format!("reading {}", config_path.display()), e))?;
    let fail = |reason: String| Error::Manifest { path: config_path.to_owned(), reason };
    let config: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    match config["model_type"].as_str() {
        Some("bert") => {
            let dimension = config["hidden_size"].as_u64().ok_or_else(|| fail("no hidden_size".into()))?;
            Ok(Manifest::bert_embeddings(dimension as usize))
        }
        Some("llama") => Ok(Manifest::hf_language_model()),
        other => {
            Err(fail(format!("model_type {other:?} cannot be published without a manifest.json (known: bert, llama)")))
        }
    }
}

/// Copies every source file into `staging`, writes the manifest and makes it all durable.
/// Returns the staging directory's lock, which marks the publish as alive while it is held.
fn stage(staging: &Path, source: &Path, files: &[PathBuf], mut manifest: Manifest) -> Result<File> {
    std::fs::create_dir(staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
    let lock = lock_dir(staging).map_err(|e| Error::io(format!("locking {}", staging.display()), e))?;
    manifest.files.clear();
    for relative in files {
        let target = staging.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let (size, sha256) = copy_hashed(&source.join(relative), &target)?;
        let path = relative
            .to_str()
            .ok_or_else(|| Error::invalid(format!("file name {} is not UTF-8", relative.display())))?;
        manifest.files.push(FileEntry { path: path.to_owned(), size, sha256 });
    }
    write_durably(&staging.join(MANIFEST_FILE), &manifest.to_json())?;
    for dir in files.iter().filter_map(|f| f.parent()).chain([Path::new("")]) {
        sync_dir(&staging.join(dir))?;
    }
    Ok(lock)
}

/// Renames the staged directory to its version number. `RENAME_NOREPLACE` makes a concurrent
/// publisher of the same number fail instead of overwriting; with no explicit version the next
/// number is tried.
fn commit(staging: &Path, model_dir: &Path, explicit: Option<u64>) -> Result<u64> {
    let mut version = match explicit {
        Some(0) => return Err(Error::invalid("version numbers start at 1")),
        Some(v) => v,
        None => highest_version(model_dir)? + 1,
    };
    loop {
        let target = model_dir.join(version.to_string());
        match rustix::fs::renameat_with(CWD, staging, CWD, &target, RenameFlags::NOREPLACE) {
            Ok(()) => break,
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) if explicit.is_none() => version += 1,
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
                return Err(Error::invalid(format!("version {version} already exists in {}", model_dir.display())));
            }
            Err(e) => {
                return Err(Error::io(format!("renaming {} to {}", staging.display(), target.display()), e.into()));
            }
        }
    }
    sync_dir(model_dir)?;
    Ok(version)
}

/// The highest integer-named entry under `model_dir`, with or without a manifest, so a
/// half-copied directory is never overwritten.
fn highest_version(model_dir: &Path) -> Result<u64> {
    let entries = std::fs::read_dir(model_dir).map_err(|e| Error::io(format!("listing {}", model_dir.display()), e))?;
    Ok(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u64>().ok()).max().unwrap_or(0))
}

/// Every regular file under `dir` (relative paths, sorted), except the manifest and dot-files.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let absolute = dir.join(&relative);
        let entries =
            std::fs::read_dir(&absolute).map_err(|e| Error::io(format!("listing {}", absolute.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", absolute.display()), e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || (relative.as_os_str().is_empty() && name == MANIFEST_FILE) {
                continue;
            }
            let path = relative.join(&name);
            let kind = entry.file_type().map_err(|e| Error::io(format!("inspecting {}", path.display()), e))?;
            if kind.is_symlink() {
                return Err(Error::invalid(format!(
                    "{} is a symbolic link; a version holds regular files only (copy the target in, e.g. \
                     with `cp -L`, to publish it)",
                    dir.join(&path).display()
                )));
            }
            if kind.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, String)> {
    let mut input = File::open(from).map_err(|e| Error::io(format!("opening {}", from.display()), e))?;
    let mut output = File::create_new(to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(|e| Error::io(format!("writing {}", to.display()), e))?;
        size += n as u64;
    }
    output.sync_all().map_err(|e| Error::io(format!("syncing {}", to.display()), e))?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create_new(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    file.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A tensor model's source directory, with a manifest.
    pub(in crate::repository) fn source_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({
            "format": "safetensors", "architecture": "mlp", "task": "tensor",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}]
        });
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest.to_string()).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"weights").unwrap();
        std::fs::create_dir(dir.path().join("extra")).unwrap();
        std::fs::write(dir.path().join("extra/vocab.txt"), b"a b c").unwrap();
        dir
    }

    fn request<'a>(repository: &'a Repository, source: &'a Path, version: Option<u64>) -> PublishRequest<'a> {
        PublishRequest { repository, model: "m", source, version, metrics: &[] }
    }

    #[test]
    fn published_versions_are_numbered_and_verifiable() {
        let root = tempfile::tempdir().unwrap();
        let source = source_dir();
        assert_eq!(publish(&request(&Repository::new(root.path()), source.path(), None)).unwrap(), 1);
        assert_eq!(publish(&request(&Repository::new(root.path()), source.path(), None)).unwrap(), 2);
        let repo = Repository::new(root.path());
        let verified = repo.read_verified("m", 2).unwrap();
        assert_eq!(verified.files["model.safetensors"], b"weights");
        assert_eq!(verified.files["extra/vocab.txt"], b"a b c");
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("m"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "staging directories left behind");
    }

    #[test]
    fn an_existing_version_is_never_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let source = source_dir();
        publish(&request(&Repository::new(root.path()), source.path(), Some(5))).unwrap();
        let err = publish(&request(&Repository::new(root.path()), source.path(), Some(5))).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        // A half-copied directory (no manifest) still reserves its number.
        std::fs::create_dir(root.path().join("m/6")).unwrap();
        assert_eq!(publish(&request(&Repository::new(root.path()), source.path(), None)).unwrap(), 7);
    }

    #[test]
    fn metrics_are_recorded_in_the_manifest() {
        let root = tempfile::tempdir().unwrap();
        let source = source_dir();
        let metrics = [("loss".to_string(), 0.25)];
        let repository = Repository::new(root.path());
        let req = PublishRequest { metrics: &metrics, ..request(&repository, source.path(), None) };
        let version = publish(&req).unwrap();
        let verified = Repository::new(root.path()).read_verified("m", version).unwrap();
        assert_eq!(verified.manifest.metrics["loss"], 0.25);
    }

    #[test]
    fn symbolic_links_in_a_source_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let source = source_dir();
        std::os::unix::fs::symlink("/etc/passwd", source.path().join("extra/passwd")).unwrap();
        let err = publish(&request(&Repository::new(root.path()), source.path(), None)).unwrap_err().to_string();
        assert!(err.contains("symbolic link") && err.contains("passwd"), "{err}");
        assert!(Repository::new(root.path()).versions("m").unwrap().is_empty());
    }

    #[test]
    fn the_staging_directory_of_a_dead_publish_is_removed_by_the_next_and_a_live_one_is_not() {
        let root = tempfile::tempdir().unwrap();
        let model_dir = root.path().join("m");
        let dead = model_dir.join(".publish-1-dead");
        let live = model_dir.join(".publish-2-live");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        let _held = lock_dir(&live).unwrap();
        // flock locks belong to the open file description: another open is another owner.
        assert!(lock_dir(&live).is_err());
        publish(&request(&Repository::new(root.path()), source_dir().path(), None)).unwrap();
        assert!(!dead.exists(), "the dead publish's staging directory is still there");
        assert!(live.exists(), "a live publish's staging directory was removed");
    }

    #[test]
    fn a_source_without_manifest_is_rejected_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("w"), b"x").unwrap();
        let err = publish(&request(&Repository::new(root.path()), source.path(), None)).unwrap_err();
        assert!(err.to_string().contains("manifest.json"), "{err}");
        assert!(!root.path().join("m").exists());
    }
}
