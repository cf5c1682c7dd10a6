//! The OpenAI-compatible HTTP API: `GET /v1/models`, `POST /v1/completions` and
//! `POST /v1/chat/completions`, answered as one JSON body or, with `"stream": true`, as
//! Server-Sent Events (`data: {chunk}` lines, then `data: [DONE]`), and `POST /v1/embeddings`.
//! Translation only; the work is [`super::generation`] and [`super::embedder`].
//!
//! `model` is a model name, optionally with a version or label after a colon (`smollm2:3`,
//! `smollm2:canary`); without one the serving config's split decides, sticky per
//! `x-lantern-routing-key`. The serving version comes back in the `x-lantern-model-version`
//! header. Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
//! status from the shared table; a full queue is 429 with `Retry-After`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ROUTING_KEY_HEADER;
use super::dispatch;
use super::engine::{Event, ScoredPrompt, Usage};
use super::generation::{self, Completion, Options, Prompt, Structure};
use super::limits;
use super::routing::Target;
use super::status;
use super::tools::{ToolCall, Tools};
use super::versions::{ListedModel, ModelManager};
use crate::error::Error;
use lantern_runtime::llm::chat::{self, Message};
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::llm::sampling::Logprobs;
use lantern_runtime::model::bert::EncoderInput;

/// Response header naming the version that served the request.
pub const MODEL_VERSION_HEADER: &str = "x-lantern-model-version";
/// Seconds a client is asked to wait after a 429.
const RETRY_AFTER_SECONDS: u64 = 1;

/// The OpenAI-compatible routes over `manager`.
/// Request bodies are bounded by `max_body_bytes`; a larger one is 413 in OpenAI's shape.
pub fn router(manager: ModelManager, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(retrieve_model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(manager)
}

/// The answer to a path under `/v1` that no route serves.
pub fn not_found(method: &http::Method, path: &str) -> Response {
    ApiError { status: StatusCode::NOT_FOUND, message: format!("no route for {method} {path}"), param: None }
        .into_response()
}

/// A 401 in OpenAI's shape.
pub fn unauthorized(message: String) -> Response {
    ApiError { status: StatusCode::UNAUTHORIZED, message, param: None }.into_response()
}

/// The answer to a `/v1` route called with a method it does not take.
pub fn method_not_allowed(method: &http::Method, path: &str) -> Response {
    let message = format!("{path} does not take {method}");
    ApiError { status: StatusCode::METHOD_NOT_ALLOWED, message, param: None }.into_response()
}

/// An error in OpenAI's shape; `param` names the request parameter at fault, where one is.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
}

impl ApiError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self { status: status::http_status(status::grpc_code(&err)), message: err.to_string(), param: None }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self { status: rejection.status(), message: format!("request body: {}", rejection.body_text()), param: None }
    }
}

impl ApiError {
    /// A 400 naming the request parameter this server does not implement.
    fn unsupported(param: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("parameter {param:?} is not supported by this server"),
            param: Some(param.to_owned()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::METHOD_NOT_ALLOWED => {
                "invalid_request_error"
            }
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ => "server_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// A model as `/v1/models` lists it; an adapter names its base as `parent`, as vLLM does.
fn model_object(listed: ListedModel) -> Value {
    let ListedModel { model, version, parent } = listed;
    json!({"id": model, "object": "model", "created": 0, "owned_by": "lantern", "version": version, "parent": parent})
}

async fn list_models(State(manager): State<ModelManager>) -> Json<Value> {
    let data: Vec<Value> = manager.language_models().into_iter().map(model_object).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn retrieve_model(State(manager): State<ModelManager>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    manager
        .language_models()
        .into_iter()
        .find(|listed| listed.model == id)
        .map(|listed| Json(model_object(listed)))
        .ok_or_else(|| Error::ModelNotFound { model: id }.into())
}

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(text) => vec![text],
            Self::Many(texts) => texts,
        }
    }
}

/// The fields both endpoints share. Any other field is refused ([`refuse_unsupported`]).
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    /// vLLM's extension; 0 or -1 disable it.
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    n: Option<u64>,
    /// Completions: generate this many and answer with the `n` most likely.
    #[serde(default)]
    best_of: Option<u64>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias.
    #[serde(default)]
    logit_bias: Option<BTreeMap<String, f32>>,
    /// Chat: a boolean; completions: how many alternatives to report per token.
    #[serde(default)]
    logprobs: Option<Value>,
    /// Chat: how many alternatives to report per token (with `logprobs: true`).
    #[serde(default)]
    top_logprobs: Option<u64>,
    /// vLLM's extensions: end-of-sequence masked until this many tokens, or always.
    #[serde(default)]
    min_tokens: Option<u64>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    response_format: Option<ResponseFormat>,
    /// Everything else the request carried.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// OpenAI's `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// Its other fields are accepted and change nothing: `name` and `description` label the format,
/// and the schema is enforced whether `strict` or not (stricter than asked, never looser).
impl ResponseFormat {
    /// What the output is held to; `None` for plain text.
    fn structure(&self) -> Option<Structure> {
        match self {
            Self::Text => None,
            Self::JsonObject => Some(Structure::JsonObject),
            Self::JsonSchema { json_schema } => Some(match &json_schema.schema {
                Some(schema) => Structure::JsonSchema(schema.clone()),
                None => Structure::JsonObject,
            }),
        }
    }
}

#[derive(Debug, Deserialize)]
struct JsonSchemaFormat {
    #[serde(default)]
    schema: Option<Value>,
}

/// Parameters accepted and not acted on, because acting on them changes nothing here: `user`
/// identifies the caller to OpenAI's abuse monitoring.
const IGNORED_PARAMETERS: &[&str] = &["user"];

/// Refuses, naming it, any parameter this server does not implement (`tools`, `suffix`, …),
/// unless it asks for what the server does anyway — `null`, `false`, `0`, or an empty string,
/// list or object, as clients send for defaults — so a client never gets an answer that silently
/// ignored what it asked for.
fn refuse_unsupported(other: &serde_json::Map<String, Value>) -> ApiResult<()> {
    let asks_for_default = |key: &str, value: &Value| match value {
        Value::Null => true,
        Value::Bool(b) => !b || key == "parallel_tool_calls",
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || (key == "tool_choice" && s == "none"),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    match other.iter().find(|(key, value)| !IGNORED_PARAMETERS.contains(&key.as_str()) && !asks_for_default(key, value))
    {
        Some((key, _)) => Err(ApiError::unsupported(key)),
        None => Ok(()),
    }
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: TextsOrTokens,
    /// The prompt's text before each choice's.
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(flatten)]
    common: Common,
}

/// A completions `prompt` or an embeddings `input`: text, token ids, or a list of either, each
/// generated for or embedded on its own.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "prompt (completions) or input (embeddings) to be text, a list of texts, token ids or a list of token-id lists"
)]
enum TextsOrTokens {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

impl TextsOrTokens {
    fn into_prompts(self) -> Vec<Prompt> {
        match self {
            Self::Text(text) => vec![Prompt::Text(text)],
            Self::Tokens(tokens) => vec![Prompt::Tokens(tokens)],
            Self::Texts(texts) => texts.into_iter().map(Prompt::Text).collect(),
            Self::TokenLists(lists) => lists.into_iter().map(Prompt::Tokens).collect(),
        }
    }

