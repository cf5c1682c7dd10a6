//! The version manager: owns every model's versions and their lifecycle
//! (START → LOADING → AVAILABLE → UNLOADING → END, or FAILED with a reason), and answers which
//! loaded version serves a request. Running requests is [`super::dispatch`]'s.
//!
//! A reconcile pass ([`ModelManager::reconcile`]) rescans the repository, asks
//! [`super::policy`] what should be loaded and what may go, starts loads in the background and
//! drains versions that leave. It runs every poll interval, after every finished load, and on
//! demand ([`ModelManager::reconcile_now`]). Failed loads are retried with exponential backoff
//! while older versions keep serving. A request holds an `Arc` of the version it was routed to,
//! so it finishes there even if the version is unloaded meanwhile; the version's memory goes
//! when its last request does.
//!
//! A LoRA adapter version runs on the engine of its base version rather than on one of its own.
//! With `max_adapters` set, loading one more adapter evicts the least recently routed one. An
//! evicted version stays wanted but is loaded again only when a request asks for it
//! ([`ModelManager::resolve_waiting`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use candle_core::Device;
use tokio::sync::{Notify, oneshot, watch};

use super::batcher::{BatchSettings, Batcher};
use super::config::{ServingConfig, VersionPolicy};
use super::embedder::Embedder;
use super::engine::{Engine, EngineSettings, ServedAdapter};
use super::metrics::{EngineLoad, Metrics, Outcome};
use super::routing::{self, Target, VersionView};
use super::signature;
use super::{policy, request_stats};
use crate::error::{Error, Result};
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::model::{self, LoadedModel, VersionId};
use lantern_runtime::repository::{BaseVersion, FetchReport, Format, Manifest, Pin, Repository, Task, VerifiedVersion};

/// How the manager behaves; filled from the `serve` flags.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    /// How often the repository is rescanned.
    pub poll_interval: Duration,
    /// Batching knobs applied to every version.
    pub batch: BatchSettings,
    /// Serve only these models; empty serves every model in the repository.
    pub models: BTreeSet<String>,
    /// The version policy of a model until `SetServingConfig` replaces it.
    pub policy: VersionPolicy,
    /// Models whose starting policy is not `policy`.
    pub model_policies: BTreeMap<String, VersionPolicy>,
    /// First retry delay after a failed load; doubles per failure.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long `RepositoryModelLoad` waits for a version to become available.
    pub load_timeout: Duration,
    /// Continuous-batching knobs applied to every language-model version.
    pub engine: EngineSettings,
    /// Where every version's model runs (opened once, by [`lantern_runtime::device::DeviceSpec::open`]).
    pub device: Device,
    /// Most adapter versions loaded at once; beyond it the least recently used is unloaded, and
    /// loaded again when a request wants it (the request waits). `None`: no limit.
    pub max_adapters: Option<usize>,
}

impl ServeSettings {
    /// `model`'s version policy until `SetServingConfig` replaces it.
    pub fn starting_policy(&self, model: &str) -> &VersionPolicy {
        self.model_policies.get(model).unwrap_or(&self.policy)
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            batch: BatchSettings::default(),
            models: BTreeSet::new(),
            policy: VersionPolicy::default(),
            model_policies: BTreeMap::new(),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            load_timeout: Duration::from_secs(300),
            engine: EngineSettings::default(),
            device: Device::Cpu,
            max_adapters: None,
        }
    }
}

/// The lifecycle state of one version, as TensorFlow Serving names them (plus FAILED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    Start,
    Loading,
    Available,
    Unloading,
    End,
    Failed,
}

/// What the manager reports about one version.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionStatus {
    pub version: u64,
    pub state: VersionState,
    /// Why the last load failed; empty unless FAILED.
    pub reason: String,
    pub failed_attempts: u32,
    /// Labels naming this version.
    pub labels: Vec<String>,
    /// Share of unlabelled traffic, in percent.
    pub traffic_percent: f64,
    /// The manifest's evaluation metrics, once the version is loaded.
    pub metrics: BTreeMap<String, f64>,
    /// What the version has served on this pod.
    pub requests: request_stats::Snapshot,
    /// The size of its files, once it is loaded.
    pub size_bytes: u64,
    /// For an adapter version, once it is loaded: the base it runs on.
    pub base: Option<BaseVersion>,
    /// `sha256:<hex>` of its manifest, once it is loaded.
    pub manifest_digest: Option<String>,
    /// What loading it from a remote repository fetched.
    pub fetch: Option<FetchReport>,
    /// A language-model version's engine load, while it is available.
    pub engine: Option<EngineLoad>,
}

/// What the manager reports about one model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelStatus {
    pub model: String,
    /// Whether the model is served (false after `RepositoryModelUnload`).
    pub enabled: bool,
    pub versions: Vec<VersionStatus>,
    /// Every committed version in the repository, served or not.
    pub on_disk: Vec<u64>,
}

