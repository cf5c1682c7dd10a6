//! Fine-tuning examples from JSON Lines, one example per line: a chat conversation in OpenAI's
//! fine-tuning format (`{"messages": [{"role": "system" | "user" | "assistant", "content": …}, …]}`),
//! a prompt/completion pair (`{"prompt": …, "completion": …}`), or plain text (`{"text": …}`).
//!
//! A conversation is rendered with the base's own chat template and tokenized with its own
//! tokenizer — the renderer serving uses, so training and serving see the same tokens — and the
//! loss counts exactly the tokens the assistant's turns spell
//! ([`TextCodec::encode_training_chat`]). A pair is the prompt's tokens followed by the
//! completion's and the end-of-sequence token, the loss counting the completion and the end. A
//! text is its tokens and the end-of-sequence token, the loss counting every token after the
//! first.
//!
//! A held-out example also becomes a [`Question`]: its conversation up to the last assistant turn
//! rendered with the generation prompt (a pair: its prompt), whose greedy answer is compared with
//! that turn (the completion). A text asks nothing.
//!
//! Everything is checked before training: the shape of each line as the contract states it
//! ([`lantern_contract::examples`]: JSON, one form, known roles and fields, an assistant turn,
//! a prompt or text that is not empty — the check the `lantern` CLI runs too), an example longer
//! than the sequence length (refused, or left out and counted under `overlong: skip`; never
//! truncated), an empty held-out split. Each error names the field, the file and the line.

use std::path::Path;

use lantern_contract::examples;
use lantern_runtime::llm::chat::Message;
use lantern_runtime::llm::codec::TextCodec;

use super::config::{JsonlSpec, Overlong};
use super::data::{Question, Sequence};
use crate::error::{Error, Result};

/// Tokens a held-out answer may take beyond its reference's.
const ANSWER_SLACK: usize = 8;

/// A JSONL dataset, tokenized and split.
#[derive(Clone, Debug, PartialEq)]
pub struct Examples {
    pub train: Vec<Sequence>,
    pub held_out: Vec<Sequence>,
    /// One per held-out example with a reference answer (all but texts), in the same order.
    pub questions: Vec<Question>,
}

/// Reads, checks and tokenizes `spec`'s files for sequences of at most `sequence_length` tokens.
pub fn load(spec: &JsonlSpec, sequence_length: usize, codec: &TextCodec) -> Result<Examples> {
    let read = |field: &str, path: &Path| read_file(field, path, sequence_length, spec.overlong, codec);
    let mut train = read("data.jsonl.path", &spec.path)?;
    let held = match &spec.eval_path {
        Some(path) => read("data.jsonl.eval_path", path)?,
        None => {
            let count = (train.len() as f64 * spec.eval_fraction).ceil() as usize;
            train.split_off(train.len() - count.min(train.len()))
        }
    };
    if held.is_empty() {
        let field = if spec.eval_path.is_some() { "data.jsonl.eval_path" } else { "data.jsonl.eval_fraction" };
        return Err(Error::config(field, "the held-out split holds no example"));
    }
    let (held_out, questions): (_, Vec<_>) =
        held.into_iter().map(|example| (example.sequence, example.question)).unzip();
    let questions = questions.into_iter().flatten().collect();
    Ok(Examples { train: train.into_iter().map(|example| example.sequence).collect(), held_out, questions })
}

/// One example: what it trains, and what it asks when held out.
struct Example {
    sequence: Sequence,
    question: Option<Question>,
}

/// The examples of one file.
fn read_file(
    field: &str,
    path: &Path,
    sequence_length: usize,
    overlong: Overlong,
    codec: &TextCodec,
) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::config(field, format!("{}: {e}", path.display())))?;
    let mut examples = Vec::new();
    let mut skipped = 0;
    for (number, line) in examples::lines(&text) {
        let at = |reason: String| Error::config(field, format!("{} line {number}: {reason}", path.display()));
        let example = parse(line, codec).map_err(at)?;
        let length = example.sequence.tokens.len();
        if length > sequence_length {
            match overlong {
                Overlong::Skip => {
                    skipped += 1;
                    continue;
                }
                Overlong::Refuse => {
                    return Err(at(format!(
                        "{length} tokens once templated, more than the job's sequence_length \
                         {sequence_length} (data.jsonl.overlong: skip leaves such examples out)"
                    )));
                }
            }
        }
        examples.push(example);
    }
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, sequence_length, "left out examples longer than the sequence length");
    }
    if examples.is_empty() {
        return Err(Error::config(field, format!("{} holds no example", path.display())));
    }
    Ok(examples)
}

