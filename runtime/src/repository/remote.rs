//! A repository in an object store (S3 and S3-compatible stores, GCS, Azure Blob) or a static
//! HTTP(S) layout: the same `<prefix>/<model>/<version>/` keys and manifests as on disk.
//!
//! **Clients.** The `object_store` crate (Apache Arrow's) speaks all four with one interface,
//! including what the guarantees below need: conditional create (`If-None-Match: *`), conditional
//! GET by ETag, multipart upload and ranged GET, with request signing (SigV4 for S3), credential
//! chains (environment, web-identity token files, instance metadata) and retries. It is built
//! with `ring` (already in the tree for TLS) instead of aws-lc, which would need a C build.
//! Credentials come from the standard variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`), which the
//! operator fills from the resource's Secret; they never appear in a URI, log or status.
//!
//! **Publishing is atomic.** A publisher first claims the version number by creating
//! `<model>/<version>/.claim` conditionally (two publishers can never own one number; an
//! automatic number moves on to the next), then uploads the files (multipart above
//! [`SINGLE_PUT_MAX`], hashing as it reads so the manifest states what was sent), and creates the
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
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
    WriteMultipart,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cache::{Cache, CacheSettings, Fetched};
use super::location::{Location, ObjectStoreKind};
use super::transport::Connector;
use super::{FileEntry, MANIFEST_FILE, Manifest, VerifiedVersion, manifest_digest, parse_version, validate_model_name};
use crate::error::{Error, Result};

/// Files up to this size go up in one PUT; larger ones as a multipart upload.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;
/// The part size of multipart uploads (S3 wants at least 5 MiB but for the last part).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight per multipart upload, which bounds a publisher's memory.
const PARTS_IN_FLIGHT: usize = 4;
/// An uncommitted version whose newest object is older than this is abandoned.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Limits on what a manifest may ask a reader to fetch.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
pub const MAX_FILES: usize = 10_000;
pub const MAX_VERSION_BYTES: u64 = 256 << 30;
/// Limit on an index object's size.
const MAX_INDEX_BYTES: u64 = 4 << 20;
/// A stalled connection fails after this long without a byte.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The root index: the models of the repository.
const MODELS_INDEX: &str = ".models.json";
/// A model's index: its committed versions and their manifest digests.
const VERSIONS_INDEX: &str = ".versions.json";
/// The object that claims a version number for one publisher.
const CLAIM: &str = ".claim";

#[derive(Debug, Default, Serialize, Deserialize)]
struct ModelsIndex {
    models: BTreeSet<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct VersionsIndex {
    /// Version number to `sha256:<hex>` of its manifest.
    versions: BTreeMap<u64, String>,
}

/// What one load fetched.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FetchReport {
    pub files_cached: usize,
    pub files_downloaded: usize,
    pub bytes_downloaded: u64,
    pub seconds: f64,
}

/// An object-store repository with its node cache.
pub struct Remote {
    io: Io,
    store: Arc<dyn ObjectStore>,
    location: Location,
    prefix: String,
    cache: Cache,
    /// The last body and ETag of each index polled.
    indexes: Mutex<HashMap<String, (String, Bytes)>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("location", &self.location.to_string()).finish_non_exhaustive()
    }
}

impl Remote {
    /// Opens the store at `location` (an object store or HTTP layout) with its cache.
    pub fn open(location: Location, cache: &CacheSettings) -> Result<Self> {
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match &location {
            Location::Object { store, bucket, prefix } => (object_store(*store, bucket)?, prefix.clone()),
            Location::Http { url } => {
                let store = object_store::http::HttpBuilder::new()
                    .with_url(url.as_str())
                    .with_client_options(client_options(url.starts_with("http://")))
                    .with_http_connector(Connector)
                    .build()
                    .map_err(|e| Error::storage(format!("opening {url}"), e))?;
                (Arc::new(store), String::new())
            }
            Location::Local(_) | Location::Oci { .. } => {
                return Err(Error::invalid(format!("{location} is not an object store or HTTP location")));
            }
        };
        Ok(Self { io: Io::new()?, store, location, prefix, cache: Cache::open(cache)?, indexes: Mutex::default() })
    }

