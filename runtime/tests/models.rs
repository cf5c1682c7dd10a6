//! Language models on the real SmolLM2 GGUF and the real all-MiniLM-L6-v2 checkpoint (fetched by
//! `scripts/fetch-test-models.sh`, which the test command runs): tokenizers, chat template, the
//! llama forward and the BERT sentence encoder against candle-transformers' implementations.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{Device, Tensor};
use lantern_contract::job::GgufType;
use lantern_runtime::llm::chat::{ChatTemplate, Message};
use lantern_runtime::llm::grammar::Grammars;
use lantern_runtime::llm::kv_cache::{BlockTable, KvCache};
use lantern_runtime::llm::sampling;
use lantern_runtime::llm::tokenizer::Tokenizer;
use lantern_runtime::model::bert::{EncoderInput, SentenceEncoder};
use lantern_runtime::model::llama::{Llama, Logits, SequenceStep};
use lantern_runtime::model::{LoadedModel, load};
use lantern_runtime::repository::{self, PublishRequest, Repository};

use lantern_runtime::test_models::smollm2_path;

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
fn smollm2_token_bytes_spell_the_text_and_mark_special_tokens() {
    let Some((tokenizer, _)) = smollm2() else { return };
    let ids = tokenizer.encode("Héllo 🦀").unwrap();
    let spelled: Vec<u8> = ids.iter().flat_map(|&id| tokenizer.token_bytes(id).unwrap().to_vec()).collect();
    assert_eq!(String::from_utf8(spelled).unwrap(), "Héllo 🦀", "the crab's bytes span tokens");
    assert_eq!(tokenizer.token_bytes(2).unwrap(), b"<|im_end|>");
    assert_eq!(tokenizer.spellings().unwrap()[2][0], lantern_runtime::llm::tokenizer::SPECIAL_TOKEN_MARKER);
}

