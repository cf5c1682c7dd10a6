//! One cache entry's download: the bytes its partial file still lacks, fetched as ranged reads
//! in parallel parts and hashed in file order as the parts land.
//!
//! - **Parallel ranged reads.** With `streams` above one, the missing bytes are cut into parts
//!   of [`PART_BYTES`], and that many download at once, each written at its own offset, so a
//!   large file is not paced by one connection; with one stream, the rest of the file is one
//!   read.
//! - **Hashed off the reading threads.** The calling thread hashes the file in order, following
//!   the bytes as they land on disk (read back from the page cache), while the download goes on.
//! - **Resumable.** A failed part is read again from where it stopped, up to [`RETRIES`] times
//!   with backoff. `<partial>.hashed` records how much of the partial file has been hashed; after
//!   a crash only that prefix is trusted (parts past it may have holes). A partial file without a
//!   record was written in order, and is trusted whole.
//! - **Refusals leave nothing; failures leave what resumes.** Bytes beyond the manifest's size,
//!   a short object or a wrong digest remove the partial file; a store that keeps failing, or a
//!   full disk, leaves it for the next try.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::FileEntry;
use super::cache::write_error;
use crate::error::{Error, Result};

/// The size of a parallel download's parts.
pub const PART_BYTES: u64 = 16 << 20;
/// Parallel reads per file when the settings do not say.
pub const DEFAULT_STREAMS: usize = 4;
/// How many times a failed part is resumed before the download fails.
const RETRIES: u32 = 3;
/// The first pause before resuming a part; it doubles with each retry.
const RETRY_BASE: Duration = Duration::from_millis(250);
/// How much of the partial file is read at a time to hash it.
const HASH_CHUNK: usize = 1 << 20;
/// The longest the hasher sleeps before looking for newly landed bytes again.
const HASH_POLL: Duration = Duration::from_millis(5);

/// Writes the bytes `range` of the object into the writer. Called from several threads at once.
pub type Download<'a> = dyn Fn(Range<u64>, &mut dyn Write) -> Result<()> + Sync + 'a;

/// Downloads what the partial file at `partial` (in the cache at `cache_dir`) lacks of `entry`,
/// over up to `streams` reads at once. On success the file holds exactly the entry's bytes,
/// verified, ready to move into place; returns the bytes downloaded.
pub(super) fn download(
    cache_dir: &Path,
    partial: &Path,
    entry: &FileEntry,
    streams: usize,
    download: &Download<'_>,
) -> Result<u64> {
    let record = record_path(partial);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(partial)
        .map_err(|e| write_error(cache_dir, partial, e))?;
    let (mut hasher, trusted) = trusted_prefix(&file, partial, &record, entry.size)?;
    // Recorded before any byte past it is written, so a crash cannot leave holes that pass.
    write_record(&record, trusted).map_err(|e| write_error(cache_dir, &record, e))?;
    let transfer = Transfer::new(&file, parts(trusted, entry.size, streams));
    let hashed = std::thread::scope(|scope| {
        for _ in 0..streams.min(transfer.parts.len()) {
            scope.spawn(|| transfer.fetch_parts(download));
        }
        let hashed = transfer.hash_in_order(partial, &record, &mut hasher);
        if hashed.is_err() {
            transfer.stop.store(true, Ordering::Relaxed);
        }
        hashed
    });
    let downloaded = transfer.downloaded.load(Ordering::Relaxed);
    if let Err(failure) = transfer.failure() {
        return Err(refuse_or_keep(cache_dir, partial, entry, failure));
    }
    hashed?;
    let digest = hex::encode(hasher.finalize());
    let _ = std::fs::remove_file(&record);
    if digest != entry.sha256 {
        let _ = std::fs::remove_file(partial);
        return Err(Error::ModelFile(format!(
            "digest mismatch for {}: the manifest says sha256 {}, the store has {digest}",
            entry.path, entry.sha256
        )));
    }
    Ok(downloaded)
}

/// The record of how much of `partial` has been hashed.
fn record_path(partial: &Path) -> PathBuf {
    let mut name = partial.file_name().unwrap_or_default().to_owned();
    name.push(".hashed");
    partial.with_file_name(name)
}

fn write_record(record: &Path, hashed: u64) -> std::io::Result<()> {
    std::fs::write(record, hashed.to_string())
}

