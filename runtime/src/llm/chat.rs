//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template`, or
//! `chat_template` in `tokenizer_config.json`) rendered with minijinja, with Python string methods
//! available as Hugging Face templates expect (`.strip()`, `.startswith()`, …).

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// `messages` with `text` told to the model first: appended to the opening system message, or
/// as a system message of its own where the chat does not open with one.
pub fn instruct(mut messages: Vec<Message>, text: &str) -> Vec<Message> {
    match messages.first_mut() {
        Some(first) if first.role == "system" => first.content = format!("{}\n\n{text}", first.content),
        _ => messages.insert(0, Message::new("system", text)),
    }
    messages
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; a template that does not parse is an error naming the problem.
    pub fn new(source: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Templates call raise_exception("...") to refuse conversations they cannot render.
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source.clone())
            .map_err(|e| Error::ModelFile(format!("invalid chat template: {e}")))?;
        Ok(Self { env, source })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant's turn opener.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid("a chat needs at least one message"));
        }
        let template = self.env.get_template(NAME).expect("the template was added in new(); this is a bug");
        template
            .render(context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt,
                bos_token => bos,
                eos_token => eos,
            })
            .map_err(|e| Error::invalid(format!("the chat template refused the conversation: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_messages_and_the_generation_prompt() {
        let template = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content.strip() }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
                .into(),
        )
        .unwrap();
        let text = template.render(&[Message::new("user", " hi ")], true, "<s>", "</s>").unwrap();
        assert_eq!(text, "<user>hi</s><assistant>");
        assert!(template.render(&[], true, "", "").is_err());
    }

    #[test]
    fn instructions_join_the_system_message_or_open_the_chat() {
        let joined = instruct(vec![Message::new("system", "Be brief."), Message::new("user", "Hi")], "Use JSON.");
        assert_eq!(joined, [Message::new("system", "Be brief.\n\nUse JSON."), Message::new("user", "Hi")]);
        let opened = instruct(vec![Message::new("user", "Hi")], "Use JSON.");
        assert_eq!(opened, [Message::new("system", "Use JSON."), Message::new("user", "Hi")]);
    }

    #[test]
    fn templates_can_refuse_and_bad_templates_fail_early() {
        let strict = ChatTemplate::new("{{ raise_exception('roles must alternate') }}".into()).unwrap();
        let err = strict.render(&[Message::new("user", "x")], false, "", "").unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
        assert!(ChatTemplate::new("{% for %}".into()).is_err());
    }
}
