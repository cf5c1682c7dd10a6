//! The node-local cache of remote versions' files, addressed by content: `<dir>/sha256/<hex>`
//! holds the bytes whose sha256 is `<hex>`, so a file that several versions or adapters share
//! is stored once per node, whichever pod fetched it.
//!
//! - **Verified before any load sees it.** A download streams into `<dir>/partial/<hex>`, hashed
//!   as it is written; only a file of the manifest's size and digest is renamed into place.
//!   Every read of an entry found in the cache hashes it again, as a local repository's reads do (a file just downloaded was hashed as it streamed), so one damaged on
//!   disk is fetched anew instead of served.
//! - **One download per entry per node.** Fetchers take an exclusive `flock` on
//!   `<dir>/locks/<hex>`; a second pod waits for the first and then finds the file in place.
//! - **Parallel, resumable downloads** ([`download`](super::download)): ranged reads in parallel
//!   parts, hashed in order as they land; a partial file left by a failed or killed download is
//!   continued from its hashed prefix, and failed reads are retried with backoff.
//! - **LRU under a budget.** Every use sets an entry's modification time; after a download the
//!   oldest entries go until the cache fits its budget, except those a loaded version pins (a
//!   shared `flock` on the entry, held for as long as the version is loaded, in any process).
//! - **A full disk says so**, instead of passing for a download error.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};

use super::download::{self, DEFAULT_STREAMS, Download};
use super::{FileEntry, Manifest, VerifiedVersion, check_file, manifest_digest};
use crate::error::{Error, Result};

/// Where the cache lives and how large it may grow.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub dir: PathBuf,
    /// Bytes of verified files kept; beyond it the least recently used unpinned ones go.
    pub budget_bytes: u64,
    /// Ranged reads at once per downloaded file.
    pub streams: usize,
}

impl CacheSettings {
    /// A cache in `dir` under `budget_bytes`, downloading with the default number of streams.
    pub fn new(dir: PathBuf, budget_bytes: u64) -> Self {
        Self { dir, budget_bytes, streams: DEFAULT_STREAMS }
    }
}

/// The cache in one directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    budget: u64,
    streams: usize,
}

/// How a fetched file came to be in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// It was there already.
    Cached,
    /// This many bytes were downloaded for it (less than its size when a partial file resumed).
    Downloaded(u64),
}

/// An entry held in use: eviction leaves it alone while this lives.
#[derive(Debug)]
pub struct Pin {
    _locked: File,
}

impl Pin {
    /// Holds `file` (locked shared) as used now: its modification time orders eviction, and
    /// failing to set it only makes eviction less fair.
    fn used(file: File) -> Self {
        let _ = file.set_modified(SystemTime::now());
        Self { _locked: file }
    }
}

/// What fetching a version's files produced.
#[derive(Debug, Default)]
pub struct FetchedVersion {
    /// The files' bytes by path, when they were read.
    pub files: BTreeMap<String, Vec<u8>>,
    pub pins: Vec<Pin>,
    pub report: FetchReport,
}

impl FetchedVersion {
    /// The version these files belong to: `manifest`, read as `manifest_bytes`.
    pub fn into_verified(self, manifest: Manifest, manifest_bytes: &[u8]) -> VerifiedVersion {
        let digest = manifest_digest(manifest_bytes);
        VerifiedVersion { manifest, digest, files: self.files, fetch: Some(self.report), pins: self.pins }
    }
}

/// What one load fetched.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FetchReport {
    pub files_cached: usize,
    pub files_downloaded: usize,
    pub bytes_downloaded: u64,
    pub seconds: f64,
}

fn vanished(entry: &FileEntry) -> Error {
    Error::ModelFile(format!("{} vanished from the model cache as it was stored", entry.path))
}

