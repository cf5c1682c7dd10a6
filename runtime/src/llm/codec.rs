//! How text becomes a language model's input and its output becomes text again: the tokenizer,
//! the chat template and the special-token strings the template refers to, loaded together from a
//! model's files ([`TextCodec::from_gguf`], [`TextCodec::from_hf`]).

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;

use super::chat::{ChatTemplate, Message};
use super::grammar::Grammars;
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// A language model's text interface.
#[derive(Debug)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    longest_token_bytes: usize,
    chat: Option<ChatTemplate>,
    bos: String,
    eos: String,
    /// The schema compiler for this vocabulary, built on first use ([`Self::grammars`]).
    grammars: OnceLock<std::result::Result<Grammars, String>>,
}

impl TextCodec {
    /// The tokenizer and chat template a GGUF file's metadata describes.
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(metadata)?;
        let chat = match metadata.get("tokenizer.chat_template").map(gguf_file::Value::to_string) {
            Some(Ok(source)) => Some(ChatTemplate::new(source.clone())?),
            Some(Err(e)) => return Err(Error::ModelFile(format!("tokenizer.chat_template: {e}"))),
            None => None,
        };
        let special = |key: &str| -> String {
            metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .and_then(|id| tokenizer.decode(&[id], false).ok())
                .unwrap_or_default()
        };
        let (bos, eos) = (special("tokenizer.ggml.bos_token_id"), special("tokenizer.ggml.eos_token_id"));
        Ok(Self::new(tokenizer, chat, bos, eos))
    }

    /// The tokenizer and chat template of an HF checkpoint: `tokenizer.json`, and
    /// `tokenizer_config.json` (chat template, BOS and EOS tokens) when it has one.
    pub fn from_hf(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>) -> Result<Self> {
        let config: serde_json::Value = match tokenizer_config {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| Error::ModelFile(format!("tokenizer_config.json is not valid JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        // A token is written either as a string or as {"content": "..."}.
        let token = |key: &str| -> String {
            let value = &config[key];
            value.as_str().or_else(|| value["content"].as_str()).unwrap_or_default().to_owned()
        };
        let (bos, eos) = (token("bos_token"), token("eos_token"));
        let tokenizer = Tokenizer::from_json(tokenizer_json, &[eos.as_str()])?;
        let chat = match &config["chat_template"] {
            serde_json::Value::String(source) => Some(ChatTemplate::new(source.clone())?),
            // Several named templates: the default one.
            serde_json::Value::Array(templates) => templates
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(|source| ChatTemplate::new(source.to_owned()))
                .transpose()?,
            _ => None,
        };
        Ok(Self::new(tokenizer, chat, bos, eos))
    }

    fn new(tokenizer: Tokenizer, chat: Option<ChatTemplate>, bos: String, eos: String) -> Self {
        let longest_token_bytes = tokenizer.longest_token_bytes();
        Self { tokenizer, longest_token_bytes, chat, bos, eos, grammars: OnceLock::new() }
    }

    /// The compiler of JSON schemas into token masks for this vocabulary, built on first use
    /// (it takes a moment); the reason it cannot be built for this model, if so.
    pub fn grammars(&self) -> Result<&Grammars> {
        let grammars = self.grammars.get_or_init(|| Grammars::new(&self.tokenizer).map_err(|e| e.to_string()));
        grammars.as_ref().map_err(|reason| Error::invalid(reason.clone()))
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The codec as an HF checkpoint's `tokenizer.json` and `tokenizer_config.json` (chat
    /// template, BOS and EOS tokens), which [`Self::from_hf`] reads back as this codec: how a
    /// model fine-tuned from a GGUF base keeps its base's text interface.
    pub fn to_hf(&self) -> Result<(String, String)> {
        let mut config = serde_json::json!({ "bos_token": self.bos, "eos_token": self.eos });
        if let Some(chat) = &self.chat {
            config["chat_template"] = chat.source().into();
        }
        Ok((self.tokenizer.to_json()?, config.to_string()))
    }

    /// The codec as GGUF metadata: the tokenizer's ([`Tokenizer::gguf_metadata`]) and
    /// `tokenizer.chat_template`, which [`Self::from_gguf`] reads back as this codec.
    pub fn gguf_metadata(&self) -> Result<Vec<(String, gguf_file::Value)>> {
        let mut metadata = self.tokenizer.gguf_metadata()?;
        // An HF tokenizer names its BOS and EOS tokens in `tokenizer_config.json`, not itself.
        for (key, token) in [("tokenizer.ggml.bos_token_id", &self.bos), ("tokenizer.ggml.eos_token_id", &self.eos)] {
            if let Some(id) = self.tokenizer.token_id(token).filter(|_| !metadata.iter().any(|(k, _)| k == key)) {
                metadata.push((key.to_owned(), gguf_file::Value::U32(id)));
            }
        }
        if let Some(chat) = &self.chat {
            metadata.push(("tokenizer.chat_template".to_owned(), gguf_file::Value::String(chat.source().to_owned())));
        }
        Ok(metadata)
    }

    /// The most bytes of text one token spells ([`Tokenizer::longest_token_bytes`]).
    pub fn longest_token_bytes(&self) -> usize {
        self.longest_token_bytes
    }

    /// Token ids of a plain-text prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    /// Token ids of a conversation rendered with the model's chat template, ending with the
    /// prompt for the assistant's reply.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            Error::invalid("this model has no chat template; send a plain prompt to the completions API instead")
        })?;
        if messages.is_empty() {
            return Err(Error::invalid("messages is empty"));
        }
        self.encode(&chat.render(messages, true, &self.bos, &self.eos)?)
    }

    /// A whole conversation as a fine-tuning example: its token ids as the chat template renders
    /// it, and for each token whether an assistant turn spells it (what the loss counts). An
    /// assistant turn is what rendering the conversation up to and including it adds to
    /// rendering the turns before it with the assistant's turn opener, so the mask holds the
    /// reply and whatever closes it (`<|im_end|>`), never the opener. Refuses a template under
    /// which a shorter conversation's tokens are not a prefix of a longer one's.
    pub fn encode_training_chat(&self, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        let chat = self.chat.as_ref().ok_or_else(|| Error::invalid("the base model has no chat template"))?;
        let render = |turns: &[Message], opener: bool| -> Result<Vec<u32>> {
            if turns.is_empty() {
                return Ok(Vec::new());
            }
            self.encode(&chat.render(turns, opener, &self.bos, &self.eos)?)
        };
        let tokens = render(messages, false)?;
        let mut mask = vec![false; tokens.len()];
        for (i, message) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let (before, through) = (render(&messages[..i], true)?, render(&messages[..=i], false)?);
            let prefix = |shorter: &[u32]| tokens.starts_with(shorter);
            if !prefix(&before) || !prefix(&through) || through.len() < before.len() {
                return Err(Error::invalid(format!(
                    "the chat template does not render message {i} ({:?}) as a continuation of the turns before it",
                    message.role
                )));
            }
            mask[before.len()..through.len()].fill(true);
        }
        Ok((tokens, mask))
    }
}