    /// The repository's URI.
    pub fn location(&self) -> String {
        self.location.to_string()
    }

    /// Model names, from the root index, or a listing where there is none.
    pub fn models(&self) -> Result<BTreeSet<String>> {
        self.io.block_on(async {
            let models = match self.poll(&self.key(&[MODELS_INDEX])?).await? {
                Some(body) => parse_index::<ModelsIndex>(&body, MODELS_INDEX)?.models,
                None => {
                    let root = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
                    let listed = self.store.list_with_delimiter(root.as_ref()).await;
                    let listed = listed.map_err(|e| Error::storage(format!("listing {}", self.location), e))?;
                    listed.common_prefixes.iter().filter_map(|p| Some(p.filename()?.to_owned())).collect()
                }
            };
            Ok(models.into_iter().filter(|name| validate_model_name(name).is_ok()).collect())
        })
    }

    /// The committed versions of `model`, from its index, or a listing where there is none.
    pub fn versions(&self, model: &str) -> Result<BTreeSet<u64>> {
        validate_model_name(model)?;
        self.io.block_on(async {
            match self.poll(&self.key(&[model, VERSIONS_INDEX])?).await? {
                Some(body) => Ok(parse_index::<VersionsIndex>(&body, VERSIONS_INDEX)?.versions.into_keys().collect()),
                None => Ok(self.list_model(model).await?.committed),
            }
        })
    }

    /// Where a version's manifest is, for messages, and its bytes.
    pub fn manifest(&self, model: &str, version: u64) -> Result<(PathBuf, Vec<u8>)> {
        let bytes = self.io.block_on(self.manifest_bytes(model, version))?;
        Ok((self.manifest_origin(model, version), bytes.to_vec()))
    }

    fn manifest_origin(&self, model: &str, version: u64) -> PathBuf {
        PathBuf::from(format!("{}/{model}/{version}/{MANIFEST_FILE}", self.location))
    }

    /// Reads a version through the node cache: every file checked in the store, fetched into
    /// the cache if missing, verified.
    pub fn read_verified(&self, model: &str, version: u64) -> Result<VerifiedVersion> {
        let started = Instant::now();
        let fail = |reason: String| Error::Load { model: model.to_owned(), version, reason };
        let bytes = self.io.block_on(self.manifest_bytes(model, version))?;
        let manifest = Manifest::from_json(&bytes, &self.manifest_origin(model, version))?;
        check_limits(&manifest).map_err(fail)?;
        let keys: Vec<Key> =
            manifest.files.iter().map(|f| self.key(&[model, &version.to_string(), &f.path])).collect::<Result<_>>()?;
        self.io.block_on(self.check_objects(&manifest.files, &keys)).map_err(fail)?;
        let mut report = FetchReport::default();
        let mut files = BTreeMap::new();
        let mut pins = Vec::new();
        for (entry, key) in manifest.files.iter().zip(&keys) {
            let (data, pin, fetched) = self
                .cache
                .fetch(entry, &mut |offset, out| self.io.block_on(self.download(key, offset, entry.size, out)))
                .map_err(|e| match e {
                    Error::ModelFile(reason) => fail(reason),
                    other => other,
                })?;
            match fetched {
                Fetched::Cached => report.files_cached += 1,
                Fetched::Downloaded(n) => {
                    report.files_downloaded += 1;
                    report.bytes_downloaded += n;
                }
            }
            files.insert(entry.path.clone(), data);
            pins.push(pin);
        }
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            model,
            version,
            cached = report.files_cached,
            downloaded = report.files_downloaded,
            bytes = report.bytes_downloaded,
            seconds = report.seconds,
            "fetched a version"
        );
        Ok(VerifiedVersion { digest: manifest_digest(&bytes), manifest, files, fetch: Some(report), pins })
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
        if !self.location.writable() {
            return Err(Error::invalid(format!("{} is read-only: publish to a bucket or a directory", self.location)));
        }
        if explicit == Some(0) {
            return Err(Error::invalid("version numbers start at 1"));
        }
        self.io.block_on(async {
            let listing = self.list_model(model).await?;
            self.remove_abandoned(&listing).await;
            let version = self.claim(model, explicit, listing.highest).await?;
            let result = async {
                manifest.files.clear();
                for relative in sources {
                    let path = relative
                        .to_str()
                        .ok_or_else(|| Error::invalid(format!("file name {} is not UTF-8", relative.display())))?;
                    let key = self.key(&[model, &version.to_string(), path])?;
                    let (size, sha256) = self.upload(&dir.join(relative), &key).await?;
                    manifest.files.push(FileEntry { path: path.to_owned(), size, sha256 });
                }
                let bytes = manifest.to_json();
                let key = self.key(&[model, &version.to_string(), MANIFEST_FILE])?;
                self.store
                    .put_opts(&key, PutPayload::from(bytes.clone()), PutOptions::from(PutMode::Create))
                    .await
                    .map_err(|e| Error::storage(format!("committing {}", self.show(&key)), e))?;
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
            self.update_index(&self.key(&[model, VERSIONS_INDEX])?, |index: &mut VersionsIndex| {
                index.versions.insert(version, digest.clone()).as_ref() != Some(&digest)
            })
            .await?;
            self.update_index(&self.key(&[MODELS_INDEX])?, |index: &mut ModelsIndex| {
                index.models.insert(model.to_owned())
            })
            .await?;
            Ok(version)
        })
    }

