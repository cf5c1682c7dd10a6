//! A repository in an object store (S3 and S3-compatible stores, GCS, Azure Blob) or a static
//! HTTP(S) layout: the same `<prefix>/<model>/<version>/` keys and manifests as on disk.
//!
//! **Publishing is atomic.** A publisher first claims the version number by creating
//! `<model>/<version>/.claim.json` conditionally (two publishers can never own one number; an
//! automatic number moves on to the next), then uploads the files (multipart above
//! [`super::bucket::SINGLE_PUT_MAX`], hashing as it reads so the manifest states what was sent), and creates the
//! manifest last, conditionally. Readers see a version only through its manifest, so an
//! interrupted publish is invisible; the next publish of the model removes the objects of
//! uncommitted versions untouched for [`ABANDONED_AFTER`]. Parts of multipart uploads that never
//! completed are not objects: a bucket lifecycle rule (S3's `AbortIncompleteMultipartUpload`)
//! removes them.
//!
//! **New versions are found without listing.** Each publish records the version in the model's
//! index object (`<model>/.versions.json`) and the model in the root index (`.models.json`),
//! with conditional updates where the store has them. Readers poll the indexes with conditional
//! GETs (`If-None-Match: <etag>`: a `304` costs no body); a prefix is listed only where no index
//! exists (a layout copied in by other tools).
//!
//! **Reads go through the node cache.** Every file a manifest lists is checked to exist in the
//! store with the manifest's size (so a version whose objects are gone or changed is refused
//! even where the cache could serve it), then read from the content-addressed [`Cache`],
//! downloaded into it with ranged, resumable GETs if missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::bucket::Bucket;
use super::cache::{Cache, FetchReport};
use super::location::Location;
use super::{
    FileEntry, MANIFEST_FILE, Manifest, RemoteSettings, VerifiedVersion, manifest_digest, parse_version,
    validate_model_name,
};
use crate::error::{Error, Result};

/// An uncommitted version whose newest object is older than this is abandoned.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Limits on what a manifest may ask a reader to fetch.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
pub const MAX_FILES: usize = 10_000;
pub const MAX_VERSION_BYTES: u64 = 256 << 30;
/// Limit on an index object's size.
const MAX_INDEX_BYTES: u64 = 4 << 20;

/// The root index: the models of the repository.
const MODELS_INDEX: &str = ".models.json";
/// A model's index: its committed versions and their manifest digests.
const VERSIONS_INDEX: &str = ".versions.json";
/// The object that claims a version number for one publisher.
const CLAIM: &str = ".claim.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct ModelsIndex {
    models: BTreeSet<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct VersionsIndex {
    /// Version number to `sha256:<hex>` of its manifest.
    versions: BTreeMap<u64, String>,
}

/// An object-store repository with its node cache.
pub struct Remote {
    bucket: Bucket,
    cache: Cache,
    /// The last body and ETag of each index polled.
    indexes: Mutex<HashMap<String, (String, Bytes)>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("location", &self.bucket.location.to_string()).finish_non_exhaustive()
    }
}

impl Remote {
    /// Opens the store at `location` (an object store or HTTP layout) with its cache.
    pub fn open(location: Location, settings: &RemoteSettings) -> Result<Self> {
        let bucket = Bucket::open(location, settings.read_timeout)?;
        Ok(Self { bucket, cache: Cache::open(&settings.cache)?, indexes: Mutex::default() })
    }

    /// The repository's URI.
    pub fn location(&self) -> String {
        self.bucket.location.to_string()
    }

    /// Model names, from the root index, or a listing where there is none.
    pub fn models(&self) -> Result<BTreeSet<String>> {
        self.bucket.io.block_on(async {
            let models = match self.poll(&self.bucket.key(&[MODELS_INDEX])?).await? {
                Some(body) => parse_index::<ModelsIndex>(&body, MODELS_INDEX)?.models,
                None => {
                    let root = (!self.bucket.prefix.is_empty()).then(|| Key::from(self.bucket.prefix.as_str()));
                    let listed = self.bucket.store.list_with_delimiter(root.as_ref()).await;
                    let listed = listed.map_err(|e| Error::storage(format!("listing {}", self.bucket.location), e))?;
                    listed.common_prefixes.iter().filter_map(|p| Some(p.filename()?.to_owned())).collect()
                }
            };
            Ok(models.into_iter().filter(|name| validate_model_name(name).is_ok()).collect())
        })
    }

    /// The committed versions of `model`, from its index, or a listing where there is none.
    pub fn versions(&self, model: &str) -> Result<BTreeSet<u64>> {
        validate_model_name(model)?;
        self.bucket.io.block_on(async {
            match self.poll(&self.bucket.key(&[model, VERSIONS_INDEX])?).await? {
                Some(body) => Ok(parse_index::<VersionsIndex>(&body, VERSIONS_INDEX)?.versions.into_keys().collect()),
                None => Ok(self.list_model(model).await?.committed),
            }
        })
    }