    fn into_encoder_input(self) -> EncoderInput {
        match self {
            Self::Text(text) => EncoderInput::Texts(vec![text]),
            // `[]` is an empty list, not one empty sequence.
            Self::Tokens(tokens) if tokens.is_empty() => EncoderInput::Tokens(Vec::new()),
            Self::Tokens(tokens) => EncoderInput::Tokens(vec![tokens]),
            Self::Texts(texts) => EncoderInput::Texts(texts),
            Self::TokenLists(lists) => EncoderInput::Tokens(lists),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    /// Absent or null in an assistant message that made tool calls.
    #[serde(default)]
    content: Option<ChatContent>,
    /// An assistant message's calls, as OpenAI returned them.
    #[serde(default)]
    tool_calls: Option<Vec<AssistantCall>>,
    /// Which call a tool message answers: required of one, as OpenAI requires it; the model
    /// reads the answers in the order of the calls.
    #[serde(default)]
    tool_call_id: Option<String>,
    /// Fields of a message this server does not implement (`name`, …).
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// One call in an assistant message of the history.
#[derive(Debug, Deserialize)]
struct AssistantCall {
    function: CalledFunction,
}

#[derive(Debug, Deserialize)]
struct CalledFunction {
    name: String,
    /// JSON text, as OpenAI sends it.
    arguments: String,
}

/// A message's content: a string, or a list of parts of which only text is understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ChatContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

impl ChatMessage {
    fn into_message(self) -> ApiResult<Message> {
        refuse_unsupported(&self.other)?;
        if self.role == "tool" && self.tool_call_id.is_none() {
            return Err(invalid_param("messages", "a tool message needs the tool_call_id it answers".into()));
        }
        if let Some(calls) = self.tool_calls.filter(|calls| !calls.is_empty()) {
            // The calls as the model was told to write them ([`Tools::instructions`]).
            let calls = calls
                .into_iter()
                .map(|call| {
                    let arguments: Value = serde_json::from_str(&call.function.arguments)
                        .map_err(|e| invalid_param("messages", format!("tool call arguments are not JSON: {e}")))?;
                    Ok(json!({"name": call.function.name, "arguments": arguments}))
                })
                .collect::<ApiResult<Vec<Value>>>()?;
            return Ok(Message::new(self.role, Value::Array(calls).to_string()));
        }
        let content = match self.content {
            None => return Err(invalid_param("messages", format!("a {:?} message needs content", self.role))),
            Some(ChatContent::Text(text)) => text,
            Some(ChatContent::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    if part.kind != "text" {
                        return Err(
                            Error::invalid(format!("content parts of type {:?} are not supported", part.kind)).into()
                        );
                    }
                    text.push_str(&part.text);
                }
                text
            }
        };
        Ok(Message::new(self.role, content))
    }
}

impl Common {
    fn options(&self, kind: Kind) -> ApiResult<Options> {
        refuse_unsupported(&self.other)?;
        let top_k = match self.top_k {
            None | Some(0) | Some(-1) => None,
            Some(k) if k > 0 => Some(k as u64),
            Some(k) => return Err(Error::invalid(format!("top_k must be positive, 0 or -1, got {k}")).into()),
        };
        let n = self.n.unwrap_or(1);
        limits::check_choices("n", n)?;
        let best_of = self.best_of.unwrap_or(n);
        limits::check_choices("best_of", best_of)?;
        if best_of < n {
            return Err(invalid_param("best_of", format!("best_of ({best_of}) must be at least n ({n})")));
        }
        if best_of > n && self.stream {
            return Err(invalid_param("best_of", "best_of greater than n cannot be streamed".into()));
        }
        let logit_bias = match &self.logit_bias {
            None => Vec::new(),
            Some(biases) if biases.len() > limits::MAX_LOGIT_BIAS => {
                let message =
                    format!("logit_bias has {} entries; at most {} are allowed", biases.len(), limits::MAX_LOGIT_BIAS);
                return Err(invalid_param("logit_bias", message));
            }
            Some(biases) => biases
                .iter()
                .map(|(token, &bias)| match token.parse::<u32>() {
                    Ok(token) => Ok((token, bias)),
                    Err(_) => Err(invalid_param("logit_bias", format!("logit_bias keys are token ids, got {token:?}"))),
                })
                .collect::<ApiResult<_>>()?,
        };
        let structure = self.response_format.as_ref().and_then(ResponseFormat::structure);
        Ok(Options {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias,
            logprobs: self.logprobs(kind)?,
            seed: self.seed,
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            choices: Some(best_of),
            min_tokens: self.min_tokens,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            structure,
            prompt_logprobs: None,
        })
    }

    /// The alternatives to report per token, if log-probabilities are asked for: chat's
    /// `logprobs: true` with `top_logprobs`, or completions' `logprobs: k`.
    fn logprobs(&self, kind: Kind) -> ApiResult<Option<u64>> {
        let logprobs = self.logprobs.as_ref().filter(|v| !v.is_null());
        match kind {
            Kind::Chat => {
                let asked = match logprobs {
                    None => false,
                    Some(Value::Bool(asked)) => *asked,
                    Some(other) => {
                        return Err(invalid_param("logprobs", format!("logprobs must be a boolean, got {other}")));
                    }
                };
                match (asked, self.top_logprobs) {
                    (true, top) => Ok(Some(top.unwrap_or(0))),
                    (false, None | Some(0)) => Ok(None),
                    (false, Some(_)) => Err(invalid_param("top_logprobs", "top_logprobs needs logprobs: true".into())),
                }
            }
            Kind::Completion => {
                if self.top_logprobs.is_some() {
                    return Err(invalid_param("top_logprobs", "completions take logprobs: k, not top_logprobs".into()));
                }
                match logprobs {
                    None => Ok(None),
                    Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                        invalid_param("logprobs", format!("logprobs must be a non-negative integer, got {value}"))
                    }),
                }
            }
        }
    }
}

/// A 400 naming the parameter at fault.
fn invalid_param(param: &str, message: String) -> ApiError {
    ApiError { status: StatusCode::BAD_REQUEST, message, param: Some(param.to_owned()) }
}

/// Parses a JSON body, answering malformed JSON and invalid UTF-8 with a 400 that says where.
fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| Error::invalid(format!("invalid request body: {e}")).into())
}

