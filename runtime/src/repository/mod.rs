//! The model repository: `<root>/<model>/<version>/` where `<version>` is a positive integer
//! and the directory holds a [`Manifest`] listing every file with its sha256.
//!
//! The root is a [`Location`]: a directory, a bucket, container or HTTP layout ([`remote`]), or
//! an OCI registry (`oci`), the last two read through the node-local [`cache`]. Readers ([`Repository`]) ignore
//! dot-directories (publishes in progress) and versions without a manifest, and verify every
//! digest before a version is handed to a model loader. Writers go through [`publish`], which
//! makes a version visible atomically.

mod bucket;
pub mod cache;
mod download;
pub mod location;
pub mod manifest;
mod oci;
mod publish;
mod registry_auth;
pub mod remote;
pub mod retention;
mod transport;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use bucket::ObjectDir;
pub use cache::{CacheSettings, FetchReport, Pin};
pub use location::Location;
pub use manifest::{
    Architecture, BaseVersion, FileEntry, Format, MANIFEST_FILE, Manifest, TEXT_INPUT, TEXT_OUTPUT, Task, TensorSpec,
};
pub use publish::{PublishRequest, publish, publish_adapter, source_manifest};

use crate::error::{Error, Result};
use oci::Oci;
use remote::Remote;

/// A version's manifest with the bytes of every file, each verified against its digest.
#[derive(Debug)]
pub struct VerifiedVersion {
    pub manifest: Manifest,
    /// `sha256:<hex>` of the manifest's bytes as read.
    pub digest: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// What reading it from a remote repository fetched; `None` for a directory.
    pub fetch: Option<FetchReport>,
    /// Holds the version's node cache entries against eviction for as long as it is kept
    /// (empty for a directory).
    pub pins: Vec<Pin>,
}

/// Read access to a model repository.
/// How a remote repository is read on this node.
#[derive(Clone, Debug)]
pub struct RemoteSettings {
    pub cache: CacheSettings,
    /// A download that goes this long without a byte fails, and is retried from where it
    /// stopped.
    pub read_timeout: Duration,
}

impl RemoteSettings {
    /// The read timeout when none is set.
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

    /// Reads through `cache`, with the default read timeout.
    pub fn new(cache: CacheSettings) -> Self {
        Self { cache, read_timeout: Self::DEFAULT_READ_TIMEOUT }
    }
}

#[derive(Clone, Debug)]
pub struct Repository {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Local(PathBuf),
    Remote(Arc<Remote>),
    Oci(Arc<Oci>),
}

