//! Lantern's `EmbeddingService` gRPC API. Translation only; the work is in
//! [`super::embedder`].

use lantern_proto::lantern::v1::embedding_service_server::EmbeddingService;
use lantern_proto::lantern::v1::{self as pb};
use tonic::{Request, Response, Status};

use super::ROUTING_KEY_HEADER;
use super::dispatch;
use super::routing::Target;
use super::versions::ModelManager;
use lantern_runtime::model::bert::EncoderInput;

/// The `EmbeddingService` over a [`ModelManager`].
#[derive(Clone)]
pub struct EmbeddingServiceImpl {
    manager: ModelManager,
}

impl EmbeddingServiceImpl {
    /// Embeds with `manager`'s sentence encoders.
    pub fn new(manager: ModelManager) -> Self {
        Self { manager }
    }
}

#[tonic::async_trait]
impl EmbeddingService for EmbeddingServiceImpl {
    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let header_key = request.metadata().get(ROUTING_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request = request.into_inner();
        let routing_key = Some(request.routing_key).filter(|k| !k.is_empty()).or(header_key);
        let target = Target::parse(&request.model_version)?;
        let embeddings = dispatch::embed(
            &self.manager,
            &request.model_name,
            &target,
            routing_key.as_deref(),
            EncoderInput::Texts(request.texts),
        )
        .await?;
        Ok(Response::new(pb::EmbedResponse {
            model_version: embeddings.version,
            embeddings: embeddings.vectors.into_iter().map(|values| pb::Embedding { values }).collect(),
            prompt_tokens: u32::try_from(embeddings.tokens).unwrap_or(u32::MAX),
        }))
    }
}
