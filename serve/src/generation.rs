//! Protocol-neutral text generation on a routed language-model version: build the prompt (plain
//! text or a chat rendered with the model's template), validate the options and submit to the
//! version's [`Engine`](super::engine::Engine) ([`submit`], which [`super::dispatch::generate`]
//! calls); [`collect`] gathers a whole completion for the non-streaming APIs. The OpenAI HTTP
//! API, the gRPC `GenerationService` and OIP `ModelInfer` with BYTES text all go through here,
//! so they share defaults, limits and error messages.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::Stream;

use super::engine::{Event, EventStream, FinishReason, GenerateRequest, Usage};
use super::limits;
use super::metrics::Outcome;
use super::signature::{self, InferRequest};
use super::versions::{LanguageModel, LoadedVersion};
use crate::error::{Error, Result};
use lantern_runtime::llm::chat::Message;
use lantern_runtime::llm::sampling::SamplingParams;
use lantern_runtime::repository::{Manifest, TEXT_INPUT};
use lantern_runtime::tensor::{DataType, Tensor, Values};

/// What to continue.
#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

/// Generation options as the APIs name them; `None` takes the default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    /// Default: as many as the context (and the KV cache) leave after the prompt.
    pub max_tokens: Option<u64>,
    /// Default 1 (OpenAI); 0 is greedy.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u64>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl Options {
    /// Reads options from request parameters (OIP `parameters`), refusing wrong types.
    pub fn from_parameters(parameters: &BTreeMap<String, serde_json::Value>) -> Result<Self> {
        let number = |key: &str| -> Result<Option<f64>> {
            match parameters.get(key) {
                None => Ok(None),
                Some(value) => value
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| Error::invalid(format!("parameter {key:?} must be a number, got {value}"))),
            }
        };
        let count = |key: &str| -> Result<Option<u64>> {
            match parameters.get(key) {
                None => Ok(None),
                Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                    Error::invalid(format!("parameter {key:?} must be a non-negative integer, got {value}"))
                }),
            }
        };
        let stop = match parameters.get("stop") {
            None => Vec::new(),
            Some(serde_json::Value::String(stop)) => vec![stop.clone()],
            Some(value) => return Err(Error::invalid(format!("parameter \"stop\" must be a string, got {value}"))),
        };
        Ok(Self {
            max_tokens: count("max_tokens")?,
            temperature: number("temperature")?.map(|v| v as f32),
            top_p: number("top_p")?.map(|v| v as f32),
            top_k: count("top_k")?,
            repetition_penalty: number("repetition_penalty")?.map(|v| v as f32),
            seed: count("seed")?,
            stop,
        })
    }

    /// The sampling parameters, validated.
    pub fn sampling(&self) -> Result<SamplingParams> {
        let defaults = SamplingParams::default();
        let top_k = match self.top_k {
            // 0 and -1 mean "off" in vLLM's API; here only 0 can arrive (unsigned).
            Some(0) | None => None,
            Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k,
            top_p: self.top_p.unwrap_or(defaults.top_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            seed: self.seed,
        };
        params.validate()?;
        Ok(params)
    }
}

/// A submitted request: the version serving it, its prompt size and its events.
#[derive(Debug)]
pub struct Started {
    pub version: u64,
    pub prompt_tokens: usize,
    pub events: Events,
}

/// A generation's events, in order: tokens, then `Finished` or `Failed`. When they carry the
/// request's [`Outcome`] (a generation API's request), they record it as the last event passes —
/// `OK`, or the failure's code — or as cancelled when dropped before (the client went away).
#[derive(Debug)]
pub struct Events {
    receiver: EventStream,
    outcome: Option<Outcome>,
    /// The version the stream runs on, kept until the stream is dropped.
    version: Option<Arc<LoadedVersion>>,
}

impl Events {
    fn new(receiver: EventStream) -> Self {
        Self { receiver, outcome: None, version: None }
    }

    /// Keeps `version` for as long as the stream lives.
    pub(crate) fn hold(&mut self, version: Arc<LoadedVersion>) {
        self.version = Some(version);
    }