impl Cache {
    /// The cache in `settings.dir`, created if missing.
    pub fn open(settings: &CacheSettings) -> Result<Self> {
        for sub in ["sha256", "partial", "locks"] {
            let dir = settings.dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(Self { dir: settings.dir.clone(), budget: settings.budget_bytes, streams: settings.streams.max(1) })
    }

    /// The verified bytes of the file `entry` names, pinned, from the cache or downloaded into it.
    pub fn fetch(&self, entry: &FileEntry, download: &Download<'_>) -> Result<(Vec<u8>, Pin, Fetched)> {
        if let Some(file) = self.open_entry(entry)?
            && let Some((bytes, pin)) = self.read_entry(entry, file)?
        {
            return Ok((bytes, pin, Fetched::Cached));
        }
        let fetched = self.fill(entry, download)?;
        let file = self.open_entry(entry)?.ok_or_else(|| vanished(entry))?;
        let (bytes, pin) = match fetched {
            // Hashed as it was downloaded: read, not hashed again.
            Fetched::Downloaded(_) => self.read_fresh(entry, file)?,
            Fetched::Cached => self.read_entry(entry, file)?.ok_or_else(|| vanished(entry))?,
        };
        Ok((bytes, pin, fetched))
    }

    /// The file `entry` names, verified and pinned in the cache (downloaded into it if missing),
    /// without holding its bytes in memory: hashed as it streams from disk.
    pub fn ensure(&self, entry: &FileEntry, download: &Download<'_>) -> Result<(Pin, Fetched)> {
        if let Some(file) = self.open_entry(entry)?
            && let Some(pin) = self.verify_entry(entry, file)?
        {
            return Ok((pin, Fetched::Cached));
        }
        let fetched = self.fill(entry, download)?;
        let file = self.open_entry(entry)?.ok_or_else(|| vanished(entry))?;
        let pin = match fetched {
            // Hashed as it was downloaded.
            Fetched::Downloaded(_) => Pin::used(file),
            Fetched::Cached => self.verify_entry(entry, file)?.ok_or_else(|| vanished(entry))?,
        };
        Ok((pin, fetched))
    }

    /// Fetches every file of a version (the bytes too, if `read`) through `download(index,
    /// range, out)`, where `index` is the file's position in `files` (called from several
    /// threads at once); a download's failure reason goes through `fail`.
    pub fn fetch_version(
        &self,
        files: &[FileEntry],
        read: bool,
        download: impl Fn(usize, Range<u64>, &mut dyn Write) -> Result<()> + Sync,
        fail: impl Fn(String) -> Error,
    ) -> Result<FetchedVersion> {
        let started = std::time::Instant::now();
        let reason = |error| match error {
            Error::ModelFile(why) => fail(why),
            other => other,
        };
        let mut version = FetchedVersion::default();
        for (index, entry) in files.iter().enumerate() {
            let from = |range: Range<u64>, out: &mut dyn Write| download(index, range, out);
            let fetched = if read {
                let (data, pin, fetched) = self.fetch(entry, &from).map_err(reason)?;
                version.files.insert(entry.path.clone(), data);
                version.pins.push(pin);
                fetched
            } else {
                let (pin, fetched) = self.ensure(entry, &from).map_err(reason)?;
                version.pins.push(pin);
                fetched
            };
            match fetched {
                Fetched::Cached => version.report.files_cached += 1,
                Fetched::Downloaded(n) => {
                    version.report.files_downloaded += 1;
                    version.report.bytes_downloaded += n;
                }
            }
        }
        version.report.seconds = started.elapsed().as_secs_f64();
        Ok(version)
    }

    /// Bytes held in verified entries.
    pub fn used_bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.size).sum()
    }

    fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }

    /// Downloads a missing entry (one fetcher per node; another that finished meanwhile makes
    /// it a hit), then keeps the cache within its budget.
    fn fill(&self, entry: &FileEntry, download: &Download<'_>) -> Result<Fetched> {
        if entry.size > self.budget {
            return Err(Error::invalid(format!(
                "{} is {} bytes, more than the model cache's budget of {} bytes",
                entry.path, entry.size, self.budget
            )));
        }
        let _downloading = self.lock_download(&entry.sha256)?;
        if self.open_entry(entry)?.is_some() {
            return Ok(Fetched::Cached);
        }
        let downloaded = self.download(entry, download)?;
        self.evict(&entry.sha256);
        Ok(Fetched::Downloaded(downloaded))
    }

    /// The entry's file, locked shared (so eviction leaves it), or `None` when it is missing or
    /// was evicted between the open and the lock.
    fn open_entry(&self, entry: &FileEntry) -> Result<Option<File>> {
        let path = self.entry_path(&entry.sha256);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        rustix::fs::flock(&file, FlockOperation::LockShared)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e.into()))?;
        if rustix::fs::fstat(&file).map(|s| s.st_nlink == 0).unwrap_or(true) {
            return Ok(None);
        }
        Ok(Some(file))
    }

    /// The entry's bytes and its pin, or `None` (and the entry removed) when they are damaged.
    fn read_entry(&self, entry: &FileEntry, mut file: File) -> Result<Option<(Vec<u8>, Pin)>> {
        let path = self.entry_path(&entry.sha256);
        let mut bytes = Vec::with_capacity(entry.size as usize);
        (&mut file)
            .take(entry.size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if let Err(reason) = check_file(entry, &bytes) {
            self.remove_damaged(&path, &reason);
            return Ok(None);
        }
        Ok(Some((bytes, Pin::used(file))))
    }

    /// The bytes of an entry this process has just downloaded and verified, and its pin.
    fn read_fresh(&self, entry: &FileEntry, mut file: File) -> Result<(Vec<u8>, Pin)> {
        let path = self.entry_path(&entry.sha256);
        let mut bytes = Vec::with_capacity(entry.size as usize);
        file.read_to_end(&mut bytes).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok((bytes, Pin::used(file)))
    }

    /// The entry's pin once its bytes hash to its digest as they stream from disk, or `None`
    /// (and the entry removed) when they do not.
    fn verify_entry(&self, entry: &FileEntry, mut file: File) -> Result<Option<Pin>> {
        let path = self.entry_path(&entry.sha256);
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut (&mut file).take(entry.size.saturating_add(1)), &mut hasher)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let digest = hex::encode(hasher.finalize());
        if size != entry.size || digest != entry.sha256 {
            self.remove_damaged(&path, &format!("{size} bytes with sha256 {digest}"));
            return Ok(None);
        }
        Ok(Some(Pin::used(file)))
    }

    fn remove_damaged(&self, path: &Path, reason: &str) {
        tracing::warn!(path = %path.display(), %reason, "removing a damaged model cache entry");
        let _ = std::fs::remove_file(path);
    }

    fn lock_download(&self, sha256: &str) -> Result<File> {
        let path = self.dir.join("locks").join(sha256);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| write_error(&self.dir, &path, e))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e.into()))?;
        Ok(file)
    }

    /// Downloads `entry` into its partial file, resuming what is there, and moves it into place
    /// once its size and digest are right. Returns the bytes downloaded.
    fn download(&self, entry: &FileEntry, download: &Download<'_>) -> Result<u64> {
        let partial = self.dir.join("partial").join(&entry.sha256);
        let downloaded = download::download(&self.dir, &partial, entry, self.streams, download)?;
        self.commit(&partial, entry)?;
        Ok(downloaded)
    }

    fn commit(&self, partial: &Path, entry: &FileEntry) -> Result<()> {
        let target = self.entry_path(&entry.sha256);
        std::fs::rename(partial, &target).map_err(|e| write_error(&self.dir, &target, e))?;
        let mut permissions = std::fs::metadata(&target)
            .map_err(|e| Error::io(format!("inspecting {}", target.display()), e))?
            .permissions();
        permissions.set_readonly(true);
        let _ = std::fs::set_permissions(&target, permissions);
        Ok(())
    }

    /// Removes the least recently used entries, except `keep` and pinned ones, until the cache
    /// fits its budget.
    fn evict(&self, keep: &str) {
        let mut entries = self.entries();
        let mut used: u64 = entries.iter().map(|e| e.size).sum();
        entries.sort_by_key(|e| e.used);
        for entry in entries {
            if used <= self.budget {
                break;
            }
            if entry.name == keep {
                continue;
            }
            let Ok(file) = File::open(&entry.path) else { continue };
            if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue;
            }
            if std::fs::remove_file(&entry.path).is_ok() {
                tracing::info!(sha256 = %entry.name, bytes = entry.size, "evicted from the model cache");
                used -= entry.size;
                let _ = std::fs::remove_file(self.dir.join("locks").join(&entry.name));
            }
        }
        if used > self.budget {
            tracing::warn!(
                used,
                budget = self.budget,
                "the model cache is over its budget: loaded versions pin the rest"
            );
        }
    }

    fn entries(&self) -> Vec<CacheEntry> {
        let dir = self.dir.join("sha256");
        let Ok(listing) = std::fs::read_dir(&dir) else { return Vec::new() };
        listing
            .flatten()
            .filter_map(|e| {
                let metadata = e.metadata().ok()?;
                Some(CacheEntry {
                    name: e.file_name().into_string().ok()?,
                    path: e.path(),
                    size: metadata.len(),
                    used: metadata.modified().ok()?,
                })
            })
            .collect()
    }
}