/// Runs `parse` over a body on the blocking pool: a body of megabytes takes a while, and must
/// not hold up the runtime's threads.
async fn off_runtime<T: Send + 'static>(body: Bytes, parse: fn(&[u8]) -> ApiResult<T>) -> ApiResult<T> {
    tokio::task::spawn_blocking(move || parse(&body))
        .await
        .map_err(|e| Error::Shutdown(format!("parsing the request body failed: {e}")))?
}

/// A completions or chat request, parsed and checked: everything but routing and running it.
#[derive(Debug)]
pub struct GenerationRequest {
    pub kind: Kind,
    /// As sent: a name, optionally with `:version` or `:label`.
    pub model: String,
    /// One generation each (a completions request may batch prompts; a chat is one).
    pub prompts: Vec<Prompt>,
    pub options: Options,
    /// Choices answered: `n` of the `options.choices` generated (`best_of`).
    pub n: usize,
    /// Whether the client asked for log-probabilities (`best_of` asks for them itself).
    pub logprobs: bool,
    /// The functions the model may call (chat).
    pub tools: Option<Tools>,
    /// Each choice's text starts with its prompt's (completions).
    pub echo: bool,
    pub stream: bool,
    pub include_usage: bool,
}

impl GenerationRequest {
    fn new(kind: Kind, common: Common, prompts: Vec<Prompt>) -> ApiResult<Self> {
        let mut options = common.options(kind)?;
        let per_prompt = options.choices.unwrap_or(1);
        let choices = per_prompt.saturating_mul(prompts.len() as u64);
        if choices > limits::MAX_CHOICES {
            let message = format!(
                "{} prompts of {per_prompt} choices each make {choices} choices; at most {} are allowed",
                prompts.len(),
                limits::MAX_CHOICES
            );
            return Err(invalid_param("prompt", message));
        }
        let n = common.n.unwrap_or(1) as usize;
        let logprobs = options.logprobs.is_some();
        if options.choices.is_some_and(|choices| choices as usize > n) {
            // best_of ranks choices by their log-probabilities.
            options.logprobs.get_or_insert(0);
        }
        let include_usage = common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let stream = common.stream;
        let (model, tools, echo) = (common.model, None, false);
        Ok(Self { kind, model, prompts, options, n, logprobs, tools, echo, stream, include_usage })
    }
}

/// Parses and checks a `/v1/completions` body.
pub fn parse_completion(body: &[u8]) -> ApiResult<GenerationRequest> {
    let request: CompletionRequest = parse_json(body)?;
    if request.suffix.as_ref().is_some_and(|suffix| !suffix.is_empty()) {
        return Err(invalid_param(
            "suffix",
            "suffix needs a fill-in-the-middle model; this server's language models have no fill-in-the-middle tokens"
                .into(),
        ));
    }
    let prompts = request.prompt.into_prompts();
    if prompts.is_empty() {
        return Err(invalid_param("prompt", "prompt lists no prompt".into()));
    }
    let mut generation = GenerationRequest::new(Kind::Completion, request.common, prompts)?;
    if request.echo && generation.logprobs {
        // The echoed prompt's tokens come with their log-probabilities too.
        generation.options.prompt_logprobs = generation.options.logprobs;
    }
    generation.echo = request.echo;
    Ok(generation)
}