    /// The key of `parts` under the prefix.
    fn key(&self, parts: &[&str]) -> Result<Key> {
        let joined = std::iter::once(self.prefix.as_str()).chain(parts.iter().copied()).filter(|p| !p.is_empty());
        let text = joined.collect::<Vec<_>>().join("/");
        Key::parse(&text).map_err(|e| Error::invalid(format!("{text:?} cannot be a key in {}: {e}", self.location)))
    }

    /// A key as users read it: the repository's URI and the path under it.
    fn show(&self, key: &Key) -> String {
        let text = key.as_ref();
        let relative = text.strip_prefix(self.prefix.as_str()).unwrap_or(text).trim_start_matches('/');
        format!("{}/{relative}", self.location)
    }

    /// An index object's body, or `None` when it does not exist. A conditional GET with the
    /// last ETag: an unchanged index costs no body.
    async fn poll(&self, key: &Key) -> Result<Option<Bytes>> {
        let known = self.indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key.as_ref()).cloned();
        let options = GetOptions { if_none_match: known.as_ref().map(|(tag, _)| tag.clone()), ..Default::default() };
        let fetched = match self.store.get_opts(key, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotModified { .. }) => return Ok(known.map(|(_, body)| body)),
            Err(object_store::Error::NotFound { .. }) => {
                self.indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key.as_ref());
                return Ok(None);
            }
            Err(e) => return Err(Error::storage(format!("reading {}", self.show(key)), e)),
        };
        if fetched.meta.size > MAX_INDEX_BYTES {
            return Err(Error::invalid(format!("{} is larger than {MAX_INDEX_BYTES} bytes", self.show(key))));
        }
        let tag = fetched.meta.e_tag.clone();
        let body = fetched.bytes().await.map_err(|e| Error::storage(format!("reading {}", self.show(key)), e))?;
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
        let name = self.show(key);
        for _ in 0..16 {
            let (mut index, mode) = match self.store.get(key).await {
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
            match self.store.put_opts(key, body.clone(), PutOptions::from(mode)).await {
                Ok(_) => return Ok(()),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    self.store.put(key, body).await.map_err(|e| Error::storage(format!("writing {name}"), e))?;
                    return Ok(());
                }
                Err(e) => return Err(Error::storage(format!("writing {name}"), e)),
            }
        }
        Err(Error::invalid(format!("{name} kept changing under 16 conditional updates")))
    }

    async fn manifest_bytes(&self, model: &str, version: u64) -> Result<Bytes> {
        let key = self.key(&[model, &version.to_string(), MANIFEST_FILE])?;
        let fail = |reason: String| Error::Load { model: model.to_owned(), version, reason };
        let fetched = self.store.get(&key).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => fail(format!("{} does not exist", self.show(&key))),
            e => Error::storage(format!("reading {}", self.show(&key)), e),
        })?;
        if fetched.meta.size > MAX_MANIFEST_BYTES {
            return Err(fail(format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        fetched.bytes().await.map_err(|e| Error::storage(format!("reading {}", self.show(&key)), e))
    }

    /// Every listed object exists with the manifest's size.
    async fn check_objects(&self, files: &[FileEntry], keys: &[Key]) -> std::result::Result<(), String> {
        let heads = futures::stream::iter(keys.iter().map(|key| self.store.head(key))).buffered(16).collect::<Vec<_>>();
        for ((entry, key), head) in files.iter().zip(keys).zip(heads.await) {
            match head {
                Ok(meta) if meta.size == entry.size => {}
                Ok(meta) => {
                    return Err(format!(
                        "{} is {} bytes in the store, the manifest says {}",
                        self.show(key),
                        meta.size,
                        entry.size
                    ));
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(format!("the manifest lists {} but the store has no such object", self.show(key)));
                }
                Err(e) => return Err(format!("checking {}: {e}", self.show(key))),
            }
        }
        Ok(())
    }

    /// Streams the object's bytes from `offset` to `size` into `out`.
    async fn download(&self, key: &Key, offset: u64, size: u64, out: &mut dyn Write) -> Result<()> {
        let options = GetOptions { range: Some(GetRange::Bounded(offset..size)), ..Default::default() };
        let fetched = self
            .store
            .get_opts(key, options)
            .await
            .map_err(|e| Error::storage(format!("reading {}", self.show(key)), e))?;
        let mut chunks = fetched.into_stream();
        loop {
            let next = tokio::time::timeout(READ_TIMEOUT, chunks.next()).await.map_err(|_| {
                Error::ModelFile(format!("{} stalled: no bytes for {}s", self.show(key), READ_TIMEOUT.as_secs()))
            })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| Error::storage(format!("reading {}", self.show(key)), e))?;
            out.write_all(&chunk).map_err(|e| Error::io(format!("storing {}", self.show(key)), e))?;
        }
        Ok(())
    }

    /// Uploads a file, hashing it as it is read; returns its size and sha256.
    async fn upload(&self, path: &Path, key: &Key) -> Result<(u64, String)> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let length = file.metadata().map_err(|e| Error::io(format!("inspecting {}", path.display()), e))?.len();
        let mut hasher = Sha256::new();
        let read_error = |e| Error::io(format!("reading {}", path.display()), e);
        let write_error = |e| Error::storage(format!("uploading {}", self.show(key)), e);
        if length <= SINGLE_PUT_MAX {
            let mut bytes = Vec::with_capacity(length as usize);
            (&mut file).take(SINGLE_PUT_MAX + 1).read_to_end(&mut bytes).map_err(read_error)?;
            hasher.update(&bytes);
            let size = bytes.len() as u64;
            self.store.put(key, PutPayload::from(bytes)).await.map_err(write_error)?;
            return Ok((size, hex::encode(hasher.finalize())));
        }
        let upload = self.store.put_multipart(key).await.map_err(write_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        let sent: Result<()> = async {
            loop {
                let n = file.read(&mut buf).map_err(read_error)?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(write_error)?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => writer.finish().await.map_err(write_error)?,
            Err(error) => {
                let _ = writer.abort().await;
                return Err(error);
            }
        };
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Claims `explicit`, or the first free number above `highest`.
    async fn claim(&self, model: &str, explicit: Option<u64>, highest: u64) -> Result<u64> {
        let mut version = explicit.unwrap_or(highest + 1);
        let body = serde_json::json!({
            "pid": std::process::id(),
            "host": std::env::var("HOSTNAME").unwrap_or_default(),
        });
        for _ in 0..100 {
            let key = self.key(&[model, &version.to_string(), CLAIM])?;
            let payload = PutPayload::from(body.to_string());
            match self.store.put_opts(&key, payload, PutOptions::from(PutMode::Create)).await {
                Ok(_) => return Ok(version),
                Err(object_store::Error::AlreadyExists { .. }) if explicit.is_none() => version += 1,
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Err(Error::invalid(format!(
                        "version {version} already exists in {}/{model}",
                        self.location
                    )));
                }
                Err(e) => return Err(Error::storage(format!("claiming {}", self.show(&key)), e)),
            }
        }
        Err(Error::invalid(format!("no free version number in {}/{model} after 100 tries", self.location)))
    }

    /// The model's objects by version.
    async fn list_model(&self, model: &str) -> Result<ModelListing> {
        let prefix = self.key(&[model])?;
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::storage(format!("listing {}", self.show(&prefix)), e))?;
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
                    tracing::info!(key = %self.show(key), "removing an abandoned upload");
                    let _ = self.store.delete(key).await;
                }
            }
        }
    }

    async fn remove_version(&self, model: &str, version: u64) {
        let Ok(prefix) = self.key(&[model, &version.to_string()]) else { return };
        let objects: Vec<_> = self.store.list(Some(&prefix)).filter_map(|o| async { o.ok() }).collect().await;
        for object in objects.iter().filter(|o| o.location.filename() != Some(CLAIM)) {
            let _ = self.store.delete(&object.location).await;
        }
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
fn check_limits(manifest: &Manifest) -> std::result::Result<(), String> {
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

/// The client settings every store gets: plain http only where the endpoint is (a server on
/// loopback); timeouts are the transport's and the download loop's.
fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new().with_allow_http(allow_http)
}

/// A store client configured from the environment's standard variables for its kind.
fn object_store(kind: ObjectStoreKind, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let env = |prefix: &str| -> Vec<(String, String)> {
        std::env::vars().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()
    };
    let allow_http = |vars: &[(String, String)]| {
        vars.iter().any(|(k, v)| {
            (k.ends_with("_allow_http") && v == "true") || (k.contains("endpoint") && v.starts_with("http://"))
        })
    };
    let failed = |e| Error::storage(format!("configuring {}://{bucket}", kind.scheme()), e);
    let store: Arc<dyn ObjectStore> = match kind {
        ObjectStoreKind::S3 => {
            let vars = env("AWS_");
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_http_connector(Connector)
                .with_client_options(client_options(allow_http(&vars)));
            for (key, value) in vars {
                if let Ok(key) = key.parse() {
                    builder = builder.with_config(key, value);
                }
            }
            Arc::new(builder.with_bucket_name(bucket).build().map_err(failed)?)
        }
        ObjectStoreKind::Gcs => {
            let vars = env("GOOGLE_");
            let mut builder = object_store::gcp::GoogleCloudStorageBuilder::new()
                .with_http_connector(Connector)
                .with_client_options(client_options(allow_http(&vars)));
            for (key, value) in vars {
                if let Ok(key) = key.parse() {
                    builder = builder.with_config(key, value);
                }
            }
            Arc::new(builder.with_bucket_name(bucket).build().map_err(failed)?)
        }
        ObjectStoreKind::Azure => {
            let vars = env("AZURE_");
            let mut builder = object_store::azure::MicrosoftAzureBuilder::new()
                .with_http_connector(Connector)
                .with_client_options(client_options(allow_http(&vars)));
            for (key, value) in vars {
                if let Ok(key) = key.parse() {
                    builder = builder.with_config(key, value);
                }
            }
            Arc::new(builder.with_container_name(bucket).build().map_err(failed)?)
        }
    };
    Ok(store)
}

/// The storage clients' own runtime, so that the repository's blocking interface works from
/// any thread that is not itself running async tasks (loaders run on the blocking pool).
struct Io(Option<tokio::runtime::Runtime>);

impl Io {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lantern-storage")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the storage client's runtime", e))?;
        Ok(Self(Some(runtime)))
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.as_ref().expect("the runtime lives until drop; this is a bug").block_on(future)
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // A runtime dropped on an async thread would panic; this one's tasks need no waiting.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
