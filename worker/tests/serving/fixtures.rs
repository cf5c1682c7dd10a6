//! Builders shared by the serving tests: a real server on 127.0.0.1, MLP versions published the
//! way users publish them, real tonic clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::inference::model_infer_request::InferInputTensor;
use lantern_proto::inference::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use lantern_proto::lantern::v1::model_service_client::ModelServiceClient;
use lantern_proto::lantern::v1::{GetModelStatusRequest, VersionState, VersionStatus};
use lantern_runtime::model::mlp::{self, Activation};
use lantern_runtime::repository::{self, PublishRequest, Repository};
use lantern_serve::batcher::BatchSettings;
use lantern_serve::routing::Target;
use lantern_serve::server::{self, RunningServer, ServerOptions};
use lantern_serve::versions::ServeSettings;
use tempfile::TempDir;
use tonic::transport::Channel;

/// Input width of the test MLP.
pub const IN: usize = 4;
/// Output width of the test MLP.
pub const OUT: usize = 3;

/// A worker serving a temporary repository.
pub struct Harness {
    pub repo: TempDir,
    pub server: RunningServer,
}

/// Settings for fast tests: quick polls and retries.
pub fn fast_settings() -> ServeSettings {
    ServeSettings {
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        load_timeout: Duration::from_secs(20),
        batch: BatchSettings { max_batch_size: 16, ..BatchSettings::default() },
        ..ServeSettings::default()
    }
}

/// Server options on an ephemeral loopback port.
pub fn local_options() -> ServerOptions {
    ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_message_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(10),
        ..ServerOptions::default()
    }
}

impl Harness {
    /// A server over an empty repository with [`fast_settings`].
    pub async fn start() -> Self {
        Self::start_with(fast_settings(), local_options(), |_| {}).await
    }

    /// A server with version 1 of model `m` published and available.
    pub async fn serving_one_version() -> Self {
        let harness = Self::start().await;
        harness.publish("m", 1);
        harness.wait_for("m", 1, VersionState::Available).await;
        harness
    }

    /// A server whose repository `prepare` fills before the server starts.
    pub async fn start_with(settings: ServeSettings, options: ServerOptions, prepare: impl FnOnce(&Path)) -> Self {
        let repo = tempfile::tempdir().unwrap();
        prepare(repo.path());
        let server = server::start(repository::Repository::new(repo.path()), settings, options).await.unwrap();
        Self { repo, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    pub async fn grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(self.url()).await.unwrap()
    }

    pub async fn models(&self) -> ModelServiceClient<Channel> {
        ModelServiceClient::connect(self.url()).await.unwrap()
    }

    /// Publishes an MLP with `seed` as the next version of `model` and asks for a rescan.
    pub fn publish(&self, model: &str, seed: u64) -> u64 {
        let version = publish_mlp(self.repo.path(), model, seed, &[IN, 8, OUT]);
        self.server.manager().reconcile_now();
        version
    }

    pub fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.repo.path().join(model).join(version.to_string())
    }

    /// The status of one version, if the worker tracks it.
    pub async fn version_status(&self, model: &str, version: u64) -> Option<VersionStatus> {
        let response =
            self.models().await.get_model_status(GetModelStatusRequest { model: model.into() }).await.ok()?;
        response.into_inner().models.into_iter().flat_map(|m| m.versions).find(|v| v.version == version)
    }

    /// Waits (up to 20 s) until `version` of `model` reaches `state`, returning its status.
    pub async fn wait_for(&self, model: &str, version: u64, state: VersionState) -> VersionStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.version_status(model, version).await;
            if let Some(status) = status.as_ref().filter(|s| s.state == state as i32) {
                return status.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{model} v{version} never reached {state:?}; last status {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `version` is no longer tracked at all.
    pub async fn wait_gone(&self, model: &str, version: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Some(status) = self.version_status(model, version).await {
            assert!(tokio::time::Instant::now() < deadline, "{model} v{version} still tracked: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes an MLP into a fresh source directory and publishes it as the next version.
pub fn publish_mlp(root: &Path, model: &str, seed: u64, layers: &[usize]) -> u64 {
    publish_edited(root, model, seed, None, layers, &[], |_| {})
}

/// Like [`publish_mlp`], with the manifest's evaluation `metrics`, letting `edit` change the
/// source directory before it is published.
pub fn publish_edited(
    root: &Path,
    model: &str,
    seed: u64,
    version: Option<u64>,
    layers: &[usize],
    metrics: &[(String, f64)],
    edit: impl FnOnce(&Path),
) -> u64 {
    let source = tempfile::tempdir().unwrap();
    write_mlp(source.path(), seed, layers);
    edit(source.path());
    repository::publish(&PublishRequest {
        repository: &Repository::new(root),
        model,
        source: source.path(),
        version,
        metrics,
    })
    .unwrap()
}

/// Writes an MLP's weights and manifest into `dir`.
fn write_mlp(dir: &Path, seed: u64, layers: &[usize]) {
    let config = mlp::Config { layers: layers.to_vec(), activation: Activation::Relu };
    config.write_initialised(dir, seed).unwrap();
}

/// A typed FP32 request with `rows` rows of the test MLP's input.
pub fn infer_request(model: &str, version: &str, rows: usize) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: "test".into(),
        inputs: vec![InferInputTensor {
            name: mlp::INPUT.into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, IN as i64],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                fp32_contents: (0..rows * IN).map(|i| i as f32 / 10.0).collect(),
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
}

/// The FP32 output values of a typed response.
pub fn output_values(response: &ModelInferResponse) -> Vec<f32> {
    response.outputs[0].contents.as_ref().expect("typed response").fp32_contents.clone()
}

/// POSTs a JSON body to the harness's HTTP API.
pub async fn post_json(harness: &Harness, path: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{}{path}", harness.url())).json(body).send().await.unwrap()
}

/// Sends each body to `path` and checks the status and that OpenAI's error message contains the
/// needle.
pub async fn assert_openai_errors(harness: &Harness, path: &str, cases: Vec<(serde_json::Value, u16, &str)>) {
    for (body, status, needle) in cases {
        let response = post_json(harness, path, &body).await;
        assert_eq!(response.status(), status, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message:?} should say {needle:?}");
    }
}

/// A server with model `m` v1 published, started with `options` changed by `change`, and
/// waited on through its version manager (management may need a token the harness does not
/// send, and the port may speak TLS).
pub async fn serving_with(change: impl FnOnce(&mut lantern_serve::server::ServerOptions)) -> Harness {
    let mut options = local_options();
    change(&mut options);
    let harness = Harness::start_with(fast_settings(), options, |root| {
        publish_mlp(root, "m", 1, &[IN, 8, 3]);
    })
    .await;
    for _ in 0..400 {
        if harness.server.manager().is_ready("m", &Target::Default).unwrap_or(false) {
            return harness;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("model m never became ready");
}
