//! A repository in an OCI registry (`oci://REGISTRY/PREFIX`): each model is the registry
//! repository `PREFIX/MODEL`, each version one artifact tagged with its number. The artifact's
//! config blob is the version's `manifest.json` (so its digest is the version's manifest digest,
//! as elsewhere), and its layers are the version's files, each addressed by its sha256 (the node
//! cache's own key) and titled with its path.
//!
//! **Client.** The distribution API (OCI distribution spec 1.1) over the same hyper and rustls
//! transport as the object stores, rather than the `oci-client` crate: that crate's TLS comes
//! through reqwest's rustls feature, which in this workspace would either build aws-lc or make
//! every reqwest client (the devcluster's probes, the tests) need a process-wide crypto provider
//! installed first. What a repository needs of the API is small: tags, manifests and blobs by
//! digest, monolithic blob uploads, and the catalog. Registries are reached over https, or plain
//! http on loopback (`localhost`, `127.0.0.0/8`, `[::1]`). A registry that answers 401 gets
//! what its challenge asks for: Basic credentials, or a Bearer token from its token service
//! (asked with the credentials, if any); the credentials come from `LANTERN_OCI_USERNAME` and
//! `LANTERN_OCI_PASSWORD` or a Docker config file ([`registry_auth`](super::registry_auth)),
//! and go to no other host (a redirected blob read gets none).
//!
//! **Publishing.** Files are hashed, uploaded unless the registry has the blob already, the
//! config blob last, then the manifest is put under the version's tag. A tag appears whole or
//! not at all, so readers never see a partial version. The registry has no conditional tag
//! write: a publisher checks that the tag is free just before writing it, which leaves a short
//! window in which two publishers of one number could both write it (the last wins).
//!
//! **Reading.** Versions are the tags that are version numbers (listed at each poll); a
//! manifest or config of an unknown media type is refused; every layer must match the file the
//! config lists (digest and size) and is fetched into the node cache with ranged, resumable GETs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use futures::TryStreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bucket::Io;
use super::cache::{Cache, FetchReport};
use super::registry_auth;
use super::remote::{MAX_MANIFEST_BYTES, check_limits};
use super::transport::{RESPONSE_TIMEOUT, https_client};
use super::{
    FileEntry, MANIFEST_FILE, Manifest, RemoteSettings, VerifiedVersion, manifest_digest, parse_version,
    validate_model_name,
};
use crate::error::{Error, Result};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The artifact type and its blobs' media types.
const ARTIFACT_TYPE: &str = "application/vnd.lantern.model.v1";
const CONFIG_TYPE: &str = "application/vnd.lantern.model.manifest.v1+json";
const FILE_TYPE: &str = "application/vnd.lantern.model.file.v1";
/// The layer annotation that names a file's path in the version.
const TITLE: &str = "org.opencontainers.image.title";
/// Limit on what the registry's JSON answers (tags, catalog, manifests) may take.
const MAX_JSON_BYTES: usize = 4 << 20;

type Body = BoxBody<Bytes, std::io::Error>;

/// An OCI descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// An OCI image manifest carrying a version.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    schema_version: u32,
    media_type: String,
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// A token service's answer (either field, per the distribution token spec).
#[derive(Debug, Deserialize)]
struct Token {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Catalog {
    #[serde(default)]
    repositories: Vec<String>,
}

/// A registry repository prefix with its node cache.
pub struct Oci {
    io: Io,
    client: Client<HttpsConnector<TcpConnector>, Body>,
    /// `http(s)://REGISTRY`.
    base: String,
    registry: String,
    prefix: String,
    cache: Cache,
    /// A download fails after this long without a byte.
    read_timeout: std::time::Duration,
    /// The username and password from the environment, if any.
    credentials: Option<(String, String)>,
    /// What the registry last asked for, sent with every request to it.
    authorization: std::sync::Mutex<Option<http::HeaderValue>>,
}

impl std::fmt::Debug for Oci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oci").field("location", &self.location()).finish_non_exhaustive()
    }
}

/// Whether a registry host is on loopback, where plain http is the norm.
fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(host, port)| match port.parse::<u16>() {
        Ok(_) => host,
        Err(_) => registry,
    });
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

impl Oci {
    /// The registry repository prefix `registry/prefix`, read as `settings` say.
    pub fn open(registry: &str, prefix: &str, settings: &RemoteSettings) -> Result<Self> {
        let plain = is_loopback(registry);
        let client = https_client(plain).map_err(|e| Error::invalid(format!("TLS for oci://{registry}: {e}")))?;
        let scheme = if plain { "http" } else { "https" };
        Ok(Self {
            io: Io::new()?,
            client,
            base: format!("{scheme}://{registry}"),
            registry: registry.to_owned(),
            prefix: prefix.to_owned(),
            cache: Cache::open(&settings.cache)?,
            read_timeout: settings.read_timeout,
            credentials: registry_auth::credentials(registry)?,
            authorization: std::sync::Mutex::default(),
        })
    }