/// A model the OpenAI API lists: its newest available version and, for an adapter, the base
/// model it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedModel {
    pub model: String,
    pub version: u64,
    pub parent: Option<String>,
}

/// One row of the repository index (Triton's repository extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub model: String,
    pub version: u64,
    /// `READY`, `LOADING`, `UNLOADING` or `UNAVAILABLE`, as Triton names them.
    pub state: &'static str,
    pub reason: String,
}

/// Metadata of the version a request would be routed to.
#[derive(Debug)]
pub struct ModelMetadata {
    pub version: u64,
    /// Every available version.
    pub versions: Vec<u64>,
    pub manifest: Manifest,
}

/// A version in memory: its manifest and the thread that owns its model.
#[derive(Debug)]
pub(crate) struct LoadedVersion {
    pub(crate) version: u64,
    pub(crate) manifest: Manifest,
    /// `sha256:<hex>` of the manifest.
    digest: String,
    /// What reading it from a remote repository fetched.
    fetch: Option<FetchReport>,
    pub(crate) runtime: Runtime,
    /// For a version on a shared engine (a language model, or an adapter on its base's):
    /// dropped with the version's last reference, which tells the drain its requests are done.
    _released: Option<oneshot::Sender<()>>,
    /// That engine, which the version keeps running.
    _engine: Option<Arc<SharedEngine>>,
    /// When a request was last routed here, in milliseconds since the manager started (the LRU
    /// order of adapters).
    last_used: AtomicU64,
    /// Its files in the node cache, kept from eviction while it is loaded (remote repositories).
    _pins: Vec<Pin>,
}

/// Where a loaded version's files came from: its manifest digest, what fetching them from a
/// remote repository took, and the node cache entries it holds.
struct Origin {
    digest: String,
    fetch: Option<FetchReport>,
    pins: Vec<Pin>,
}

impl LoadedVersion {
    fn is_adapter(&self) -> bool {
        self.manifest.format == Format::Lora
    }
}

/// What runs a version's requests, by task.
#[derive(Debug)]
pub(crate) enum Runtime {
    Tensor { batcher: Batcher, out_width: usize },
    Generate(LanguageModel),
    Embed(Embedder),
}

/// A routed language-model version: its engine and its text interface, and for an adapter
/// version, the adapter its requests run with on its base's engine.
#[derive(Clone, Debug)]
pub struct LanguageModel {
    pub version: u64,
    pub engine: Engine,
    pub codec: Arc<TextCodec>,
    pub adapter: Option<Arc<ServedAdapter>>,
}

#[derive(Debug)]
struct VersionEntry {
    state: VersionState,
    reason: String,
    failed_attempts: u32,
    retry_at: Option<Instant>,
    loaded: Option<Arc<LoadedVersion>>,
    drained: Option<oneshot::Receiver<()>>,
    /// Unloaded to keep within `max_adapters`; loaded again only when a request wants it.
    evicted: bool,
}

impl VersionEntry {
    fn new() -> Self {
        Self {
            state: VersionState::Start,
            reason: String::new(),
            failed_attempts: 0,
            retry_at: None,
            loaded: None,
            drained: None,
            evicted: false,
        }
    }
}

/// Why an evicted adapter version is not loaded (its END state's reason).
const EVICTED: &str = "unloaded as the least recently used adapter beyond --max-adapters; a request loads it again";

#[derive(Debug)]
struct ModelState {
    config: ServingConfig,
    enabled: bool,
    versions: BTreeMap<u64, VersionEntry>,
    /// The committed versions the last scan found.
    on_disk: BTreeSet<u64>,
}

enum Action {
    Load(u64),
    Drain(u64, Option<oneshot::Receiver<()>>),
}

impl ModelState {
    /// Brings this model's entries in line with the disk and the config; returns the work to do.
    fn plan(&mut self, on_disk: &BTreeSet<u64>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let desired = if self.enabled { policy::desired_versions(&self.config, on_disk) } else { BTreeSet::new() };
        for &version in &desired {
            let entry = self.versions.entry(version).or_insert_with(VersionEntry::new);
            let due = match entry.state {
                VersionState::End if entry.evicted => false,
                VersionState::Start | VersionState::End => true,
                VersionState::Failed => entry.retry_at.is_none_or(|at| at <= now),
                VersionState::Loading | VersionState::Available | VersionState::Unloading => false,
            };
            if due {
                entry.state = VersionState::Loading;
                actions.push(Action::Load(version));
            }
        }
        let available: BTreeSet<u64> = self.available().collect();
        let leaving = if self.enabled { policy::versions_to_unload(&desired, &available) } else { available };
        for version in leaving {
            let entry = self.versions.get_mut(&version).expect("available versions have entries; this is a bug");
            entry.state = VersionState::Unloading;
            entry.loaded = None;
            actions.push(Action::Drain(version, entry.drained.take()));
        }
        self.versions.retain(|v, entry| {
            desired.contains(v)
                || matches!(entry.state, VersionState::Loading | VersionState::Available | VersionState::Unloading)
                || (on_disk.contains(v) && matches!(entry.state, VersionState::End | VersionState::Failed))
        });
        actions
    }

