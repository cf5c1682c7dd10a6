//! How text becomes a language model's input and its output becomes text again: the tokenizer,
//! the chat template and the special-token strings the template refers to, loaded together from a
//! model's files ([`TextCodec::from_gguf`]).

use std::collections::HashMap;

use candle_core::quantized::gguf_file;

use super::chat::{ChatTemplate, Message};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// A language model's text interface.
#[derive(Debug)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    bos: String,
    eos: String,
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
        Ok(Self { tokenizer, chat, bos, eos })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
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
}
