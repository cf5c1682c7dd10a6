//! Affinity keys: which requests should go where a like request went before. A language-model
//! request's key is its model (an adapter is a model of its own) and the first
//! [`PREFIX_BYTES`] of its prompt as the worker will see it (a chat's messages in order, role
//! and content), so requests that share a system prompt or the earlier turns of a chat reach the
//! pod whose prefix cache holds them. Other requests (tensors, embeddings) have no key and go to
//! the least loaded pod.
//!
//! Keys are read from the bodies of `POST /v1/completions`, `POST /v1/chat/completions` and gRPC
//! `lantern.v1.GenerationService/Generate`. A body that does not parse has no key: the worker
//! owns validation and answers it with the precise error.

use prost::Message as _;
use serde_json::Value;

use lantern_proto::lantern::v1::{self as pb, generate_request::Input};

use super::balance::hash;

/// How much of a prompt decides its pod: about the first four 16-token KV blocks, so prompts
/// that share a system prompt share a pod while prompts that differ early spread out.
pub const PREFIX_BYTES: usize = 256;

/// The request paths whose bodies carry an affinity key.
pub fn keyed(path: &str) -> bool {
    matches!(path, "/v1/completions" | "/v1/chat/completions" | GENERATE_PATH)
}

const GENERATE_PATH: &str = "/lantern.v1.GenerationService/Generate";

/// What a language-model request's body says: the model it names (without a `:version` or
/// `:label` suffix) and its affinity key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyed {
    pub model: String,
    pub key: u64,
}

/// The model and affinity key of a request to `path` with `body`; `None` where it has none.
pub fn key(path: &str, body: &[u8]) -> Option<Keyed> {
    let (model, prompt) = match path {
        "/v1/completions" | "/v1/chat/completions" => openai_prompt(body)?,
        GENERATE_PATH => generate_prompt(body)?,
        _ => return None,
    };
    let key = hash(&[model.as_bytes(), prefix(&prompt)]);
    let model = model.split_once(':').map_or(model.as_str(), |(name, _)| name).to_owned();
    Some(Keyed { model, key })
}

/// The model an OIP REST path names (`/v2/models/{name}…`).
pub fn path_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|name| !name.is_empty())
}

/// At most [`PREFIX_BYTES`] of `prompt`.
fn prefix(prompt: &str) -> &[u8] {
    &prompt.as_bytes()[..prompt.len().min(PREFIX_BYTES)]
}

/// The model and prompt of an OpenAI completions or chat body: `prompt` as text (the first of a
/// list), or the `messages` joined; token-id prompts are spelled as their numbers.
fn openai_prompt(body: &[u8]) -> Option<(String, String)> {
    let request: Value = serde_json::from_slice(body).ok()?;
    let model = request["model"].as_str()?.to_owned();
    let prompt = match (&request["prompt"], &request["messages"]) {
        (Value::String(text), _) => text.clone(),
        (Value::Array(items), _) => match items.first()? {
            Value::String(text) => text.clone(),
            first => first.to_string(),
        },
        (_, Value::Array(messages)) => {
            let mut joined = String::new();
            for message in messages {
                if joined.len() >= PREFIX_BYTES {
                    break;
                }
                joined.push_str(message["role"].as_str().unwrap_or_default());
                joined.push('\n');
                match &message["content"] {
                    Value::String(text) => joined.push_str(text),
                    other => joined.push_str(&other.to_string()),
                }
                joined.push('\n');
            }
            joined
        }
        _ => return None,
    };
    Some((model, prompt))
}

/// The model and prompt of a gRPC `Generate` body: one uncompressed length-prefixed message.
fn generate_prompt(body: &[u8]) -> Option<(String, String)> {
    let (&[0], rest) = body.split_first_chunk::<1>()? else { return None };
    let (length, message) = rest.split_first_chunk::<4>()?;
    let message = message.get(..u32::from_be_bytes(*length) as usize)?;
    let request = pb::GenerateRequest::decode(message).ok()?;
    let prompt = match request.input? {
        Input::Prompt(text) => text,
        Input::Chat(chat) => chat.messages.iter().map(|m| format!("{}\n{}\n", m.role, m.content)).collect::<String>(),
    };
    Some((request.model_name, prompt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(request: &pb::GenerateRequest) -> Vec<u8> {
        let message = request.encode_to_vec();
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend(message);
        body
    }

    #[test]
    fn a_shared_prefix_and_model_give_one_key_whatever_follows() {
        let system = "You are a careful assistant who answers in one sentence. ".repeat(6);
        let chat = |question: &str| {
            serde_json::json!({"model": "smollm2", "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": question}]})
            .to_string()
        };
        let a = key("/v1/chat/completions", chat("Why is the sky blue?").as_bytes());
        let b = key("/v1/chat/completions", chat("Name a colour.").as_bytes());
        assert!(a.is_some() && a == b);
        assert_eq!(a.as_ref().unwrap().model, "smollm2");
        let other_model = chat("Why is the sky blue?").replace("smollm2", "smollm2-sql");
        assert_ne!(key("/v1/chat/completions", other_model.as_bytes()), a, "an adapter is a model of its own");
        let short = |prompt: &str| {
            key("/v1/completions", serde_json::json!({"model": "m", "prompt": prompt}).to_string().as_bytes())
        };
        assert_ne!(short("The sky is"), short("Water is"));
    }

    #[test]
    fn grpc_generate_is_keyed_like_the_same_prompt_over_http() {
        let request = pb::GenerateRequest {
            model_name: "smollm2".into(),
            input: Some(Input::Prompt("The sky is".into())),
            ..Default::default()
        };
        let http = serde_json::json!({"model": "smollm2", "prompt": "The sky is"}).to_string();
        assert_eq!(key(GENERATE_PATH, &framed(&request)), key("/v1/completions", http.as_bytes()));
        assert!(key(GENERATE_PATH, &framed(&request)).is_some());
        let labelled = serde_json::json!({"model": "smollm2:canary", "prompt": "The sky is"}).to_string();
        assert_eq!(key("/v1/completions", labelled.as_bytes()).unwrap().model, "smollm2");
    }

    #[test]
    fn what_does_not_parse_has_no_key() {
        for (path, body) in [
            ("/v1/completions", &b"{not json"[..]),
            ("/v1/completions", br#"{"prompt": "no model"}"#),
            ("/v1/embeddings", br#"{"model": "m", "input": "x"}"#),
            (GENERATE_PATH, &[1, 0, 0, 0, 0][..]),
            (GENERATE_PATH, &[0, 0, 0, 0, 9, 1][..]),
            (GENERATE_PATH, &[][..]),
        ] {
            assert_eq!(key(path, body), None, "{path} {body:?}");
        }
        assert!(keyed(GENERATE_PATH) && keyed("/v1/completions") && !keyed("/v1/embeddings"));
        assert_eq!(path_model("/v2/models/adder/versions/2/infer"), Some("adder"));
        assert_eq!(path_model("/v2/models/adder"), Some("adder"));
        assert_eq!(path_model("/v2/models/"), None);
        assert_eq!(path_model("/v2/health/ready"), None);
    }
}