    fn available(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.versions.iter().filter(|(_, e)| e.state == VersionState::Available).map(|(&v, _)| v)
    }

    fn loaded(&self, version: u64) -> Arc<LoadedVersion> {
        self.versions
            .get(&version)
            .and_then(|e| e.loaded.clone())
            .expect("routing returns only available versions, which are loaded; this is a bug")
    }
}

impl VersionView for ModelState {
    fn is_available(&self, version: u64) -> bool {
        self.versions.get(&version).is_some_and(|e| e.state == VersionState::Available)
    }

    fn newest_available(&self) -> Option<u64> {
        self.available().next_back()
    }

    fn unavailable_reason(&self, version: u64) -> Option<String> {
        let entry = self.versions.get(&version)?;
        Some(match entry.state {
            VersionState::Failed => format!("FAILED after {} attempts: {}", entry.failed_attempts, entry.reason),
            state => format!("{state:?}").to_uppercase(),
        })
    }
}

/// Unloads the least recently used adapter versions until at most `limit` are loaded, never
/// `keep` (the one that just loaded); returns what to drain.
fn evict_adapters(
    models: &mut BTreeMap<String, ModelState>,
    limit: usize,
    keep: (&str, u64),
) -> Vec<(String, u64, Option<oneshot::Receiver<()>>)> {
    let mut loaded: Vec<(u64, String, u64)> = models
        .iter()
        .flat_map(|(name, state)| state.versions.iter().map(move |(&version, entry)| (name, version, entry)))
        .filter_map(|(name, version, entry)| {
            let loaded = entry.loaded.as_ref().filter(|l| l.is_adapter() && entry.state == VersionState::Available)?;
            Some((loaded.last_used.load(Ordering::Relaxed), name.clone(), version))
        })
        .collect();
    let excess = loaded.len().saturating_sub(limit);
    loaded.sort();
    loaded
        .into_iter()
        .filter(|(_, name, version)| (name.as_str(), *version) != keep)
        .take(excess)
        .filter_map(|(_, name, version)| {
            let entry = models.get_mut(&name)?.versions.get_mut(&version)?;
            entry.state = VersionState::Unloading;
            entry.loaded = None;
            entry.evicted = true;
            entry.reason = EVICTED.to_owned();
            Some((name, version, entry.drained.take()))
        })
        .collect()
}

/// The base an adapter version runs on; `None` for any other version (a merged fine-tune names
/// its base too, but runs on its own).
fn adapter_base(manifest: &Manifest) -> Option<&BaseVersion> {
    manifest.base.as_ref().filter(|_| manifest.format == Format::Lora)
}

/// Shared handle to the version manager.
#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<Inner>,
}

struct Inner {
    repo: Repository,
    settings: ServeSettings,
    models: RwLock<BTreeMap<String, ModelState>>,
    wake: Notify,
    changed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    /// What `LoadedVersion::last_used` counts from.
    started: Instant,
    /// The engine of every language-model version in memory, by model and version: one per
    /// version, whether it is served, runs adapters, or both.
    engines: std::sync::Mutex<BTreeMap<(String, u64), std::sync::Weak<SharedEngine>>>,
}

/// A language-model version's engine, held by the version while it is served and by every
/// adapter running on it; the engine ends when the last of them lets go.
#[derive(Debug)]
pub(crate) struct SharedEngine {
    model: LanguageModel,
    /// The node cache's entries of the version the engine runs, kept from eviction while it
    /// lives (also when only adapters hold it).
    _pins: Vec<Pin>,
}

