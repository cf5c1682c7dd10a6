//! The InferenceService controller. Each pass:
//! 1. finds the model repository (the spec's claim, or the referenced TrainingJob's output) and
//!    the adapter models ([`adapters`](super::adapters): listed, or fine-tuning TrainingJobs'
//!    outputs);
//! 2. applies the Service and the router behind it ([`router`](super::router));
//! 3. asks every running pod's worker for the status of every model it serves
//!    (`ModelService.GetModelStatus`);
//! 4. lets [`rollout`](super::rollout) decide, for the base and for each adapter model on its
//!    own, the stable version, the canary and the split, and pushes each model's serving config
//!    to every worker (a worker ignores a config it already has);
//! 5. creates and deletes pods as [`pods`](super::pods) says;
//! 6. writes the status and records the rollout's Events.
//!
//! The decision reads only the status and the workers, so a restarted operator resumes a
//! rollout where it stood. New versions on disk are seen by polling the workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use lantern_proto::inference::RepositoryModelLoadRequest;
use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::lantern::v1::model_service_client::ModelServiceClient;
use lantern_proto::lantern::v1::{
    GetModelStatusRequest, ModelStatus, ServingConfig, SetServingConfigRequest, VersionState,
};
use lantern_telemetry::with_trace_context;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::adapters;
use super::autoscale;
use super::fleet::Fleet;
use super::objects::{self, MANAGEMENT_PORT, PodAdapter, PodModels, SERVICE_LABEL};
use super::pods::{self, ServingPod};
use super::rollout::{self, Settings};
use super::router;
use super::status::{self, Observed};
use crate::context::{Context, Error, MANAGER, RouterSettings, kube_error, run_controller};
use crate::crd::{InferenceService, Repository, TrainingJob};
use lantern_proto::auth::SendToken;

use crate::credentials;

/// How often a settled service is looked at again (new versions on disk are found this way).
const POLL: Duration = Duration::from_secs(3);
/// How often a service without pods is looked at again (a resync, in case a watch missed something).
const IDLE: Duration = Duration::from_secs(300);
/// How often an autoscaled service at zero is looked at: a request held at its router waits for
/// this look before a pod is started.
const AT_ZERO: Duration = Duration::from_secs(1);
/// How long a worker has to answer.
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the controller until `shutdown` resolves.
pub async fn run(context: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    run_controller::<InferenceService, _, _>(context, shutdown, SERVICE_LABEL, reconcile).await;
}

/// The repository the service's versions come from, or why there is none.
async fn repository(client: &Client, service: &InferenceService, namespace: &str) -> Result<Repository, String> {
    let source = &service.spec.source;
    if let Some(repository) = &source.repository {
        return Ok(repository.clone());
    }
    let Some(reference) = &source.training_job_ref else {
        return Err("the source names neither a repository nor a TrainingJob".to_owned());
    };
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), namespace);
    match jobs.get_opt(&reference.name).await {
        Ok(Some(job)) => Ok(job.spec.output.repository),
        Ok(None) => Err(format!("TrainingJob {namespace}/{} not found", reference.name)),
        Err(error) => Err(format!("reading TrainingJob {namespace}/{}: {error}", reference.name)),
    }
}

/// Each TrainingJob `spec.adapters` references, as read (or why it could not be).
async fn adapter_jobs(
    client: &Client,
    service: &InferenceService,
    namespace: &str,
) -> BTreeMap<String, Result<TrainingJob, String>> {
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), namespace);
    let names = service.spec.adapters.iter().filter_map(|a| a.training_job_ref.as_ref()).map(|r| r.name.clone());
    let mut found = BTreeMap::new();
    for name in names {
        let job = match jobs.get_opt(&name).await {
            Ok(Some(job)) => Ok(job),
            Ok(None) => Err(format!("TrainingJob {namespace}/{name} not found")),
            Err(error) => Err(format!("reading TrainingJob {namespace}/{name}: {error}")),
        };
        found.insert(name, job);
    }
    found
}

