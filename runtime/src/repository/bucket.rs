//! An object store at a key prefix, as the repository and the training states use it: the
//! store's client built from a [`Location`] and the environment, the runtime the clients run on
//! behind a blocking interface, and streaming uploads and downloads. [`ObjectDir`] is the same
//! for plain files (a training job's states) outside any model layout.
//!
//! **Clients.** The `object_store` crate (Apache Arrow's) speaks S3, GCS, Azure Blob and HTTP
//! with one interface, including what the repository's guarantees need: conditional create
//! (`If-None-Match: *`), conditional GET by ETag, multipart upload and ranged GET, with request
//! signing (SigV4 for S3), credential chains (environment, web-identity token files, instance
//! metadata) and retries. It is built with `ring` (already in the tree for TLS) instead of
//! aws-lc, which would need a C build, and on the transport in [`super::transport`]. Credentials
//! come from the standard variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`), which the operator fills
//! from the resource's Secret; they never appear in a URI, log or status.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use super::RemoteSettings;
use super::location::{Location, ObjectStoreKind};
use super::transport::Connector;
use crate::error::{Error, Result};

/// Files up to this size go up in one PUT; larger ones as a multipart upload.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;
/// The part size of multipart uploads (S3 wants at least 5 MiB but for the last part).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight per multipart upload, which bounds an uploader's memory.
const PARTS_IN_FLIGHT: usize = 4;
/// A store client at a key prefix.
pub(super) struct Bucket {
    pub(super) io: Io,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) location: Location,
    /// Keys' common prefix, without slashes around it (empty for the bucket's root).
    pub(super) prefix: String,
    /// A download fails after this long without a byte.
    read_timeout: Duration,
}

impl Bucket {
    /// The store at `location` (an object store or HTTP layout); a download fails after
    /// `read_timeout` without a byte.
    pub(super) fn open(location: Location, read_timeout: Duration) -> Result<Self> {
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
        Ok(Self { io: Io::new()?, store, location, prefix, read_timeout })
    }

    /// The key of `parts` under the prefix.
    pub(super) fn key(&self, parts: &[&str]) -> Result<Key> {
        let joined = std::iter::once(self.prefix.as_str()).chain(parts.iter().copied()).filter(|p| !p.is_empty());
        let text = joined.collect::<Vec<_>>().join("/");
        Key::parse(&text).map_err(|e| Error::invalid(format!("{text:?} cannot be a key in {}: {e}", self.location)))
    }

    /// A key as users read it: the repository's URI and the path under it.
    pub(super) fn show(&self, key: &Key) -> String {
        let text = key.as_ref();
        let relative = text.strip_prefix(self.prefix.as_str()).unwrap_or(text).trim_start_matches('/');
        format!("{}/{relative}", self.location)
    }

    /// Streams the object's bytes `range` into `out`.
    pub(super) async fn download(&self, key: &Key, range: Range<u64>, out: &mut dyn Write) -> Result<()> {
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let fetched = self
            .store
            .get_opts(key, options)
            .await
            .map_err(|e| Error::storage(format!("reading {}", self.show(key)), e))?;
        let mut chunks = fetched.into_stream();
        loop {
            let next = tokio::time::timeout(self.read_timeout, chunks.next()).await.map_err(|_| {
                Error::ModelFile(format!("{} stalled: no bytes for {:?}", self.show(key), self.read_timeout))
            })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| Error::storage(format!("reading {}", self.show(key)), e))?;
            out.write_all(&chunk).map_err(|e| Error::io(format!("storing {}", self.show(key)), e))?;
        }
        Ok(())
    }

    /// Deletes every object under `prefix` that `keep` does not name; tries them all and
    /// returns the first failure.
    pub(super) async fn remove_under(&self, prefix: &Key, keep: impl Fn(&Key) -> bool) -> Result<()> {
        let objects: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| Error::storage(format!("listing {}", self.show(prefix)), e))?;
        let mut first_failure = Ok(());
        for object in objects.iter().filter(|o| !keep(&o.location)) {
            if let Err(e) = self.store.delete(&object.location).await
                && first_failure.is_ok()
            {
                first_failure = Err(Error::storage(format!("deleting {}", self.show(&object.location)), e));
            }
        }
        first_failure
    }

    /// Uploads a file, hashing it as it is read; returns its size and sha256.
    pub(super) async fn upload(&self, path: &Path, key: &Key) -> Result<(u64, String)> {
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
}

/// Plain files under a URI prefix (`s3://BUCKET/PREFIX`, …), outside any model layout: where a
/// training job on a remote repository keeps its states.
pub struct ObjectDir {
    bucket: Bucket,
}