impl ModelManager {
    /// A manager over `repo`. Nothing is loaded until the first [`reconcile`](Self::reconcile).
    pub fn new(repo: Repository, settings: ServeSettings, metrics: Arc<Metrics>) -> Self {
        let (changed, _) = watch::channel(0);
        let inner = Inner {
            repo,
            settings,
            models: RwLock::default(),
            wake: Notify::new(),
            changed,
            metrics,
            started: Instant::now(),
            engines: std::sync::Mutex::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Runs reconcile passes until the task is aborted: every poll interval and on demand.
    pub fn spawn_reconciler(&self) -> tokio::task::JoinHandle<()> {
        let manager = self.clone();
        tokio::spawn(async move {
            loop {
                manager.reconcile().await;
                tokio::select! {
                    () = tokio::time::sleep(manager.inner.settings.poll_interval) => {}
                    () = manager.inner.wake.notified() => {}
                }
            }
        })
    }

    /// Asks the reconciler for a pass now.
    pub fn reconcile_now(&self) {
        self.inner.wake.notify_one();
    }

    /// A receiver that changes whenever any version changes state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// One reconcile pass: scan the repository, then load and drain per policy.
    pub async fn reconcile(&self) {
        let inner = self.inner.clone();
        let scanned = tokio::task::spawn_blocking(move || inner.scan()).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "repository scan panicked");
            BTreeMap::new()
        });
        let now = Instant::now();
        let mut work = Vec::new();
        {
            let mut models = self.inner.write();
            for (name, on_disk) in scanned {
                let on_disk = match on_disk {
                    Ok(versions) => versions,
                    Err(error) => {
                        tracing::warn!(model = %name, %error, "cannot scan model directory; keeping current versions");
                        continue;
                    }
                };
                let state = models.entry(name.clone()).or_insert_with(|| ModelState {
                    config: ServingConfig::with_policy(self.inner.settings.starting_policy(&name).clone()),
                    enabled: true,
                    versions: BTreeMap::new(),
                    on_disk: BTreeSet::new(),
                });
                work.extend(state.plan(&on_disk, now).into_iter().map(|action| (name.clone(), action)));
                state.on_disk = on_disk;
                self.inner.metrics.set_loaded_versions(&name, state.available().count());
            }
        }
        self.execute(work);
        self.inner.notify_changed();
    }

    fn execute(&self, work: Vec<(String, Action)>) {
        for (model, action) in work {
            match action {
                Action::Load(version) => self.spawn_load(model, version),
                Action::Drain(version, drained) => {
                    tracing::info!(model = %model, version, "unloading: draining in-flight requests");
                    let manager = self.clone();
                    tokio::spawn(async move {
                        if let Some(drained) = drained {
                            let _ = drained.await;
                        }
                        manager.finish_drain(&model, version);
                    });
                }
            }
        }
    }

    fn spawn_load(&self, model: String, version: u64) {
        let manager = self.clone();
        tokio::spawn(async move {
            tracing::info!(model = %model, version, "loading");
            let started = Instant::now();
            let inner = manager.inner.clone();
            let name = model.clone();
            let result =
                tokio::task::spawn_blocking(move || inner.load_version(&name, version)).await.unwrap_or_else(|e| {
                    Err(lantern_runtime::Error::Load {
                        model: model.clone(),
                        version,
                        reason: format!("loader panicked: {e}"),
                    }
                    .into())
                });
            manager.finish_load(&model, version, result, started.elapsed());
        });
    }

    fn finish_load(
        &self,
        model: &str,
        version: u64,
        result: Result<(LoadedVersion, oneshot::Receiver<()>)>,
        took: Duration,
    ) {
        self.inner.metrics.observe_load(model, version, took.as_secs_f64(), result.is_ok());
        let mut evictions = Vec::new();
        {
            let mut models = self.inner.write();
            let Some(entry) = models.get_mut(model).and_then(|m| m.versions.get_mut(&version)) else {
                return;
            };
            match result {
                Ok((loaded, drained)) => {
                    tracing::info!(model = %model, version, seconds = took.as_secs_f64(), "available");
                    let adapter = loaded.is_adapter();
                    *entry = VersionEntry {
                        state: VersionState::Available,
                        loaded: Some(Arc::new(loaded)),
                        drained: Some(drained),
                        ..VersionEntry::new()
                    };
                    if adapter && let Some(limit) = self.inner.settings.max_adapters {
                        evictions = evict_adapters(&mut models, limit, (model, version));
                    }
                }
                Err(error) => {
                    entry.failed_attempts += 1;
                    let delay = self.inner.retry_delay(entry.failed_attempts);
                    tracing::warn!(model = %model, version, %error, retry_in_seconds = delay.as_secs_f64(), "load failed");
                    entry.state = VersionState::Failed;
                    entry.reason = client_reason(&error.to_string(), &self.inner.repo.location());
                    entry.retry_at = Some(Instant::now() + delay);
                }
            }
        }
        for (model, version, _) in &evictions {
            tracing::info!(model = %model, version, "evicting the least recently used adapter");
        }
        self.execute(
            evictions.into_iter().map(|(model, version, drained)| (model, Action::Drain(version, drained))).collect(),
        );
        self.inner.notify_changed();
        // A new version may let an old one go, or a failure may need its retry scheduled.
        self.reconcile_now();
    }

    fn finish_drain(&self, model: &str, version: u64) {
        {
            let mut models = self.inner.write();
            if let Some(entry) = models.get_mut(model).and_then(|m| m.versions.get_mut(&version))
                && entry.state == VersionState::Unloading
            {
                entry.state = VersionState::End;
                self.inner.metrics.request_stats().forget(model, version);
                tracing::info!(model = %model, version, "unloaded");
            }
        }
        self.inner.notify_changed();
    }

    /// The outcome of a request to `model`, to record once it ends (see [`Outcome`]).
    pub fn outcome(&self, model: &str) -> Outcome {
        Outcome::start(self.inner.metrics.clone(), model)
    }

    /// The metadata of the version `target` routes to (the newest available for no target).
    pub fn metadata(&self, model: &str, target: &Target) -> Result<ModelMetadata> {
        let models = self.inner.read();
        let state = models.get(model).ok_or_else(|| Error::ModelNotFound { model: model.to_owned() })?;
        // Metadata describes what a plain request would see, without spending a random draw.
        let target = match target {
            Target::Default => state.newest_available().map_or(Target::Default, Target::Version),
            other => other.clone(),
        };
        let loaded = Self::route_in(model, state, &target, None)?;
        Ok(ModelMetadata {
            version: loaded.version,
            versions: state.available().collect(),
            manifest: loaded.manifest.clone(),
        })
    }

    /// Whether `target` of `model` can take requests now. Unknown models and versions are errors.
    pub fn is_ready(&self, model: &str, target: &Target) -> Result<bool> {
        match self.metadata(model, target) {
            Ok(_) => Ok(true),
            Err(Error::Unavailable { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ready when some model serves, and every served model with versions has one available.
    pub fn server_ready(&self) -> bool {
        let models = self.inner.read();
        let mut serving = models.values().filter(|m| m.enabled && !m.versions.is_empty()).peekable();
        serving.peek().is_some() && serving.all(|m| m.newest_available().is_some())
    }

    /// Status of one model, or of every model when `model` is `None`.
    pub fn status(&self, model: Option<&str>) -> Result<Vec<ModelStatus>> {
        let models = self.inner.read();
        let describe = |name: &str, state: &ModelState| {
            let shares = routing::traffic_shares(&state.config, state);
            let versions = state
                .versions
                .iter()
                .map(|(&version, entry)| VersionStatus {
                    version,
                    state: entry.state,
                    reason: entry.reason.clone(),
                    failed_attempts: entry.failed_attempts,
                    labels: state
                        .config
                        .labels
                        .iter()
                        .filter(|&(_, &v)| v == version)
                        .map(|(l, _)| l.clone())
                        .collect(),
                    traffic_percent: shares.get(&version).copied().unwrap_or(0.0),
                    metrics: entry.loaded.as_ref().map(|l| l.manifest.metrics.clone()).unwrap_or_default(),
                    requests: self.inner.metrics.request_stats().snapshot(name, version),
                    size_bytes: entry.loaded.as_ref().map_or(0, |l| l.manifest.files.iter().map(|f| f.size).sum()),
                    base: entry.loaded.as_ref().and_then(|l| adapter_base(&l.manifest).cloned()),
                    manifest_digest: entry.loaded.as_ref().map(|l| l.digest.clone()),
                    fetch: entry.loaded.as_ref().and_then(|l| l.fetch),
                    engine: (entry.state == VersionState::Available)
                        .then(|| self.inner.metrics.engine_load(name, version))
                        .flatten(),
                })
                .collect();
            ModelStatus {
                model: name.to_owned(),
                enabled: state.enabled,
                versions,
                on_disk: state.on_disk.iter().copied().collect(),
            }
        };
        match model {
            Some(name) => {
                let state = models.get(name).ok_or_else(|| Error::ModelNotFound { model: name.to_owned() })?;
                Ok(vec![describe(name, state)])
            }
            None => Ok(models.iter().map(|(name, state)| describe(name, state)).collect()),
        }
    }

    /// Every tracked version of every model, in Triton's state vocabulary; `ready_only` keeps the
    /// READY ones.
    pub fn repository_index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.inner.read();
        let mut index = Vec::new();
        for (name, model) in models.iter() {
            for (&version, entry) in &model.versions {
                let state = match (model.enabled, entry.state) {
                    (true, VersionState::Available) => "READY",
                    (true, VersionState::Start | VersionState::Loading) => "LOADING",
                    (_, VersionState::Unloading) => "UNLOADING",
                    _ => "UNAVAILABLE",
                };
                if !ready_only || state == "READY" {
                    index.push(IndexEntry { model: name.clone(), version, state, reason: entry.reason.clone() });
                }
            }
        }
        index
    }

    /// Replaces a model's serving config. Routing follows at once; loads happen in the background.
    /// The config it already has is a no-op, so the operator may push it on every pass.
    pub fn set_config(&self, model: &str, config: ServingConfig) -> Result<()> {
        config.validate()?;
        lantern_runtime::repository::validate_model_name(model)?;
        self.check_served(model)?;
        {
            let mut models = self.inner.write();
            if !models.contains_key(model) {
                let unpublished = models.values().filter(|m| m.on_disk.is_empty() && m.versions.is_empty()).count();
                if unpublished >= MAX_UNPUBLISHED_CONFIGS {
                    return Err(Error::LimitExceeded(format!(
                        "{unpublished} models without a published version already hold a serving config; \
                         at most {MAX_UNPUBLISHED_CONFIGS} may, so model {model:?} gets none until one is published"
                    )));
                }
            }
            let state = models.entry(model.to_owned()).or_insert_with(|| ModelState {
                config: ServingConfig::default(),
                enabled: true,
                versions: BTreeMap::new(),
                on_disk: BTreeSet::new(),
            });
            if state.config == config {
                return Ok(());
            }
            tracing::info!(model, ?config, "serving config replaced");
            state.config = config;
        }
        self.reconcile_now();
        Ok(())
    }

    /// A model's serving config.
    pub fn config(&self, model: &str) -> Result<ServingConfig> {
        let models = self.inner.read();
        models.get(model).map(|m| m.config.clone()).ok_or_else(|| Error::ModelNotFound { model: model.to_owned() })
    }

    /// Serves `model` again (after an unload) and waits until a version is available, or every
    /// wanted version has failed, or the load timeout passes.
    pub async fn load_model(&self, model: &str) -> Result<()> {
        self.check_served(model)?;
        if let Some(state) = self.inner.write().get_mut(model) {
            state.enabled = true;
        }
        let mut changes = self.subscribe();
        self.reconcile().await;
        let wait = async {
            loop {
                {
                    let models = self.inner.read();
                    let state = models.get(model).ok_or_else(|| Error::ModelNotFound { model: model.to_owned() })?;
                    if state.newest_available().is_some() {
                        return Ok(());
                    }
                    if state.versions.is_empty() {
                        return Err(Error::Unavailable {
                            model: model.to_owned(),
                            reason: "no version is published".into(),
                        });
                    }
                    if state.versions.values().all(|e| e.state == VersionState::Failed) {
                        let reasons: Vec<String> =
                            state.versions.iter().map(|(v, e)| format!("version {v}: {}", e.reason)).collect();
                        return Err(Error::Unavailable { model: model.to_owned(), reason: reasons.join("; ") });
                    }
                }
                if changes.changed().await.is_err() {
                    return Err(Error::Shutdown("the version manager stopped".into()));
                }
            }
        };
        tokio::time::timeout(self.inner.settings.load_timeout, wait).await.unwrap_or_else(|_| {
            Err(Error::Unavailable { model: model.to_owned(), reason: "still loading after the load timeout".into() })
        })
    }

    /// Stops serving `model`: new requests are refused; in-flight ones finish, then memory goes.
    pub fn unload_model(&self, model: &str) -> Result<()> {
        let work: Vec<(String, Action)> = {
            let mut models = self.inner.write();
            let state = models.get_mut(model).ok_or_else(|| Error::ModelNotFound { model: model.to_owned() })?;
            state.enabled = false;
            state.plan(&BTreeSet::new(), Instant::now()).into_iter().map(|a| (model.to_owned(), a)).collect()
        };
        self.execute(work);
        self.inner.notify_changed();
        Ok(())
    }

    fn check_served(&self, model: &str) -> Result<()> {
        let only = &self.inner.settings.models;
        if only.is_empty() || only.contains(model) {
            Ok(())
        } else {
            Err(Error::ModelNotFound { model: model.to_owned() })
        }
    }

    /// Models whose newest available version generates or embeds text, with that version (and
    /// an adapter's base).
    pub fn language_models(&self) -> Vec<ListedModel> {
        let models = self.inner.read();
        models
            .iter()
            .filter(|(_, state)| state.enabled)
            .filter_map(|(name, state)| {
                let version = state.newest_available()?;
                let loaded = state.loaded(version);
                let parent = adapter_base(&loaded.manifest).map(|base| base.model.clone());
                matches!(loaded.runtime, Runtime::Generate(_) | Runtime::Embed(_)).then(|| ListedModel {
                    model: name.clone(),
                    version,
                    parent,
                })
            })
            .collect()
    }

    /// The loaded version `target` routes `model`'s request to.
    pub(crate) fn resolve(
        &self,
        model: &str,
        target: &Target,
        routing_key: Option<&str>,
    ) -> Result<Arc<LoadedVersion>> {
        let models = self.inner.read();
        let state = models.get(model).ok_or_else(|| Error::ModelNotFound { model: model.to_owned() })?;
        let loaded = Self::route_in(model, state, target, routing_key)?;
        loaded.last_used.store(self.inner.now_ms(), Ordering::Relaxed);
        Ok(loaded)
    }

    /// Asks for the evicted adapter versions of `model` that `target` may route to to be loaded
    /// again; true while any such version is on its way back (the caller then waits for it).
    pub(crate) fn revive(&self, model: &str, target: &Target) -> bool {
        let mut models = self.inner.write();
        let Some(state) = models.get_mut(model) else { return false };
        let labelled = match target {
            Target::Label(label) => state.config.labels.get(label).copied(),
            _ => None,
        };
        let mut returning = false;
        for (&version, entry) in &mut state.versions {
            let wanted = match target {
                Target::Version(wanted) => version == *wanted,
                Target::Label(_) => labelled == Some(version),
                Target::Default => true,
            };
            // Evicted, or already asked back by another request and not yet available.
            let coming_back = entry.reason == EVICTED
                && matches!(entry.state, VersionState::Unloading | VersionState::End | VersionState::Loading);
            if wanted && (entry.evicted || coming_back) {
                entry.evicted = false;
                returning = true;
            }
        }
        drop(models);
        if returning {
            self.reconcile_now();
        }
        returning
    }

    /// Routes like [`Self::resolve`]; a request for an evicted adapter waits (up to the load
    /// timeout) for it to be loaded again instead of failing.
    pub(crate) async fn resolve_waiting(
        &self,
        model: &str,
        target: &Target,
        routing_key: Option<&str>,
    ) -> Result<Arc<LoadedVersion>> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.settings.load_timeout;
        loop {
            match self.resolve(model, target, routing_key) {
                Err(Error::Unavailable { .. }) if self.revive(model, target) => {}
                other => return other,
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Shutdown("the version manager stopped".into())),
                Err(_) => return self.resolve(model, target, routing_key),
            }
        }
    }

    fn route_in(
        model: &str,
        state: &ModelState,
        target: &Target,
        routing_key: Option<&str>,
    ) -> Result<Arc<LoadedVersion>> {
        if !state.enabled {
            return Err(Error::Unavailable {
                model: model.to_owned(),
                reason: "the model is unloaded; RepositoryModelLoad serves it again".into(),
            });
        }
        let version = routing::route(model, target, &state.config, state, routing_key, rand::random())?;
        Ok(state.loaded(version))
    }
}