async fn reconcile(service: Arc<InferenceService>, context: Arc<Context>) -> Result<Action, Error> {
    let client = &context.client;
    let namespace = service.namespace().unwrap_or_else(|| "default".to_owned());
    let api: Api<InferenceService> = Api::namespaced(client.clone(), &namespace);
    let service = context.latest(&api, service).await?;
    let name = service.name_any();
    let apply = PatchParams::apply(MANAGER).force();
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    services
        .patch(&name, &apply, &Patch::Apply(&objects::service(&service)))
        .await
        .map_err(kube_error("applying the Service"))?;

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    policies
        .patch(&name, &apply, &Patch::Apply(&objects::network_policy(&service, &context.namespace)))
        .await
        .map_err(kube_error("applying the NetworkPolicy"))?;
    let token = credentials::token(client, &namespace, objects::management_secret(&service)).await?;

    let source = repository(client, &service, &namespace).await;
    let jobs = adapter_jobs(client, &service, &namespace).await;
    let resolved = adapters::resolve(&service.spec, source.as_ref().ok(), &jobs);
    let mut served: Vec<&str> = vec![&service.spec.model];
    served.extend(resolved.iter().filter(|a| a.error.is_none()).map(|a| a.model.as_str()));
    let router_ready = apply_router(client, &service, &namespace, &context.router, &served, &apply).await?;

    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let listed = pod_api
        .list(&ListParams::default().labels(&objects::selector(&service)))
        .await
        .map_err(kube_error("listing the service's pods"))?;
    let pods: Vec<ServingPod> = listed.items.iter().filter_map(ServingPod::from_pod).collect();
    let answering: Vec<&ServingPod> = pods.iter().filter(|p| !p.terminating && p.ip.is_some()).collect();
    // One connection per pod and pass, for the status and the pushes alike.
    let workers = join_all(answering.iter().map(|pod| worker(pod, &token))).await;
    let reports =
        join_all(answering.iter().zip(&workers).map(|(pod, client)| model_statuses(pod, client.clone()))).await;
    // A model unloaded behind the operator's back (RepositoryModelUnload by another holder of
    // the token) is loaded again: the serving config says it is served.
    let reloads = answering.iter().zip(&workers).zip(&reports).flat_map(|((pod, client), report)| {
        let unloaded = report.iter().flatten().filter(|r| r.unloaded && served.contains(&r.model.as_str()));
        unloaded.filter_map(move |r| Some((pod, client.clone()?, r.model.as_str())))
    });
    let reloaded =
        join_all(reloads.map(|(pod, client, model)| async move { (pod, model, reload(client, model).await) }));
    for (pod, model, result) in reloaded.await {
        match result {
            Ok(()) => {
                tracing::info!(service = %name, pod = %pod.name, model, "loaded a model again after an unload the operator did not ask for")
            }
            Err(error) => {
                tracing::warn!(service = %name, pod = %pod.name, model, %error, "loading an unloaded model again")
            }
        }
    }
    let answers: Vec<Vec<ModelStatus>> = reports.iter().flatten().cloned().collect();
    let fleet = Fleet::of_model(&answers, &service.spec.model);

    let previous = service.status.clone().unwrap_or_default();
    let model_bytes = objects::model_bytes(previous.model_bytes, &fleet);
    let now = Timestamp::now();
    let decision = rollout::decide(&Settings::of(&service.spec), &previous.served, &fleet, now);
    let adapter_states = adapters::decide(&resolved, &previous.adapters, &answers, now);
    let mut configs: Vec<(&str, ServingConfig)> =
        decision.serving_config().map(|config| (service.spec.model.as_str(), config)).into_iter().collect();
    for adapter in &adapter_states {
        if let Some(config) = adapter.decision.as_ref().and_then(|d| d.serving_config()) {
            configs.push((&adapter.model, config));
        }
    }
    let reachable = answering.iter().zip(&workers).filter_map(|(pod, client)| Some((pod, client.clone()?)));
    let pushes = reachable.flat_map(|(pod, client)| {
        configs.iter().map(move |(model, config)| {
            let (client, config) = (client.clone(), config.clone());
            async move { (pod, *model, push_config(client, model, config).await) }
        })
    });
    for (pod, model, result) in join_all(pushes).await {
        if let Err(error) = result {
            tracing::warn!(service = %name, pod = %pod.name, model, %error, "pushing the serving config");
        }
    }

    let engines = autoscale::Load::engines(&answers, &service.spec.model);
    let (wanted, autoscaler) = autoscale(&context, &api, &pod_api, &service, engines).await?;
    let mut replicas = 0;
    if let Ok(repository) = &source {
        let repository = &repository.with_cache_defaults(&context.cache_defaults);
        let image = context.images.for_device(service.spec.device);
        let memory = objects::default_memory_limit(&service, model_bytes);
        let adapters = adapter_states.iter().filter_map(|adapter| {
            Some(PodAdapter { model: adapter.model.clone(), policy: adapter.decision.as_ref()?.starting_policy() })
        });
        let models = PodModels { policy: decision.starting_policy(), adapters: adapters.collect() };
        let revision = objects::revision(&service, repository, image, memory.as_deref(), &models.adapters);
        let plan = pods::plan(wanted, &revision, &pods);
        for pod in &plan.delete {
            match pod_api.delete(pod, &DeleteParams::default()).await {
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Ok(_) => {}
                Err(error) => return Err(kube_error(format!("deleting pod {pod}"))(error)),
            }
        }
        for index in &plan.create {
            let pod = objects::pod(&service, repository, image, &revision, *index, &models, memory.as_deref());
            pod_api
                .patch(&objects::pod_name(&service, &revision, *index), &apply, &Patch::Apply(&pod))
                .await
                .map_err(kube_error(format!("creating pod {index} of revision {revision}")))?;
        }
        replicas = pods.iter().filter(|p| !p.terminating && p.revision == revision).count() as u32;
    }

    let serves_stable = |report: &Vec<ModelStatus>| {
        let base = report.iter().find(|r| r.model == service.spec.model);
        base.zip(decision.stable).is_some_and(|(r, v)| serves(r, v))
    };
    let serving =
        answering.iter().zip(&reports).filter(|(pod, report)| pod.ready && report.as_ref().is_some_and(serves_stable));
    let serving = serving.count() as u32;
    let requeue = adapter_states.iter().filter_map(|a| a.decision.as_ref()?.requeue).chain(decision.requeue).min();
    let observed =
        Observed { replicas, serving, fleet, model_bytes, source_error: source.err(), router_ready, autoscaler };
    let next = status::next(&service, &decision, &adapter_states, &observed, now);
    context.metrics.set_traffic(&namespace, &name, &status::traffic(&next, &service.spec.model));
    let events = decision.events.iter().cloned().chain(adapter_states.iter().flat_map(|a| a.events()));
    for event in events {
        context.record_event(service.as_ref(), event.reason, &event.message, event.warning).await;
    }
    if service.status.as_ref() != Some(&next) {
        let patch = crate::status::merge_patch(service.status.as_ref(), &next);
        let written = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error("writing the service's status"))?;
        context.wrote(&written);
    }
    // Workers are polled for new versions; with no pods there is nothing to poll, and any
    // change to the service or its pods wakes the controller anyway — but an autoscaled service
    // at zero is watched for requests waiting at its router.
    let autoscaled = autoscale::Settings::of(&service.spec).is_some();
    let poll = match (wanted, autoscaled) {
        (0, true) => AT_ZERO,
        _ if pods.is_empty() && !autoscaled => IDLE,
        _ => POLL,
    };
    Ok(Action::requeue(requeue.unwrap_or(poll).min(poll)))
}

