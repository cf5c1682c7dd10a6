//! Language-model building blocks on the real SmolLM2 GGUF (fetched by
//! `scripts/fetch-test-models.sh`, which the test command runs).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use lantern_worker::llm::chat::{ChatTemplate, Message};
use lantern_worker::llm::tokenizer::Tokenizer;

/// The SmolLM2 GGUF's metadata, or `None` (with a loud message) when the models are not fetched.
fn smollm2_metadata() -> Option<HashMap<String, gguf_file::Value>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        eprintln!("SKIPPED: {} is missing; run scripts/fetch-test-models.sh (the test command does)", path.display());
        return None;
    }
    let mut file = std::fs::File::open(&path).unwrap();
    Some(gguf_file::Content::read(&mut file).unwrap().metadata)
}

fn smollm2() -> Option<(Tokenizer, HashMap<String, gguf_file::Value>)> {
    let metadata = smollm2_metadata()?;
    Some((Tokenizer::from_gguf(&metadata).unwrap(), metadata))
}

#[test]
fn smollm2_tokenizer_round_trips_text() {
    let Some((tokenizer, _)) = smollm2() else { return };
    for text in [
        "Hello, world!",
        "  leading and trailing spaces  ",
        "Numbers: 12345 and 3.14159",
        "Ünïcödé, 中文, emoji 🦀🔥 and tabs\tand\nnewlines",
        "fn main() { println!(\"{}\", 1 + 2); }",
        "<|im_start|>user\nHi<|im_end|>",
    ] {
        let ids = tokenizer.encode(text).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text, "ids {ids:?}");
    }
}

#[test]
fn smollm2_special_tokens_match_whole_and_nothing_is_prepended() {
    let Some((tokenizer, _)) = smollm2() else { return };
    assert_eq!(tokenizer.vocab_size(), 49152);
    let im_start = tokenizer.token_id("<|im_start|>").unwrap();
    let im_end = tokenizer.token_id("<|im_end|>").unwrap();
    assert_eq!((im_start, im_end), (1, 2));
    assert_eq!(tokenizer.eos(), &[2]);
    let ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&im_start));
    assert_eq!(ids.last(), Some(&im_end));
    // No BOS and no space before the first word (llama.cpp behaviour for this file).
    let hello = tokenizer.encode("Hello").unwrap();
    assert_eq!(hello.len(), 1);
    assert_eq!(tokenizer.decode(&hello, false).unwrap(), "Hello");
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user\nHi");
}

#[test]
fn smollm2_splits_every_digit() {
    let Some((tokenizer, _)) = smollm2() else { return };
    let ids = tokenizer.encode("12345").unwrap();
    let pieces: Vec<String> = ids.iter().map(|&id| tokenizer.decode(&[id], false).unwrap()).collect();
    assert_eq!(pieces, ["1", "2", "3", "4", "5"]);
}

#[test]
fn smollm2_chat_template_renders_chatml() {
    let Some(metadata) = smollm2_metadata() else { return };
    let source = metadata["tokenizer.chat_template"].to_string().unwrap().clone();
    let template = ChatTemplate::new(source).unwrap();
    let text = template.render(&[Message::new("user", "What is 2+2?")], true, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_system =
        template.render(&[Message::new("system", "Be brief."), Message::new("user", "Hi")], false, "", "").unwrap();
    assert_eq!(with_system, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}
