//! Tool calling, as OpenAI's chat API defines it: `tools` (functions with JSON-schema
//! parameters) and `tool_choice` (`none`, `auto`, `required` or one named function), checked
//! here ([`Tools::parse`]); what the model is told ([`Tools::instructions`]); the grammar a
//! required or named call is constrained to ([`Tools::constraint`]); and the generated text read
//! back as `tool_calls` ([`Tools::read_calls`]).
//!
//! The model is told to answer a call as a JSON array of `{"name", "arguments"}` objects, in a
//! system message (chat templates differ in whether and how they render tools; this works with
//! any template). With `required` or a named function the output is constrained to exactly that
//! array, its arguments matching each function's schema, so the call always parses; with `auto`
//! the model chooses, and text that is not a valid call of a listed function is its answer.
//! A `<tool_call>…</tool_call>` block, the format Hermes-style templates ask for, is read too.

use serde_json::{Value, json};

use super::limits;
use crate::error::{Error, Result};
use lantern_runtime::llm::chat::{self, Message};

/// The functions a request offers and how it wants them used.
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    functions: Vec<Function>,
    choice: ToolChoice,
    /// Several calls in one answer (`parallel_tool_calls`, default true).
    parallel: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct Function {
    name: String,
    description: String,
    /// A JSON schema of the arguments object.
    parameters: Value,
}

/// OpenAI's `tool_choice`.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// One call read from the output.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object as JSON text (OpenAI sends it as a string).
    pub arguments: String,
}

