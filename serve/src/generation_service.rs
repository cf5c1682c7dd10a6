//! Lantern's `GenerationService` gRPC API: server-streaming `Generate`. Translation only; the
//! work is in [`super::generation`] and the engine.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use lantern_proto::lantern::v1::generate_request::Input;
use lantern_proto::lantern::v1::generation_service_server::GenerationService;
use lantern_proto::lantern::v1::{self as pb};
use tonic::{Request, Response, Status};

use super::ROUTING_KEY_HEADER;
use super::dispatch;
use super::engine::{Event, FinishReason, Usage};
use super::generation::{Options, Prompt, Structure};
use super::routing::Target;
use super::versions::ModelManager;
use crate::error::Error;
use lantern_runtime::llm::chat::Message;

/// The `GenerationService` over a [`ModelManager`].
#[derive(Clone)]
pub struct GenerationServiceImpl {
    manager: ModelManager,
}

impl GenerationServiceImpl {
    /// Generates with `manager`'s language models.
    pub fn new(manager: ModelManager) -> Self {
        Self { manager }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GenerationService for GenerationServiceImpl {
    type GenerateStream = ResponseStream;

    async fn generate(&self, request: Request<pb::GenerateRequest>) -> Result<Response<ResponseStream>, Status> {
        let header_key = request.metadata().get(ROUTING_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request = request.into_inner();
        let routing_key = Some(request.routing_key.clone()).filter(|k| !k.is_empty()).or(header_key);
        let target = Target::parse(&request.model_version)?;
        let prompt = match request.input {
            Some(Input::Prompt(text)) => Prompt::Text(text),
            Some(Input::Chat(chat)) => {
                Prompt::Chat(chat.messages.into_iter().map(|m| Message::new(m.role, m.content)).collect())
            }
            None => return Err(Error::invalid("set either prompt or chat").into()),
        };
        let structure = match &request.json_schema {
            None => None,
            Some(schema) => Some(Structure::JsonSchema(
                serde_json::from_str(schema)
                    .map_err(|e| Error::invalid(format!("json_schema is not valid JSON: {e}")))?,
            )),
        };
        let options = Options {
            max_tokens: request.max_tokens.map(u64::from),
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k.map(u64::from),
            repetition_penalty: request.repetition_penalty,
            seed: request.seed,
            stop: request.stop,
            structure,
            choices: request.n.map(u64::from),
            ..Options::default()
        };
        let started =
            dispatch::generate(&self.manager, &request.model_name, &target, routing_key.as_deref(), prompt, options)
                .await?;
        let version = started.version;
        let stream = started.events.filter_map(move |event| std::future::ready(response_from_event(version, event)));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The message for `event`; none for a scored prompt, which nothing in the proto asks for.
fn response_from_event(version: u64, event: Event) -> Option<Result<pb::GenerateResponse, Status>> {
    Some(Ok(match event {
        Event::Prompt { .. } => return None,
        // Without log-probabilities: the proto does not ask for them.
        Event::Token { choice, id, text, .. } => pb::GenerateResponse {
            model_version: version,
            token_ids: vec![id],
            text,
            choice: choice_to_proto(choice),
            ..Default::default()
        },
        Event::Finished { choice, text, reason, usage } => pb::GenerateResponse {
            model_version: version,
            text,
            choice: choice_to_proto(choice),
            finish_reason: finish_reason_to_proto(reason) as i32,
            usage: Some(usage_to_proto(usage)),
            ..Default::default()
        },
        Event::Failed(error) => return Some(Err(error.into())),
    }))
}

/// Choices are bounded by `limits::MAX_CHOICES`, far below `u32::MAX`.
fn choice_to_proto(choice: usize) -> u32 {
    u32::try_from(choice).unwrap_or(u32::MAX)
}

fn finish_reason_to_proto(reason: FinishReason) -> pb::FinishReason {
    match reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
    }
}

fn usage_to_proto(usage: Usage) -> pb::Usage {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::Usage {
        prompt_tokens: clamp(usage.prompt_tokens),
        completion_tokens: clamp(usage.completion_tokens),
        cached_prompt_tokens: clamp(usage.cached_tokens),
    }
}