    /// Where a version's manifest is, for messages, and its bytes.
    pub fn manifest(&self, model: &str, version: u64) -> Result<(PathBuf, Vec<u8>)> {
        let bytes = self.bucket.io.block_on(self.manifest_bytes(model, version))?;
        Ok((self.manifest_origin(model, version), bytes.to_vec()))
    }

    fn manifest_origin(&self, model: &str, version: u64) -> PathBuf {
        PathBuf::from(format!("{}/{model}/{version}/{MANIFEST_FILE}", self.bucket.location))
    }

    /// Reads a version through the node cache: every file checked in the store, fetched into
    /// the cache if missing, verified.
    pub fn read_verified(&self, model: &str, version: u64) -> Result<VerifiedVersion> {
        self.fetch(model, version, true)
    }

    /// Fetches a version's files into the node cache without reading them into memory.
    pub fn prefetch(&self, model: &str, version: u64) -> Result<FetchReport> {
        Ok(self.fetch(model, version, false)?.fetch.unwrap_or_default())
    }

    /// A version's manifest with its files in the cache (and in memory, if `read`).
    fn fetch(&self, model: &str, version: u64, read: bool) -> Result<VerifiedVersion> {
        let fail = |reason: String| Error::Load { model: model.to_owned(), version, reason };
        let bytes = self.bucket.io.block_on(self.manifest_bytes(model, version))?;
        let manifest = Manifest::from_json(&bytes, &self.manifest_origin(model, version))?;
        check_limits(&manifest).map_err(fail)?;
        let keys: Vec<Key> = manifest
            .files
            .iter()
            .map(|f| self.bucket.key(&[model, &version.to_string(), &f.path]))
            .collect::<Result<_>>()?;
        self.bucket.io.block_on(self.check_objects(&manifest.files, &keys)).map_err(fail)?;
        let fetched = self.cache.fetch_version(
            &manifest.files,
            read,
            |index, range, out| self.bucket.io.block_on(self.bucket.download(&keys[index], range, out)),
            fail,
        )?;
        Ok(fetched.into_verified(manifest, &bytes))
    }

    /// Publishes the files `sources` (relative to `dir`) with `manifest` as a version of
    /// `model`: the number `explicit`, or the next free one.
    pub fn publish(
        &self,
        model: &str,
        explicit: Option<u64>,
        dir: &Path,
        mut manifest: Manifest,
        sources: &[PathBuf],
    ) -> Result<u64> {
        if !self.bucket.location.writable() {
            return Err(Error::invalid(format!(
                "{} is read-only: publish to a bucket or a directory",
                self.bucket.location
            )));
        }
        if explicit == Some(0) {
            return Err(Error::invalid("version numbers start at 1"));
        }
        self.bucket.io.block_on(async {
            let listing = self.list_model(model).await?;
            self.remove_abandoned(&listing).await;
            let version = self.claim(model, explicit, listing.highest).await?;
            let result = async {
                manifest.files.clear();
                for relative in sources {
                    let path = relative
                        .to_str()
                        .ok_or_else(|| Error::invalid(format!("file name {} is not UTF-8", relative.display())))?;
                    let key = self.bucket.key(&[model, &version.to_string(), path])?;
                    let (size, sha256) = self.bucket.upload(&dir.join(relative), &key).await?;
                    manifest.files.push(FileEntry { path: path.to_owned(), size, sha256 });
                }
                let bytes = manifest.to_json();
                let key = self.bucket.key(&[model, &version.to_string(), MANIFEST_FILE])?;
                self.bucket
                    .store
                    .put_opts(&key, PutPayload::from(bytes.clone()), PutOptions::from(PutMode::Create))
                    .await
                    .map_err(|e| Error::storage(format!("committing {}", self.bucket.show(&key)), e))?;
                Ok(manifest_digest(&bytes))
            }
            .await;
            let digest = match result {
                Ok(digest) => digest,
                Err(error) => {
                    // Best effort: an uncommitted version is invisible anyway, and abandoned ones
                    // are removed by later publishes.
                    self.remove_version(model, version).await;
                    return Err(error);
                }
            };
            self.update_index(&self.bucket.key(&[model, VERSIONS_INDEX])?, |index: &mut VersionsIndex| {
                index.versions.insert(version, digest.clone()).as_ref() != Some(&digest)
            })
            .await?;
            self.update_index(&self.bucket.key(&[MODELS_INDEX])?, |index: &mut ModelsIndex| {
                index.models.insert(model.to_owned())
            })
            .await?;
            Ok(version)
        })
    }

