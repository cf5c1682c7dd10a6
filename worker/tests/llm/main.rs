//! Language-model building blocks on the real SmolLM2 GGUF (fetched by
//! `scripts/fetch-test-models.sh`, which the test command runs).

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use lantern_worker::llm::chat::{ChatTemplate, Message};
use lantern_worker::llm::kv_cache::{BlockTable, KvCache};
use lantern_worker::llm::sampling;
use lantern_worker::llm::tokenizer::Tokenizer;
use lantern_worker::model::llama::{Llama, SequenceStep};

#[path = "../common/models.rs"]
mod models;

use models::smollm2_path;

fn smollm2_metadata() -> Option<HashMap<String, gguf_file::Value>> {
    let mut file = std::fs::File::open(smollm2_path()?).unwrap();
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

fn load_llama(path: &std::path::Path) -> Llama {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    Llama::from_gguf(&content, &mut file, &Device::Cpu).unwrap()
}

fn chat_prompt(tokenizer: &Tokenizer, metadata: &HashMap<String, gguf_file::Value>, question: &str) -> Vec<u32> {
    let template = ChatTemplate::new(metadata["tokenizer.chat_template"].to_string().unwrap().clone()).unwrap();
    let text = template.render(&[Message::new("user", question)], true, "", "").unwrap();
    tokenizer.encode(&text).unwrap()
}

/// The greedy choice for each row of `[rows, vocab]` logits.
fn greedy(logits: &Tensor) -> Vec<u32> {
    logits.to_vec2::<f32>().unwrap().iter().map(|row| sampling::argmax(row)).collect()
}

/// A cache of 64 MiB for `model`, in 16-token blocks.
fn cache_for(model: &Llama) -> KvCache {
    KvCache::with_budget(model.kv_shape(), 16, 64 << 20)
}

/// Greedy decoding of each prompt with our batched forward, all prompts in every step. Prompts
/// are fed `chunk` tokens per step; the first token is sampled once a whole prompt is in.
fn generate_together(model: &Llama, prompts: &[Vec<u32>], new_tokens: usize, chunk: usize) -> Vec<Vec<u32>> {
    let mut cache = cache_for(model);
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::default()).collect();
    let mut pending: Vec<Vec<u32>> = prompts.to_vec();
    let mut outputs = vec![Vec::new(); prompts.len()];
    while outputs.iter().any(|o| o.len() < new_tokens) {
        let mut steps = Vec::new();
        let mut asking = Vec::new();
        for (i, (input, table)) in pending.iter().zip(tables.iter_mut()).enumerate() {
            if outputs[i].len() == new_tokens {
                continue;
            }
            let tokens = &input[..input.len().min(chunk)];
            assert!(cache.reserve(table, table.len() + tokens.len()));
            let logits = tokens.len() == input.len();
            if logits {
                asking.push(i);
            }
            steps.push(SequenceStep { tokens, table, logits });
        }
        let next = greedy(&model.forward(&mut steps, &mut cache).unwrap());
        drop(steps);
        for (i, input) in pending.iter_mut().enumerate() {
            if outputs[i].len() < new_tokens {
                input.drain(..input.len().min(chunk));
            }
        }
        for (&i, &token) in asking.iter().zip(&next) {
            outputs[i].push(token);
            pending[i] = vec![token];
        }
    }
    outputs
}

#[test]
fn llama_greedy_output_matches_the_candle_reference() {
    let Some(path) = smollm2_path() else { return };
    let (tokenizer, metadata) = smollm2().unwrap();
    let prompt = chat_prompt(&tokenizer, &metadata, "What is the capital of France?");
    let ours = generate_together(&load_llama(&path), std::slice::from_ref(&prompt), 12, usize::MAX).remove(0);

    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut reference =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
            .unwrap();
    let mut expected = Vec::new();
    let mut input = prompt.clone();
    let mut position = 0;
    for _ in 0..12 {
        let logits = reference
            .forward(&Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), position)
            .unwrap();
        let token = greedy(&logits)[0];
        position += input.len();
        expected.push(token);
        input = vec![token];
    }
    assert_eq!(
        ours,
        expected,
        "ours {:?} vs reference {:?}",
        tokenizer.decode(&ours, false),
        tokenizer.decode(&expected, false)
    );
}

#[test]
fn batched_decoding_matches_each_sequence_alone() {
    let Some(path) = smollm2_path() else { return };
    let (tokenizer, metadata) = smollm2().unwrap();
    let model = load_llama(&path);
    let prompts = [
        chat_prompt(&tokenizer, &metadata, "Name a colour."),
        chat_prompt(&tokenizer, &metadata, "Write one short sentence about the sea and the wind."),
    ];
    assert_ne!(prompts[0].len(), prompts[1].len());
    // Together, with the prompts prefilled in 7-token chunks beside the other sequence's decode.
    let together = generate_together(&model, &prompts, 8, 7);
    for (prompt, batched) in prompts.iter().zip(&together) {
        let alone = generate_together(&model, std::slice::from_ref(prompt), 8, usize::MAX).remove(0);
        assert_eq!(&alone, batched, "{:?} vs {:?}", tokenizer.decode(&alone, false), tokenizer.decode(batched, false));
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_with_both_numbers() {
    let Some(path) = smollm2_path() else { return };
    let model = load_llama(&path);
    let context = model.config().context_length;
    let tokens = vec![1u32; context + 1];
    let mut cache = cache_for(&model);
    let mut table = BlockTable::default();
    let step = SequenceStep { tokens: &tokens, table: &mut table, logits: true };
    let err = model.forward(&mut [step], &mut cache).unwrap_err().to_string();
    assert!(err.contains(&(context + 1).to_string()) && err.contains(&context.to_string()), "{err}");
    assert!(table.is_empty(), "a refused step must not touch the cache");
}