/// The replicas the service wants now: the autoscaler's decision from its routers' load and
/// its `engines`' (the workers' reports this pass), written through the scale subresource when
/// it changes (with an Event), or `spec.replicas` as it is without `spec.autoscaling` or a router
/// that answers.
async fn autoscale(
    context: &Context,
    api: &Api<InferenceService>,
    pod_api: &Api<Pod>,
    service: &InferenceService,
    engines: autoscale::Load,
) -> Result<(u32, Option<(autoscale::Targets, autoscale::Decision)>), Error> {
    let current = service.spec.replicas;
    let Some(settings) = autoscale::Settings::of(&service.spec) else {
        return Ok((current, None));
    };
    let Some(in_flight) = router_load(pod_api, service).await else { return Ok((current, None)) };
    let load = autoscale::Load { in_flight, ..engines };
    let decision = context.autoscale(&service.uid().unwrap_or_default(), &settings, load, current);
    if decision.replicas != current {
        let scale = serde_json::json!({"spec": {"replicas": decision.replicas}});
        api.patch_scale(&service.name_any(), &PatchParams::default(), &Patch::Merge(&scale))
            .await
            .map_err(kube_error("scaling the service"))?;
        let mode = if decision.panicking { "a burst" } else { "the load" };
        let message = format!(
            "replicas {current} → {}: {mode}, {}",
            decision.replicas,
            settings.targets.describe(&decision.stable)
        );
        context.record_event(service, "Scaled", &message, false).await;
    }
    Ok((decision.replicas, Some((settings.targets, decision))))
}

