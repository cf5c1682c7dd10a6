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

use super::engine::{Event, EventStream, FinishReason, GenerateRequest, ScoredPrompt, Usage};
use super::limits;
use super::metrics::Outcome;
use super::signature::{self, InferRequest};
use super::versions::{LanguageModel, LoadedVersion};
use crate::error::{Error, Result};
use lantern_runtime::llm::chat::Message;
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::llm::sampling::{Logprobs, MAX_TOP_LOGPROBS, SamplingParams};
use lantern_runtime::repository::{Manifest, TEXT_INPUT};
use lantern_runtime::tensor::{DataType, Tensor, Values};

/// What to continue.
#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    /// Token ids as given (OpenAI completions take them in place of text).
    Tokens(Vec<u32>),
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
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id → bias.
    pub logit_bias: Vec<(u32, f32)>,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<u64>,
    /// Score the prompt, with this many alternatives per token (completions' `echo` with
    /// `logprobs`).
    pub prompt_logprobs: Option<u64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Choices generated (default 1).
    pub choices: Option<u64>,
    pub min_tokens: Option<u64>,
    pub ignore_eos: bool,
    /// What the output must be.
    pub structure: Option<Structure>,
}

/// Output constrained by a grammar ([`lantern_runtime::llm::grammar`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Structure {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// JSON matching a schema (OpenAI's `json_schema`).
    JsonSchema(serde_json::Value),
}

impl Structure {
    /// What the model is told in a chat, as OpenAI tells it a `json_schema` format: the
    /// constraint decides what is valid; being told what is expected keeps a small model from
    /// wandering inside it (a string that never closes).
    pub fn instructions(&self) -> String {
        match self {
            Self::JsonObject => "Answer with only a JSON object.".to_owned(),
            Self::JsonSchema(schema) => format!("Answer with only JSON matching this JSON schema: {schema}"),
        }
    }

    /// The JSON schema the output must match.
    fn schema(&self) -> serde_json::Value {
        match self {
            Self::JsonObject => serde_json::json!({"type": "object"}),
            Self::JsonSchema(schema) => schema.clone(),
        }
    }
}

impl Options {
    /// Reads options from request parameters (OIP `parameters`), refusing wrong types. A number
    /// may also come as its decimal string: the KServe SDK's gRPC client sends every parameter it
    /// cannot type as a string (`temperature: "0.7"`).
    pub fn from_parameters(parameters: &BTreeMap<String, serde_json::Value>) -> Result<Self> {
        use serde_json::Value;
        let number = |key: &str| -> Result<Option<f64>> {
            match parameters.get(key) {
                None => Ok(None),
                Some(Value::String(text)) => text.trim().parse::<f64>().map(Some).map_err(|_| {
                    Error::invalid(format!("parameter {key:?} must be a number, got the string {text:?}"))
                }),
                Some(value) => value
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| Error::invalid(format!("parameter {key:?} must be a number, got {value}"))),
            }
        };
        let count = |key: &str| -> Result<Option<u64>> {
            let refuse = || Error::invalid(format!("parameter {key:?} must be a non-negative integer"));
            match parameters.get(key) {
                None => Ok(None),
                Some(Value::String(text)) => text.trim().parse::<u64>().map(Some).map_err(|_| refuse()),
                Some(value) => {
                    value.as_u64().map(Some).ok_or_else(|| Error::invalid(format!("{}, got {value}", refuse())))
                }
            }
        };
        let single = |value: Option<f64>| value.map(|v| v as f32);
        let stop = match parameters.get("stop") {
            None => Vec::new(),
            Some(Value::String(stop)) => vec![stop.clone()],
            Some(value) => return Err(Error::invalid(format!("parameter \"stop\" must be a string, got {value}"))),
        };
        Ok(Self {
            max_tokens: count("max_tokens")?,
            temperature: single(number("temperature")?),
            top_p: single(number("top_p")?),
            top_k: count("top_k")?,
            repetition_penalty: single(number("repetition_penalty")?),
            presence_penalty: single(number("presence_penalty")?),
            frequency_penalty: single(number("frequency_penalty")?),
            seed: count("seed")?,
            min_tokens: count("min_tokens")?,
            stop,
            ..Self::default()
        })
    }

    /// The sampling parameters, validated for a model of `vocab_size` tokens.
    pub fn sampling(&self, vocab_size: usize) -> Result<SamplingParams> {
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
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            logit_bias: self.logit_bias.clone(),
            logprobs: self.logprobs.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
            seed: self.seed,
        };
        params.validate(vocab_size)?;
        Ok(params)
    }
}

