//! What every controller shares: the client, the operator's settings and metrics, the error
//! type, the Events it records on the objects it manages, and the loop that runs a controller
//! (each reconcile timed, counted and traced as a span).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::crd::{Device, RepositoryCache};
use crate::metrics::Metrics;
use crate::serving::autoscale::{self, Scaler};

/// The field manager of everything the operator applies, and the source of its Events.
pub const MANAGER: &str = "lantern-operator";

/// The worker images for jobs and services that name none, by device.
#[derive(Clone, Debug)]
pub struct WorkerImages {
    pub cpu: String,
    /// Built with the worker's `cuda` feature (`docker/worker-cuda.Dockerfile`).
    pub cuda: String,
}

impl WorkerImages {
    pub fn for_device(&self, device: Option<Device>) -> &str {
        match device.unwrap_or_default() {
            Device::Cpu => &self.cpu,
            Device::Cuda => &self.cuda,
        }
    }
}

/// The router every InferenceService gets ([`crate::serving::router`]).
#[derive(Clone, Debug)]
pub struct RouterSettings {
    pub image: String,
    /// The chart's ClusterRole that lets the router watch pods, bound in each service's namespace.
    pub cluster_role: String,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub images: WorkerImages,
    pub router: RouterSettings,
    /// The node cache settings of URI repositories that leave them out.
    pub cache_defaults: RepositoryCache,
    pub metrics: Arc<Metrics>,
    /// The operator's own namespace (its pods are the only ones NetworkPolicies admit to the
    /// workers' management and progress ports).
    pub namespace: String,
    /// The one namespace watched, for a namespace-scoped install; `None` watches them all.
    pub watch_namespace: Option<String>,
    written: Mutex<HashMap<String, String>>,
    /// Each autoscaled service's windows, by its uid.
    scalers: Mutex<HashMap<String, Scaler>>,
    /// The autoscaler's clock.
    started: Instant,
}

impl Context {
    pub fn new(
        client: Client,
        images: WorkerImages,
        router: RouterSettings,
        cache_defaults: RepositoryCache,
        namespace: String,
        watch_namespace: Option<String>,
    ) -> Self {
        Self {
            client,
            images,
            router,
            cache_defaults,
            metrics: Arc::default(),
            namespace,
            watch_namespace,
            written: Mutex::new(HashMap::new()),
            scalers: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Feeds the load the pods of the service `uid` carry now to its autoscaler and returns the
    /// decision, given `current` replicas.
    pub fn autoscale(
        &self,
        uid: &str,
        settings: &autoscale::Settings,
        load: autoscale::Load,
        current: u32,
    ) -> autoscale::Decision {
        let now = self.started.elapsed().as_secs_f64();
        let mut scalers = self.scalers.lock().unwrap_or_else(|p| p.into_inner());
        scalers.entry(uid.to_owned()).or_default().decide(settings, now, load, current)
    }

    /// An `Api` over the watched namespace, or every namespace.
    fn watched<K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>>(&self) -> Api<K> {
        match &self.watch_namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    /// `object` as the reconcile should see it. The controller's cache may still hold the copy
    /// from before this operator's last status write; deciding on that copy would take the last
    /// step again (and record its Events twice). So when the operator has written an object
    /// whose cached copy is not that write, it reads the object anew.
    pub async fn latest<K>(&self, api: &Api<K>, object: Arc<K>) -> Result<Arc<K>, Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let key = written_key(object.as_ref());
        let wrote = self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        match wrote {
            Some(version) if object.resource_version().as_deref() != Some(version.as_str()) => {
                let fresh = api.get(&object.name_any()).await.map_err(kube_error("reading the object anew"))?;
                Ok(Arc::new(fresh))
            }
            _ => Ok(object),
        }
    }

    /// Remembers the version of `object` that a status write of the operator produced.
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, object: &K) {
        if let Some(version) = object.resource_version() {
            self.written.lock().unwrap_or_else(|p| p.into_inner()).insert(written_key(object), version);
        }
    }
}

fn written_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{identity} lost the leader Lease (now held by {holder})")]
    LostLease { identity: String, holder: String },
    /// An object the operator needs exists but cannot be used; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
}

