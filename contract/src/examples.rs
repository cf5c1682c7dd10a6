//! Fine-tuning examples as users write them, one JSON object per line, in one of three forms:
//!
//! - a chat conversation in OpenAI's fine-tuning format:
//!   `{"messages": [{"role": "system" | "user" | "assistant", "content": …}, …]}`, with at least
//!   one assistant turn;
//! - a prompt/completion pair: `{"prompt": …, "completion": …}`, the prompt not empty;
//! - plain text: `{"text": …}`, not empty.
//!
//! This is the shape check, which needs no tokenizer: the `lantern` CLI runs it on a file before
//! it creates anything, and the worker's training crate runs it on every line before it renders
//! and tokenizes the example with the base's own template and tokenizer (where the length checks
//! happen). Blank lines are skipped; line numbers count from 1 as editors show them.

use serde::Deserialize;

/// Roles a conversation's messages may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// One example, its shape checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Example {
    Conversation(Vec<Turn>),
    Pair { prompt: String, completion: String },
    Text(String),
}

/// A message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// A line of either form, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    messages: Option<Vec<Turn>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    completion: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

/// The non-blank lines of a file's text, each with its number.
pub fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(index, line)| (index + 1, line))
}

/// One line's example, or why it is none.
pub fn parse(line: &str) -> Result<Example, String> {
    let line: Line = serde_json::from_str(line).map_err(|e| format!("not a valid example: {e}"))?;
    match line {
        Line { messages: Some(turns), prompt: None, completion: None, text: None } => conversation(turns),
        Line { messages: None, prompt: Some(prompt), completion: Some(completion), text: None } => {
            if prompt.is_empty() {
                return Err("the prompt is empty".to_owned());
            }
            Ok(Example::Pair { prompt, completion })
        }
        Line { messages: None, prompt: None, completion: None, text: Some(text) } => {
            if text.is_empty() {
                return Err("the text is empty".to_owned());
            }
            Ok(Example::Text(text))
        }
        _ => Err("an example has either \"messages\", both \"prompt\" and \"completion\", or \"text\"".to_owned()),
    }
}

fn conversation(turns: Vec<Turn>) -> Result<Example, String> {
    if let Some((index, turn)) = turns.iter().enumerate().find(|(_, t)| !ROLES.contains(&t.role.as_str())) {
        return Err(format!("message {index} has the unknown role {:?} (expected {})", turn.role, ROLES.join(", ")));
    }
    if !turns.iter().any(|t| t.role == "assistant") {
        return Err("the conversation has no assistant turn".to_owned());
    }
    Ok(Example::Conversation(turns))
}

/// How many examples of each form a file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub conversations: usize,
    pub pairs: usize,
    pub texts: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.conversations + self.pairs + self.texts
    }
}

/// A line of a file that holds no valid example.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// Checks every line of a file's text: the counts of its examples, or its first bad line. A file
/// with no example is an error at line 1.
pub fn check(text: &str) -> Result<Counts, LineError> {
    let mut counts = Counts::default();
    for (line, text) in lines(text) {
        match parse(text).map_err(|reason| LineError { line, reason })? {
            Example::Conversation(_) => counts.conversations += 1,
            Example::Pair { .. } => counts.pairs += 1,
            Example::Text(_) => counts.texts += 1,
        }
    }
    if counts.total() == 0 {
        return Err(LineError { line: 1, reason: "the file holds no example".to_owned() });
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_reads_and_blank_lines_keep_their_numbers() {
        let text = concat!(
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
            "\n\n",
            r#"{"prompt": "2+2=", "completion": "4"}"#,
            "\n",
            r#"{"text": "plain"}"#,
            "\n",
        );
        assert_eq!(check(text), Ok(Counts { conversations: 1, pairs: 1, texts: 1 }));
        assert_eq!(lines(text).map(|(n, _)| n).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(
            parse(r#"{"prompt": "a", "completion": ""}"#),
            Ok(Example::Pair { prompt: "a".into(), completion: String::new() })
        );
    }

    #[test]
    fn a_bad_line_is_named_with_why() {
        let bad = |line: &str| check(&format!("{{\"text\": \"ok\"}}\n{line}\n")).unwrap_err();
        let error = bad("not json");
        assert_eq!(error.line, 2);
        assert!(error.to_string().starts_with("line 2: not a valid example: "), "{error}");
        assert!(bad(r#"{"prompt": "a"}"#).reason.contains("both \"prompt\" and \"completion\""));
        assert!(bad(r#"{"text": "a", "label": 1}"#).reason.contains("unknown field `label`"));
        assert_eq!(bad(r#"{"prompt": "", "completion": "b"}"#).reason, "the prompt is empty");
        assert_eq!(bad(r#"{"text": ""}"#).reason, "the text is empty");
        let tool = r#"{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}"#;
        assert_eq!(bad(tool).reason, "message 0 has the unknown role \"tool\" (expected system, user, assistant)");
        let unanswered = r#"{"messages": [{"role": "user", "content": "x"}]}"#;
        assert_eq!(bad(unanswered).reason, "the conversation has no assistant turn");
        assert_eq!(check("\n  \n").unwrap_err(), LineError { line: 1, reason: "the file holds no example".into() });
    }
}