/// The hash of the partial file's trusted prefix and its length; whatever follows it is cut off.
fn trusted_prefix(file: &File, partial: &Path, record: &Path, size: u64) -> Result<(Sha256, u64)> {
    let read_error = |e| Error::io(format!("reading {}", partial.display()), e);
    let length = file.metadata().map_err(read_error)?.len();
    let trusted = match std::fs::read_to_string(record) {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0).min(length),
        Err(_) => length,
    };
    let trusted = if trusted > size { 0 } else { trusted };
    file.set_len(trusted).map_err(|e| Error::io(format!("truncating {}", partial.display()), e))?;
    let mut hasher = Sha256::new();
    hash_range(file, 0..trusted, &mut hasher).map_err(read_error)?;
    Ok((hasher, trusted))
}

fn hash_range(file: &File, range: Range<u64>, hasher: &mut Sha256) -> std::io::Result<()> {
    let mut buffer = vec![0u8; HASH_CHUNK.min((range.end - range.start) as usize)];
    let mut at = range.start;
    while at < range.end {
        let want = buffer.len().min((range.end - at) as usize);
        let n = file.read_at(&mut buffer[..want], at)?;
        if n == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, format!("the file ends at {at}")));
        }
        hasher.update(&buffer[..n]);
        at += n as u64;
    }
    Ok(())
}

/// `start..size` cut into parts of at most [`PART_BYTES`] for several streams, or whole for one.
fn parts(start: u64, size: u64, streams: usize) -> Vec<Range<u64>> {
    let part = if streams > 1 { PART_BYTES } else { u64::MAX };
    let mut parts = Vec::new();
    let mut from = start;
    while from < size {
        let to = size.min(from.saturating_add(part));
        parts.push(from..to);
        from = to;
    }
    parts
}

/// Why a part did not land.
#[derive(Debug)]
enum PartFailure {
    /// The store sent more bytes than the part holds.
    Overflow(Error),
    /// The store's object ended at this offset.
    Short(u64),
    /// The cache's disk refused a write.
    Write(std::io::Error),
    /// Reading from the store failed every try.
    Failed { tries: u32, last: Error },
}

/// How a part ended.
#[derive(Debug)]
enum Outcome {
    Landed,
    /// Stopped because another part failed (or hashing did).
    Stopped,
    Failed(PartFailure),
}

/// The parts of one download and how each went, shared by the threads that fetch them.
struct Transfer<'a> {
    file: &'a File,
    parts: Vec<Range<u64>>,
    next: AtomicUsize,
    outcomes: Mutex<Vec<Option<Outcome>>>,
    /// Each part's bytes on disk so far, from its start.
    landed: Vec<AtomicU64>,
    /// Signalled when a part ends.
    ended: Condvar,
    stop: AtomicBool,
    downloaded: AtomicU64,
}

impl<'a> Transfer<'a> {
    fn new(file: &'a File, parts: Vec<Range<u64>>) -> Self {
        Self {
            file,
            outcomes: Mutex::new(parts.iter().map(|_| None).collect()),
            landed: parts.iter().map(|_| AtomicU64::new(0)).collect(),
            parts,
            next: AtomicUsize::new(0),
            ended: Condvar::new(),
            stop: AtomicBool::new(false),
            downloaded: AtomicU64::new(0),
        }
    }

    /// Takes parts in order and fetches each, until none are left or the transfer stops.
    fn fetch_parts(&self, download: &Download<'_>) {
        while !self.stop.load(Ordering::Relaxed) {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.parts.len() {
                return;
            }
            let outcome = self.fetch_part(index, download);
            if !matches!(outcome, Outcome::Landed) {
                self.stop.store(true, Ordering::Relaxed);
            }
            self.outcomes.lock().unwrap_or_else(PoisonError::into_inner)[index] = Some(outcome);
            self.ended.notify_all();
        }
    }

    fn fetch_part(&self, index: usize, download: &Download<'_>) -> Outcome {
        let range = self.parts[index].clone();
        let mut writer = PartWriter { transfer: self, index, at: range.start, overflowed: false, failed: None };
        let mut retry = 0;
        loop {
            let result = download(writer.at..range.end, &mut writer);
            if let Some(error) = writer.failed.take() {
                return Outcome::Failed(PartFailure::Write(error));
            }
            match result {
                Err(error) if writer.overflowed => return Outcome::Failed(PartFailure::Overflow(error)),
                _ if writer.at == range.end => return Outcome::Landed,
                Ok(()) => return Outcome::Failed(PartFailure::Short(writer.at)),
                Err(_) if self.stop.load(Ordering::Relaxed) => return Outcome::Stopped,
                Err(error) if retry < RETRIES => {
                    let pause = RETRY_BASE * 2u32.pow(retry);
                    tracing::warn!(%error, resume_at = writer.at, ?pause, "a download part failed; resuming");
                    std::thread::sleep(pause);
                    retry += 1;
                }
                Err(last) => return Outcome::Failed(PartFailure::Failed { tries: retry + 1, last }),
            }
        }
    }