    /// The repository's URI.
    pub fn location(&self) -> String {
        format!("oci://{}/{}", self.registry, self.prefix)
    }

    /// Model names: the registry's repositories directly under the prefix, read from its
    /// catalog a page at a time.
    pub fn models(&self) -> Result<BTreeSet<String>> {
        const PAGE: usize = 1000;
        let inside = format!("{}/", self.prefix);
        self.io.block_on(async {
            let mut models = BTreeSet::new();
            let mut last: Option<String> = None;
            for _ in 0..1000 {
                let after = last.as_deref().map(|l| format!("&last={l}")).unwrap_or_default();
                let body = self.get_json(&format!("/v2/_catalog?n={PAGE}{after}"), "application/json").await?;
                let catalog: Catalog = parse(&body.unwrap_or_default(), "the registry's catalog")?;
                let page = catalog.repositories.len();
                last = catalog.repositories.last().cloned();
                models.extend(
                    catalog
                        .repositories
                        .iter()
                        .filter_map(|r| r.strip_prefix(&inside))
                        .filter(|m| validate_model_name(m).is_ok())
                        .map(str::to_owned),
                );
                if page < PAGE {
                    break;
                }
            }
            Ok(models)
        })
    }

    /// The versions of `model`: its tags that are version numbers.
    pub fn versions(&self, model: &str) -> Result<BTreeSet<u64>> {
        validate_model_name(model)?;
        self.io.block_on(self.tags(model))
    }

    /// Where a version's manifest is, for messages, and its bytes (the artifact's config).
    pub fn manifest(&self, model: &str, version: u64) -> Result<(PathBuf, Vec<u8>)> {
        let (_, bytes) = self.io.block_on(self.artifact(model, version))?;
        Ok((self.origin(model, version), bytes.to_vec()))
    }