/// Runs the controller of kind `K` until `shutdown` resolves: `reconcile` on every change to a
/// `K` or to the pods and Services labelled `owner_label` that it owns, and when it asks to be
/// requeued; a failed reconcile is retried after 5 s. Each reconcile is a `reconcile` span (so
/// it is exported as a trace, and the workers it calls join it) and is counted and timed in
/// [`Metrics`].
pub async fn run_controller<K, R, F>(
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    owner_label: &str,
    mut reconcile: R,
) where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let owned = watcher::Config::default().labels(owner_label);
    let (objects, pods, services) = (context.watched::<K>(), context.watched::<Pod>(), context.watched::<Service>());
    let observed = move |object: Arc<K>, context: Arc<Context>| {
        let kind = kind_name::<K>();
        let span = tracing::info_span!(
            "reconcile",
            otel.name = %format!("reconcile {kind}"),
            k8s.namespace = %object.namespace().unwrap_or_default(),
            k8s.name = %object.name_any(),
        );
        let timer = ReconcileTimer::start(context.metrics.clone(), kind);
        let work = reconcile(object, context);
        async move {
            let result = work.await;
            timer.finish(result.is_ok());
            result
        }
        .instrument(span)
    };
    let metrics = context.metrics.clone();
    Controller::new(objects, watcher::Config::default())
        .owns(pods, owned.clone())
        .owns(services, owned)
        .graceful_shutdown_on(shutdown)
        .run(observed, error_policy::<K>, context)
        .for_each(|result| {
            let metrics = metrics.clone();
            async move {
                match result {
                    Ok((object, _)) => tracing::debug!(kind = %K::kind(&()), object = %object.name, "reconciled"),
                    // A deleted object's owned pods and Services, going too, still ask for it:
                    // its series go with it.
                    Err(controller::Error::ObjectNotFound(object)) => {
                        let namespace = object.namespace.as_deref().unwrap_or_default();
                        metrics.forget(kind_name::<K>(), namespace, &object.name);
                        tracing::debug!(kind = %K::kind(&()), object = %object.name, "gone");
                    }
                    Err(error) => tracing::warn!(kind = %K::kind(&()), %error, "reconciling"),
                }
            }
        })
        .await;
}

/// Counts and times one reconcile when dropped, so that a reconcile cancelled by shutdown counts
/// too (as an error).
struct ReconcileTimer {
    metrics: Arc<Metrics>,
    kind: &'static str,
    started: Instant,
    success: bool,
}

impl ReconcileTimer {
    /// Counts a reconcile of `kind` in flight until the timer is dropped.
    fn start(metrics: Arc<Metrics>, kind: &'static str) -> Self {
        metrics.start_reconcile(kind);
        Self { metrics, kind, started: Instant::now(), success: false }
    }

    fn finish(mut self, success: bool) {
        self.success = success;
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.observe_reconcile(self.kind, self.success, seconds);
    }
}

fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(kind = %K::kind(&()), object = %object.name_any(), %error, "will retry");
    Action::requeue(Duration::from_secs(5))
}

/// Wraps a Kubernetes API error with what the operator was doing.
pub fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// `K`'s kind as a metric label.
fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "unknown",
    }
}

impl Context {
    /// Records a core/v1 Event on `object` and counts it; a failure to record is logged, never
    /// fatal.
    pub async fn record_event<K>(&self, object: &K, reason: &str, message: &str, warning: bool)
    where
        K: Resource<DynamicType = ()>,
    {
        self.metrics.observe_event(kind_name::<K>(), reason);
        create_event(&self.client, object, reason, message, warning).await;
    }
}

async fn create_event<K>(client: &Client, object: &K, reason: &str, message: &str, warning: bool)
where
    K: Resource<DynamicType = ()>,
{
    let namespace = object.namespace().unwrap_or_else(|| "default".to_owned());
    let now = Time(Timestamp::now());
    let reference: ObjectReference = object.object_ref(&());
    let event = Event {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{}.", object.name_any())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: reference,
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        reporting_component: Some(MANAGER.to_owned()),
        source: Some(EventSource { component: Some(MANAGER.to_owned()), host: None }),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(%error, reason, "recording an event");
    }
}