/// A submitted request: the version serving it, its prompt size, its events, and the codec that
/// spells its token ids.
#[derive(Debug)]
pub struct Started {
    pub version: u64,
    pub prompt_tokens: usize,
    pub events: Events,
    pub codec: Arc<TextCodec>,
}

/// A generation's events: each choice's tokens then its `Finished`, choices interleaved, or a
/// `Failed`; the stream ends after the last choice's `Finished` or the `Failed`. When they carry
/// the request's [`Outcome`] (a generation API's request), they record it as the last event
/// passes — `OK`, or the failure's code — or as cancelled when dropped before (the client went
/// away).
#[derive(Debug)]
pub struct Events {
    receiver: EventStream,
    /// Choices not finished yet.
    unfinished: usize,
    outcome: Option<Outcome>,
    /// The version the stream runs on, kept until the stream is dropped.
    version: Option<Arc<LoadedVersion>>,
}

impl Events {
    fn new(receiver: EventStream, choices: usize) -> Self {
        Self { receiver, unfinished: choices, outcome: None, version: None }
    }

    /// Choices the request generates.
    pub fn choices(&self) -> usize {
        self.unfinished
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
        if self.unfinished == 0 {
            return Poll::Ready(None);
        }
        let event = ready!(self.receiver.poll_recv(cx));
        let ended = match &event {
            Some(Event::Prompt { .. } | Event::Token { .. }) => None,
            Some(Event::Finished { .. }) => {
                self.unfinished -= 1;
                (self.unfinished == 0).then_some(Ok(()))
            }
            Some(Event::Failed(error)) => {
                self.unfinished = 0;
                Some(Err(error))
            }
            // The engine went away without a last event: counted as the shutdown it is.
            None => {
                self.unfinished = 0;
                Some(Err(&Error::Shutdown(String::new())))
            }
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
    limits::check_choices("n", options.choices.unwrap_or(1))?;
    if let Some(k) = options.prompt_logprobs.filter(|&k| k > MAX_TOP_LOGPROBS as u64) {
        return Err(Error::invalid(format!("at most {MAX_TOP_LOGPROBS} prompt logprobs may be asked for, got {k}")));
    }
    let sampling = options.sampling(language_model.codec.tokenizer().vocab_size())?;
    let engine = &language_model.engine;
    let prompt_bytes = match &prompt {
        Prompt::Text(text) if text.is_empty() => return Err(Error::invalid("the prompt is empty")),
        Prompt::Text(text) => text.len(),
        Prompt::Tokens(tokens) => {
            let vocab = language_model.codec.tokenizer().vocab_size();
            if let Some(token) = tokens.iter().find(|&&token| token as usize >= vocab) {
                return Err(Error::invalid(format!(
                    "prompt token {token} is outside this model's vocabulary of {vocab} tokens"
                )));
            }
            // Counted, not spelled: each token takes the context's room, checked when submitted.
            0
        }
        Prompt::Chat(messages) => {
            limits::check_chat_messages(messages.len())?;
            messages.iter().map(|m| m.content.len()).sum()
        }
    };
    limits::check_prompt_bytes(prompt_bytes, engine.context_length(), language_model.codec.longest_token_bytes())?;
    if options.structure.is_some() && (options.ignore_eos || options.min_tokens.is_some_and(|n| n > 0)) {
        return Err(Error::invalid("min_tokens and ignore_eos cannot be combined with a response format"));
    }
    let codec = language_model.codec.clone();
    let structure = options.structure.clone();
    let (tokens, constraint) = tokio::task::spawn_blocking(move || {
        let tokens = match prompt {
            Prompt::Text(text) => codec.encode(&text),
            Prompt::Tokens(tokens) => Ok(tokens),
            Prompt::Chat(messages) => codec.encode_chat(&messages),
        }?;
        let constraint = structure.map(|s| codec.grammars()?.json_schema(&s.schema())).transpose()?;
        Ok::<_, Error>((tokens, constraint))
    })
    .await
    .map_err(|e| Error::Shutdown(format!("tokenizing the prompt failed: {e}")))??;
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let choices = options.choices.map_or(1, size);
    // The default length: what the context leaves, and each choice's share of the KV cache.
    let share = engine.capacity_tokens() / choices.max(1);
    let room = engine.context_length().min(share).saturating_sub(tokens.len()).max(1);
    let max_tokens = options.max_tokens.map_or(room, size);
    let prompt_tokens = tokens.len();
    let request = GenerateRequest {
        prompt: tokens,
        adapter: language_model.adapter.clone(),
        choices,
        max_tokens,
        min_tokens: options.min_tokens.map_or(0, size),
        ignore_eos: options.ignore_eos,
        sampling,
        constraint,
        stop: options.stop,
        prompt_logprobs: options.prompt_logprobs.map(size),
    };
    let events = engine.submit(request)?;
    Ok(Started {
        version: language_model.version,
        prompt_tokens,
        events: Events::new(events, choices),
        codec: language_model.codec,
    })
}

/// One whole choice.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Each token's log-probabilities, where they were asked for (not the end-of-sequence
    /// token's).
    pub logprobs: Vec<(u32, Logprobs)>,
    pub reason: FinishReason,
    pub usage: Usage,
    /// The prompt scored, where that was asked for.
    pub prompt: Option<ScoredPrompt>,
}

impl Completion {
    /// The sum of its tokens' log-probabilities: how likely the model found the whole choice.
    pub fn cumulative_logprob(&self) -> f64 {
        self.logprobs.iter().map(|(_, logprobs)| f64::from(logprobs.logprob)).sum()
    }
}

/// Waits for the end of a generation and returns every choice, in choice order.
pub async fn collect(events: &mut Events) -> Result<Vec<Completion>> {
    let empty = Completion {
        text: String::new(),
        token_ids: Vec::new(),
        logprobs: Vec::new(),
        reason: FinishReason::Stop,
        usage: Usage::default(),
        prompt: None,
    };
    let mut choices = vec![empty; events.choices()];
    loop {
        match events.recv().await {
            Some(Event::Prompt { scored, .. }) => choices.iter_mut().for_each(|c| c.prompt = Some(scored.clone())),
            Some(Event::Token { choice, id, text, logprobs }) => {
                let completion = &mut choices[choice];
                completion.token_ids.push(id);
                completion.text.push_str(&text);
                completion.logprobs.extend(logprobs.map(|logprobs| (id, logprobs)));
            }
            Some(Event::Finished { choice, text, reason, usage }) => {
                let completion = &mut choices[choice];
                completion.text.push_str(&text);
                (completion.reason, completion.usage) = (reason, usage);
            }
            Some(Event::Failed(error)) => return Err(error),
            None if events.choices() == 0 => return Ok(choices),
            None => return Err(Error::Shutdown("the generation engine stopped".into())),
        }
    }
}

/// The `n` most likely of `completions` by cumulative log-probability (OpenAI's `best_of`),
/// most likely first; ties keep their order.
pub fn best_of(mut completions: Vec<Completion>, n: usize) -> Vec<Completion> {
    completions.sort_by(|a, b| b.cumulative_logprob().total_cmp(&a.cumulative_logprob()));
    completions.truncate(n);
    completions
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
    let [completion] = <[Completion; 1]>::try_from(collect(&mut started.events).await?)
        .map_err(|_| Error::Shutdown("one choice was asked for".into()))?;
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
        let sampling = options.sampling(100).unwrap();
        assert_eq!((sampling.top_k, sampling.seed), (Some(4), Some(7)));
        let strings: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({"temperature": "0.7", "max_tokens": "12"})).unwrap();
        let options = Options::from_parameters(&strings).unwrap();
        assert_eq!((options.temperature, options.max_tokens), (Some(0.7), Some(12)), "the KServe SDK's strings");
        for (key, value) in [
            ("max_tokens", serde_json::json!(-1)),
            ("max_tokens", serde_json::json!("-1")),
            ("temperature", serde_json::json!("hot")),
        ] {
            let parameters = BTreeMap::from([(key.to_owned(), value)]);
            let err = Options::from_parameters(&parameters).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn invalid_sampling_values_are_refused() {
        let hot = Options { temperature: Some(-1.0), ..Options::default() };
        assert!(hot.sampling(100).unwrap_err().to_string().contains("temperature"));
        let nucleus = Options { top_p: Some(0.0), ..Options::default() };
        assert!(nucleus.sampling(100).unwrap_err().to_string().contains("top_p"));
    }
}