    /// Reads a version through the node cache, every layer checked against the file it carries.
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
        let (artifact, bytes) = self.io.block_on(self.artifact(model, version))?;
        let manifest = Manifest::from_json(&bytes, &self.origin(model, version))?;
        check_limits(&manifest).map_err(fail)?;
        let mut titled = BTreeMap::new();
        for layer in &artifact.layers {
            if layer.media_type != FILE_TYPE {
                return Err(fail(format!("a layer has the unknown media type {:?}", layer.media_type)));
            }
            titled.insert(layer.annotations.get(TITLE).cloned().unwrap_or_default(), layer);
        }
        let mut layers = Vec::new();
        for entry in &manifest.files {
            let layer = titled.get(&entry.path).ok_or_else(|| fail(format!("no layer carries {}", entry.path)))?;
            if layer.digest != format!("sha256:{}", entry.sha256) || layer.size != entry.size {
                return Err(fail(format!(
                    "the layer of {} is {} ({} bytes), the manifest says sha256:{} ({} bytes)",
                    entry.path, layer.digest, layer.size, entry.sha256, entry.size
                )));
            }
            layers.push(*layer);
        }
        let name = self.name(model);
        let fetched = self.cache.fetch_version(
            &manifest.files,
            read,
            |index, range, out| self.io.block_on(self.download(&name, layers[index], range, out)),
            fail,
        )?;
        Ok(fetched.into_verified(manifest, &bytes))
    }

    /// Publishes the files `sources` (relative to `dir`) with `manifest` as `model`'s version
    /// `explicit`, or the next number.
    pub fn publish(
        &self,
        model: &str,
        explicit: Option<u64>,
        dir: &Path,
        mut manifest: Manifest,
        sources: &[PathBuf],
    ) -> Result<u64> {
        if explicit == Some(0) {
            return Err(Error::invalid("version numbers start at 1"));
        }
        let name = self.name(model);
        self.io.block_on(async {
            let version = match explicit {
                Some(version) => version,
                None => self.tags(model).await?.last().copied().unwrap_or(0) + 1,
            };
            manifest.files.clear();
            let mut layers = Vec::new();
            for relative in sources {
                let path = relative
                    .to_str()
                    .ok_or_else(|| Error::invalid(format!("file name {} is not UTF-8", relative.display())))?;
                let (size, sha256) = hash_file(&dir.join(relative))?;
                let digest = format!("sha256:{sha256}");
                self.push_blob(&name, &digest, size, BlobSource::File(&dir.join(relative))).await?;
                let annotations = BTreeMap::from([(TITLE.to_owned(), path.to_owned())]);
                layers.push(Descriptor { media_type: FILE_TYPE.into(), digest, size, annotations });
                manifest.files.push(FileEntry { path: path.to_owned(), size, sha256 });
            }
            let config = manifest.to_json();
            let config_digest = manifest_digest(&config);
            let size = config.len() as u64;
            self.push_blob(&name, &config_digest, size, BlobSource::Bytes(Bytes::from(config))).await?;
            let artifact = ArtifactManifest {
                schema_version: 2,
                media_type: OCI_MANIFEST.into(),
                artifact_type: Some(ARTIFACT_TYPE.into()),
                config: Descriptor {
                    media_type: CONFIG_TYPE.into(),
                    digest: config_digest,
                    size,
                    annotations: BTreeMap::new(),
                },
                layers,
            };
            let tag = format!("/v2/{name}/manifests/{version}");
            if self.exists(&tag, OCI_MANIFEST).await? {
                return Err(Error::invalid(format!("version {version} already exists in {}/{model}", self.location())));
            }
            let body = Bytes::from(serde_json::to_vec(&artifact).expect("a manifest serializes; this is a bug"));
            let put = || {
                let request = self.request(Method::PUT, &tag).header(header::CONTENT_TYPE, OCI_MANIFEST);
                request.body(full(body.clone())).map_err(bad_request)
            };
            let response = self.send(put).await?;
            expect(response, &[StatusCode::CREATED], &format!("putting the manifest of {name}:{version}")).await?;
            Ok(version)
        })
    }

    fn name(&self, model: &str) -> String {
        format!("{}/{model}", self.prefix)
    }

    fn origin(&self, model: &str, version: u64) -> PathBuf {
        PathBuf::from(format!("{}/{model}:{version} ({MANIFEST_FILE})", self.location()))
    }

    async fn tags(&self, model: &str) -> Result<BTreeSet<u64>> {
        let body = self.get_json(&format!("/v2/{}/tags/list", self.name(model)), "application/json").await?;
        let Some(body) = body else { return Ok(BTreeSet::new()) };
        let list: TagList = parse(&body, "a tag list")?;
        Ok(list.tags.unwrap_or_default().iter().filter_map(|t| parse_version(t)).collect())
    }

    /// The artifact of a version and its config blob (the version's manifest).
    async fn artifact(&self, model: &str, version: u64) -> Result<(ArtifactManifest, Bytes)> {
        let fail = |reason: String| Error::Load { model: model.to_owned(), version, reason };
        let name = self.name(model);
        let body = self.get_json(&format!("/v2/{name}/manifests/{version}"), OCI_MANIFEST).await?;
        let body = body.ok_or_else(|| fail(format!("{} has no tag {version}", self.location())))?;
        let artifact: ArtifactManifest = parse(&body, "the version's OCI manifest").map_err(|e| fail(e.to_string()))?;
        if artifact.media_type != OCI_MANIFEST || artifact.config.media_type != CONFIG_TYPE {
            return Err(fail(format!(
                "an OCI manifest of media type {:?} with a config of {:?} is not a Lantern version (expected {OCI_MANIFEST} \
                 with {CONFIG_TYPE})",
                artifact.media_type, artifact.config.media_type
            )));
        }
        if artifact.config.size > MAX_MANIFEST_BYTES {
            return Err(fail(format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let mut config = Vec::new();
        self.download(&name, &artifact.config, 0..artifact.config.size, &mut config).await?;
        if manifest_digest(&config) != artifact.config.digest {
            return Err(fail(format!("the config blob does not have its digest {}", artifact.config.digest)));
        }
        Ok((artifact, Bytes::from(config)))
    }

    /// Streams the bytes `range` of blob `descriptor` of `name` into `out`.
    async fn download(
        &self,
        name: &str,
        descriptor: &Descriptor,
        range: Range<u64>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let path = format!("/v2/{name}/blobs/{}", descriptor.digest);
        let whole = range == (0..descriptor.size);
        let ranged = |request: http::request::Builder| match whole {
            true => request,
            false => request.header(header::RANGE, format!("bytes={}-{}", range.start, range.end.saturating_sub(1))),
        };
        let get = || ranged(self.request(Method::GET, &path)).body(empty()).map_err(bad_request);
        let mut response = self.send(get).await?;
        // Registries on object storage redirect blob reads to the store.
        if response.status().is_redirection()
            && let Some(location) = response.headers().get(header::LOCATION).and_then(|l| l.to_str().ok())
        {
            // Another host (a presigned URL): none of the registry's credentials go there.
            let redirected = ranged(Request::get(location)).body(empty()).map_err(bad_request)?;
            response = self.send_once(redirected).await?;
        }
        let expected = if whole { StatusCode::OK } else { StatusCode::PARTIAL_CONTENT };
        if response.status() != expected {
            return Err(Error::ModelFile(format!(
                "reading blob {} of {name}: the registry answered {}",
                descriptor.digest,
                response.status()
            )));
        }
        // A registry that sends more than the descriptor says is refused before it sizes anything.
        let mut remaining = range.end - range.start;
        let mut body = response.into_body();
        loop {
            let frame = tokio::time::timeout(self.read_timeout, body.frame()).await.map_err(|_| {
                Error::ModelFile(format!("blob {} stalled: no bytes for {:?}", descriptor.digest, self.read_timeout))
            })?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| Error::ModelFile(format!("reading blob {}: {e}", descriptor.digest)))?;
            if let Ok(data) = frame.into_data() {
                remaining = remaining.checked_sub(data.len() as u64).ok_or_else(|| {
                    Error::ModelFile(format!("blob {} is larger than its {} bytes", descriptor.digest, descriptor.size))
                })?;
                out.write_all(&data).map_err(|e| Error::io(format!("storing blob {}", descriptor.digest), e))?;
            }
        }
        Ok(())
    }

    /// Uploads a blob unless the registry has it: one POST for the session, one PUT with it all.
    async fn push_blob(&self, name: &str, digest: &str, size: u64, source: BlobSource<'_>) -> Result<()> {
        if self.exists(&format!("/v2/{name}/blobs/{digest}"), "*/*").await? {
            return Ok(());
        }
        let uploads = format!("/v2/{name}/blobs/uploads/");
        let response = self.send(|| self.request(Method::POST, &uploads).body(empty()).map_err(bad_request)).await?;
        let response = expect(response, &[StatusCode::ACCEPTED], &format!("starting the upload of {digest}")).await?;
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| Error::invalid(format!("the registry gave no upload location for {digest}")))?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = match location.starts_with("http://") || location.starts_with("https://") {
            true => format!("{location}{separator}digest={digest}"),
            false => format!("{}{location}{separator}digest={digest}", self.base),
        };
        let put = || {
            let body = match &source {
                BlobSource::Bytes(bytes) => full(bytes.clone()),
                BlobSource::File(path) => {
                    let file =
                        std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                    let frames = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20)
                        .map_ok(Frame::data);
                    BodyExt::boxed(StreamBody::new(frames))
                }
            };
            let request = Request::put(&url)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, size);
            request.body(body).map_err(bad_request)
        };
        let response = self.send(put).await?;
        expect(response, &[StatusCode::CREATED], &format!("uploading {digest}")).await?;
        Ok(())
    }

    /// Whether a HEAD of `path` finds something.
    async fn exists(&self, path: &str, accept: &str) -> Result<bool> {
        let head =
            || self.request(Method::HEAD, path).header(header::ACCEPT, accept).body(empty()).map_err(bad_request);
        let response = self.send(head).await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(Error::invalid(format!("HEAD {path} at {}: the registry answered {status}", self.registry))),
        }
    }

    /// A JSON document, bounded; `None` on 404.
    async fn get_json(&self, path: &str, accept: &str) -> Result<Option<Bytes>> {
        let get = || self.request(Method::GET, path).header(header::ACCEPT, accept).body(empty()).map_err(bad_request);
        let response = self.send(get).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = expect(response, &[StatusCode::OK], &format!("GET {path}")).await?;
        let limited = http_body_util::Limited::new(response.into_body(), MAX_JSON_BYTES);
        let body = limited.collect().await.map_err(|e| {
            Error::invalid(format!("GET {path} at {}: {e} (limit {MAX_JSON_BYTES} bytes)", self.registry))
        })?;
        Ok(Some(body.to_bytes()))
    }

    fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder().method(method).uri(format!("{}{path}", self.base))
    }

    /// Sends the request `build` makes with the registry's credentials. On a 401 the challenge
    /// is answered (Basic with the credentials, or a Bearer token from the challenge's realm,
    /// asked with them if there are any) and the request made again.
    async fn send(&self, build: impl Fn() -> Result<Request<Body>>) -> Result<Response<Incoming>> {
        let response = self.send_once(self.authorized(build()?)).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
        let authorization = self.answer(challenge.unwrap_or_default()).await?;
        *self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(authorization);
        self.send_once(self.authorized(build()?)).await
    }

    /// `request` with the Authorization the registry last asked for.
    fn authorized(&self, mut request: Request<Body>) -> Request<Body> {
        let known = self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(value) = known {
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        request
    }

    /// The Authorization that answers `challenge` (a `WWW-Authenticate` value).
    async fn answer(&self, challenge: &str) -> Result<http::HeaderValue> {
        let needs = |what: &str| {
            Error::invalid(format!(
                "oci://{} asks for {what}: set {} and {}, or give {} a Docker config file with its \
                 credentials (from the repository's Secret)",
                self.registry,
                lantern_contract::env::OCI_USERNAME,
                lantern_contract::env::OCI_PASSWORD,
                lantern_contract::env::OCI_AUTH_FILE
            ))
        };
        let basic = self.credentials.as_ref().map(|(user, password)| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        });
        let (scheme, params) = parse_challenge(challenge);
        let value = match scheme.to_ascii_lowercase().as_str() {
            "basic" => basic.ok_or_else(|| needs("a username and password"))?,
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| needs("a token from an unnamed realm"))?;
                let query: Vec<String> = ["service", "scope"]
                    .iter()
                    .filter_map(|key| Some(format!("{key}={}", params.get(*key)?)))
                    .collect();
                let separator = if realm.contains('?') { '&' } else { '?' };
                let mut request = Request::get(format!("{realm}{separator}{}", query.join("&")));
                if let Some(basic) = &basic {
                    request = request.header(header::AUTHORIZATION, basic);
                }
                let response = self.send_once(request.body(empty()).map_err(bad_request)?).await?;
                if response.status() == StatusCode::UNAUTHORIZED {
                    return Err(needs("credentials its token service accepts"));
                }
                let response = expect(response, &[StatusCode::OK], &format!("a token from {realm}")).await?;
                let body = http_body_util::Limited::new(response.into_body(), MAX_JSON_BYTES).collect().await;
                let body = body.map_err(|e| Error::invalid(format!("a token from {realm}: {e}")))?.to_bytes();
                let token: Token = parse(&body, "the token service's answer")?;
                let token =
                    token.token.or(token.access_token).ok_or_else(|| needs("a token its service did not give"))?;
                format!("Bearer {token}")
            }
            _ => return Err(needs(&format!("authentication of an unknown kind ({challenge:?})"))),
        };
        http::HeaderValue::from_str(&value).map_err(|_| needs("credentials that cannot go in a header"))
    }

    async fn send_once(&self, request: Request<Body>) -> Result<Response<Incoming>> {
        let what = format!("{} {}", request.method(), request.uri().path());
        tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| {
                Error::invalid(format!("{what} at {}: no answer in {}s", self.registry, RESPONSE_TIMEOUT.as_secs()))
            })?
            .map_err(|e| Error::invalid(format!("{what} at {}: {e}", self.registry)))
    }
}