    /// An index object's body, or `None` when it does not exist. A conditional GET with the
    /// last ETag: an unchanged index costs no body.
    async fn poll(&self, key: &Key) -> Result<Option<Bytes>> {
        let known = self.indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key.as_ref()).cloned();
        let options = GetOptions { if_none_match: known.as_ref().map(|(tag, _)| tag.clone()), ..Default::default() };
        let fetched = match self.bucket.store.get_opts(key, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotModified { .. }) => return Ok(known.map(|(_, body)| body)),
            Err(object_store::Error::NotFound { .. }) => {
                self.indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key.as_ref());
                return Ok(None);
            }
            Err(e) => return Err(Error::storage(format!("reading {}", self.bucket.show(key)), e)),
        };
        if fetched.meta.size > MAX_INDEX_BYTES {
            return Err(Error::invalid(format!("{} is larger than {MAX_INDEX_BYTES} bytes", self.bucket.show(key))));
        }
        let tag = fetched.meta.e_tag.clone();
        let body =
            fetched.bytes().await.map_err(|e| Error::storage(format!("reading {}", self.bucket.show(key)), e))?;
        if let Some(tag) = tag {
            let mut indexes = self.indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            indexes.insert(key.as_ref().to_owned(), (tag, body.clone()));
        }
        Ok(Some(body))
    }

    /// Applies `change` to an index object (created if missing) unless it reports no change,
    /// as a conditional update retried on conflicts; a store without conditional updates gets
    /// a plain overwrite.
    async fn update_index<T>(&self, key: &Key, mut change: impl FnMut(&mut T) -> bool) -> Result<()>
    where
        T: Default + Serialize + for<'de> Deserialize<'de>,
    {
        let name = self.bucket.show(key);
        for _ in 0..16 {
            let (mut index, mode) = match self.bucket.store.get(key).await {
                Ok(current) => {
                    let version =
                        UpdateVersion { e_tag: current.meta.e_tag.clone(), version: current.meta.version.clone() };
                    let body = current.bytes().await.map_err(|e| Error::storage(format!("reading {name}"), e))?;
                    (parse_index::<T>(&body, &name)?, PutMode::Update(version))
                }
                Err(object_store::Error::NotFound { .. }) => (T::default(), PutMode::Create),
                Err(e) => return Err(Error::storage(format!("reading {name}"), e)),
            };
            if !change(&mut index) {
                return Ok(());
            }
            let body = PutPayload::from(serde_json::to_vec(&index).expect("an index always serializes; this is a bug"));
            match self.bucket.store.put_opts(key, body.clone(), PutOptions::from(mode)).await {
                Ok(_) => return Ok(()),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    self.bucket.store.put(key, body).await.map_err(|e| Error::storage(format!("writing {name}"), e))?;
                    return Ok(());
                }
                Err(e) => return Err(Error::storage(format!("writing {name}"), e)),
            }
        }
        Err(Error::invalid(format!("{name} kept changing under 16 conditional updates")))
    }

    async fn manifest_bytes(&self, model: &str, version: u64) -> Result<Bytes> {
        let key = self.bucket.key(&[model, &version.to_string(), MANIFEST_FILE])?;
        let fail = |reason: String| Error::Load { model: model.to_owned(), version, reason };
        let fetched = self.bucket.store.get(&key).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => fail(format!("{} does not exist", self.bucket.show(&key))),
            e => Error::storage(format!("reading {}", self.bucket.show(&key)), e),
        })?;
        if fetched.meta.size > MAX_MANIFEST_BYTES {
            return Err(fail(format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        fetched.bytes().await.map_err(|e| Error::storage(format!("reading {}", self.bucket.show(&key)), e))
    }

    /// Every listed object exists with the manifest's size.
    async fn check_objects(&self, files: &[FileEntry], keys: &[Key]) -> std::result::Result<(), String> {
        let heads =
            futures::stream::iter(keys.iter().map(|key| self.bucket.store.head(key))).buffered(16).collect::<Vec<_>>();
        for ((entry, key), head) in files.iter().zip(keys).zip(heads.await) {
            match head {
                Ok(meta) if meta.size == entry.size => {}
                Ok(meta) => {
                    return Err(format!(
                        "{} is {} bytes in the store, the manifest says {}",
                        self.bucket.show(key),
                        meta.size,
                        entry.size
                    ));
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(format!(
                        "the manifest lists {} but the store has no such object",
                        self.bucket.show(key)
                    ));
                }
                Err(e) => return Err(format!("checking {}: {e}", self.bucket.show(key))),
            }
        }
        Ok(())
    }

    /// Claims `explicit`, or the first free number above `highest`.
    async fn claim(&self, model: &str, explicit: Option<u64>, highest: u64) -> Result<u64> {
        let mut version = explicit.unwrap_or(highest + 1);
        let body = serde_json::json!({
            "pid": std::process::id(),
            "host": std::env::var("HOSTNAME").unwrap_or_default(),
        });
        for _ in 0..100 {
            let key = self.bucket.key(&[model, &version.to_string(), CLAIM])?;
            let payload = PutPayload::from(body.to_string());
            match self.bucket.store.put_opts(&key, payload, PutOptions::from(PutMode::Create)).await {
                Ok(_) => return Ok(version),
                Err(object_store::Error::AlreadyExists { .. }) if explicit.is_none() => version += 1,
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Err(Error::invalid(format!(
                        "version {version} already exists in {}/{model}",
                        self.bucket.location
                    )));
                }
                Err(e) => return Err(Error::storage(format!("claiming {}", self.bucket.show(&key)), e)),
            }
        }
        Err(Error::invalid(format!("no free version number in {}/{model} after 100 tries", self.bucket.location)))
    }

    /// The model's objects by version.
    async fn list_model(&self, model: &str) -> Result<ModelListing> {
        let prefix = self.bucket.key(&[model])?;
        let objects: Vec<_> = self
            .bucket
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::storage(format!("listing {}", self.bucket.show(&prefix)), e))?;
        let mut listing = ModelListing::default();
        for object in objects {
            let relative = object.location.prefix_match(&prefix).map(|parts| parts.collect::<Vec<_>>());
            let Some([version, rest @ ..]) = relative.as_deref() else { continue };
            let Some(version) = parse_version(version.as_ref()) else { continue };
            listing.highest = listing.highest.max(version);
            let entry = listing.uncommitted.entry(version).or_default();
            if rest.len() == 1 && rest[0].as_ref() == MANIFEST_FILE {
                listing.committed.insert(version);
            }
            entry.newest = entry.newest.max(object.last_modified.timestamp());
            entry.keys.push(object.location);
        }
        let committed = listing.committed.clone();
        listing.uncommitted.retain(|v, _| !committed.contains(v));
        Ok(listing)
    }

    async fn remove_abandoned(&self, listing: &ModelListing) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let cutoff = now.saturating_sub(ABANDONED_AFTER).as_secs() as i64;
        for objects in listing.uncommitted.values() {
            if objects.newest < cutoff {
                for key in &objects.keys {
                    tracing::info!(key = %self.bucket.show(key), "removing an abandoned upload");
                    let _ = self.bucket.store.delete(key).await;
                }
            }
        }
    }

    /// Removes a committed version: it leaves the model's index, then its manifest goes (no
    /// reader can load it from here on), then its other objects.
    pub fn remove_committed(&self, model: &str, version: u64) -> Result<()> {
        self.bucket.io.block_on(async {
            self.update_index(&self.bucket.key(&[model, VERSIONS_INDEX])?, |index: &mut VersionsIndex| {
                index.versions.remove(&version).is_some()
            })
            .await?;
            let manifest = self.bucket.key(&[model, &version.to_string(), MANIFEST_FILE])?;
            match self.bucket.store.delete(&manifest).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::storage(format!("deleting {}", self.bucket.show(&manifest)), e)),
            }
            self.bucket.remove_under(&self.bucket.key(&[model, &version.to_string()])?, |_| false).await
        })
    }

    /// Best effort: the objects of an uncommitted version but its claim.
    async fn remove_version(&self, model: &str, version: u64) {
        let Ok(prefix) = self.bucket.key(&[model, &version.to_string()]) else { return };
        let _ = self.bucket.remove_under(&prefix, |key| key.filename() == Some(CLAIM)).await;
    }
}