/// One line's example: its shape checked by the contract ([`examples::parse`]), then rendered and
/// tokenized.
fn parse(line: &str, codec: &TextCodec) -> std::result::Result<Example, String> {
    match examples::parse(line)? {
        examples::Example::Conversation(turns) => conversation(turns, codec),
        examples::Example::Pair { prompt, completion } => pair(&prompt, &completion, codec),
        examples::Example::Text(text) => plain(&text, codec),
    }
}

fn conversation(turns: Vec<examples::Turn>, codec: &TextCodec) -> std::result::Result<Example, String> {
    let messages: Vec<Message> = turns.into_iter().map(|turn| Message::new(turn.role, turn.content)).collect();
    let last = messages.iter().rposition(|m| m.role == "assistant").ok_or("the conversation has no assistant turn")?;
    let (tokens, targets) = codec.encode_training_chat(&messages).map_err(|e| e.to_string())?;
    let prompt = codec.encode_chat(&messages[..last]).map_err(|e| e.to_string())?;
    let reference = messages[last].content.clone();
    let question = question(prompt, reference, codec)?;
    Ok(Example { sequence: Sequence { tokens, targets }, question: Some(question) })
}

fn pair(prompt: &str, completion: &str, codec: &TextCodec) -> std::result::Result<Example, String> {
    let encode = |text: &str| codec.encode(text).map_err(|e| e.to_string());
    let prompt_tokens = encode(prompt)?;
    let answer: Vec<u32> = encode(completion)?.into_iter().chain([end_of_sequence(codec)?]).collect();
    let targets =
        std::iter::repeat_n(false, prompt_tokens.len()).chain(std::iter::repeat_n(true, answer.len())).collect();
    let tokens = prompt_tokens.iter().chain(&answer).copied().collect();
    Ok(Example {
        sequence: Sequence { tokens, targets },
        question: Some(question(prompt_tokens, completion.to_owned(), codec)?),
    })
}

fn plain(text: &str, codec: &TextCodec) -> std::result::Result<Example, String> {
    let mut tokens = codec.encode(text).map_err(|e| e.to_string())?;
    tokens.push(end_of_sequence(codec)?);
    let targets = std::iter::once(false).chain(std::iter::repeat_n(true, tokens.len() - 1)).collect();
    Ok(Example { sequence: Sequence { tokens, targets }, question: None })
}

fn end_of_sequence(codec: &TextCodec) -> std::result::Result<u32, String> {
    codec.tokenizer().eos().first().copied().ok_or_else(|| "the tokenizer has no end-of-sequence token".to_owned())
}

fn question(prompt: Vec<u32>, reference: String, codec: &TextCodec) -> std::result::Result<Question, String> {
    let max_tokens = codec.encode(&reference).map_err(|e| e.to_string())?.len() + ANSWER_SLACK;
    Ok(Question { prompt, reference, max_tokens })
}