/// What a blob upload sends.
enum BlobSource<'a> {
    Bytes(Bytes),
    File(&'a Path),
}

/// The response if its status is one of `ok`, else an error with the registry's answer.
async fn expect(response: Response<Incoming>, ok: &[StatusCode], what: &str) -> Result<Response<Incoming>> {
    if ok.contains(&response.status()) {
        return Ok(response);
    }
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), 4096).collect().await;
    let said = body.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
    Err(Error::invalid(format!("{what}: the registry answered {status} {}", said.trim())))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::invalid(format!("{what} is not valid: {e}")))
}

fn full(bytes: Bytes) -> Body {
    BodyExt::boxed(Full::new(bytes).map_err(|never| match never {}))
}

fn empty() -> Body {
    full(Bytes::new())
}

fn bad_request(error: http::Error) -> Error {
    Error::invalid(format!("building a registry request: {error}"))
}

/// A `WWW-Authenticate` challenge: its scheme and its `key="value"` parameters (quoted values
/// may hold commas, as scopes do).
fn parse_challenge(challenge: &str) -> (String, BTreeMap<String, String>) {
    let (scheme, rest) = challenge.trim().split_once(' ').unwrap_or((challenge.trim(), ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key, value.to_owned());
        rest = remaining.trim_start_matches(',').trim();
    }
    (scheme.to_owned(), params)
}

/// A file's size and sha256, read once.
fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let size =
        std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_give_their_scheme_and_parameters() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="lantern""#);
        assert_eq!((scheme.as_str(), params["realm"].as_str()), ("Basic", "lantern"));
        assert_eq!(parse_challenge("").0, "");
    }

    #[test]
    fn loopback_registries_speak_plain_http() {
        for registry in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000"] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in ["ghcr.io", "registry.example:5000", "10.0.0.1:5000"] {
            assert!(!is_loopback(registry), "{registry}");
        }
    }
}
