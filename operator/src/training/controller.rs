//! The TrainingJob controller: for each job, applies its ConfigMap and coordinator Service,
//! creates and deletes rank pods as [`plan`](super::plan) says, polls rank 0's progress (telling
//! it, when the job keeps a bounded number of versions, which ones InferenceServices hold), and
//! writes the status. Everything it decides from is in the cluster (the job's status and its
//! pods), so an operator restarted mid-training carries on where the last one stopped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use lantern_proto::lantern::v1::training_service_client::TrainingServiceClient;
use lantern_proto::lantern::v1::{GetProgressRequest, HeldVersions, TrainingProgress};

use super::objects::{self, JOB_LABEL, PROGRESS_PORT};
use super::plan::{self, Phase, Plan, RankPod, Recorded};
use super::{retention, status};
use crate::context::{Context, Error, MANAGER, kube_error, run_controller};
use crate::crd::{InferenceService, TrainingJob};
use lantern_proto::auth::SendToken;

use crate::credentials;

/// How often a running job's progress is polled.
const POLL: Duration = Duration::from_secs(2);
/// How long rank 0 has to answer a progress poll.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the controller until `shutdown` resolves.
pub async fn run(context: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    run_controller::<TrainingJob, _, _>(context, shutdown, JOB_LABEL, reconcile).await;
}

fn recorded(job: &TrainingJob) -> Recorded {
    let status = job.status.clone().unwrap_or_default();
    Recorded {
        phase: status.phase,
        attempt: status.attempt,
        restarts: status.restarts,
        start_time: status.start_time.map(|t| t.0),
        completion_time: status.completion_time.map(|t| t.0),
    }
}

async fn reconcile(job: Arc<TrainingJob>, context: Arc<Context>) -> Result<Action, Error> {
    let client = &context.client;
    let namespace = job.namespace().unwrap_or_else(|| "default".to_owned());
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let job = context.latest(&jobs, job).await?;
    let name = job.name_any();
    let apply = PatchParams::apply(MANAGER).force();
    let recorded = recorded(&job);
    let held = match job.spec.output.keep_versions {
        Some(_) if !recorded.phase.is_some_and(Phase::finished) => {
            let services: Api<InferenceService> = Api::namespaced(client.clone(), &namespace);
            let listed = services
                .list(&ListParams::default())
                .await
                .map_err(kube_error("listing the namespace's InferenceServices"))?;
            Some(retention::held_versions(&job, &listed.items))
        }
        _ => None,
    };
    if !recorded.phase.is_some_and(Phase::finished) {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let map = objects::config_map(&job, &held.clone().unwrap_or_default())?;
        maps.patch(&objects::config_map_name(&job), &apply, &Patch::Apply(&map))
            .await
            .map_err(kube_error("applying the job's ConfigMap"))?;
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let service = objects::coordinator_service(&job);
        services
            .patch(&objects::coordinator_name(&job), &apply, &Patch::Apply(&service))
            .await
            .map_err(kube_error("applying the coordinator Service"))?;
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
        policies
            .patch(&name, &apply, &Patch::Apply(&objects::network_policy(&job, &context.namespace)))
            .await
            .map_err(kube_error("applying the job's NetworkPolicy"))?;
    }
    let token = credentials::token(client, &namespace, objects::token_secret(&job)).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={name}")))
        .await
        .map_err(kube_error("listing the job's pods"))?;
    let ranks: Vec<RankPod> = listed.items.iter().filter_map(RankPod::from_pod).collect();
    let now = Timestamp::now();
    let plan = plan::plan(&job, &recorded, &ranks, now);

    for pod in &plan.delete {
        match pods.delete(pod, &DeleteParams::default()).await {
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Ok(_) => {}
            Err(error) => return Err(kube_error(format!("deleting pod {pod}"))(error)),
        }
    }
    for rank in &plan.create {
        let image = context.images.for_device(job.spec.device);
        let pod = objects::rank_pod(&job, plan.attempt, *rank, image, &context.cache_defaults);
        pods.patch(&objects::pod_name(&job, plan.attempt, *rank), &apply, &Patch::Apply(&pod))
            .await
            .map_err(kube_error(format!("creating rank {rank}'s pod")))?;
    }
    if plan.delete_job {
        jobs.delete(&name, &DeleteParams::background()).await.map_err(kube_error("deleting the finished job"))?;
        return Ok(Action::await_change());
    }

    let polled = match plan.phase {
        Phase::Running | Phase::Succeeded => progress(&listed.items, plan.attempt, &token, held).await,
        _ => None,
    };
    // Once rank 0 has exited, its termination message holds the final progress.
    let report = polled
        .or_else(|| ranks.iter().find(|r| r.rank == 0 && r.attempt == plan.attempt).and_then(|r| r.report.clone()));
    let next = status::next(&job, &plan, &ranks, report.as_ref(), now);
    if job.status.as_ref() != Some(&next) {
        if recorded.phase != Some(plan.phase) {
            announce(&context, &job, &plan).await;
        }
        let patch = crate::status::merge_patch(job.status.as_ref(), &next);
        let written = jobs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error("writing the job's status"))?;
        context.wrote(&written);
    }
    let wait = match plan.phase {
        Phase::Running | Phase::Created | Phase::Restarting => Some(POLL),
        _ => None,
    };
    Ok(match wait.into_iter().chain(plan.requeue).min() {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Rank 0's progress report, when its pod runs and answers in time; `held` tells it the
/// versions its retention keeps.
async fn progress(pods: &[Pod], attempt: u32, token: &str, held: Option<BTreeSet<u64>>) -> Option<TrainingProgress> {
    let rank0 = pods.iter().find(|p| RankPod::from_pod(p).is_some_and(|r| r.rank == 0 && r.attempt == attempt))?;
    let ip = rank0.status.as_ref()?.pod_ip.clone()?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{PROGRESS_PORT}"))
        .ok()?
        .connect_timeout(PROGRESS_TIMEOUT)
        .timeout(PROGRESS_TIMEOUT);
    let channel = endpoint.connect().await.ok()?;
    let held = held.map(|versions| HeldVersions { versions: versions.into_iter().collect() });
    let request = lantern_telemetry::with_trace_context(tonic::Request::new(GetProgressRequest { held }));
    let response = TrainingServiceClient::with_interceptor(channel, SendToken::new(Some(token)).ok()?)
        .get_progress(request)
        .await
        .ok()?;
    Some(response.into_inner())
}

/// Records an Event for a phase change (warning for failures and restarts).
async fn announce(context: &Context, job: &TrainingJob, plan: &Plan) {
    let warning = matches!(plan.phase, Phase::Failed | Phase::Restarting);
    context.record_event(job, plan.reason, &plan.message, warning).await;
}