/// Requests in flight at the service's ready router pods, held ones included; `None` when no
/// router answered (the autoscaler then keeps the replicas as they are).
async fn router_load(pod_api: &Api<Pod>, service: &InferenceService) -> Option<f64> {
    let selector = format!("{}={}", router::ROUTER_LABEL, service.name_any());
    let pods = pod_api.list(&ListParams::default().labels(&selector)).await.ok()?;
    let addresses =
        pods.items.iter().filter_map(|pod| pod_address(pod.status.as_ref()?.pod_ip.as_deref()?, router::ADMIN_PORT));
    let http = reqwest::Client::builder().timeout(WORKER_TIMEOUT).build().ok()?;
    let stats = join_all(addresses.map(|address| {
        let http = http.clone();
        async move {
            let url = format!("http://{address}/stats");
            let stats: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            Some(stats["held"].as_f64()? + stats["in_flight"].as_f64()?)
        }
    }))
    .await;
    let answered: Vec<f64> = stats.into_iter().flatten().collect();
    (!answered.is_empty()).then(|| answered.iter().sum())
}

/// A pod's `ip` and `port` as a URL writes them (an IPv6 address in brackets).
fn pod_address(ip: &str, port: u16) -> Option<std::net::SocketAddr> {
    Some(std::net::SocketAddr::new(ip.parse().ok()?, port))
}

/// The router's account, its binding and its Deployment (told the `models` served). Returns
/// whether the way in is ready: the router has an available pod.
async fn apply_router(
    client: &Client,
    service: &InferenceService,
    namespace: &str,
    settings: &RouterSettings,
    models: &[&str],
    apply: &PatchParams,
) -> Result<bool, Error> {
    let name = router::router_name(service);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    accounts
        .patch(&name, apply, &Patch::Apply(&router::service_account(service)))
        .await
        .map_err(kube_error("applying the router's ServiceAccount"))?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    bindings
        .patch(&name, apply, &Patch::Apply(&router::role_binding(service, &settings.cluster_role)))
        .await
        .map_err(kube_error("applying the router's RoleBinding"))?;
    let applied = deployments
        .patch(&name, apply, &Patch::Apply(&router::deployment(service, &settings.image, models)))
        .await
        .map_err(kube_error("applying the router's Deployment"))?;
    Ok(applied.status.and_then(|s| s.available_replicas).is_some_and(|n| n > 0))
}

fn serves(report: &ModelStatus, version: u64) -> bool {
    report.versions.iter().any(|v| v.version == version && v.state == VersionState::Available as i32)
}

type Management = InterceptedService<Channel, SendToken>;

/// A connection to the pod's management port that sends the token.
async fn worker(pod: &ServingPod, token: &str) -> Option<Management> {
    let endpoint = Endpoint::from_shared(format!("http://{}", pod_address(pod.ip.as_deref()?, MANAGEMENT_PORT)?))
        .ok()?
        .connect_timeout(WORKER_TIMEOUT)
        .timeout(WORKER_TIMEOUT);
    let bearer = SendToken::new(Some(token)).ok()?;
    Some(InterceptedService::new(endpoint.connect().await.ok()?, bearer))
}

/// Loads `model` again on a worker that unloaded it.
async fn reload(connection: Management, model: &str) -> Result<(), String> {
    let mut inference = GrpcInferenceServiceClient::new(connection);
    let request = RepositoryModelLoadRequest { model_name: model.to_owned(), ..Default::default() };
    inference
        .repository_model_load(with_trace_context(tonic::Request::new(request)))
        .await
        .map(|_| ())
        .map_err(|status| format!("{}: {}", status.code(), status.message()))
}

/// The pod's view of every model it serves, if its worker answers in time.
async fn model_statuses(pod: &ServingPod, connection: Option<Management>) -> Option<Vec<ModelStatus>> {
    let Some(mut client) = connection.map(ModelServiceClient::new) else {
        tracing::debug!(pod = %pod.name, "worker not reachable");
        return None;
    };
    let request = with_trace_context(tonic::Request::new(GetModelStatusRequest { model: String::new() }));
    match client.get_model_status(request).await {
        Ok(response) => Some(response.into_inner().models),
        Err(status) => {
            tracing::debug!(pod = %pod.name, %status, "no model status");
            None
        }
    }
}

async fn push_config(connection: Management, model: &str, config: ServingConfig) -> Result<(), String> {
    let mut client = ModelServiceClient::new(connection);
    let request = SetServingConfigRequest { model: model.to_owned(), config: Some(config) };
    client
        .set_serving_config(with_trace_context(tonic::Request::new(request)))
        .await
        .map(|_| ())
        .map_err(|status| format!("{}: {}", status.code(), status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_are_written_as_urls_want_them() {
        assert_eq!(pod_address("10.0.0.7", 8502).unwrap().to_string(), "10.0.0.7:8502");
        assert_eq!(pod_address("fd00::7", 8501).unwrap().to_string(), "[fd00::7]:8501");
        assert_eq!(pod_address("not an ip", 8501), None);
    }
}