impl Tools {
    /// Checks `tools` and `tool_choice` as a request gives them; `None` when no tool is offered
    /// or `tool_choice` is `none` (the model is not told of them). Refused with 400: a tool that
    /// is not a function, a name OpenAI would not accept, parameters that are not a JSON schema
    /// object, a choice naming a function not listed, and a choice without tools.
    pub fn parse(tools: Option<&Value>, choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<Self>> {
        let listed = match tools {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(listed)) => listed.as_slice(),
            Some(other) => return Err(Error::invalid(format!("tools must be a list, got {other}"))),
        };
        if listed.len() > limits::MAX_TOOLS {
            return Err(Error::invalid(format!(
                "tools lists {} tools; at most {} are allowed",
                listed.len(),
                limits::MAX_TOOLS
            )));
        }
        let functions =
            listed.iter().enumerate().map(|(i, tool)| Function::parse(i, tool)).collect::<Result<Vec<_>>>()?;
        let choice = match choice {
            None | Some(Value::Null) if functions.is_empty() => ToolChoice::None,
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(choice)) => match choice.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(Error::invalid(format!(
                        "tool_choice must be \"none\", \"auto\", \"required\" or a function, got {other:?}"
                    )));
                }
            },
            Some(named) => match named["function"]["name"].as_str() {
                Some(name) if named["type"] == "function" => ToolChoice::Named(name.to_owned()),
                _ => return Err(Error::invalid(format!("tool_choice names no function: {named}"))),
            },
        };
        if let ToolChoice::Named(name) = &choice
            && !functions.iter().any(|f| &f.name == name)
        {
            return Err(Error::invalid(format!("tool_choice names {name:?}, which tools does not list")));
        }
        if choice == ToolChoice::Required && functions.is_empty() {
            return Err(Error::invalid("tool_choice is \"required\" but tools lists no function"));
        }
        match choice {
            ToolChoice::None => Ok(None),
            choice => Ok(Some(Self { functions, choice, parallel: parallel.unwrap_or(true) })),
        }
    }

    pub fn choice(&self) -> &ToolChoice {
        &self.choice
    }

    /// The system message that tells the model the tools and the answer format, to go first in
    /// the conversation (joined to the request's own system message, if it starts with one).
    pub fn instructions(&self) -> String {
        let listed: Vec<Value> = self
            .offered()
            .map(|f| json!({"name": f.name, "description": f.description, "parameters": f.parameters}))
            .collect();
        let rule = match &self.choice {
            ToolChoice::Auto => "To call functions, answer with only a JSON array of calls",
            ToolChoice::Required | ToolChoice::Named(_) | ToolChoice::None => "Answer with only a JSON array of calls",
        };
        format!(
            "You can call these functions:\n{}\n{rule}, each {{\"name\": <function name>, \"arguments\": <arguments object>}}.",
            Value::Array(listed)
        )
    }

    /// `messages` with [`Self::instructions`] told first.
    pub fn instruct(&self, messages: Vec<Message>) -> Vec<Message> {
        chat::instruct(messages, &self.instructions())
    }

    /// The JSON schema the output is held to: for `required`, an array of calls of the listed
    /// functions (one, unless parallel calls are allowed); for a named function, one call of it;
    /// `None` for `auto`.
    pub fn constraint(&self) -> Option<Value> {
        if self.choice == ToolChoice::Auto {
            return None;
        }
        let calls: Vec<Value> = self
            .offered()
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f.name}, "arguments": f.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let most = match self.parallel && self.choice == ToolChoice::Required {
            true => json!(null),
            false => json!(1),
        };
        let mut schema = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
        if !most.is_null() {
            schema["maxItems"] = most;
        }
        Some(schema)
    }

    /// The calls `text` makes, or `None` when it is an answer, not calls: a JSON array (or a
    /// `<tool_call>` block of one object each) of listed functions with object arguments.
    pub fn read_calls(&self, text: &str) -> Option<Vec<ToolCall>> {
        let text = text.trim();
        let values: Vec<Value> = if text.starts_with("<tool_call>") {
            let blocks = text.split("<tool_call>").skip(1);
            let objects = blocks.map(|block| serde_json::from_str(block.split("</tool_call>").next()?.trim()).ok());
            objects.collect::<Option<Vec<Value>>>()?
        } else {
            match serde_json::from_str(text).ok()? {
                Value::Array(calls) => calls,
                call @ Value::Object(_) => vec![call],
                _ => return None,
            }
        };
        let calls: Vec<ToolCall> = values
            .into_iter()
            .map(|call| {
                let name = call["name"].as_str()?;
                let arguments = call.get("arguments").filter(|a| a.is_object())?;
                self.offered()
                    .any(|f| f.name == name)
                    .then(|| ToolCall { name: name.to_owned(), arguments: arguments.to_string() })
            })
            .collect::<Option<_>>()?;
        (!calls.is_empty()).then_some(calls)
    }

    /// Whether a choice whose text starts with `prefix` may still turn out to be calls
    /// ([`Self::read_calls`]): `None` while that cannot be told (only whitespace, or the start of
    /// a `<tool_call>` tag), `Some(false)` once it is an answer in words, which can then be
    /// streamed as it comes.
    pub fn could_be_calls(prefix: &str) -> Option<bool> {
        const TAG: &str = "<tool_call>";
        let text = prefix.trim_start();
        match text.chars().next()? {
            '[' | '{' => Some(true),
            _ if text.len() < TAG.len() && TAG.starts_with(text) => None,
            _ => Some(text.starts_with(TAG)),
        }
    }

    /// The functions the model may call: the named one alone, or all.
    fn offered(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter().filter(|f| match &self.choice {
            ToolChoice::Named(name) => &f.name == name,
            _ => true,
        })
    }
}