/// Objects of a model, by version number.
#[derive(Default)]
struct ModelListing {
    /// The highest number with any object (committed or not), so no upload is ever overwritten.
    highest: u64,
    committed: BTreeSet<u64>,
    uncommitted: BTreeMap<u64, VersionObjects>,
}

#[derive(Default)]
struct VersionObjects {
    keys: Vec<Key>,
    /// Seconds since the epoch of the newest object's last modification.
    newest: i64,
}

/// The documented limits on a manifest read from a store.
pub(super) fn check_limits(manifest: &Manifest) -> std::result::Result<(), String> {
    if manifest.files.is_empty() {
        return Err("the manifest lists no files".into());
    }
    if manifest.files.len() > MAX_FILES {
        return Err(format!("the manifest lists {} files, more than the limit of {MAX_FILES}", manifest.files.len()));
    }
    let total = manifest.files.iter().try_fold(0u64, |sum, f| sum.checked_add(f.size)).unwrap_or(u64::MAX);
    if total > MAX_VERSION_BYTES {
        return Err(format!("the manifest lists {total} bytes, more than the limit of {MAX_VERSION_BYTES}"));
    }
    Ok(())
}

fn parse_index<T: for<'de> Deserialize<'de>>(body: &[u8], name: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::invalid(format!("{name} is not a valid index: {e}")))
}
