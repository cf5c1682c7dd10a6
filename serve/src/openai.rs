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

use std::convert::Infallible;
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
use super::engine::{Event, Usage};
use super::generation::{self, Completion, Options, Prompt, Started};
use super::limits;
use super::routing::Target;
use super::status;
use super::versions::{ListedModel, ModelManager};
use crate::error::Error;
use lantern_runtime::llm::chat::Message;

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
    /// Everything else the request carried.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// Parameters accepted and not acted on, because acting on them changes nothing here: `user`
/// identifies the caller to OpenAI's abuse monitoring.
const IGNORED_PARAMETERS: &[&str] = &["user"];

/// Refuses, naming it, any parameter this server does not implement (`logprobs`, `tools`,
/// `response_format`, penalties, …), unless it asks for what the server does anyway — `null`,
/// `false`, `0`, or an empty string, list or object, as clients send for defaults — so a
/// client never gets an answer that silently ignored what it asked for.
fn refuse_unsupported(other: &serde_json::Map<String, Value>) -> ApiResult<()> {
    let asks_for_default = |key: &str, value: &Value| match value {
        Value::Null => true,
        Value::Bool(b) => !b || key == "parallel_tool_calls",
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || (key == "tool_choice" && s == "none"),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty() || (key == "response_format" && o.get("type") == Some(&json!("text"))),
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
    prompt: OneOrMany,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: ChatContent,
    /// Fields of a message this server does not implement (`name`, `tool_calls`, …).
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
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
        let content = match self.content {
            ChatContent::Text(text) => text,
            ChatContent::Parts(parts) => {
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
    fn options(&self) -> ApiResult<Options> {
        refuse_unsupported(&self.other)?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(Error::invalid("only n = 1 is supported").into());
        }
        let top_k = match self.top_k {
            None | Some(0) | Some(-1) => None,
            Some(k) if k > 0 => Some(k as u64),
            Some(k) => return Err(Error::invalid(format!("top_k must be positive, 0 or -1, got {k}")).into()),
        };
        Ok(Options {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
        })
    }
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
    pub prompt: Prompt,
    pub options: Options,
    pub stream: bool,
    pub include_usage: bool,
}

impl GenerationRequest {
    fn new(kind: Kind, common: Common, prompt: Prompt) -> ApiResult<Self> {
        let options = common.options()?;
        let include_usage = common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        Ok(Self { kind, model: common.model, prompt, options, stream: common.stream, include_usage })
    }
}

/// Parses and checks a `/v1/completions` body.
pub fn parse_completion(body: &[u8]) -> ApiResult<GenerationRequest> {
    let request: CompletionRequest = parse_json(body)?;
    let prompt = match request.prompt.into_vec().as_mut_slice() {
        [one] => Prompt::Text(std::mem::take(one)),
        _ => return Err(Error::invalid("prompt must be one string (batched prompts are not supported)").into()),
    };
    GenerationRequest::new(Kind::Completion, request.common, prompt)
}

/// Parses and checks a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> ApiResult<GenerationRequest> {
    let request: ChatRequest = parse_json(body)?;
    let messages = request.messages.into_iter().map(ChatMessage::into_message).collect::<ApiResult<Vec<_>>>()?;
    GenerationRequest::new(Kind::Chat, request.common, Prompt::Chat(messages))
}

/// An embeddings request, parsed and checked.
#[derive(Debug)]
pub struct EmbeddingsCall {
    pub model: String,
    pub texts: Vec<String>,
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
    let texts = request.input.into_vec();
    limits::check_embedding_texts(texts.len())?;
    Ok(EmbeddingsCall { model: request.model, texts, base64 })
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
    input: OneOrMany,
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
    let embeddings = dispatch::embed(&manager, model, &target, routing_key, request.texts).await?;
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
    let (model, target) = parse_model(&request.model)?;
    let routing_key = headers.get(ROUTING_KEY_HEADER).and_then(|v| v.to_str().ok());
    let mut started = dispatch::generate(manager, model, &target, routing_key, request.prompt, request.options).await?;
    let meta = ChunkMeta::new(request.kind, request.model.clone());
    let version = HeaderValue::from(started.version);
    let mut response = if request.stream {
        Sse::new(sse_stream(meta, started, request.include_usage)).into_response()
    } else {
        let completion = generation::collect(&mut started.events).await?;
        Json(meta.whole(&completion)).into_response()
    };
    response.headers_mut().insert(MODEL_VERSION_HEADER, version);
    Ok(response)
}

/// What every chunk and body of one response repeats.
#[derive(Clone, Debug)]
struct ChunkMeta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl ChunkMeta {
    fn new(kind: Kind, model: String) -> Self {
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        Self { kind, id: format!("{prefix}-{:032x}", rand::random::<u128>()), created, model }
    }

    /// The non-streaming body.
    fn whole(&self, completion: &Completion) -> Value {
        let reason = completion.reason.as_str();
        let (object, choice) = match self.kind {
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": completion.text, "logprobs": null, "finish_reason": reason}),
            ),
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": completion.text}, "logprobs": null, "finish_reason": reason}),
            ),
        };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage_json(completion.usage),
        })
    }

    /// One streamed chunk: a text delta (`Some`) or the role announcement (chat only, `None`),
    /// with the finish reason on the last one.
    fn chunk(&self, text: Option<&str>, finish_reason: Option<&str>) -> Value {
        let (object, choice) = match self.kind {
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or_default(), "logprobs": null, "finish_reason": finish_reason}),
            ),
            Kind::Chat => {
                let delta = match (text, finish_reason) {
                    (None, None) => json!({"role": "assistant", "content": ""}),
                    (Some(text), _) if !text.is_empty() => json!({"content": text}),
                    _ => json!({}),
                };
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}),
                )
            }
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// The extra last chunk carrying usage (`stream_options.include_usage`).
    fn usage_chunk(&self, usage: Usage) -> Value {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [], "usage": usage_json(usage)})
    }
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