    /// Records the request's outcome when the generation ends.
    pub fn record_into(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// The next event; `None` after the last.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let event = ready!(self.receiver.poll_recv(cx));
        let ended = match &event {
            Some(Event::Token { .. }) => None,
            Some(Event::Finished { .. }) => Some(Ok(())),
            Some(Event::Failed(error)) => Some(Err(error)),
            // The engine went away without a last event: counted as the shutdown it is.
            None => Some(Err(&Error::Shutdown(String::new()))),
        };
        if let Some(result) = ended
            && let Some(outcome) = self.outcome.take()
        {
            outcome.finish(result);
        }
        Poll::Ready(event)
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}

/// Builds the prompt and submits it to the routed version. Every refusal happens here, before
/// any token is sent. Templating and tokenizing run on the blocking pool, never on the async
/// runtime's threads.
pub(crate) async fn submit(language_model: LanguageModel, prompt: Prompt, options: Options) -> Result<Started> {
    limits::check_stop_strings(&options.stop)?;
    let sampling = options.sampling()?;
    let engine = &language_model.engine;
    let prompt_bytes = match &prompt {
        Prompt::Text(text) if text.is_empty() => return Err(Error::invalid("the prompt is empty")),
        Prompt::Text(text) => text.len(),
        Prompt::Chat(messages) => {
            limits::check_chat_messages(messages.len())?;
            messages.iter().map(|m| m.content.len()).sum()
        }
    };
    limits::check_prompt_bytes(prompt_bytes, engine.context_length(), language_model.codec.longest_token_bytes())?;
    let codec = language_model.codec.clone();
    let tokens = tokio::task::spawn_blocking(move || match prompt {
        Prompt::Text(text) => codec.encode(&text),
        Prompt::Chat(messages) => codec.encode_chat(&messages),
    })
    .await
    .map_err(|e| Error::Shutdown(format!("tokenizing the prompt failed: {e}")))??;
    let room = engine.context_length().min(engine.capacity_tokens()).saturating_sub(tokens.len()).max(1);
    let max_tokens = options.max_tokens.map_or(room, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let prompt_tokens = tokens.len();
    let adapter = language_model.adapter.clone();
    let request = GenerateRequest { prompt: tokens, adapter, max_tokens, sampling, stop: options.stop };
    let events = engine.submit(request)?;
    Ok(Started { version: language_model.version, prompt_tokens, events: Events::new(events) })
}

/// A whole completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// Waits for the end of a generation and returns all of it.
pub async fn collect(events: &mut Events) -> Result<Completion> {
    let mut text = String::new();
    let mut token_ids = Vec::new();
    loop {
        match events.recv().await {
            Some(Event::Token { id, text: delta }) => {
                token_ids.push(id);
                text.push_str(&delta);
            }
            Some(Event::Finished { text: tail, reason, usage }) => {
                text.push_str(&tail);
                return Ok(Completion { text, token_ids, reason, usage });
            }
            Some(Event::Failed(error)) => return Err(error),
            None => return Err(Error::Shutdown("the generation engine stopped".into())),
        }
    }
}

/// OIP `ModelInfer` on a language model: one BYTES `text_input` element (UTF-8) in, the
/// generated text as one BYTES element out; options come from the request parameters.
pub async fn infer_text(language_model: &LanguageModel, manifest: &Manifest, request: &InferRequest) -> Result<Tensor> {
    let text = match signature::texts(manifest, request)?.as_mut_slice() {
        [text] => std::mem::take(text),
        texts => {
            return Err(Error::invalid(format!(
                "input {TEXT_INPUT:?} must hold exactly one prompt, got {}",
                texts.len()
            )));
        }
    };
    let options = Options::from_parameters(&request.parameters)?;
    let mut started = submit(language_model.clone(), Prompt::Text(text), options).await?;
    let completion = collect(&mut started.events).await?;
    let name = manifest.outputs[0].name.clone();
    Ok(Tensor::new(name, DataType::Bytes, vec![1], Values::Bytes(vec![completion.text.into_bytes()]))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_from_parameters_with_their_types_checked() {
        let parameters: BTreeMap<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "max_tokens": 8, "temperature": 0.5, "top_k": 4, "seed": 7, "stop": "\n", "other": true
        }))
        .unwrap();
        let options = Options::from_parameters(&parameters).unwrap();
        assert_eq!(options.max_tokens, Some(8));
        assert_eq!(options.temperature, Some(0.5));
        assert_eq!(options.stop, vec!["\n".to_owned()]);
        let sampling = options.sampling().unwrap();
        assert_eq!((sampling.top_k, sampling.seed), (Some(4), Some(7)));
        for (key, value) in [("max_tokens", serde_json::json!(-1)), ("temperature", serde_json::json!("hot"))] {
            let parameters = BTreeMap::from([(key.to_owned(), value)]);
            let err = Options::from_parameters(&parameters).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn invalid_sampling_values_are_refused() {
        let hot = Options { temperature: Some(-1.0), ..Options::default() };
        assert!(hot.sampling().unwrap_err().to_string().contains("temperature"));
        let nucleus = Options { top_p: Some(0.0), ..Options::default() };
        assert!(nucleus.sampling().unwrap_err().to_string().contains("top_p"));
    }
}