/// Serving configs the manager keeps for models with no published version (a config may come
/// before its model's first version; made-up names must not grow memory without bound).
pub const MAX_UNPUBLISHED_CONFIGS: usize = 256;

/// A failure reason as clients see it (GetModelStatus, RepositoryIndex, load errors): its first
/// line only (no backtrace), paths relative to the repository, at most 512 bytes. The log keeps
/// the whole error.
pub fn client_reason(reason: &str, root: &str) -> String {
    let first_line = reason.lines().next().unwrap_or_default();
    let mut text = match root.is_empty() {
        true => first_line.to_owned(),
        false => first_line.replace(&format!("{root}/"), "").replace(root, "<repository>"),
    };
    if text.len() > 512 {
        let cut = (0..=512).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, ModelState>> {
        self.models.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, ModelState>> {
        self.models.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify_changed(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn retry_delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.settings.retry_base.saturating_mul(factor).min(self.settings.retry_max)
    }

    /// The versions on disk of every model to serve: the configured ones, or every model in the
    /// repository plus any that got a config before their first version.
    fn scan(&self) -> BTreeMap<String, Result<BTreeSet<u64>>> {
        let mut names = self.settings.models.clone();
        if names.is_empty() {
            match self.repo.models() {
                Ok(found) => names = found,
                Err(error) => tracing::warn!(%error, "cannot list the model repository"),
            }
            names.extend(self.read().keys().cloned());
        }
        names.into_iter().map(|name| (name.clone(), self.repo.versions(&name).map_err(Error::from))).collect()
    }

    /// Reads, verifies and loads one version, and starts the thread that runs it.
    /// The engine of `model`'s `version`: the one in memory, or one started on what `load`
    /// reads (with the cache pins of its files). Loads of one engine never overlap, so a
    /// version and its adapters share it.
    fn shared_engine(
        &self,
        model: &str,
        version: u64,
        load: impl FnOnce() -> Result<(LoadedModel, Vec<Pin>)>,
    ) -> Result<Arc<SharedEngine>> {
        let mut engines = self.engines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (model.to_owned(), version);
        if let Some(shared) = engines.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(shared);
        }
        let (LoadedModel::Generate { model: llama, codec }, pins) = load()? else {
            return Err(Error::invalid(format!("{model} version {version} is not a language model")));
        };
        let id = VersionId { model: model.to_owned(), version };
        let metrics = self.metrics.generation(model, version);
        // The engine thread ends once every handle is gone; nothing needs to wait for it.
        let (engine, _ended) = Engine::spawn(id, *llama, codec.clone(), self.settings.engine, metrics)?;
        let model = LanguageModel { version, engine, codec, adapter: None };
        let shared = Arc::new(SharedEngine { model, _pins: pins });
        engines.retain(|_, weak| weak.strong_count() > 0);
        engines.insert(key, Arc::downgrade(&shared));
        Ok(shared)
    }

    /// Milliseconds since the manager started.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn load_version(&self, model: &str, version: u64) -> Result<(LoadedVersion, oneshot::Receiver<()>)> {
        let mut verified = self.repo.read_verified(model, version)?;
        if let Some(report) = &verified.fetch {
            self.metrics.observe_fetch(model, report);
        }
        let pins = std::mem::take(&mut verified.pins);
        let mut origin = Origin { digest: verified.digest.clone(), fetch: verified.fetch, pins };
        let fail =
            |reason: String| Error::from(lantern_runtime::Error::Load { model: model.to_owned(), version, reason });
        let manifest = verified.manifest.clone();
        if manifest.format == Format::Lora {
            return self.load_adapter(model, version, verified, origin);
        }
        if manifest.task == Task::Generate {
            let device = &self.settings.device;
            // The engine holds the pins: adapters may keep it after this version unloads.
            let pins = std::mem::take(&mut origin.pins);
            let shared =
                self.shared_engine(model, version, || Ok((model::load(model, version, &verified, device)?, pins)))?;
            let runtime = Runtime::Generate(shared.model.clone());
            return Ok(self.loaded_on(version, manifest, runtime, shared, origin));
        }
        let loaded = model::load(model, version, &verified, &self.settings.device)?;
        drop(verified);
        let id = VersionId { model: model.to_owned(), version };
        let (runtime, drained) = match loaded {
            LoadedModel::Tensor(tensor_model) => {
                let in_width = signature::row_width(&manifest.inputs[0])
                    .ok_or_else(|| fail("the input needs fixed dimensions after the batch dimension".into()))?;
                let out_width = signature::row_width(&manifest.outputs[0])
                    .ok_or_else(|| fail("the output needs fixed dimensions after the batch dimension".into()))?;
                let metrics = self.metrics.version(model, version);
                let (batcher, drained) = Batcher::spawn(id, tensor_model, self.settings.batch, in_width, metrics)?;
                (Runtime::Tensor { batcher, out_width }, drained)
            }
            LoadedModel::Embed(encoder) => {
                let metrics = self.metrics.version(model, version);
                let (embedder, drained) = Embedder::spawn(id, *encoder, self.settings.batch, metrics)?;
                (Runtime::Embed(embedder), drained)
            }
            LoadedModel::Generate { .. } => {
                return Err(fail("a language model loads through its shared engine; this is a bug".into()));
            }
        };
        let loaded = LoadedVersion {
            version,
            manifest,
            digest: origin.digest,
            fetch: origin.fetch,
            runtime,
            _released: None,
            _engine: None,
            last_used: AtomicU64::new(0),
            _pins: origin.pins,
        };
        Ok((loaded, drained))
    }

    /// A version whose runtime is on `engine`, which it holds; the receiver fires when its last
    /// request is done.
    fn loaded_on(
        &self,
        version: u64,
        manifest: Manifest,
        runtime: Runtime,
        engine: Arc<SharedEngine>,
        origin: Origin,
    ) -> (LoadedVersion, oneshot::Receiver<()>) {
        let (released, drained) = oneshot::channel();
        let loaded = LoadedVersion {
            version,
            manifest,
            digest: origin.digest,
            fetch: origin.fetch,
            runtime,
            _released: Some(released),
            _engine: Some(engine),
            last_used: AtomicU64::new(self.now_ms()),
            _pins: origin.pins,
        };
        (loaded, drained)
    }

    /// An adapter version runs on the engine of the base it names (the served base version's,
    /// or one started for its adapters), whose manifest digest must be the one the adapter was
    /// trained on. The engine stays while the adapter holds it, even if its base version is
    /// unloaded or never served.
    fn load_adapter(
        &self,
        model: &str,
        version: u64,
        verified: VerifiedVersion,
        origin: Origin,
    ) -> Result<(LoadedVersion, oneshot::Receiver<()>)> {
        let fail =
            |reason: String| Error::from(lantern_runtime::Error::Load { model: model.to_owned(), version, reason });
        let base = verified.manifest.base.clone().ok_or_else(|| fail("the adapter names no base".into()))?;
        let digest = self
            .repo
            .manifest_digest(&base.model, base.version)
            .map_err(|e| fail(format!("its base {} version {} cannot be read: {e}", base.model, base.version)))?;
        if digest != base.manifest_digest {
            return Err(fail(format!(
                "its base {} version {} has manifest digest {digest}; the adapter was trained on {}",
                base.model, base.version, base.manifest_digest
            )));
        }
        let load_base = || {
            let mut verified = self.repo.read_verified(&base.model, base.version)?;
            let pins = std::mem::take(&mut verified.pins);
            Ok((model::load(&base.model, base.version, &verified, &self.settings.device)?, pins))
        };
        let engine = self.shared_engine(&base.model, base.version, load_base).map_err(|e| fail(e.to_string()))?;
        let weights = engine.model.engine.read_adapter(&verified.files)?;
        let metrics = self.metrics.generation(model, version);
        let adapter = Some(Arc::new(ServedAdapter { weights, identity: verified.digest, metrics }));
        let runtime = Runtime::Generate(LanguageModel { version, adapter, ..engine.model.clone() });
        Ok(self.loaded_on(version, verified.manifest, runtime, engine, origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_reasons_carry_no_host_paths_backtraces_or_bulk() {
        let root = "/srv/models";
        let reason = "reading /srv/models/m/3/model.safetensors: permission denied\n\nStack backtrace:\n  0: candle";
        assert_eq!(client_reason(reason, root), "reading m/3/model.safetensors: permission denied");
        assert_eq!(client_reason("cannot list /srv/models", root), "cannot list <repository>");
        let long = client_reason(&"é".repeat(1000), root);
        assert!(long.len() <= 512 + '…'.len_utf8() && long.ends_with('…'), "{}", long.len());
    }
}