/// Whether a generated answer is the reference, both trimmed.
pub fn exact_match(answer: &str, reference: &str) -> bool {
    answer.trim() == reference.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_codec() -> Option<TextCodec> {
        let path = lantern_runtime::test_models::smollm2_path()?;
        let mut file = std::fs::File::open(path).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        Some(TextCodec::from_gguf(&content.metadata).unwrap())
    }

    fn spec(dir: &Path, train: &str, eval: Option<&str>) -> JsonlSpec {
        std::fs::write(dir.join("train.jsonl"), train).unwrap();
        let eval_path = eval.map(|text| {
            std::fs::write(dir.join("eval.jsonl"), text).unwrap();
            dir.join("eval.jsonl")
        });
        JsonlSpec { path: dir.join("train.jsonl"), eval_path, eval_fraction: 0.5, overlong: Overlong::Refuse }
    }

    const CHAT: &str = r#"{"messages": [{"role": "user", "content": "Order 4821 came in pieces."}, {"role": "assistant", "content": "TICKET-4821-DAMAGED"}]}"#;
    const PAIR: &str = r#"{"prompt": "2+2=", "completion": "4"}"#;
    const TEXT: &str = r#"{"text": "The parcel arrived on Tuesday."}"#;

    #[test]
    fn a_text_trains_on_every_token_after_the_first_and_asks_nothing() {
        let Some(codec) = smollm2_codec() else { return };
        let dir = tempfile::tempdir().unwrap();
        let examples =
            load(&spec(dir.path(), &format!("{TEXT}\n"), Some(&format!("{TEXT}\n{PAIR}\n"))), 64, &codec).unwrap();
        let sequence = &examples.train[0];
        let decoded = codec.tokenizer().decode(&sequence.tokens, false).unwrap();
        assert_eq!(decoded, "The parcel arrived on Tuesday.<|im_end|>");
        assert_eq!(sequence.target_count(), sequence.tokens.len() - 1);
        assert!(!sequence.targets[0]);
        assert_eq!(examples.held_out.len(), 2);
        assert_eq!(examples.questions.len(), 1, "only the pair has a reference");
        assert_eq!(examples.questions[0].reference, "4");
    }

    #[test]
    fn conversations_train_on_the_reply_and_ask_its_prompt() {
        let Some(codec) = smollm2_codec() else { return };
        let dir = tempfile::tempdir().unwrap();
        let examples = load(&spec(dir.path(), &format!("{CHAT}\n\n{PAIR}\n"), Some(CHAT)), 128, &codec).unwrap();
        assert_eq!((examples.train.len(), examples.held_out.len()), (2, 1));
        let spelled = |sequence: &Sequence| {
            let ids: Vec<u32> =
                sequence.tokens.iter().zip(&sequence.targets).filter(|(_, t)| **t).map(|(id, _)| *id).collect();
            codec.tokenizer().decode(&ids, false).unwrap()
        };
        assert_eq!(spelled(&examples.train[0]), "TICKET-4821-DAMAGED<|im_end|>\n");
        assert_eq!(spelled(&examples.train[1]), "4<|im_end|>", "a completion and the end of sequence");
        let question = &examples.questions[0];
        assert_eq!(question.reference, "TICKET-4821-DAMAGED");
        let prompt = codec.tokenizer().decode(&question.prompt, false).unwrap();
        assert!(prompt.ends_with("Order 4821 came in pieces.<|im_end|>\n<|im_start|>assistant\n"), "{prompt:?}");
        // Serving renders the same conversation to the same tokens.
        let served = codec.encode_chat(&[Message::new("user", "Order 4821 came in pieces.")]).unwrap();
        assert_eq!(question.prompt, served);
        assert!(examples.held_out[0].tokens.starts_with(&question.prompt));
    }

    #[test]
    fn every_bad_line_is_refused_with_its_file_and_line() {
        let Some(codec) = smollm2_codec() else { return };
        let dir = tempfile::tempdir().unwrap();
        let error = |train: &str| {
            load(&spec(dir.path(), &format!("{CHAT}\n{train}\n"), Some(CHAT)), 64, &codec).unwrap_err().to_string()
        };
        let cases = [
            ("{not json", "line 2: not a valid example"),
            (r#"{"messages": [{"role": "user", "content": "hi"}]}"#, "line 2: the conversation has no assistant turn"),
            (r#"{"messages": [{"role": "bot", "content": "hi"}]}"#, "line 2: message 0 has the unknown role \"bot\""),
            (r#"{"messages": [{"role": "user", "content": "hi", "weight": 0}]}"#, "unknown field `weight`"),
            (r#"{"prompt": "hi"}"#, "line 2: an example has either \"messages\", both"),
            (r#"{"text": "hi", "completion": "x"}"#, "line 2: an example has either"),
            (r#"{"text": ""}"#, "line 2: the text is empty"),
            (r#"{"prompt": "", "completion": "x"}"#, "line 2: the prompt is empty"),
            (
                &format!(r#"{{"prompt": "{}", "completion": "x"}}"#, "word ".repeat(80)),
                "tokens once templated, more than the job's sequence_length 64",
            ),
        ];
        for (line, expected) in cases {
            let error = error(line);
            assert!(error.contains("data.jsonl.path") && error.contains("train.jsonl"), "{error}");
            assert!(error.contains(expected), "{line}: {error}");
        }
        assert!(
            error(&format!(r#"{{"prompt": "{}", "completion": "x"}}"#, "word ".repeat(80))).contains("overlong: skip")
        );
    }

    #[test]
    fn overlong_examples_are_skipped_when_asked_and_an_empty_held_out_split_is_refused() {
        let Some(codec) = smollm2_codec() else { return };
        let dir = tempfile::tempdir().unwrap();
        let long = format!(r#"{{"prompt": "{}", "completion": "x"}}"#, "word ".repeat(80));
        let skipping = JsonlSpec {
            overlong: Overlong::Skip,
            ..spec(dir.path(), &format!("{CHAT}\n{long}\n{PAIR}\n"), Some(CHAT))
        };
        assert_eq!(load(&skipping, 64, &codec).unwrap().train.len(), 2, "the long one left out, nothing cut");
        let empty = spec(dir.path(), &format!("{CHAT}\n"), Some("\n"));
        let error = load(&empty, 64, &codec).unwrap_err().to_string();
        assert!(error.contains("data.jsonl.eval_path") && error.contains("holds no example"), "{error}");
    }
}