/// Parses and checks a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> ApiResult<GenerationRequest> {
    let request: ChatRequest = parse_json(body)?;
    let messages = request.messages.into_iter().map(ChatMessage::into_message).collect::<ApiResult<Vec<_>>>()?;
    let tools = Tools::parse(request.tools.as_ref(), request.tool_choice.as_ref(), request.parallel_tool_calls)
        .map_err(|e| invalid_param("tools", e.to_string()))?;
    let Some(tools) = tools else {
        let structure = request.common.response_format.as_ref().and_then(ResponseFormat::structure);
        let messages = match structure {
            Some(structure) => chat::instruct(messages, &structure.instructions()),
            None => messages,
        };
        return GenerationRequest::new(Kind::Chat, request.common, vec![Prompt::Chat(messages)]);
    };
    let prompt = Prompt::Chat(tools.instruct(messages));
    let mut generation = GenerationRequest::new(Kind::Chat, request.common, vec![prompt])?;
    if let Some(schema) = tools.constraint() {
        if generation.options.structure.is_some() {
            return Err(invalid_param(
                "response_format",
                "response_format cannot be combined with required tool calls".into(),
            ));
        }
        generation.options.structure = Some(Structure::JsonSchema(schema));
    }
    generation.tools = Some(tools);
    Ok(generation)
}

/// An embeddings request, parsed and checked.
#[derive(Debug)]
pub struct EmbeddingsCall {
    pub model: String,
    pub input: EncoderInput,
    /// `encoding_format: "base64"`.
    pub base64: bool,
}

/// Parses and checks a `/v1/embeddings` body.
pub fn parse_embeddings(body: &[u8]) -> ApiResult<EmbeddingsCall> {
    let request: EmbeddingsRequest = parse_json(body)?;
    refuse_unsupported(&request.other)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(
                Error::invalid(format!("encoding_format must be \"float\" or \"base64\", got {other:?}")).into()
            );
        }
    };
    let input = request.input.into_encoder_input();
    limits::check_embedding_texts(input.len())?;
    Ok(EmbeddingsCall { model: request.model, input, base64 })
}