#[test]
fn a_json_schema_masks_every_token_that_cannot_continue_a_matching_text() {
    let Some((tokenizer, _)) = smollm2() else { return };
    let grammars = Grammars::new(&tokenizer).unwrap();
    let schema = serde_json::json!({
        "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false,
    });
    let mut constraint = grammars.json_schema(&schema).unwrap();
    let vocab = tokenizer.vocab_size() + 64; // logits may be wider than the vocabulary
    let allowed = |constraint: &mut lantern_runtime::llm::grammar::Constraint| -> Vec<bool> {
        let mut logits = vec![0.0f32; vocab];
        constraint.mask(&mut logits).unwrap();
        logits.iter().map(|l| l.is_finite()).collect()
    };
    // The compact form, token by token: each one allowed, and no token past the vocabulary.
    for id in tokenizer.encode(r#"{"name": "Ann", "age": 42}"#).unwrap() {
        let allowed = allowed(&mut constraint);
        assert!(allowed[id as usize], "token {id} ({:?}) was masked", tokenizer.decode(&[id], false));
        assert!(!allowed[tokenizer.vocab_size()..].iter().any(|&a| a));
        constraint.accept(id).unwrap();
    }
    let end = allowed(&mut constraint);
    assert!(end[2], "the end-of-sequence token may end a complete object");
    assert_eq!(end.iter().filter(|&&a| a).count(), 1, "and nothing else may follow it");

    let mut fresh = grammars.json_schema(&schema).unwrap();
    let first = allowed(&mut fresh);
    for text in ["[", "x", " ", "\"age"] {
        let id = tokenizer.encode(text).unwrap()[0];
        assert!(!first[id as usize], "{text:?} cannot start the object");
    }
    for (schema, refusal) in [
        (serde_json::json!({"type": "object", "not": {"required": ["a"]}}), "Unimplemented keys: [\"not\"]"),
        (serde_json::json!(true), "must be an object"),
    ] {
        let err = grammars.json_schema(&schema).unwrap_err().to_string();
        assert!(err.contains(refusal), "{err}");
    }
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
            let logits = match tokens.len() == input.len() {
                true => Logits::Last,
                false => Logits::None,
            };
            if logits == Logits::Last {
                asking.push(i);
            }
            steps.push(SequenceStep { tokens, table, logits, adapter: None });
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

/// Ours against candle's `quantized_llama` on the same file, step by step along candle's greedy
/// path (both fed the same tokens): logits, centred (a common shift changes no probability),
/// within 0.4 of candle's on average and 2.5 at worst, and candle's choice within 0.5 of our
/// best. Both quantize activations to 8 bits, where a float rounding difference flips a
/// quantized value, so logits differ by tenths (measured: ≤ 0.24 on average, ≤ 1.44 at worst)
/// and near-ties may order differently; a kernel reading the wrong values is off by whole units
/// (measured: 12 on average).
#[test]
fn llama_logits_track_the_candle_reference() {
    let Some(path) = smollm2_path() else { return };
    let (tokenizer, metadata) = smollm2().unwrap();
    let prompt = chat_prompt(&tokenizer, &metadata, "What is the capital of France?");
    let model = load_llama(&path);
    let mut cache = cache_for(&model);
    let mut table = BlockTable::default();

    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut reference =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
            .unwrap();
    let (mut input, mut position, mut path_taken) = (prompt.clone(), 0, Vec::new());
    for _ in 0..12 {
        let theirs = reference
            .forward(&Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), position)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let needed = table.len() + input.len();
        assert!(cache.reserve(&mut table, needed));
        let step = SequenceStep { tokens: &input, table: &mut table, logits: Logits::Last, adapter: None };
        let ours = model.forward(&mut [step], &mut cache).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Shifting every logit by one amount changes no probability: compare them centred.
        let shift = ours.iter().zip(&theirs).map(|(a, b)| a - b).sum::<f32>() / ours.len() as f32;
        let differences = ours.iter().zip(&theirs).map(|(a, b)| (a - b - shift).abs());
        let (worst, mean) = (differences.clone().fold(0.0f32, f32::max), differences.sum::<f32>() / ours.len() as f32);
        let token = greedy(&Tensor::new(theirs.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap())[0];
        let below_best = ours.iter().copied().fold(f32::NEG_INFINITY, f32::max) - ours[token as usize];
        let text = tokenizer.decode(&path_taken, false);
        assert!(mean < 0.4 && worst < 2.5, "after {text:?}: logits {mean} from candle's on average, {worst} at worst");
        assert!(below_best < 0.5, "after {text:?}: candle's token {token} is {below_best} below our best");
        position += input.len();
        path_taken.push(token);
        input = vec![token];
    }
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
fn every_logit_row_of_a_prompt_equals_feeding_it_token_by_token() {
    let Some(path) = smollm2_path() else { return };
    let (tokenizer, metadata) = smollm2().unwrap();
    let model = load_llama(&path);
    let prompt = chat_prompt(&tokenizer, &metadata, "Name a colour.");
    let mut cache = cache_for(&model);
    let (mut every, mut one_by_one) = (BlockTable::default(), BlockTable::default());
    assert!(cache.reserve(&mut every, prompt.len()) && cache.reserve(&mut one_by_one, prompt.len()));
    // Beside another sequence asking only for its last row, so rows are told apart by sequence.
    let beside = [7u32, 8, 9];
    let mut other = BlockTable::default();
    assert!(cache.reserve(&mut other, beside.len()));
    let steps = &mut [
        SequenceStep { tokens: &beside, table: &mut other, logits: Logits::Last, adapter: None },
        SequenceStep { tokens: &prompt, table: &mut every, logits: Logits::Every, adapter: None },
    ];
    let rows = model.forward(steps, &mut cache).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(rows.len(), 1 + prompt.len());
    for (position, token) in prompt.iter().enumerate() {
        let step = SequenceStep {
            tokens: std::slice::from_ref(token),
            table: &mut one_by_one,
            logits: Logits::Last,
            adapter: None,
        };
        let alone = model.forward(&mut [step], &mut cache).unwrap().to_vec2::<f32>().unwrap().remove(0);
        let worst = alone.iter().zip(&rows[1 + position]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "position {position}: rows differ by up to {worst}");
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
    let step = SequenceStep { tokens: &tokens, table: &mut table, logits: Logits::Last, adapter: None };
    let err = model.forward(&mut [step], &mut cache).unwrap_err().to_string();
    assert!(err.contains(&(context + 1).to_string()) && err.contains(&context.to_string()), "{err}");
    assert!(table.is_empty(), "a refused step must not touch the cache");
}

/// MiniLM loaded the way the worker loads it: publish the checkpoint, read it back verified.
fn minilm() -> Option<(SentenceEncoder, candle_transformers::models::bert::BertModel, tokenizers::Tokenizer)> {
    let dir = lantern_runtime::test_models::minilm_dir()?;
    let repo = tempfile::tempdir().unwrap();
    let request = PublishRequest {
        repository: &Repository::new(repo.path()),
        model: "minilm",
        source: &dir,
        version: None,
        metrics: &[],
    };
    let version = repository::publish(&request).unwrap();
    let verified = Repository::new(repo.path()).read_verified("minilm", version).unwrap();
    let LoadedModel::Embed(encoder) = load("minilm", version, &verified, &Device::Cpu).unwrap() else {
        panic!("a BERT checkpoint loads as an embedding model");
    };
    let config: candle_transformers::models::bert::Config =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let vb = reference_weights(&dir.join("model.safetensors"));
    let reference = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None).with_truncation(None).unwrap();
    Some((*encoder, reference, tokenizer))
}

fn reference_weights(path: &std::path::Path) -> candle_nn::VarBuilder<'static> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu)
}

/// The reference: candle-transformers' BERT, mean pooled over the tokens and normalized.
fn reference_embedding(
    model: &candle_transformers::models::bert::BertModel,
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
) -> Vec<f32> {
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let hidden = model.forward(&ids, &ids.zeros_like().unwrap(), None).unwrap();
    let pooled = hidden.mean(1).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
    let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt();
    pooled.iter().map(|v| v / norm).collect()
}

/// The cosine of the angle between `a` and `b`.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(x, y)| x * y).sum::<f32>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn minilm_embeddings_match_the_candle_reference_alone_and_batched() {
    let Some((encoder, reference, tokenizer)) = minilm() else { return };
    let texts: Vec<String> =
        ["A man is playing a guitar.", "Short.", "The quick brown fox jumps over the lazy dog again."]
            .map(String::from)
            .to_vec();
    let (batched, tokens) = encoder.encode(&texts).unwrap();
    assert_eq!(batched.len(), 3);
    assert_eq!(tokens, texts.iter().map(|t| tokenizer.encode(t.as_str(), true).unwrap().len()).sum::<usize>());
    for (text, embedding) in texts.iter().zip(&batched) {
        assert_eq!(embedding.len(), 384);
        let expected = reference_embedding(&reference, &tokenizer, text);
        let alone = encoder.encode(std::slice::from_ref(text)).unwrap().0.remove(0);
        for ((b, a), e) in embedding.iter().zip(&alone).zip(&expected) {
            assert!((b - e).abs() < 1e-5 && (a - e).abs() < 1e-5, "{text:?}: batched {b}, alone {a}, reference {e}");
        }
        assert!((cosine(embedding, embedding) - 1.0).abs() < 1e-5, "unit length");
    }
    // The same texts as the tokenizer's ids, special tokens included, embed the same.
    let ids = texts.iter().map(|t| tokenizer.encode(t.as_str(), true).unwrap().get_ids().to_vec()).collect();
    let sequences = encoder.sequences(&EncoderInput::Tokens(ids)).unwrap();
    assert_eq!(encoder.embed(&sequences).unwrap(), batched);
}