    /// Hashes the parts in file order, following each one's bytes as they land, and records the
    /// hashed prefix after each part and where it stops; stops at the first part that failed
    /// (the failure itself is [`Transfer::failure`]'s).
    fn hash_in_order(&self, partial: &Path, record: &Path, hasher: &mut Sha256) -> Result<()> {
        let read_error = |e| Error::io(format!("reading {}", partial.display()), e);
        let mut hashed = self.parts.first().map_or(0, |p| p.start);
        for (index, range) in self.parts.iter().enumerate() {
            loop {
                let landed = range.start + self.landed[index].load(Ordering::Acquire);
                if landed > hashed {
                    hash_range(self.file, hashed..landed, hasher).map_err(read_error)?;
                    hashed = landed;
                    continue;
                }
                let outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
                match &outcomes[index] {
                    Some(Outcome::Landed) if hashed == range.end => break,
                    // Its last bytes landed after the look above.
                    Some(Outcome::Landed) => continue,
                    Some(Outcome::Stopped | Outcome::Failed(_)) => {
                        let _ = write_record(record, hashed);
                        return Ok(());
                    }
                    None => drop(self.ended.wait_timeout(outcomes, HASH_POLL)),
                }
            }
            // Only a resume's start: a record that is not written costs a re-download, not bytes.
            let _ = write_record(record, hashed);
        }
        Ok(())
    }

    /// The first part's failure that is not a stop another part caused.
    fn failure(&self) -> std::result::Result<(), PartFailure> {
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner));
        let first = outcomes.into_iter().find_map(|outcome| match outcome {
            Some(Outcome::Failed(failure)) => Some(failure),
            _ => None,
        });
        first.map_or(Ok(()), Err)
    }
}

/// The error a failed part gives, after removing the partial file when its bytes are wrong
/// (keeping it when a later try can go on from it).
fn refuse_or_keep(cache_dir: &Path, partial: &Path, entry: &FileEntry, failure: PartFailure) -> Error {
    let remove = || {
        let _ = std::fs::remove_file(partial);
        let _ = std::fs::remove_file(record_path(partial));
    };
    match failure {
        PartFailure::Overflow(error) => {
            remove();
            Error::ModelFile(format!(
                "{} is larger in the store than the manifest's {} bytes: {error}",
                entry.path, entry.size
            ))
        }
        PartFailure::Short(at) => {
            remove();
            Error::ModelFile(format!("{} is {at} bytes in the store, the manifest says {}", entry.path, entry.size))
        }
        PartFailure::Write(error) => write_error(cache_dir, partial, error),
        PartFailure::Failed { tries, last } => {
            Error::ModelFile(format!("downloading {} failed {tries} times, last: {last}", entry.path))
        }
    }
}

/// Writes one part's bytes at their offsets, refusing any past the part's end.
struct PartWriter<'t, 'a> {
    transfer: &'t Transfer<'a>,
    index: usize,
    at: u64,
    overflowed: bool,
    /// A local write error (a full disk), kept so it is not mistaken for a download error.
    failed: Option<std::io::Error>,
}