impl Repository {
    /// A repository in the directory `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { backend: Backend::Local(root.into()) }
    }

    /// The repository at `location` (a path or URI, see [`Location`]); a remote one is read
    /// as `settings` say.
    pub fn open(location: &str, settings: &RemoteSettings) -> Result<Self> {
        match Location::parse(location)? {
            Location::Local(root) => Ok(Self::new(root)),
            Location::Oci { registry, repository } => {
                Ok(Self { backend: Backend::Oci(Arc::new(Oci::open(&registry, &repository, settings)?)) })
            }
            remote => Ok(Self { backend: Backend::Remote(Arc::new(Remote::open(remote, settings)?)) }),
        }
    }

    /// Where the repository is, as users write it.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Local(root) => root.display().to_string(),
            Backend::Remote(remote) => remote.location(),
            Backend::Oci(oci) => oci.location(),
        }
    }

    /// The directory of a repository on disk; `None` for a remote one.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(root) => Some(root),
            Backend::Remote(_) | Backend::Oci(_) => None,
        }
    }

    /// Model names: every visible directory under the root.
    pub fn models(&self) -> Result<BTreeSet<String>> {
        let root = match &self.backend {
            Backend::Local(root) => root,
            Backend::Remote(remote) => return remote.models(),
            Backend::Oci(oci) => return oci.models(),
        };
        Ok(visible_dirs(root)?.into_iter().filter(|name| validate_model_name(name).is_ok()).collect())
    }

    /// The published versions of `model`: integer-named, visible directories holding a manifest.
    /// A model directory that does not exist has no versions.
    pub fn versions(&self, model: &str) -> Result<BTreeSet<u64>> {
        let root = match &self.backend {
            Backend::Local(root) => root,
            Backend::Remote(remote) => return remote.versions(model),
            Backend::Oci(oci) => return oci.versions(model),
        };
        let dir = root.join(model);
        if !dir.exists() {
            return Ok(BTreeSet::new());
        }
        Ok(visible_dirs(&dir)?
            .into_iter()
            .filter_map(|name| parse_version(&name))
            .filter(|v| dir.join(v.to_string()).join(MANIFEST_FILE).is_file())
            .collect())
    }

    /// Removes version `version` of `model`; readers stop seeing it before its files go. Files
    /// a node cache holds and versions loaded from them are left alone.
    pub fn remove_version(&self, model: &str, version: u64) -> Result<()> {
        match &self.backend {
            Backend::Local(root) => remove_local_version(root, model, version),
            Backend::Remote(remote) => remote.remove_committed(model, version),
            Backend::Oci(_) => Err(Error::invalid(format!(
                "{} is served from, not published into by jobs: remove its tags with the registry's tools",
                self.location()
            ))),
        }
    }

    /// The directory of one version of a repository on disk; `None` for a remote one.
    pub fn version_dir(&self, model: &str, version: u64) -> Option<PathBuf> {
        self.local_root().map(|root| root.join(model).join(version.to_string()))
    }

    /// `sha256:<hex>` of a version's `manifest.json`, which pins every file of the version by its
    /// own digest.
    pub fn manifest_digest(&self, model: &str, version: u64) -> Result<String> {
        Ok(manifest_digest(&self.manifest_bytes(model, version)?.1))
    }

    /// A version's manifest, parsed (its files are not read).
    pub fn manifest(&self, model: &str, version: u64) -> Result<Manifest> {
        let (origin, bytes) = self.manifest_bytes(model, version)?;
        Manifest::from_json(&bytes, &origin)
    }

    /// Where a version's manifest is, for messages, and its bytes.
    fn manifest_bytes(&self, model: &str, version: u64) -> Result<(PathBuf, Vec<u8>)> {
        match &self.backend {
            Backend::Local(root) => {
                let path = root.join(model).join(version.to_string()).join(MANIFEST_FILE);
                let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Ok((path, bytes))
            }
            Backend::Remote(remote) => remote.manifest(model, version),
            Backend::Oci(oci) => oci.manifest(model, version),
        }
    }

    /// Fetches a remote version's files into the node cache, verified, without loading them
    /// (warming a node before its pods need them). A directory holds its files already.
    pub fn prefetch(&self, model: &str, version: u64) -> Result<FetchReport> {
        match &self.backend {
            Backend::Local(_) => Ok(FetchReport::default()),
            Backend::Remote(remote) => remote.prefetch(model, version),
            Backend::Oci(oci) => oci.prefetch(model, version),
        }
    }

    /// Reads a version's manifest and every file it lists, verifying sizes and digests.
    pub fn read_verified(&self, model: &str, version: u64) -> Result<VerifiedVersion> {
        let root = match &self.backend {
            Backend::Local(root) => root,
            Backend::Remote(remote) => return remote.read_verified(model, version).inspect(log_fetch(model, version)),
            Backend::Oci(oci) => return oci.read_verified(model, version).inspect(log_fetch(model, version)),
        };
        let dir = root.join(model).join(version.to_string());
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes =
            std::fs::read(&manifest_path).map_err(|e| Error::io(format!("reading {}", manifest_path.display()), e))?;
        let manifest = Manifest::from_json(&bytes, &manifest_path)?;
        let digest = manifest_digest(&bytes);
        if manifest.files.is_empty() {
            return Err(Error::Manifest { path: manifest_path, reason: "the manifest lists no files".into() });
        }
        let mut files = BTreeMap::new();
        for entry in &manifest.files {
            let data = read_inside(&dir, &entry.path)?;
            check_file(entry, &data).map_err(|reason| Error::Load { model: model.into(), version, reason })?;
            files.insert(entry.path.clone(), data);
        }
        Ok(VerifiedVersion { manifest, digest, files, fetch: None, pins: Vec::new() })
    }
}

/// Logs what reading a remote version fetched.
fn log_fetch(model: &str, version: u64) -> impl Fn(&VerifiedVersion) + '_ {
    move |verified| {
        if let Some(report) = &verified.fetch {
            tracing::info!(
                model,
                version,
                cached = report.files_cached,
                downloaded = report.files_downloaded,
                bytes = report.bytes_downloaded,
                seconds = report.seconds,
                "fetched a version"
            );
        }
    }
}