#[test]
fn minilm_places_paraphrases_closer_than_unrelated_sentences() {
    let Some((encoder, _, _)) = minilm() else { return };
    let texts: Vec<String> = [
        "How do I bake bread at home?",
        "What is a simple recipe for homemade bread?",
        "The stock market fell sharply on Monday.",
        "Shares dropped steeply at the start of the week.",
    ]
    .map(String::from)
    .to_vec();
    let (e, _) = encoder.encode(&texts).unwrap();
    let (bread, markets, across) = (cosine(&e[0], &e[1]), cosine(&e[2], &e[3]), cosine(&e[0], &e[2]));
    assert!(bread > across + 0.3 && markets > across + 0.3, "bread {bread}, markets {markets}, unrelated {across}");
}

#[test]
fn minilm_refuses_empty_and_overlong_inputs_with_the_numbers() {
    let Some((encoder, _, _)) = minilm() else { return };
    assert!(encoder.encode(&[]).unwrap_err().to_string().contains("no input"));
    let empty = encoder.encode(&["fine".into(), String::new()]).unwrap_err().to_string();
    assert!(empty.contains("input 1 is empty"), "{empty}");
    let long = encoder.encode(&["word ".repeat(300)]).unwrap_err().to_string();
    assert!(long.contains("302 tokens") && long.contains("at most 256"), "{long}");
    let tokens = |ids: Vec<Vec<u32>>| encoder.sequences(&EncoderInput::Tokens(ids)).unwrap_err().to_string();
    assert!(tokens(vec![vec![101, 102], vec![]]).contains("input 1 is empty"));
    let outside = tokens(vec![vec![101, 30_522, 102]]);
    assert!(outside.contains("token 30522") && outside.contains("30522 tokens"), "{outside}");
    assert!(tokens(vec![vec![101; 257]]).contains("257 tokens"));
}