impl Write for PartWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.transfer.stop.load(Ordering::Relaxed) {
            // Not `Interrupted`, which `write_all` retries.
            return Err(std::io::Error::other("another part of the download failed"));
        }
        let part = &self.transfer.parts[self.index];
        if self.at + buf.len() as u64 > part.end {
            self.overflowed = true;
            return Err(std::io::Error::new(ErrorKind::InvalidData, "more bytes than the manifest says"));
        }
        if let Err(error) = self.transfer.file.write_all_at(buf, self.at) {
            let kind = error.kind();
            self.failed = Some(error);
            return Err(std::io::Error::new(kind, "writing the model cache failed"));
        }
        self.at += buf.len() as u64;
        self.transfer.landed[self.index].store(self.at - part.start, Ordering::Release);
        self.transfer.downloaded.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8]) -> FileEntry {
        FileEntry { path: "w".into(), size: data.len() as u64, sha256: hex::encode(Sha256::digest(data)) }
    }

    /// A store holding `data` that answers ranged reads, recording each, and fails the first
    /// read that starts at `fail_at` after half its bytes.
    struct Store {
        data: Vec<u8>,
        fail_at: Mutex<Option<u64>>,
        reads: Mutex<Vec<Range<u64>>>,
    }

    impl Store {
        fn new(data: Vec<u8>, fail_at: Option<u64>) -> Self {
            Self { data, fail_at: Mutex::new(fail_at), reads: Mutex::new(Vec::new()) }
        }

        fn read(&self, range: Range<u64>, out: &mut dyn Write) -> Result<()> {
            self.reads.lock().unwrap().push(range.clone());
            let bytes = &self.data[range.start as usize..range.end as usize];
            let mut fail_at = self.fail_at.lock().unwrap();
            if *fail_at == Some(range.start) {
                *fail_at = None;
                drop(fail_at);
                out.write_all(&bytes[..bytes.len() / 2]).map_err(|e| Error::io("test", e))?;
                return Err(Error::ModelFile("connection reset".into()));
            }
            drop(fail_at);
            out.write_all(bytes).map_err(|e| Error::io("test", e))
        }

        fn sorted_reads(&self) -> Vec<Range<u64>> {
            let mut reads = self.reads.lock().unwrap().clone();
            reads.sort_by_key(|r| r.start);
            reads
        }
    }

    /// One read of `range`, as [`Store::sorted_reads`] lists it.
    fn reads(range: Range<u64>) -> Vec<Range<u64>> {
        vec![range]
    }

    fn pattern(size: u64) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_large_file_downloads_in_parallel_parts_one_of_which_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let size = 2 * PART_BYTES + 1000;
        let store = Store::new(pattern(size), Some(PART_BYTES));
        let downloaded = download(dir.path(), &partial, &entry(&store.data), 4, &|r, out| store.read(r, out)).unwrap();
        assert_eq!(downloaded, size);
        assert_eq!(std::fs::read(&partial).unwrap(), store.data);
        let middle = PART_BYTES + PART_BYTES / 2;
        assert_eq!(
            store.sorted_reads(),
            [0..PART_BYTES, PART_BYTES..2 * PART_BYTES, middle..2 * PART_BYTES, 2 * PART_BYTES..size],
            "three parts; the broken one resumed where it stopped"
        );
        assert!(!record_path(&partial).exists(), "the record goes with a finished download");
        // One stream reads the rest of the file at once.
        std::fs::remove_file(&partial).unwrap();
        let store = Store::new(store.data, None);
        download(dir.path(), &partial, &entry(&store.data), 1, &|r, out| store.read(r, out)).unwrap();
        assert_eq!((store.sorted_reads(), std::fs::read(&partial).unwrap()), (reads(0..size), store.data));
    }

    #[test]
    fn after_a_crash_only_the_recorded_prefix_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let size = 2 * PART_BYTES + 10;
        let store = Store::new(pattern(size), None);
        // A crash left part 0 hashed and part 1 half written beside a hole of garbage.
        let mut left = store.data[..PART_BYTES as usize].to_vec();
        left.extend(std::iter::repeat_n(7u8, PART_BYTES as usize / 2));
        std::fs::write(&partial, &left).unwrap();
        write_record(&record_path(&partial), PART_BYTES).unwrap();
        let downloaded = download(dir.path(), &partial, &entry(&store.data), 4, &|r, out| store.read(r, out)).unwrap();
        assert_eq!(downloaded, size - PART_BYTES);
        assert_eq!(std::fs::read(&partial).unwrap(), store.data);
        assert_eq!(store.sorted_reads(), [PART_BYTES..2 * PART_BYTES, 2 * PART_BYTES..size]);
        // A partial file without a record was written in order: all of it is trusted.
        std::fs::write(&partial, &store.data[..1234]).unwrap();
        let small = Store::new(store.data.clone(), None);
        download(dir.path(), &partial, &entry(&small.data), 4, &|r, out| small.read(r, out)).unwrap();
        assert_eq!(small.sorted_reads()[0], 1234..1234 + PART_BYTES);
    }

    #[test]
    fn a_part_that_keeps_failing_fails_the_download_and_keeps_what_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let data = pattern(2 * PART_BYTES);
        let failing = |range: Range<u64>, out: &mut dyn Write| {
            if range.start >= PART_BYTES {
                return Err(Error::ModelFile("connection refused".into()));
            }
            out.write_all(&data[range.start as usize..range.end as usize]).map_err(|e| Error::io("test", e))
        };
        let error = download(dir.path(), &partial, &entry(&data), 4, &failing).unwrap_err().to_string();
        assert!(error.contains("downloading w failed 4 times, last: connection refused"), "{error}");
        // The next try downloads only the second part.
        let store = Store::new(data, None);
        download(dir.path(), &partial, &entry(&store.data), 4, &|r, out| store.read(r, out)).unwrap();
        assert_eq!(store.sorted_reads(), reads(PART_BYTES..2 * PART_BYTES));
    }
}