/// Reads `relative` under `dir` without following a symbolic link anywhere on the way, so a
/// version can never serve bytes from outside its own directory (a link to `/etc/passwd` is a
/// load failure, not a model file).
fn read_inside(dir: &Path, relative: &str) -> Result<Vec<u8>> {
    let path = dir.join(relative);
    let mut walked = dir.to_owned();
    for component in Path::new(relative).components() {
        walked.push(component);
        let metadata =
            std::fs::symlink_metadata(&walked).map_err(|e| Error::io(format!("reading {}", walked.display()), e))?;
        if metadata.file_type().is_symlink() {
            return Err(Error::ModelFile(format!(
                "{} is a symbolic link; a version's files must be regular files inside it",
                walked.display()
            )));
        }
    }
    // O_NOFOLLOW closes the gap between the check and the open.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(data)
}

/// `sha256:<hex>` of a manifest's bytes.
pub fn manifest_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks a file's bytes against its manifest entry.
fn check_file(entry: &FileEntry, data: &[u8]) -> std::result::Result<(), String> {
    if data.len() as u64 != entry.size {
        return Err(format!(
            "{} is {} bytes, the manifest says {} (partial copy?)",
            entry.path,
            data.len(),
            entry.size
        ));
    }
    let digest = hex::encode(Sha256::digest(data));
    if digest != entry.sha256 {
        return Err(format!(
            "digest mismatch for {}: manifest says sha256 {}, file has {}",
            entry.path, entry.sha256, digest
        ));
    }
    Ok(())
}

/// A model name: letters, digits, `-`, `_`, `.`; not starting with `.`; at most 128 bytes.
pub fn validate_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("invalid model name {name:?}: use letters, digits, '-', '_' and '.'")))
    }
}

/// A version directory name: a positive integer without sign or leading zeros.
fn parse_version(name: &str) -> Option<u64> {
    if name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|&v| v > 0)
}

/// Renames the version's directory out of sight (a dot name), then deletes it.
fn remove_local_version(root: &Path, model: &str, version: u64) -> Result<()> {
    let dir = root.join(model).join(version.to_string());
    let hidden = root.join(model).join(format!(".removing-{version}-{}", std::process::id()));
    std::fs::rename(&dir, &hidden).map_err(|e| Error::io(format!("moving {} out of sight", dir.display()), e))?;
    std::fs::remove_dir_all(&hidden).map_err(|e| Error::io(format!("removing {}", hidden.display()), e))
}

fn visible_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_are_positive_integers() {
        assert_eq!(parse_version("7"), Some(7));
        assert_eq!(parse_version("12"), Some(12));
        for name in ["0", "007", "-1", "1a", "", ".3", "latest"] {
            assert_eq!(parse_version(name), None, "{name}");
        }
    }

    #[test]
    fn model_names_are_restricted() {
        assert!(validate_model_name("iris-mlp_v2.1").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_model_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scan_ignores_dot_dirs_and_versions_without_manifest() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("m");
        for dir in ["1", "2", ".3.tmp", "4", "notaversion"] {
            std::fs::create_dir_all(model.join(dir)).unwrap();
        }
        for dir in ["1", "4", ".3.tmp", "notaversion"] {
            std::fs::write(model.join(dir).join(MANIFEST_FILE), "{}").unwrap();
        }
        std::fs::create_dir_all(root.path().join(".staging")).unwrap();
        let repo = Repository::new(root.path());
        assert_eq!(repo.versions("m").unwrap(), BTreeSet::from([1, 4]));
        assert_eq!(repo.models().unwrap(), BTreeSet::from(["m".to_string()]));
        assert!(repo.versions("absent").unwrap().is_empty());
    }

    #[test]
    fn a_version_file_that_is_a_symbolic_link_is_never_read() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m").join("1");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(root.path().join("secret"), "outside").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("w")).unwrap();
        std::os::unix::fs::symlink(root.path(), dir.join("up")).unwrap();
        std::fs::write(dir.join("sub").join("ok"), "inside").unwrap();
        assert_eq!(read_inside(&dir, "sub/ok").unwrap(), b"inside");
        for link in ["w", "up/secret"] {
            let err = read_inside(&dir, link).unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{link}: {err}");
        }
    }

    #[test]
    fn file_checks_catch_truncation_and_corruption() {
        let data = b"weights";
        let entry = FileEntry { path: "w".into(), size: 7, sha256: hex::encode(Sha256::digest(data)) };
        assert!(check_file(&entry, data).is_ok());
        assert!(check_file(&entry, b"weight").unwrap_err().contains("partial"));
        assert!(check_file(&entry, b"WEIGHTS").unwrap_err().contains("digest mismatch"));
    }
}