/// `name` or `name:version-or-label`.
fn parse_model(model: &str) -> std::result::Result<(&str, Target), Error> {
    match model.split_once(':') {
        Some((name, version)) => Ok((name, Target::parse(version)?)),
        None => Ok((model, Target::Default)),
    }
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: TextsOrTokens,
    #[serde(default)]
    encoding_format: Option<String>,
    /// `dimensions` and anything else this server does not implement.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

async fn embeddings(
    State(manager): State<ModelManager>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request = off_runtime(body?, parse_embeddings).await?;
    let base64 = request.base64;
    let (model, target) = parse_model(&request.model)?;
    let routing_key = headers.get(ROUTING_KEY_HEADER).and_then(|v| v.to_str().ok());
    let embeddings = dispatch::embed(&manager, model, &target, routing_key, request.input).await?;
    let data: Vec<Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match base64 {
                true => Value::String(base64_floats(vector)),
                false => json!(vector),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let usage = json!({"prompt_tokens": embeddings.tokens, "total_tokens": embeddings.tokens});
    let body = json!({"object": "list", "data": data, "model": request.model, "usage": usage});
    let mut response = Json(body).into_response();
    response.headers_mut().insert(MODEL_VERSION_HEADER, HeaderValue::from(embeddings.version));
    Ok(response)
}

/// Little-endian f32 bytes in standard base64, OpenAI's `encoding_format: "base64"`.
fn base64_floats(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Which endpoint a response belongs to: it decides the object names and the chunk shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

async fn completions(
    State(manager): State<ModelManager>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    respond(&manager, &headers, off_runtime(body?, parse_completion).await?).await
}

async fn chat_completions(
    State(manager): State<ModelManager>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    respond(&manager, &headers, off_runtime(body?, parse_chat).await?).await
}

async fn respond(manager: &ModelManager, headers: &HeaderMap, request: GenerationRequest) -> ApiResult<Response> {
    let GenerationRequest { kind, model: name, prompts, options, n, logprobs, tools, echo, stream, include_usage } =
        request;
    let (model, target) = parse_model(&name)?;
    let routing_key = headers.get(ROUTING_KEY_HEADER).and_then(|v| v.to_str().ok());
    let echoed: Vec<Option<Prompt>> = prompts.iter().map(|prompt| echo.then(|| prompt.clone())).collect();
    let mut started = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        started.push(dispatch::generate(manager, model, &target, routing_key, prompt, options.clone()).await?);
    }
    let (codec, version, per_prompt) = match started.first() {
        Some(first) => (first.codec.clone(), first.version, first.events.choices()),
        None => return Err(invalid_param("prompt", "prompt lists no prompt".into())),
    };
    let echoes = echoed.iter().map(|prompt| echo_text(&codec, prompt.as_ref())).collect::<ApiResult<Vec<_>>>()?;
    let meta = ChunkMeta::new(kind, name.clone(), codec, logprobs, tools);
    let mut response =
        if stream {
            // Every prompt's choices in one stream, numbered prompt by prompt.
            let events =
                stream::select_all(started.into_iter().enumerate().map(|(index, started)| {
                    started.events.map(move |event| renumber(event, index * per_prompt)).boxed()
                }));
            Sse::new(sse_stream(meta, events, per_prompt, echoes, include_usage)).into_response()
        } else {
            let (mut completions, mut usages) = (Vec::new(), Vec::new());
            for (mut started, echo) in started.into_iter().zip(&echoes) {
                let choices = generation::collect(&mut started.events).await?;
                usages.extend(choices.iter().map(|c| c.usage));
                let mut choices = match choices.len() > n {
                    true => generation::best_of(choices, n),
                    false => choices,
                };
                choices.iter_mut().for_each(|choice| choice.text.insert_str(0, echo));
                completions.extend(choices);
            }
            Json(meta.whole(&completions, request_usage(&usages, per_prompt))).into_response()
        };
    response.headers_mut().insert(MODEL_VERSION_HEADER, HeaderValue::from(version));
    Ok(response)
}

/// The text `echo` puts before a choice: the prompt's, spelled from its tokens where it came as
/// tokens; empty without echo.
fn echo_text(codec: &TextCodec, prompt: Option<&Prompt>) -> ApiResult<String> {
    Ok(match prompt {
        None | Some(Prompt::Chat(_)) => String::new(),
        Some(Prompt::Text(text)) => text.clone(),
        Some(Prompt::Tokens(tokens)) => codec.tokenizer().decode(tokens, false).map_err(Error::from)?,
    })
}

/// `event` with its choice moved past the `offset` choices of the prompts before its own.
fn renumber(event: Event, offset: usize) -> Event {
    match event {
        Event::Token { choice, id, text, logprobs } => Event::Token { choice: choice + offset, id, text, logprobs },
        Event::Finished { choice, text, reason, usage } => {
            Event::Finished { choice: choice + offset, text, reason, usage }
        }
        Event::Prompt { choice, scored } => Event::Prompt { choice: choice + offset, scored },
        failed @ Event::Failed(_) => failed,
    }
}

/// A request's usage from its choices' (`per_prompt` choices for each prompt, in order): each
/// prompt once, every generated token (those of `best_of` choices not returned included, as
/// OpenAI counts them).
fn request_usage(choices: &[Usage], per_prompt: usize) -> Usage {
    let prompts = choices.chunks(per_prompt.max(1)).map(|prompt| {
        prompt.iter().fold(Usage::default(), |total, choice| Usage {
            prompt_tokens: choice.prompt_tokens,
            cached_tokens: total.cached_tokens.max(choice.cached_tokens),
            completion_tokens: total.completion_tokens + choice.completion_tokens,
        })
    });
    prompts.fold(Usage::default(), |total, prompt| Usage {
        prompt_tokens: total.prompt_tokens + prompt.prompt_tokens,
        cached_tokens: total.cached_tokens + prompt.cached_tokens,
        completion_tokens: total.completion_tokens + prompt.completion_tokens,
    })
}

/// What every chunk and body of one response repeats, and how it spells tokens.
#[derive(Clone, Debug)]
struct ChunkMeta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    codec: Arc<TextCodec>,
    /// Whether log-probabilities are reported.
    logprobs: bool,
    /// The functions offered: each choice's text is read for calls, and held until its end (then
    /// sent as calls or as the answer) unless it starts as an answer in words.
    tools: Option<Tools>,
}

/// What one streamed chunk carries for its choice.
enum Delta<'a> {
    /// The chat role announcement that opens a choice.
    Role,
    /// Text and the log-probabilities of the tokens behind it; `offset` is where the first of
    /// those tokens starts in the choice's text (completions' `text_offset`).
    Text {
        text: &'a str,
        tokens: &'a [(u32, Logprobs)],
        offset: usize,
    },
    /// Completions: the echoed prompt with its scores, which open a choice.
    Echo {
        text: &'a str,
        prompt: &'a ScoredPrompt,
    },
    /// Chat: the tool calls a choice made.
    Calls(&'a [ToolCall]),
    Finish(&'a str),
}

/// The value OpenAI writes for a log-probability of −∞ (a token that could not be drawn).
const LOWEST_LOGPROB: f32 = -9999.0;

impl ChunkMeta {
    fn new(kind: Kind, model: String, codec: Arc<TextCodec>, logprobs: bool, tools: Option<Tools>) -> Self {
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let id = format!("{prefix}-{:032x}", rand::random::<u128>());
        Self { kind, id, created, model, codec, logprobs, tools }
    }

    /// The calls a choice's whole text makes, where tools were offered and it makes any.
    fn calls(&self, text: &str) -> Option<Vec<ToolCall>> {
        self.tools.as_ref()?.read_calls(text)
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.kind, streamed) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The non-streaming body.
    fn whole(&self, completions: &[Completion], usage: Usage) -> Value {
        let choices: Vec<Value> = completions
            .iter()
            .enumerate()
            .map(|(index, completion)| {
                let reason = completion.reason.as_str();
                let (text, tokens) = (&completion.text, &completion.logprobs);
                match (self.kind, self.calls(text)) {
                    (Kind::Completion, _) => json!({
                        "index": index, "text": text,
                        "logprobs": self.completion_logprobs(completion.prompt.as_ref(), tokens, 0),
                        "finish_reason": reason,
                    }),
                    (Kind::Chat, None) => json!({
                        "index": index, "message": {"role": "assistant", "content": text},
                        "logprobs": self.chat_logprobs(tokens), "finish_reason": reason,
                    }),
                    (Kind::Chat, Some(calls)) => json!({
                        "index": index, "message": {"role": "assistant", "content": null, "tool_calls": tool_calls_json(&calls)},
                        "logprobs": self.chat_logprobs(tokens), "finish_reason": "tool_calls",
                    }),
                }
            })
            .collect();
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "choices": choices, "usage": usage_json(usage),
        })
    }

    /// One streamed chunk for choice `index`.
    fn chunk(&self, index: usize, delta: Delta<'_>) -> Value {
        let choice = match (self.kind, delta) {
            (Kind::Completion, Delta::Text { text, tokens, offset }) => {
                json!({"index": index, "text": text, "logprobs": self.completion_logprobs(None, tokens, offset), "finish_reason": null})
            }
            (_, Delta::Echo { text, prompt }) => {
                json!({"index": index, "text": text, "logprobs": self.completion_logprobs(Some(prompt), &[], 0), "finish_reason": null})
            }
            (Kind::Completion, Delta::Finish(reason)) => {
                json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})
            }
            (Kind::Completion, Delta::Role | Delta::Calls(_)) => {
                json!({"index": index, "text": "", "logprobs": null, "finish_reason": null})
            }
            (Kind::Chat, Delta::Calls(calls)) => json!({
                "index": index, "delta": {"tool_calls": tool_calls_json(calls)}, "logprobs": null, "finish_reason": null,
            }),
            (Kind::Chat, Delta::Role) => json!({
                "index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null,
            }),
            (Kind::Chat, Delta::Text { text, tokens, .. }) => {
                let delta = if text.is_empty() { json!({}) } else { json!({"content": text}) };
                json!({"index": index, "delta": delta, "logprobs": self.chat_logprobs(tokens), "finish_reason": null})
            }
            (Kind::Chat, Delta::Finish(reason)) => {
                json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// The extra last chunk carrying usage (`stream_options.include_usage`).
    fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "choices": [], "usage": usage_json(usage),
        })
    }

    /// A token's text (lossy where it ends inside a UTF-8 character) and its bytes.
    fn spelling(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.codec.tokenizer().token_bytes(id).unwrap_or_default().to_vec();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`; `null` when
    /// not asked for.
    fn chat_logprobs(&self, tokens: &[(u32, Logprobs)]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let entry = |id: u32, logprob: f32| {
            let (token, bytes) = self.spelling(id);
            json!({"token": token, "logprob": logprob.max(LOWEST_LOGPROB), "bytes": bytes})
        };
        let content: Vec<Value> = tokens
            .iter()
            .map(|(id, logprobs)| {
                let mut value = entry(*id, logprobs.logprob);
                value["top_logprobs"] = logprobs.top.iter().map(|&(t, logprob)| entry(t, logprob)).collect();
                value
            })
            .collect();
        json!({"content": content, "refusal": null})
    }

    /// Completions' `logprobs`: parallel lists of tokens (an echoed `prompt`'s, then the
    /// generated), their log-probabilities, the top alternatives and each token's offset in the
    /// text (the first at `offset`); `null` for the prompt's first token, which has none, and in
    /// place of the whole when not asked for.
    fn completion_logprobs(&self, prompt: Option<&ScoredPrompt>, tokens: &[(u32, Logprobs)], offset: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let prompt = prompt.map(|prompt| {
            let scores = std::iter::once(None).chain(prompt.logprobs.iter().map(Some));
            prompt.tokens.iter().copied().zip(scores)
        });
        let generated = tokens.iter().map(|(id, logprobs)| (*id, Some(logprobs)));
        let (mut spelled, mut token_logprobs, mut top_logprobs, mut text_offset) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut at = offset;
        for (id, logprobs) in prompt.into_iter().flatten().chain(generated) {
            let (token, _) = self.spelling(id);
            text_offset.push(at);
            at += token.chars().count();
            spelled.push(token);
            let Some(logprobs) = logprobs else {
                token_logprobs.push(Value::Null);
                top_logprobs.push(Value::Null);
                continue;
            };
            token_logprobs.push(json!(logprobs.logprob.max(LOWEST_LOGPROB)));
            let top: serde_json::Map<String, Value> = logprobs
                .top
                .iter()
                .map(|&(t, logprob)| (self.spelling(t).0, json!(logprob.max(LOWEST_LOGPROB))))
                .collect();
            top_logprobs.push(Value::Object(top));
        }
        json!({"tokens": spelled, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset})
    }

    /// Characters the spellings of `tokens` take, for the next chunk's text offset.
    fn spelled_chars(&self, tokens: impl Iterator<Item = u32>) -> usize {
        tokens.map(|id| self.spelling(id).0.chars().count()).sum()
    }
}

/// Calls as OpenAI writes them, each with a new id and its index in the answer (the streamed
/// form; the whole body's clients ignore the index).
fn tool_calls_json(calls: &[ToolCall]) -> Value {
    let calls = calls.iter().enumerate().map(|(index, call)| {
        json!({
            "index": index, "id": format!("call_{:024x}", rand::random::<u128>() >> 32), "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        })
    });
    Value::Array(calls.collect())
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

/// Where a streamed response stands: choices finished, their usage so far, each choice's text
/// offset (completions' logprobs), and where tools were offered, each choice's text and logprobs
/// held until its end or until it is plainly an answer in words.
struct StreamState {
    finished: usize,
    usage: Vec<Usage>,
    offsets: Vec<usize>,
    held: Vec<(String, Vec<(u32, Logprobs)>)>,
    /// Choices known to answer in words, not calls: streamed as their tokens come.
    answering: Vec<bool>,
}

/// The SSE events of a generation's `events` (`per_prompt` choices for each of the prompts
/// `echoes` has a text for): a chat's role chunks or the echoed prompts, every choice's chunks as
/// its tokens arrive, then (after the last choice's finish) the usage chunk if asked for and
/// `[DONE]`. Dropping the stream (the client went away) drops the engine's channels, which frees
/// the sequences.
fn sse_stream(
    meta: ChunkMeta,
    events: impl Stream<Item = Event> + Send + 'static,
    per_prompt: usize,
    echoes: Vec<String>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let data = |value: Value| SseEvent::default().data(value.to_string());
    let choices = per_prompt * echoes.len();
    let opening: Vec<SseEvent> = (0..choices)
        .filter_map(|index| match meta.kind {
            Kind::Chat => Some(meta.chunk(index, Delta::Role)),
            // With logprobs, the echo waits for the prompt's scores.
            Kind::Completion if meta.logprobs => None,
            Kind::Completion => {
                let text = &echoes[index / per_prompt];
                (!text.is_empty()).then(|| meta.chunk(index, Delta::Text { text, tokens: &[], offset: 0 }))
            }
        })
        .map(data)
        .collect();
    let state = StreamState {
        finished: 0,
        usage: vec![Usage::default(); choices],
        offsets: vec![0; choices],
        held: vec![Default::default(); choices],
        answering: vec![false; choices],
    };
    let body = events.scan(state, move |state, event| {
        let events: Vec<SseEvent> = match event {
            Event::Prompt { choice, scored } => (choice..choice + per_prompt)
                .map(|index| {
                    state.offsets[index] = meta.spelled_chars(scored.tokens.iter().copied());
                    data(meta.chunk(index, Delta::Echo { text: &echoes[index / per_prompt], prompt: &scored }))
                })
                .collect(),
            Event::Token { choice, id, text, logprobs } => {
                let mut tokens: Vec<(u32, Logprobs)> =
                    logprobs.filter(|_| meta.logprobs).map(|l| (id, l)).into_iter().collect();
                let mut text = text;
                if meta.tools.is_some() && !state.answering[choice] {
                    let held = &mut state.held[choice];
                    held.0.push_str(&text);
                    held.1.extend(tokens);
                    // Held until the text cannot be calls; then what was held goes out at once.
                    state.answering[choice] = Tools::could_be_calls(&held.0) == Some(false);
                    (text, tokens) = match state.answering[choice] {
                        true => std::mem::take(held),
                        false => Default::default(),
                    };
                }
                if text.is_empty() && tokens.is_empty() {
                    Vec::new()
                } else {
                    let offset = state.offsets[choice];
                    state.offsets[choice] += meta.spelled_chars(tokens.iter().map(|&(id, _)| id));
                    vec![data(meta.chunk(choice, Delta::Text { text: &text, tokens: &tokens, offset }))]
                }
            }
            Event::Finished { choice, text, reason, usage } => {
                let (mut held, tokens) = std::mem::take(&mut state.held[choice]);
                held.push_str(&text);
                let mut events = Vec::new();
                let mut reason = reason.as_str();
                match meta.calls(&held).filter(|_| !state.answering[choice]) {
                    Some(calls) => {
                        events.push(data(meta.chunk(choice, Delta::Calls(&calls))));
                        reason = "tool_calls";
                    }
                    None if !held.is_empty() || !tokens.is_empty() => {
                        let offset = state.offsets[choice];
                        events.push(data(meta.chunk(choice, Delta::Text { text: &held, tokens: &tokens, offset })));
                    }
                    None => {}
                }
                events.push(data(meta.chunk(choice, Delta::Finish(reason))));
                state.finished += 1;
                state.usage[choice] = usage;
                if state.finished == choices {
                    if include_usage {
                        events.push(data(meta.usage_chunk(request_usage(&state.usage, per_prompt))));
                    }
                    events.push(SseEvent::default().data("[DONE]"));
                }
                events
            }
            Event::Failed(error) => {
                let status = status::http_status(status::grpc_code(&error));
                vec![data(
                    json!({"error": {"message": error.to_string(), "type": "server_error", "code": status.as_u16()}}),
                )]
            }
        };
        std::future::ready(Some(stream::iter(events)))
    });
    stream::iter(opening).chain(body.flatten()).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_embeddings_encode_little_endian_floats() {
        // 1.0f32 is 00 00 80 3f.
        assert_eq!(base64_floats(&[1.0]), "AACAPw==");
        assert_eq!(base64_floats(&[1.0, 1.0]), "AACAPwAAgD8=");
    }

    #[test]
    fn model_names_may_carry_a_version_or_a_label() {
        assert_eq!(parse_model("smollm2").unwrap(), ("smollm2", Target::Default));
        assert_eq!(parse_model("smollm2:3").unwrap(), ("smollm2", Target::Version(3)));
        assert_eq!(parse_model("smollm2:canary").unwrap(), ("smollm2", Target::Label("canary".into())));
    }

    #[test]
    fn chat_content_parts_are_joined_and_non_text_parts_refused() {
        let message: ChatMessage = serde_json::from_value(json!({
            "role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "there"}]
        }))
        .unwrap();
        assert_eq!(message.into_message().unwrap().content, "Hello, there");
        let image: ChatMessage =
            serde_json::from_value(json!({"role": "user", "content": [{"type": "image_url"}]})).unwrap();
        assert!(image.into_message().unwrap_err().message.contains("image_url"));
        let named: ChatMessage =
            serde_json::from_value(json!({"role": "user", "content": "hi", "name": "ann"})).unwrap();
        assert_eq!(named.into_message().unwrap_err().param.as_deref(), Some("name"));
    }

    #[test]
    fn unsupported_and_invalid_options_are_refused() {
        let common = |extra: Value| -> Common {
            let mut body = json!({"model": "m"});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(body).unwrap()
        };
        let refused = |extra: Value, kind: Kind| common(extra).options(kind).unwrap_err();
        assert!(refused(json!({"top_k": -5}), Kind::Chat).message.contains("top_k"));
        assert!(refused(json!({"n": 0}), Kind::Chat).message.contains("n must be at least 1"));
        assert!(refused(json!({"n": 129}), Kind::Chat).message.contains("at most 128"));
        assert_eq!(refused(json!({"n": 3, "best_of": 2}), Kind::Completion).param.as_deref(), Some("best_of"));
        let streamed = refused(json!({"best_of": 2, "stream": true}), Kind::Completion);
        assert!(streamed.message.contains("cannot be streamed"), "{}", streamed.message);
        assert_eq!(refused(json!({"logit_bias": {"x": 1}}), Kind::Chat).param.as_deref(), Some("logit_bias"));
        let many: serde_json::Map<String, Value> = (0..1025).map(|i| (i.to_string(), json!(1))).collect();
        assert!(refused(json!({"logit_bias": many}), Kind::Chat).message.contains("at most 1024"));
        assert_eq!(refused(json!({"top_logprobs": 2}), Kind::Chat).param.as_deref(), Some("top_logprobs"));
        assert_eq!(refused(json!({"logprobs": 2}), Kind::Chat).param.as_deref(), Some("logprobs"));
        assert_eq!(refused(json!({"logprobs": true}), Kind::Completion).param.as_deref(), Some("logprobs"));
        let options =
            common(json!({"max_tokens": 5, "max_completion_tokens": 7, "stop": "x"})).options(Kind::Chat).unwrap();
        assert_eq!((options.max_tokens, options.stop), (Some(7), vec!["x".to_owned()]));
    }

    #[test]
    fn openai_parameters_become_engine_options() {
        let common = |body: Value| -> Common { serde_json::from_value(body).unwrap() };
        let chat = common(json!({
            "model": "m", "n": 2, "logprobs": true, "top_logprobs": 3, "presence_penalty": 0.5,
            "frequency_penalty": -0.5, "logit_bias": {"42": -100}, "min_tokens": 4, "ignore_eos": true,
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "integer"}}},
        }))
        .options(Kind::Chat)
        .unwrap();
        assert_eq!((chat.choices, chat.logprobs, chat.min_tokens, chat.ignore_eos), (Some(2), Some(3), Some(4), true));
        assert_eq!((chat.presence_penalty, chat.frequency_penalty), (Some(0.5), Some(-0.5)));
        assert_eq!(chat.logit_bias, vec![(42, -100.0)]);
        assert_eq!(chat.structure, Some(Structure::JsonSchema(json!({"type": "integer"}))));
        let completion =
            common(json!({"model": "m", "logprobs": 2, "best_of": 3, "response_format": {"type": "json_object"}}))
                .options(Kind::Completion)
                .unwrap();
        assert_eq!((completion.choices, completion.logprobs), (Some(3), Some(2)));
        assert_eq!(completion.structure, Some(Structure::JsonObject));
        let plain = common(json!({"model": "m", "logprobs": false, "response_format": {"type": "text"}}));
        let plain = plain.options(Kind::Chat).unwrap();
        assert_eq!((plain.logprobs, plain.structure), (None, None));
    }

    #[test]
    fn best_of_asks_the_engine_for_logprobs_but_reports_them_only_when_asked() {
        let request = |body: Value| {
            GenerationRequest::new(
                Kind::Completion,
                serde_json::from_value(body).unwrap(),
                vec![Prompt::Text("x".into())],
            )
            .unwrap()
        };
        let ranked = request(json!({"model": "m", "n": 1, "best_of": 3}));
        assert_eq!(
            (ranked.n, ranked.options.choices, ranked.options.logprobs, ranked.logprobs),
            (1, Some(3), Some(0), false)
        );
        let shown = request(json!({"model": "m", "best_of": 2, "logprobs": 1}));
        assert_eq!((shown.options.logprobs, shown.logprobs), (Some(1), true));
    }

    #[test]
    fn usage_counts_each_prompt_once_and_every_choice() {
        let choice = |prompt_tokens, completion_tokens| Usage { prompt_tokens, cached_tokens: 8, completion_tokens };
        let one = request_usage(&[choice(10, 3), choice(10, 4)], 2);
        assert_eq!(one, Usage { prompt_tokens: 10, cached_tokens: 8, completion_tokens: 7 });
        let two = request_usage(&[choice(10, 3), choice(10, 4), choice(5, 1), choice(5, 2)], 2);
        assert_eq!(two, Usage { prompt_tokens: 15, cached_tokens: 16, completion_tokens: 10 });
    }

    #[test]
    fn parameters_the_engine_does_not_implement_are_refused_by_name_unless_they_ask_for_the_default() {
        let refused = |body: Value| -> Option<String> {
            let common: Common = serde_json::from_value(body).unwrap();
            common.options(Kind::Chat).err().and_then(|e| e.param)
        };
        for (param, value) in [
            ("echo", json!(true)),
            ("tools", json!([{"type": "function"}])),
            ("tool_choice", json!("auto")),
            ("suffix", json!("end")),
            ("no_such_thing", json!(1)),
        ] {
            assert_eq!(refused(json!({"model": "m", param: value})).as_deref(), Some(param), "{param}");
        }
        for defaults in [
            json!({"model": "m", "logprobs": false, "presence_penalty": 0, "tools": [], "logit_bias": {}}),
            json!({"model": "m", "frequency_penalty": 0.0, "response_format": null, "user": "ann"}),
            json!({"model": "m", "response_format": {"type": "text"}, "tool_choice": "none"}),
        ] {
            assert_eq!(refused(defaults.clone()), None, "{defaults}");
        }
    }
}
