//! Lantern's `ModelService` gRPC API: per-version status and the serving config the operator
//! pushes to every pod. Translation only; the decisions live in [`super::versions`].

use lantern_proto::lantern::v1::model_service_server::ModelService;
use lantern_proto::lantern::v1::version_policy::{All, Latest, Policy, Specific};
use lantern_proto::lantern::v1::{self as pb};
use tonic::{Request, Response, Status};

use super::config::{ServingConfig, VersionPolicy};
use super::request_stats;
use super::versions::{self, ModelManager};
use crate::error::Result;

/// The `ModelService` over a [`ModelManager`].
#[derive(Clone)]
pub struct ModelServiceImpl {
    manager: ModelManager,
}

impl ModelServiceImpl {
    /// Manages `manager`'s models.
    pub fn new(manager: ModelManager) -> Self {
        Self { manager }
    }
}

#[tonic::async_trait]
impl ModelService for ModelServiceImpl {
    async fn get_model_status(
        &self,
        request: Request<pb::GetModelStatusRequest>,
    ) -> Result<Response<pb::GetModelStatusResponse>, Status> {
        let model = request.into_inner().model;
        let statuses = self.manager.status((!model.is_empty()).then_some(model.as_str()))?;
        Ok(Response::new(pb::GetModelStatusResponse { models: statuses.into_iter().map(status_to_proto).collect() }))
    }

    async fn set_serving_config(
        &self,
        request: Request<pb::SetServingConfigRequest>,
    ) -> Result<Response<pb::SetServingConfigResponse>, Status> {
        let request = request.into_inner();
        let config = config_from_proto(request.config.unwrap_or_default())?;
        self.manager.set_config(&request.model, config)?;
        Ok(Response::new(pb::SetServingConfigResponse {}))
    }

    async fn get_serving_config(
        &self,
        request: Request<pb::GetServingConfigRequest>,
    ) -> Result<Response<pb::GetServingConfigResponse>, Status> {
        let config = self.manager.config(&request.into_inner().model)?;
        Ok(Response::new(pb::GetServingConfigResponse { config: Some(config_to_proto(&config)) }))
    }

    async fn reload(&self, _: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        self.manager.reconcile().await;
        Ok(Response::new(pb::ReloadResponse {}))
    }
}

/// Translates and validates a pushed serving config.
pub fn config_from_proto(config: pb::ServingConfig) -> Result<ServingConfig> {
    let policy = match config.version_policy.and_then(|p| p.policy) {
        None => VersionPolicy::default(),
        Some(Policy::Latest(Latest { num_versions })) => VersionPolicy::Latest(num_versions.max(1)),
        Some(Policy::All(All {})) => VersionPolicy::All,
        Some(Policy::Specific(Specific { versions })) => VersionPolicy::Specific(versions.into_iter().collect()),
    };
    let config = ServingConfig {
        policy,
        labels: config.labels.into_iter().collect(),
        traffic: config.traffic.into_iter().collect(),
    };
    config.validate()?;
    Ok(config)
}

/// Translates a serving config for the wire.
pub fn config_to_proto(config: &ServingConfig) -> pb::ServingConfig {
    let policy = match &config.policy {
        VersionPolicy::Latest(n) => Policy::Latest(Latest { num_versions: *n }),
        VersionPolicy::All => Policy::All(All {}),
        VersionPolicy::Specific(versions) => {
            Policy::Specific(Specific { versions: versions.iter().copied().collect() })
        }
    };
    pb::ServingConfig {
        version_policy: Some(pb::VersionPolicy { policy: Some(policy) }),
        labels: config.labels.clone().into_iter().collect(),
        traffic: config.traffic.clone().into_iter().collect(),
    }
}

fn status_to_proto(status: versions::ModelStatus) -> pb::ModelStatus {
    let versions = status
        .versions
        .into_iter()
        .map(|v| pb::VersionStatus {
            version: v.version,
            state: state_to_proto(status.enabled, v.state) as i32,
            reason: v.reason,
            failed_attempts: v.failed_attempts,
            labels: v.labels,
            traffic_percent: v.traffic_percent,
            metrics: v.metrics.into_iter().collect(),
            requests: Some(pb::RequestStats {
                total: v.requests.requests,
                errors: v.requests.errors,
                latency_bounds: request_stats::latency_bounds(),
                latency_counts: v.requests.latency_counts,
            }),
            size_bytes: v.size_bytes,
            base: v.base.map(|base| pb::AdapterBase {
                model: base.model,
                version: base.version,
                manifest_digest: base.manifest_digest,
            }),
            manifest_digest: v.manifest_digest.unwrap_or_default(),
            fetch: v.fetch.map(|f| pb::VersionFetch {
                files_cached: f.files_cached as u32,
                files_downloaded: f.files_downloaded as u32,
                bytes_downloaded: f.bytes_downloaded,
                seconds: f.seconds,
            }),
            engine: v.engine.map(|e| pb::EngineLoad {
                running_sequences: e.running as u32,
                waiting_sequences: e.waiting as u32,
                kv_cache_blocks_used: e.kv_blocks_used,
                kv_cache_blocks_total: e.kv_blocks_total,
            }),
        })
        .collect();
    pb::ModelStatus { model: status.model, versions, on_disk: status.on_disk, unloaded: !status.enabled }
}

fn state_to_proto(enabled: bool, state: versions::VersionState) -> pb::VersionState {
    use versions::VersionState as S;
    match state {
        S::Start => pb::VersionState::Start,
        S::Loading => pb::VersionState::Loading,
        S::Available if enabled => pb::VersionState::Available,
        S::Available | S::Unloading => pb::VersionState::Unloading,
        S::End => pb::VersionState::End,
        S::Failed => pb::VersionState::Failed,
    }
}
