//! Load through a Service, for the suites and the benches: closed loops of one request on one
//! gRPC channel (one connection, as a microservice's client keeps), counting what failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lantern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use lantern_proto::inference::model_infer_request::InferInputTensor;
use lantern_proto::inference::{InferTensorContents, ModelInferRequest};

/// One row `[1.0, 2.0]` for `model`, an MLP with two inputs (the suites' `2,8,1`).
pub fn mlp_request(model: &str) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            contents: Some(InferTensorContents { fp32_contents: vec![1.0, 2.0], ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `clients` loops sending a request, each waiting `pause` after every answer.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    /// Starts the loops against `address` (`host:port`), sending `request`.
    pub fn start(address: String, request: ModelInferRequest, clients: usize, pause: Duration) -> Self {
        let (stop, sent, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (stopping, counting, failing) = (stop.clone(), Arc::clone(&sent), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let channel = match GrpcInferenceServiceClient::connect(format!("http://{address}")).await {
                Ok(channel) => channel,
                Err(error) => return vec![format!("connecting to {address}: {error}")],
            };
            let loops = (0..clients).map(|_| {
                let (mut client, request) = (channel.clone(), request.clone());
                let (stopping, counting, failing) = (stopping.clone(), counting.clone(), failing.clone());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stopping.load(Ordering::Relaxed) {
                        counting.fetch_add(1, Ordering::Relaxed);
                        if let Err(status) = client.model_infer(request.clone()).await {
                            failing.fetch_add(1, Ordering::Relaxed);
                            errors.push(status.to_string());
                        }
                        tokio::time::sleep(pause).await;
                    }
                    errors
                })
            });
            let mut errors = Vec::new();
            for task in loops.collect::<Vec<_>>() {
                errors.extend(task.await.unwrap_or_default());
            }
            errors
        });
        Self { stop, sent, failed, task }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops, returning (sent, failed, the first errors).
    pub async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = self.task.await.unwrap_or_default();
        errors.truncate(5);
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), errors)
    }
}