/// A write error at `path` in the cache at `dir`, saying so when the cache's disk is full.
pub(super) fn write_error(dir: &Path, path: &Path, error: std::io::Error) -> Error {
    if matches!(error.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
        Error::io(format!("the model cache at {} is full (writing {})", dir.display(), path.display()), error)
    } else {
        Error::io(format!("writing {}", path.display()), error)
    }
}

struct CacheEntry {
    name: String,
    path: PathBuf,
    size: u64,
    used: SystemTime,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    fn entry(path: &str, data: &[u8]) -> FileEntry {
        FileEntry { path: path.into(), size: data.len() as u64, sha256: hex::encode(Sha256::digest(data)) }
    }

    fn cache(dir: &Path, budget_bytes: u64) -> Cache {
        Cache::open(&CacheSettings::new(dir.to_owned(), budget_bytes)).unwrap()
    }

    /// A download of `data` that records where each read starts and can fail once after some
    /// bytes. It sends everything from a range's start, as a store whose object is larger than
    /// the manifest says would.
    fn serve<'a>(
        data: &'a [u8],
        fail_after: Option<usize>,
        calls: &'a Mutex<Vec<u64>>,
    ) -> impl Fn(Range<u64>, &mut dyn Write) -> Result<()> + Sync + 'a {
        let failing = Mutex::new(fail_after);
        move |range, out| {
            calls.lock().unwrap().push(range.start);
            let rest = &data[range.start as usize..];
            if let Some(n) = failing.lock().unwrap().take() {
                out.write_all(&rest[..n]).map_err(|e| Error::io("test", e))?;
                return Err(Error::ModelFile("connection reset".into()));
            }
            out.write_all(rest).map_err(|e| Error::io("test", e))
        }
    }

    #[test]
    fn a_file_is_downloaded_once_then_served_from_the_cache_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        let data = b"weights".repeat(100);
        let file = entry("w", &data);
        let calls = Mutex::new(Vec::new());
        let (bytes, _pin, fetched) = cache.fetch(&file, &serve(&data, None, &calls)).unwrap();
        assert_eq!((bytes, fetched), (data.clone(), Fetched::Downloaded(700)));
        let (bytes, _pin, fetched) = cache.fetch(&file, &serve(&data, None, &calls)).unwrap();
        assert_eq!((bytes, fetched), (data.clone(), Fetched::Cached));
        assert_eq!(*calls.lock().unwrap(), [0], "one download");
        // A reopened cache (a restarted pod) still has it.
        let (_, _, fetched) = self::cache(dir.path(), 1 << 20).fetch(&file, &serve(&data, None, &calls)).unwrap();
        assert_eq!(fetched, Fetched::Cached);
    }

    #[test]
    fn ensuring_a_file_stores_and_verifies_it_without_reading_it_into_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        let data = b"weights".repeat(50);
        let file = entry("w", &data);
        let calls = Mutex::new(Vec::new());
        let (_pin, fetched) = cache.ensure(&file, &serve(&data, None, &calls)).unwrap();
        assert_eq!(fetched, Fetched::Downloaded(350));
        assert_eq!(cache.ensure(&file, &serve(&data, None, &calls)).unwrap().1, Fetched::Cached);
        assert_eq!(cache.fetch(&file, &serve(&data, None, &calls)).unwrap().0, data);
        assert_eq!(*calls.lock().unwrap(), [0], "one download");
        // Every file of a version, in order, with its report.
        let files = [entry("a", b"one"), entry("b", b"two!")];
        let bodies = [&b"one"[..], &b"two!"[..]];
        let fetched = cache
            .fetch_version(
                &files,
                true,
                |i, range: Range<u64>, out| {
                    out.write_all(&bodies[i][range.start as usize..]).map_err(|e| Error::io("test", e))
                },
                Error::ModelFile,
            )
            .unwrap();
        assert_eq!((fetched.files["b"].as_slice(), fetched.pins.len()), (&b"two!"[..], 2));
        assert_eq!((fetched.report.files_downloaded, fetched.report.bytes_downloaded), (2, 7));
    }

    #[test]
    fn a_broken_download_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let calls = Mutex::new(Vec::new());
        let (bytes, _pin, fetched) = cache.fetch(&entry("w", &data), &serve(&data, Some(1234), &calls)).unwrap();
        assert_eq!((bytes, fetched), (data, Fetched::Downloaded(5000)));
        assert_eq!(*calls.lock().unwrap(), [0, 1234]);
    }

    #[test]
    fn wrong_bytes_are_refused_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        let expected = entry("w", b"the published bytes");
        let calls = Mutex::new(Vec::new());
        for (served, reason) in [
            (&b"the tampered bytes!"[..], "digest mismatch"),
            (b"short", "is 5 bytes in the store, the manifest says 19"),
            (b"the published bytes and more", "larger in the store"),
        ] {
            let error = cache.fetch(&expected, &serve(served, None, &calls)).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
        }
        assert_eq!(cache.used_bytes(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("partial")).unwrap().count(), 0);
        // A file damaged on disk is fetched again, not served.
        let good = b"the published bytes";
        cache.fetch(&expected, &serve(good, None, &calls)).unwrap();
        let path = dir.path().join("sha256").join(&expected.sha256);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"the published bytez").unwrap();
        let (_, _, fetched) = cache.fetch(&expected, &serve(good, None, &calls)).unwrap();
        assert_eq!(fetched, Fetched::Downloaded(19));
    }

    #[test]
    fn the_least_recently_used_unpinned_entries_go_to_keep_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 250);
        let files: Vec<(FileEntry, Vec<u8>)> =
            (0..4u8).map(|i| vec![i; 100]).map(|data| (entry(&format!("f{}", data[0]), &data), data)).collect();
        let calls = Mutex::new(Vec::new());
        let fetch = |i: usize| {
            std::thread::sleep(Duration::from_millis(10));
            let (file, data) = &files[i];
            cache.fetch(file, &serve(data, None, &calls)).unwrap()
        };
        let (_, pinned, _) = fetch(0);
        drop(fetch(1));
        // Over budget: 0 is the oldest but pinned, so 1 goes.
        drop(fetch(2));
        assert_eq!(cache.used_bytes(), 200);
        assert_eq!(fetch(2).2, Fetched::Cached);
        // Unpinned, 0 is the oldest and goes next.
        drop(pinned);
        drop(fetch(3));
        assert_eq!(fetch(3).2, Fetched::Cached);
        assert_eq!(fetch(2).2, Fetched::Cached);
        assert_eq!(fetch(0).2, Fetched::Downloaded(100), "0 was evicted once unpinned");
        assert_eq!(cache.used_bytes(), 200);
        let error = cache.fetch(&entry("big", &[0; 300]), &serve(&[0; 300], None, &calls)).unwrap_err();
        assert!(error.to_string().contains("more than the model cache's budget"), "{error}");
    }
}