/// The SSE events of one generation. Dropping the stream (the client went away) drops the
/// engine's channel, which frees the sequence.
fn sse_stream(
    meta: ChunkMeta,
    started: Started,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let data = |value: Value| SseEvent::default().data(value.to_string());
    let opening = (meta.kind == Kind::Chat).then(|| data(meta.chunk(None, None)));
    let body = started.events.flat_map(move |event| {
        let events: Vec<SseEvent> = match event {
            Event::Token { text, .. } if text.is_empty() => Vec::new(),
            Event::Token { text, .. } => vec![data(meta.chunk(Some(&text), None))],
            Event::Finished { text, reason, usage } => {
                let mut events = Vec::new();
                if !text.is_empty() {
                    events.push(data(meta.chunk(Some(&text), None)));
                }
                events.push(data(meta.chunk(None, Some(reason.as_str()))));
                if include_usage {
                    events.push(data(meta.usage_chunk(usage)));
                }
                events.push(SseEvent::default().data("[DONE]"));
                events
            }
            Event::Failed(error) => {
                let status = status::http_status(status::grpc_code(&error));
                vec![data(
                    json!({"error": {"message": error.to_string(), "type": "server_error", "code": status.as_u16()}}),
                )]
            }
        };
        stream::iter(events)
    });
    stream::iter(opening).chain(body).map(Ok)
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
        assert!(common(json!({"n": 2})).options().unwrap_err().message.contains("n = 1"));
        assert!(common(json!({"top_k": -5})).options().unwrap_err().message.contains("top_k"));
        let options = common(json!({"max_tokens": 5, "max_completion_tokens": 7, "stop": "x"})).options().unwrap();
        assert_eq!((options.max_tokens, options.stop), (Some(7), vec!["x".to_owned()]));
    }

    #[test]
    fn parameters_the_engine_does_not_implement_are_refused_by_name_unless_they_ask_for_the_default() {
        let refused = |body: Value| -> Option<String> {
            let common: Common = serde_json::from_value(body).unwrap();
            common.options().err().and_then(|e| e.param)
        };
        for (param, value) in [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("echo", json!(true)),
            ("response_format", json!({"type": "json_object"})),
            ("tools", json!([{"type": "function"}])),
            ("tool_choice", json!("auto")),
            ("logit_bias", json!({"50256": -100})),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-1)),
            ("best_of", json!(2)),
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