impl std::fmt::Debug for ObjectDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectDir").field("location", &self.bucket.location.to_string()).finish_non_exhaustive()
    }
}

impl ObjectDir {
    /// The prefix at `uri`, which must name an object store (it is written).
    pub fn open(uri: &str) -> Result<Self> {
        let location = Location::parse(uri)?;
        if !matches!(location, Location::Object { .. }) {
            return Err(Error::invalid(format!("{location} is not an object store location (s3://, gs://, az://)")));
        }
        Ok(Self { bucket: Bucket::open(location, RemoteSettings::DEFAULT_READ_TIMEOUT)? })
    }

    /// The prefix's URI.
    pub fn location(&self) -> String {
        self.bucket.location.to_string()
    }

    /// Uploads the file at `path` as `relative`; returns its size and sha256.
    pub fn put(&self, relative: &str, path: &Path) -> Result<(u64, String)> {
        let key = self.bucket.key(&[relative])?;
        self.bucket.io.block_on(self.bucket.upload(path, &key))
    }

    /// Downloads `relative` into `path` (through a temporary file beside it); `false` when there
    /// is no such object.
    pub fn get(&self, relative: &str, path: &Path) -> Result<bool> {
        let key = self.bucket.key(&[relative])?;
        let size = match self.bucket.io.block_on(self.bucket.store.head(&key)) {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(Error::storage(format!("reading {}", self.bucket.show(&key)), e)),
        };
        let partial = path.with_extension("partial");
        let mut file =
            std::fs::File::create(&partial).map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
        if size > 0 {
            self.bucket.io.block_on(self.bucket.download(&key, 0..size, &mut file))?;
        }
        file.sync_all().map_err(|e| Error::io(format!("syncing {}", partial.display()), e))?;
        std::fs::rename(&partial, path).map_err(|e| Error::io(format!("renaming {}", partial.display()), e))?;
        Ok(true)
    }

    /// The names directly under the prefix that hold objects (its "subdirectories").
    pub fn subdirs(&self) -> Result<BTreeSet<String>> {
        let prefix = (!self.bucket.prefix.is_empty()).then(|| Key::from(self.bucket.prefix.as_str()));
        let listed = self.bucket.io.block_on(self.bucket.store.list_with_delimiter(prefix.as_ref()));
        let listed = listed.map_err(|e| Error::storage(format!("listing {}", self.bucket.location), e))?;
        Ok(listed.common_prefixes.iter().filter_map(|p| Some(p.filename()?.to_owned())).collect())
    }

    /// Deletes every object under `relative`.
    pub fn remove(&self, relative: &str) -> Result<()> {
        let prefix = self.bucket.key(&[relative])?;
        self.bucket.io.block_on(self.bucket.remove_under(&prefix, |_| false))
    }
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
    // Every variable of the store's prefix that its builder knows, by its lower-cased name.
    macro_rules! configured {
        ($builder:expr, $prefix:literal) => {{
            let vars = env($prefix);
            let mut builder =
                $builder.with_http_connector(Connector).with_client_options(client_options(allow_http(&vars)));
            for (key, value) in vars {
                if let Ok(key) = key.parse() {
                    builder = builder.with_config(key, value);
                }
            }
            builder
        }};
    }
    let store: Arc<dyn ObjectStore> = match kind {
        ObjectStoreKind::S3 => Arc::new(
            configured!(object_store::aws::AmazonS3Builder::new(), "AWS_")
                .with_bucket_name(bucket)
                .build()
                .map_err(failed)?,
        ),
        ObjectStoreKind::Gcs => Arc::new(
            configured!(object_store::gcp::GoogleCloudStorageBuilder::new(), "GOOGLE_")
                .with_bucket_name(bucket)
                .build()
                .map_err(failed)?,
        ),
        ObjectStoreKind::Azure => Arc::new(
            configured!(object_store::azure::MicrosoftAzureBuilder::new(), "AZURE_")
                .with_container_name(bucket)
                .build()
                .map_err(failed)?,
        ),
    };
    Ok(store)
}

/// The storage clients' own runtime, so that the repository's blocking interface works from
/// any thread that is not itself running async tasks (loaders run on the blocking pool).
pub(super) struct Io(Option<tokio::runtime::Runtime>);

impl Io {
    pub(super) fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lantern-storage")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the storage client's runtime", e))?;
        Ok(Self(Some(runtime)))
    }

    pub(super) fn block_on<F: Future>(&self, future: F) -> F::Output {
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
