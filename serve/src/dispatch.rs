//! One dispatch path for every request, whatever its protocol: route it to a version
//! ([`ModelManager::resolve_waiting`]: a request for an evicted adapter waits for it to load again), run it on that version's runtime (the batcher, the embedder or
//! the generation engine), and record its outcome exactly once ([`Outcome`]) — success, a refusal
//! before admission, a full queue, a cancellation or an engine failure alike. The protocol
//! adapters run requests only through these functions.

use super::embedder::Embeddings;
use super::generation::{self, Options, Prompt, Started};
use super::routing::Target;
use super::signature::{self, InferRequest};
use super::versions::{LoadedVersion, ModelManager, Runtime};
use crate::error::{Error, Result};
use lantern_runtime::model::bert::EncoderInput;
use lantern_runtime::tensor::Tensor;

/// The answer to an inference request, with the version that produced it.
#[derive(Debug)]
pub struct InferResponse {
    pub version: u64,
    pub outputs: Vec<Tensor>,
}

/// Routes and runs one tensor request (OIP `ModelInfer`, REST `infer`) on any kind of model.
pub async fn infer(
    manager: &ModelManager,
    model: &str,
    target: &Target,
    routing_key: Option<&str>,
    request: InferRequest,
) -> Result<InferResponse> {
    let mut outcome = manager.outcome(model);
    let result = async {
        let loaded = manager.resolve_waiting(model, target, routing_key).await?;
        outcome.routed(loaded.version);
        run(&loaded, request).await
    }
    .await;
    outcome.finish(result.as_ref().map(drop));
    result
}

/// Embeds `input` with the version `target` routes to; refuses a model that does not embed.
pub async fn embed(
    manager: &ModelManager,
    model: &str,
    target: &Target,
    routing_key: Option<&str>,
    input: EncoderInput,
) -> Result<Embeddings> {
    let mut outcome = manager.outcome(model);
    let result = async {
        let loaded = manager.resolve_waiting(model, target, routing_key).await?;
        outcome.routed(loaded.version);
        match &loaded.runtime {
            Runtime::Embed(embedder) => embedder.embed(input).await,
            _ => Err(Error::invalid(format!("model {model:?} version {} does not embed text", loaded.version))),
        }
    }
    .await;
    outcome.finish(result.as_ref().map(drop));
    result
}

/// Routes a generation and submits it (OpenAI completions and chat, gRPC `Generate`). A refusal
/// is recorded here; an admitted generation's outcome is recorded by its events when the last
/// one arrives, or as cancelled when they are dropped first.
pub async fn generate(
    manager: &ModelManager,
    model: &str,
    target: &Target,
    routing_key: Option<&str>,
    prompt: Prompt,
    options: Options,
) -> Result<Started> {
    let mut outcome = manager.outcome(model);
    let started = async {
        let loaded = manager.resolve_waiting(model, target, routing_key).await?;
        outcome.routed(loaded.version);
        let Runtime::Generate(language_model) = &loaded.runtime else {
            return Err(Error::invalid(format!("model {model:?} version {} does not generate text", loaded.version)));
        };
        let mut started = generation::submit(language_model.clone(), prompt, options).await?;
        // The stream keeps its version: it stays UNLOADING until the stream ends.
        started.events.hold(loaded.clone());
        Ok(started)
    }
    .await;
    match started {
        Ok(mut started) => {
            started.events.record_into(outcome);
            Ok(started)
        }
        Err(error) => {
            outcome.finish(Err(&error));
            Err(error)
        }
    }
}

/// Runs a request on the version it was routed to.
async fn run(loaded: &LoadedVersion, request: InferRequest) -> Result<InferResponse> {
    let output = match &loaded.runtime {
        Runtime::Tensor { batcher, out_width } => {
            let rows = signature::prepare(&loaded.manifest, &request)?;
            let output = batcher.submit(rows.rows, rows.values).await?;
            let spec = &loaded.manifest.outputs[0];
            Tensor::f32(spec.name.clone(), vec![rows.rows as i64, *out_width as i64], output)
        }
        Runtime::Generate(language_model) => generation::infer_text(language_model, &loaded.manifest, &request).await?,
        Runtime::Embed(embedder) => {
            let texts = signature::texts(&loaded.manifest, &request)?;
            let embeddings = embedder.embed(EncoderInput::Texts(texts)).await?;
            let rows = embeddings.vectors.len() as i64;
            let values = embeddings.vectors.concat();
            Tensor::f32(loaded.manifest.outputs[0].name.clone(), vec![rows, embedder.dimension() as i64], values)
        }
    };
    Ok(InferResponse { version: loaded.version, outputs: signature::select_outputs(&request.outputs, vec![output]) })
}