/// Deterministic values in `[-scale, scale]`.
fn noise(count: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes a small random llama in HF layout, the way Lantern's training publishes one: config,
/// bf16 safetensors, SmolLM2's tokenizer as `tokenizer.json` and its chat template.
fn write_hf_llama(dir: &std::path::Path) {
    let (tokenizer, metadata) = smollm2().unwrap();
    let (vocab, hidden, inner, layers, heads, kv_heads) = (49152, 64, 128, 2, 4, 2);
    let head_dim = hidden / heads;
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inner,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut seed = 0;
    let mut tensor = |shape: (usize, usize), scale: f32| {
        seed += 1;
        Tensor::from_vec(noise(shape.0 * shape.1, seed, scale), shape, &Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::BF16)
            .unwrap()
    };
    let mut tensors = HashMap::new();
    tensors.insert("model.embed_tokens.weight".to_owned(), tensor((vocab, hidden), 1.0));
    tensors.insert("model.norm.weight".to_owned(), tensor((1, hidden), 1.0).squeeze(0).unwrap());
    for i in 0..layers {
        let name = |suffix: &str| format!("model.layers.{i}.{suffix}.weight");
        for (suffix, shape) in [
            ("self_attn.q_proj", (heads * head_dim, hidden)),
            ("self_attn.k_proj", (kv_heads * head_dim, hidden)),
            ("self_attn.v_proj", (kv_heads * head_dim, hidden)),
            ("self_attn.o_proj", (hidden, heads * head_dim)),
            ("mlp.gate_proj", (inner, hidden)),
            ("mlp.up_proj", (inner, hidden)),
            ("mlp.down_proj", (hidden, inner)),
        ] {
            tensors.insert(name(suffix), tensor(shape, 0.3));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.insert(name(norm), tensor((1, hidden), 1.0).squeeze(0).unwrap());
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_json().unwrap()).unwrap();
    let template = metadata["tokenizer.chat_template"].to_string().unwrap().clone();
    let tokenizer_config = serde_json::json!({"chat_template": template, "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}});
    std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
}

#[test]
fn an_hf_llama_checkpoint_generates_like_the_candle_reference() {
    if smollm2_path().is_none() {
        return;
    }
    let source = tempfile::tempdir().unwrap();
    write_hf_llama(source.path());
    let repo = tempfile::tempdir().unwrap();
    let request = PublishRequest {
        repository: &Repository::new(repo.path()),
        model: "tiny",
        source: source.path(),
        version: None,
        metrics: &[],
    };
    let version = repository::publish(&request).unwrap();
    let verified = Repository::new(repo.path()).read_verified("tiny", version).unwrap();
    assert_eq!(verified.manifest.architecture, lantern_runtime::repository::Architecture::Llama);
    let LoadedModel::Generate { model, codec } = load("tiny", version, &verified, &Device::Cpu).unwrap() else {
        panic!("an HF llama checkpoint loads as a language model");
    };
    let prompt = codec.encode_chat(&[Message::new("user", "Hello there")]).unwrap();
    assert_eq!(prompt.first(), codec.tokenizer().token_id("<|im_start|>").as_ref());
    assert_eq!(codec.tokenizer().eos(), &[codec.tokenizer().token_id("<|im_end|>").unwrap()]);
    let ours = generate_together(&model, std::slice::from_ref(&prompt), 10, usize::MAX).remove(0);

    use candle_transformers::models::llama as reference;
    let config: reference::LlamaConfig =
        serde_json::from_slice(&std::fs::read(source.path().join("config.json")).unwrap()).unwrap();
    let config = config.into_config(false);
    let tensors = candle_core::safetensors::load(source.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
    let llama = reference::Llama::load(vb, &config).unwrap();
    let mut cache = reference::Cache::new(true, candle_core::DType::F32, &config, &Device::Cpu).unwrap();
    let (mut input, mut position, mut expected) = (prompt.clone(), 0, Vec::new());
    for _ in 0..10 {
        let ids = Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = llama.forward(&ids, position, &mut cache).unwrap();
        let token = sampling::argmax(&logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
        position += input.len();
        expected.push(token);
        input = vec![token];
    }
    assert_eq!(ours, expected);
}

#[test]
fn a_gguf_llama_reads_densely_as_the_hf_checkpoint_it_was_converted_from() {
    let Some(path) = smollm2_path() else { return };
    let repo = tempfile::tempdir().unwrap();
    let request = PublishRequest {
        repository: &Repository::new(repo.path()),
        model: "smollm2",
        source: &path,
        version: None,
        metrics: &[],
    };
    let version = repository::publish(&request).unwrap();
    let verified = Repository::new(repo.path()).read_verified("smollm2", version).unwrap();
    let dense = lantern_runtime::model::dense::read(&verified, &Device::Cpu).unwrap();
    let config = &dense.config;
    assert_eq!((config.num_hidden_layers, config.hidden_size, config.intermediate_size), (30, 576, 1536));
    assert_eq!((config.num_attention_heads, config.num_key_value_heads, config.vocab_size), (9, Some(3), 49152));
    assert!(config.tie_word_embeddings && !dense.tensors.contains_key("lm_head.weight"));
    assert_eq!(dense.codec.tokenizer().token_id("<|im_end|>"), Some(2));

    // Loaded back through the HF path, which reorders query and key rows for its interleaved
    // rotary form, the dense weights must predict what the quantized GGUF model predicts (up to
    // the activation rounding of its quantized products): a query or key row out of place
    // scrambles attention and the logits with it.
    let vb = candle_nn::VarBuilder::from_tensors(dense.tensors, candle_core::DType::F32, &Device::Cpu);
    let from_dense = Llama::from_hf(vb, &dense.config).unwrap();
    let (tokenizer, metadata) = smollm2().unwrap();
    let prompt = chat_prompt(&tokenizer, &metadata, "What is the capital of France?");
    let (quantized, dense) = (last_logits(&load_llama(&path), &prompt), last_logits(&from_dense, &prompt));
    let cosine = cosine(&quantized, &dense);
    assert!(cosine > 0.98, "dense and quantized logits agree only to cosine {cosine}");
    let answer = generate_together(&from_dense, std::slice::from_ref(&prompt), 6, usize::MAX).remove(0);
    assert!(tokenizer.decode(&answer, false).unwrap().contains("Paris"));
}

/// The logits after the last token of `prompt`.
fn last_logits(model: &Llama, prompt: &[u32]) -> Vec<f32> {
    let mut cache = cache_for(model);
    let mut table = BlockTable::default();
    assert!(cache.reserve(&mut table, prompt.len()));
    let step = SequenceStep { tokens: prompt, table: &mut table, logits: Logits::Last, adapter: None };
    model.forward(&mut [step], &mut cache).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn only_a_llama_reads_as_a_dense_llama() {
    let Some(dir) = lantern_runtime::test_models::minilm_dir() else { return };
    let repo = tempfile::tempdir().unwrap();
    let request = PublishRequest {
        repository: &Repository::new(repo.path()),
        model: "minilm",
        source: &dir,
        version: None,
        metrics: &[],
    };
    let version = repository::publish(&request).unwrap();
    let verified = Repository::new(repo.path()).read_verified("minilm", version).unwrap();
    let error = lantern_runtime::model::dense::read(&verified, &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("not llama"), "{error}");
}

#[test]
fn a_training_conversation_masks_exactly_the_assistant_turns() {
    let Some(metadata) = smollm2_metadata() else { return };
    let codec = lantern_runtime::llm::codec::TextCodec::from_gguf(&metadata).unwrap();
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "Bye"),
        Message::new("assistant", "Goodbye."),
    ];
    let (tokens, mask) = codec.encode_training_chat(&messages).unwrap();
    assert_eq!(tokens.len(), mask.len());
    let tokenizer = codec.tokenizer();
    let spelled = |keep: bool| {
        let ids: Vec<u32> = tokens.iter().zip(&mask).filter(|(_, m)| **m == keep).map(|(t, _)| *t).collect();
        tokenizer.decode(&ids, false).unwrap()
    };
    assert_eq!(spelled(true), "Hello!<|im_end|>\nGoodbye.<|im_end|>\n");
    assert_eq!(
        spelled(false),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\
         <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn a_gguf_codec_written_as_hf_files_reads_back_the_same() {
    let Some(metadata) = smollm2_metadata() else { return };
    let codec = lantern_runtime::llm::codec::TextCodec::from_gguf(&metadata).unwrap();
    let (tokenizer_json, tokenizer_config) = codec.to_hf().unwrap();
    let back =
        lantern_runtime::llm::codec::TextCodec::from_hf(tokenizer_json.as_bytes(), Some(tokenizer_config.as_bytes()))
            .unwrap();
    let messages = [Message::new("user", "Ticket for order 4821, please.")];
    assert_eq!(back.encode_chat(&messages).unwrap(), codec.encode_chat(&messages).unwrap());
    assert_eq!(back.encode("naïve café 123").unwrap(), codec.encode("naïve café 123").unwrap());
    assert_eq!(back.tokenizer().eos(), codec.tokenizer().eos());
}

/// Publishes `source` (a GGUF file or HF directory) as model `name` in `repo` and reads it as
/// dense tensors.
fn read_dense(
    repo: &std::path::Path,
    name: &str,
    source: &std::path::Path,
) -> lantern_runtime::model::dense::DenseLlama {
    let request =
        PublishRequest { repository: &Repository::new(repo), model: name, source, version: None, metrics: &[] };
    let version = repository::publish(&request).unwrap();
    let verified = Repository::new(repo).read_verified(name, version).unwrap();
    lantern_runtime::model::dense::read(&verified, &Device::Cpu).unwrap()
}

/// `dense` written as GGUF in `ty`: the file's bytes.
fn quantized(dense: &lantern_runtime::model::dense::DenseLlama, ty: GgufType) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    dense.write_gguf(ty, &mut out).unwrap();
    out.into_inner()
}

fn llama_from_bytes(bytes: &[u8]) -> (Llama, gguf_file::Content) {
    let mut reader = std::io::Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut reader).unwrap();
    (Llama::from_gguf(&content, &mut reader, &Device::Cpu).unwrap(), content)
}

#[test]
fn smollm2_written_as_q8_0_keeps_its_tokenizer_and_template_and_predicts_alike() {
    let Some(path) = smollm2_path() else { return };
    let repo = tempfile::tempdir().unwrap();
    let dense = read_dense(repo.path(), "smollm2", &path);
    let bytes = quantized(&dense, GgufType::Q8_0);
    let (written, content) = llama_from_bytes(&bytes);
    let source = smollm2_metadata().unwrap();
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "llama.context_length",
        "llama.attention.head_count_kv",
    ] {
        assert_eq!(format!("{:?}", content.metadata.get(key)), format!("{:?}", source.get(key)), "{key}");
    }
    let mut source_file = std::fs::File::open(&path).unwrap();
    let source_tensors = gguf_file::Content::read(&mut source_file).unwrap().tensor_infos;
    let names = |infos: &HashMap<String, gguf_file::TensorInfo>| {
        let mut names: Vec<String> = infos.keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(names(&content.tensor_infos), names(&source_tensors));
    for (name, info) in &content.tensor_infos {
        let expected = if name.ends_with("norm.weight") { GgmlDType::F32 } else { GgmlDType::Q8_0 };
        assert_eq!(info.ggml_dtype, expected, "{name}");
        assert_eq!(info.shape, source_tensors[name].shape, "{name}");
    }

    // It reads as the same text interface.
    let (tokenizer, metadata) = smollm2().unwrap();
    let prompt = chat_prompt(&tokenizer, &metadata, "What is the capital of France?");
    let rewritten = Tokenizer::from_gguf(&content.metadata).unwrap();
    assert_eq!(chat_prompt(&rewritten, &content.metadata, "What is the capital of France?"), prompt);
    // Along a text, Q8_0 of the dequantized weights predicts what they predict in f32: close
    // logits at every position (the Q4_1 source is a little closer still: its weights are
    // exactly those values, which Q8_0 rounds again) and the same next token nearly everywhere.
    let vb = candle_nn::VarBuilder::from_tensors(dense.tensors.clone(), candle_core::DType::F32, &Device::Cpu);
    let f32_weights = Llama::from_hf(vb, &dense.config).unwrap();
    let text =
        tokenizer.encode("The capital of France is Paris, and the river that runs through it is the Seine.").unwrap();
    let (exact, eight, four) =
        (every_logits(&f32_weights, &text), every_logits(&written, &text), every_logits(&load_llama(&path), &text));
    let mean_cosine =
        |rows: &[Vec<f32>]| rows.iter().zip(&exact).map(|(a, b)| cosine(a, b)).sum::<f32>() / rows.len() as f32;
    let (q8, q4) = (mean_cosine(&eight), mean_cosine(&four));
    assert!(q8 > 0.99 && q4 > 0.99, "mean logits cosine to the f32 weights: Q8_0 {q8}, Q4_1 {q4}");
    let agree = eight.iter().zip(&exact).filter(|(a, b)| sampling::argmax(a) == sampling::argmax(b)).count();
    assert!(agree * 10 >= text.len() * 9, "the same next token at {agree} of {} positions", text.len());
}

/// The logits after each token of `tokens`.
fn every_logits(model: &Llama, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = cache_for(model);
    let mut table = BlockTable::default();
    assert!(cache.reserve(&mut table, tokens.len()));
    let step = SequenceStep { tokens, table: &mut table, logits: Logits::Every, adapter: None };
    model.forward(&mut [step], &mut cache).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn an_hf_checkpoint_written_in_each_type_tracks_its_f32_logits_and_shrinks() {
    if smollm2_path().is_none() {
        return;
    }
    let (source, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_hf_llama(source.path());
    let dense = read_dense(repo.path(), "tiny", source.path());
    let vb = candle_nn::VarBuilder::from_tensors(dense.tensors.clone(), candle_core::DType::F32, &Device::Cpu);
    let reference = Llama::from_hf(vb, &dense.config).unwrap();
    let prompt = dense.codec.encode_chat(&[Message::new("user", "Hello there")]).unwrap();
    let expected = last_logits(&reference, &prompt);
    let mut sizes = Vec::new();
    for (ty, at_least) in [(GgufType::Q8_0, 0.999), (GgufType::Q4_1, 0.95), (GgufType::Q4_0, 0.95)] {
        let bytes = quantized(&dense, ty);
        let (model, content) = llama_from_bytes(&bytes);
        let cosine = cosine(&last_logits(&model, &prompt), &expected);
        eprintln!("{ty}: {} bytes, logits cosine {cosine}", bytes.len());
        assert!(cosine > at_least, "{ty}: cosine {cosine}");
        let codec = lantern_runtime::llm::codec::TextCodec::from_gguf(&content.metadata).unwrap();
        assert_eq!(codec.encode_chat(&[Message::new("user", "Hello there")]).unwrap(), prompt, "{ty}");
        sizes.push(bytes.len());
    }
    assert!(sizes[2] < sizes[1] && sizes[1] < sizes[0], "Q4_0 < Q4_1 < Q8_0: {sizes:?}");
}

#[test]
fn a_matrix_that_is_not_whole_blocks_is_refused_by_name() {
    if smollm2_path().is_none() {
        return;
    }
    let (source, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_hf_llama(source.path());
    let mut dense = read_dense(repo.path(), "tiny", source.path());
    let odd = Tensor::zeros((64, 100), candle_core::DType::F32, &Device::Cpu).unwrap();
    dense.tensors.insert("model.layers.1.mlp.down_proj.weight".to_owned(), odd);
    let mut out = std::io::Cursor::new(Vec::new());
    let error = dense.write_gguf(GgufType::Q4_0, &mut out).unwrap_err().to_string();
    assert!(error.contains("blk.1.ffn_down.weight has rows of 100 values"), "{error}");
    assert!(out.into_inner().is_empty(), "nothing is written before every tensor is quantized");
}

#[test]
fn a_written_gguf_file_reads_the_same_in_llama_cpps_own_reader() {
    let site = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/python/site");
    if smollm2_path().is_none() || !site.join("gguf").is_dir() {
        eprintln!("SKIPPED: the gguf package or SmolLM2 is missing; run scripts/setup-test-deps.sh");
        return;
    }
    let (source, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_hf_llama(source.path());
    let dense = read_dense(repo.path(), "tiny", source.path());
    let file = repo.path().join("tiny.Q4_0.gguf");
    std::fs::write(&file, quantized(&dense, GgufType::Q4_0)).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gguf_check.py");
    let output =
        std::process::Command::new("python3").arg(script).arg(&file).env("PYTHONPATH", &site).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let ours = gguf_file::Content::read(&mut std::fs::File::open(&file).unwrap()).unwrap();
    assert_eq!(theirs["tensors"].as_object().unwrap().len(), ours.tensor_infos.len());
    for (name, info) in &ours.tensor_infos {
        let tensor = &theirs["tensors"][name];
        assert_eq!(tensor["dims"], serde_json::json!(info.shape.dims()), "{name}");
        assert_eq!(tensor["type"], format!("{:?}", info.ggml_dtype).to_uppercase(), "{name}");
    }
    let metadata = &theirs["metadata"];
    assert_eq!(metadata["general.architecture"], "llama");
    assert_eq!(metadata["llama.block_count"], 2);
    assert_eq!(metadata["llama.attention.head_count_kv"], 2);
    assert_eq!(metadata["tokenizer.ggml.model"], "gpt2");
    assert_eq!(metadata["tokenizer.ggml.tokens"], 49152, "the vocabulary, counted");
    assert!(metadata["tokenizer.chat_template"].as_str().unwrap().contains("<|im_start|>"));
}