impl Function {
    fn parse(index: usize, tool: &Value) -> Result<Self> {
        let refuse = |why: &str| Error::invalid(format!("tools[{index}]: {why}"));
        if tool["type"] != "function" {
            return Err(refuse("only tools of type \"function\" are supported"));
        }
        let function = &tool["function"];
        let name = function["name"].as_str().ok_or_else(|| refuse("the function has no name"))?;
        let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid_name) {
            return Err(refuse(&format!("function names are 1 to 64 of a-z, A-Z, 0-9, _ and -, got {name:?}")));
        }
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(schema @ Value::Object(_)) if schema.get("type").is_none_or(|t| t == "object") => schema.clone(),
            Some(other) => {
                return Err(refuse(&format!("parameters must be a JSON schema of an object, got {other}")));
            }
        };
        let description = function["description"].as_str().unwrap_or_default().to_owned();
        Ok(Self { name: name.to_owned(), description, parameters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{
            "type": "function",
            "function": {
                "name": "get_weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }, {"type": "function", "function": {"name": "get_time"}}])
    }

    fn tools(choice: Value) -> Tools {
        Tools::parse(Some(&weather()), Some(&choice), None).unwrap().unwrap()
    }

    #[test]
    fn choices_are_read_and_bad_tools_refused() {
        assert_eq!(Tools::parse(None, None, None).unwrap(), None);
        assert_eq!(Tools::parse(Some(&weather()), Some(&json!("none")), None).unwrap(), None);
        assert_eq!(Tools::parse(Some(&weather()), None, None).unwrap().unwrap().choice, ToolChoice::Auto);
        assert_eq!(tools(json!("required")).choice, ToolChoice::Required);
        let named = tools(json!({"type": "function", "function": {"name": "get_time"}}));
        assert_eq!(named.choice, ToolChoice::Named("get_time".into()));
        for (tools, choice, refusal) in [
            (json!([{"type": "retrieval"}]), json!("auto"), "type \"function\""),
            (json!([{"type": "function", "function": {"name": "a b"}}]), json!("auto"), "function names"),
            (json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]), json!("auto"), "JSON schema"),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
                json!("auto"),
                "JSON schema",
            ),
            (weather(), json!({"type": "function", "function": {"name": "nope"}}), "does not list"),
            (weather(), json!("sometimes"), "tool_choice must be"),
            (json!([]), json!("required"), "lists no function"),
        ] {
            let err = Tools::parse(Some(&tools), Some(&choice), None).unwrap_err().to_string();
            assert!(err.contains(refusal), "{err}");
        }
    }

    #[test]
    fn calls_are_read_from_a_json_array_or_tool_call_blocks_and_anything_else_is_an_answer() {
        let tools = tools(json!("auto"));
        let call = ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Oslo"}"#.into() };
        let array = r#" [{"name": "get_weather", "arguments": {"city": "Oslo"}}] "#;
        assert_eq!(tools.read_calls(array), Some(vec![call.clone()]));
        let block = r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>"#;
        assert_eq!(tools.read_calls(block), Some(vec![call]));
        for answer in ["It is sunny.", r#"[{"name": "unlisted", "arguments": {}}]"#, r#"[{"name": "get_time"}]"#, "[]"]
        {
            assert_eq!(tools.read_calls(answer), None, "{answer}");
        }
    }

    #[test]
    fn an_answer_in_words_is_told_from_calls_by_its_first_characters() {
        for (prefix, could) in [
            ("", None),
            (" \n", None),
            ("<tool", None),
            (" [", Some(true)),
            ("{\"name\"", Some(true)),
            ("<tool_call>{", Some(true)),
            ("It is", Some(false)),
            ("<b>", Some(false)),
        ] {
            assert_eq!(Tools::could_be_calls(prefix), could, "{prefix:?}");
        }
    }

    #[test]
    fn required_and_named_calls_are_constrained_auto_is_not() {
        assert_eq!(tools(json!("auto")).constraint(), None);
        let required = tools(json!("required")).constraint().unwrap();
        assert_eq!(required["items"]["anyOf"].as_array().unwrap().len(), 2);
        assert_eq!(required.get("maxItems"), None, "parallel calls by default");
        let named = tools(json!({"type": "function", "function": {"name": "get_weather"}})).constraint().unwrap();
        assert_eq!(named["maxItems"], 1);
        assert_eq!(named["items"]["anyOf"][0]["properties"]["name"]["const"], "get_weather");
        let single = Tools::parse(Some(&weather()), Some(&json!("required")), Some(false)).unwrap().unwrap();
        assert_eq!(single.constraint().unwrap()["maxItems"], 1);
    }

    #[test]
    fn the_model_is_told_the_functions() {
        let told = tools(json!("auto")).instruct(vec![Message::new("user", "Hi")]);
        assert_eq!((told[0].role.as_str(), told.len()), ("system", 2));
        assert!(told[0].content.contains("get_weather") && told[0].content.contains("JSON array of calls"));
    }
}
